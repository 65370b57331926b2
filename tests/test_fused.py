"""The fused numba renderer (core.fused) against the PyTorch renderer and the dense reference: outputs and
every gradient, with and without early termination and empty-space skipping, on one thread and several."""

import pytest
import torch

from fields import density_test_field
from sjc.core import fused  # imports without numba too
from sjc.core.cameras import View, camera_from_view
from sjc.core.fused import render_fused, supports
from sjc.core.reference import render_dense
from sjc.core.render import render
from sjc.core.voxel import VoxelField

pytest.importorskip("numba")

CAM = View(40, 25, fov=55)
STATES = ["init", "random", "empty regions", "opaque"]


def pytorch_render(*args, **kwargs):
    """`render` on its PyTorch path: what the fused kernels must equal (plain `render` takes them on the CPU)."""
    return render(*args, engine="torch", **kwargs)


def _field(state, activation="none", dtype=torch.float64, skip=False):
    field = density_test_field(state, dtype=dtype)
    field.feature_activation = activation
    if skip:
        field.refresh_occupancy(dilation=1)
    return field


def _outputs(field, out):
    """Image, depth, opacity, weights and the gradients of grid, d_scale and bg under a loss that reads them
    all, the emptiness loss on the weights included."""
    field.zero_grad(set_to_none=True)
    weights = torch.linspace(-1, 1, out.image.numel(), dtype=out.image.dtype).view_as(out.image)
    loss = (out.image * weights).sum() + out.depth.mean() + out.opacity.square().sum()
    loss = loss + 1e3 * torch.log1p(10 * out.weights).mean()
    loss.backward()
    grads = [p.grad.clone() for p in (field.grid, field.d_scale, field.bg)]
    return [out.image.detach(), out.depth.detach(), out.opacity.detach(), out.weights.detach(), *grads]


def _assert_close(ours, theirs, atol=1e-4):
    names = ["image", "depth", "opacity", "weights", "grad grid", "grad d_scale", "grad bg"]
    for name, a, b in zip(names, ours, theirs, strict=True):
        assert a.shape == b.shape, name
        assert torch.allclose(a, b, atol=atol, rtol=0), f"{name}: {float((a - b).abs().max()):.2e}"


class ParallelCamera:
    """Rays with one direction from origins spread over a plane (an orthographic camera): origins per ray."""

    height = width = 9

    def rays(self, device=None, dtype=torch.float32):
        u = torch.linspace(-0.8, 0.8, self.width, dtype=torch.float64)
        vv, uu = torch.meshgrid(-u, u, indexing="ij")
        origins = torch.stack([uu, vv, torch.full_like(uu, 1.7)], -1).reshape(-1, 3)
        dirs = torch.tensor([0.1, -0.2, -1.0], dtype=torch.float64)
        dirs = (dirs / dirs.norm()).expand_as(origins).contiguous()
        return origins.to(device=device, dtype=dtype), dirs.to(device=device, dtype=dtype)


@pytest.mark.parametrize("activation", ["none", "sigmoid"])
@pytest.mark.parametrize("skip", [False, True])
@pytest.mark.parametrize("min_transmittance", [0.0, 1e-8])
@pytest.mark.parametrize("state", STATES)
def test_fused_equals_the_pytorch_renderer(state, min_transmittance, skip, activation):
    """In float64, so differences are the algorithms'. The PyTorch renderer cuts rays on a lower bound of
    the transmittance, the fused one on the transmittance: they differ by samples of weight < 1e-8."""
    field = _field(state, activation, skip=skip)
    cam = camera_from_view(CAM, 10)
    kw = dict(min_transmittance=min_transmittance, skip_empty=skip)
    _assert_close(_outputs(field, render_fused(field, cam, **kw)), _outputs(field, pytorch_render(field, cam, **kw)))


@pytest.mark.parametrize("state", STATES)
def test_fused_equals_the_dense_reference(state):
    field = _field(state, "sigmoid")
    cam = camera_from_view(CAM, 10)
    ref = _outputs(field, render_dense(field, cam))
    _assert_close(_outputs(field, render_fused(field, cam, min_transmittance=0)), ref, atol=1e-10)
    _assert_close(_outputs(field, render_fused(field, cam)), ref)


def test_skipping_and_termination_leave_samples_out_alike():
    """A stale occupancy grid (density added where it says empty) renders differently from no skipping, and
    the same as the PyTorch renderer's skipping; early termination leaves samples out."""
    field = _field("empty regions", skip=True)
    with torch.no_grad():
        field.grid[:, 0] = 3.0
    cam = camera_from_view(CAM, 10)
    stale = _outputs(field, render_fused(field, cam, skip_empty=True))
    assert not torch.allclose(stale[0], render_fused(field, cam).image.detach(), atol=1e-3)
    _assert_close(stale, _outputs(field, pytorch_render(field, cam, skip_empty=True)))
    opaque = _field("opaque")
    cut, every = ((render_fused(opaque, cam, min_transmittance=m).weights > 0).sum() for m in (1e-8, 0.0))
    assert cut < 0.9 * every
    assert cut <= (pytorch_render(opaque, cam).weights > 0).sum()  # the exact cut: no more samples than its bound's


@pytest.mark.parametrize("channels", [1, 3])
def test_other_channel_counts(channels):
    """C = 4 takes a loop of its own: the others the general one."""
    gen = torch.Generator().manual_seed(2)
    field = VoxelField(10, channels, feature_activation="sigmoid", background="texture", generator=gen).double()
    with torch.no_grad():
        field.grid[:, 0] = 2 * torch.randn(field.grid[:, 0].shape, generator=gen, dtype=torch.float64)
    cam = camera_from_view(CAM, 10)
    _assert_close(_outputs(field, render_fused(field, cam)), _outputs(field, pytorch_render(field, cam)))


@pytest.mark.parametrize("state", ["random", "opaque"])
def test_rays_with_their_own_origins(state):
    field = _field(state, skip=True)
    cam = ParallelCamera()
    for kw in (dict(min_transmittance=0), dict(skip_empty=True)):
        _assert_close(
            _outputs(field, render_fused(field, cam, **kw)), _outputs(field, pytorch_render(field, cam, **kw))
        )


def test_rays_missing_the_box_and_a_camera_inside_it():
    field = _field("random", "sigmoid")
    for view in (View(0, 0, fov=170), View(30, 10, radius=0.5)):  # corner rays miss; the camera is inside
        cam = camera_from_view(view, 9)
        _assert_close(_outputs(field, render_fused(field, cam)), _outputs(field, pytorch_render(field, cam)))


@pytest.mark.parametrize("state", ["random", "opaque"])
def test_several_threads_give_the_same_result(state):
    """Ray chunks on several threads forward, z slabs of the grid backward: the same numbers as one thread."""
    field = _field(state, "sigmoid", skip=True)
    cam = camera_from_view(CAM, 16)
    one = _outputs(field, render_fused(field, cam, skip_empty=True))
    threads = torch.get_num_threads()
    try:
        for n in (2, 3):
            torch.set_num_threads(n)
            _assert_close(_outputs(field, render_fused(field, cam, skip_empty=True)), one, atol=1e-12)
    finally:
        torch.set_num_threads(threads)


def test_float32_works():
    field = _field("random", "sigmoid", dtype=torch.float32, skip=True)
    cam = camera_from_view(CAM, 10)
    ours = _outputs(field, render_fused(field, cam, skip_empty=True))
    theirs = _outputs(field, pytorch_render(field, cam, skip_empty=True))
    assert all(t.dtype == torch.float32 for t in ours)
    _assert_close(ours, theirs, atol=1e-4)


def test_no_grad_and_partial_grads():
    field = _field("random", "sigmoid")
    cam = camera_from_view(CAM, 10)
    with torch.no_grad():
        plain = render_fused(field, cam)
    full = _outputs(field, render_fused(field, cam))
    assert torch.equal(plain.image, full[0]) and torch.equal(plain.weights, full[3])
    field.grid.requires_grad_(False)  # d_scale (and bg) only
    grads = []
    for fn in (render_fused, render):
        field.zero_grad(set_to_none=True)
        out = fn(field, cam)
        (out.depth.sum() + out.image.sum() + out.weights.sum()).backward()
        assert field.grid.grad is None
        grads.append(field.d_scale.grad.clone())
    assert torch.allclose(*grads, atol=1e-6)


def _loss(out):
    return out.image.sum() + out.depth.sum() + 10 * out.weights.square().sum()


def _grid_grad(field, cam):
    field.zero_grad(set_to_none=True)
    _loss(render_fused(field, cam)).backward()
    return field.grid.grad.clone()


def test_graphs_alive_together_and_retained_graphs():
    """Record buffers are pooled between calls: two renders whose graphs are alive at once, and a graph
    backpropagated twice, each still read their own records."""
    field = _field("random")
    cams = camera_from_view(CAM, 10), camera_from_view(View(200, -5), 12)
    alone = [_grid_grad(field, cam) for cam in cams]
    first, second = (render_fused(field, cam) for cam in cams)
    field.zero_grad(set_to_none=True)
    _loss(second).backward(retain_graph=True)
    _loss(second).backward()
    _loss(first).backward()
    assert torch.allclose(field.grid.grad, alone[0] + 2 * alone[1], atol=1e-10)
    fused.release_buffers()


def test_without_numba_it_says_so(monkeypatch):
    monkeypatch.setattr(fused, "numba", None)
    field = _field("random")
    assert not fused.available() and not supports(field)
    with pytest.raises(ImportError, match="numba"):
        render_fused(field, camera_from_view(CAM, 4))
    # render() then takes its PyTorch path, which evaluates samples through field.query
    queried = []
    query = field.query
    field.query = lambda pts: queried.append(len(pts)) or query(pts)
    out = render(field, camera_from_view(CAM, 4))
    assert queried and torch.allclose(out.image, render(field, camera_from_view(CAM, 4), engine="torch").image)


def test_fields_it_cannot_take():
    class PlainField:  # only the Field protocol: no grid
        def __init__(self, field):
            self.aabb, self.step_size = field.aabb, field.step_size

    field = _field("random")
    assert supports(field)
    assert not supports(PlainField(field))
    with pytest.raises(ValueError, match="VoxelField"):
        render_fused(PlainField(field), camera_from_view(CAM, 4))

    class BrokenCamera(ParallelCamera):  # a NaN would index outside the grid in the kernel
        def rays(self, device=None, dtype=torch.float32):
            origins, dirs = super().rays(device, dtype)
            return origins, dirs * torch.nan

    with pytest.raises(ValueError, match="not finite"):
        render_fused(field, BrokenCamera())
