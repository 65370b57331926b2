"""The renderer's speed paths against the plain algorithm: the sparse trilinear lookup against
grid_sample, early termination and its pre-passes, and empty-space skipping against the dense reference."""

import pytest
import torch
import torch.nn.functional as F

from fields import density_test_field
from sjc.core import render as rendering
from sjc.core.cameras import View, camera_from_view
from sjc.core.reference import render_dense
from sjc.core.trilinear import cell_coords, trilinear
from sjc.core.voxel import VoxelField

CAM = View(40, 25, fov=55)


def render(*args, **kwargs):
    """The PyTorch path: this file checks its own shortcuts (the fused kernels are checked in test_fused.py)."""
    return rendering.render(*args, engine="torch", **kwargs)


def _grid_sample(grid, pts):
    out = F.grid_sample(grid, pts.reshape(1, -1, 1, 1, 3), mode="bilinear", padding_mode="border", align_corners=False)
    return out.view(grid.shape[1], -1).T


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_sparse_trilinear_equals_grid_sample_in_values_and_gradients(dtype):
    gen = torch.Generator().manual_seed(0)
    n, k = 7, 3
    grid = torch.randn(1, k, n, n, n, generator=gen, dtype=dtype, requires_grad=True)
    centres = -1 + (torch.arange(n, dtype=dtype) + 0.5) * 2 / n
    pts = torch.cat(  # inside, outside the box (border padding), on voxel centres and on the faces
        [
            torch.rand(3000, 3, generator=gen, dtype=dtype) * 2.6 - 1.3,
            torch.stack(torch.meshgrid(centres, centres[:2], centres[-2:], indexing="ij"), -1).reshape(-1, 3),
            torch.tensor([[-1.0, 1.0, 0.0], [1.0, 1.0, 1.0], [-1.0, -1.0, -1.0]], dtype=dtype),
        ]
    )
    aabb = torch.tensor([[-1.0] * 3, [1.0] * 3])
    density, features = trilinear(grid, *cell_coords(pts, aabb, n))
    expected = _grid_sample(grid, pts)
    tol = 1e-5 if dtype == torch.float32 else 1e-12
    assert torch.allclose(density, expected[:, 0], atol=tol) and torch.allclose(features, expected[:, 1:], atol=tol)
    g = torch.randn(pts.shape[0], k, generator=gen, dtype=dtype)
    ours = torch.autograd.grad((density * g[:, 0]).sum() + (features * g[:, 1:]).sum(), grid)[0]
    theirs = torch.autograd.grad((expected * g).sum(), grid)[0]
    assert torch.allclose(ours, theirs, atol=10 * tol)


def test_sparse_trilinear_gradcheck_over_several_chunks(monkeypatch):
    monkeypatch.setattr("sjc.core.trilinear.CHUNK", 64)  # the chunk loop and its last partial chunk
    gen = torch.Generator().manual_seed(1)
    grid = torch.randn(1, 2, 4, 4, 4, generator=gen, dtype=torch.float64, requires_grad=True)
    pts = torch.rand(200, 3, generator=gen, dtype=torch.float64) * 2.2 - 1.1
    base, frac = cell_coords(pts, torch.tensor([[-1.0] * 3, [1.0] * 3]), 4)
    assert torch.autograd.gradcheck(lambda g: trilinear(g, base, frac), (grid,))


def _outputs(field, out):
    field.zero_grad(set_to_none=True)
    weights = torch.linspace(-1, 1, out.image.numel(), dtype=out.image.dtype).view_as(out.image)
    loss = (out.image * weights).sum() + out.depth.mean() + 1e3 * torch.log1p(10 * out.weights).mean()
    loss.backward()
    grads = [p.grad.clone() for p in (field.grid, field.d_scale, field.bg)]
    return [out.image.detach(), out.depth.detach(), out.weights.detach(), *grads]


@pytest.mark.parametrize("lookup", ["sparse", "grid_sample"])
@pytest.mark.parametrize("min_transmittance", [0.0, 1e-8])
@pytest.mark.parametrize("state", ["random", "empty regions", "opaque"])
def test_every_exact_path_equals_the_dense_reference(state, min_transmittance, lookup):
    """Image, depth, weights and every gradient, in float64 (so differences are the algorithm's, not rounding's)."""
    field = density_test_field(state, lookup, dtype=torch.float64)
    cam = camera_from_view(CAM, 10)
    ref = _outputs(field, render_dense(field, cam))
    fast = _outputs(field, render(field, cam, min_transmittance=min_transmittance))
    for a, b in zip(ref, fast, strict=True):
        assert torch.allclose(a, b, atol=1e-6, rtol=0)


class PlainField:
    """Only the Field protocol (no density bounds, no occupancy): render falls back to a density pre-pass."""

    def __init__(self, field: VoxelField) -> None:
        self.inner, self.aabb, self.step_size = field, field.aabb, field.step_size

    def density(self, pts):
        return self.inner.density(pts)

    def query(self, pts):
        return self.inner.query(pts)

    def background(self, dirs):
        return self.inner.background(dirs)


def test_fields_without_bounds_take_an_exact_density_pre_pass():
    field = density_test_field("opaque", dtype=torch.float64)
    cam = camera_from_view(CAM, 10)
    ref = _outputs(field, render_dense(field, cam))
    plain = _outputs(field, render(PlainField(field), cam))
    for a, b in zip(ref, plain, strict=True):  # its exact cut at 1e-8 moves sums over many samples a little
        assert torch.allclose(a, b, atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="occupancy grid"):
        render(PlainField(field), cam, skip_empty=True)


def _count_queries(field: VoxelField) -> list[int]:
    counts: list[int] = []
    query = field.query

    def counting(pts):
        counts.append(pts.shape[0])
        return query(pts)

    field.query = counting
    return counts


def test_no_pre_pass_when_no_ray_can_be_cut_and_termination_when_one_can(monkeypatch):
    field = density_test_field("init")  # density softplus(-1) everywhere: no ray loses 1e-8 of its light in the box
    monkeypatch.setattr(field, "cell_query", lambda *a, **k: pytest.fail("pre-pass at initialisation"))
    render(field, camera_from_view(CAM, 8))
    opaque = density_test_field("opaque")
    counts = _count_queries(opaque)
    cam = camera_from_view(CAM, 10)
    render(opaque, cam, min_transmittance=0)
    render(opaque, cam)
    assert counts[1] < counts[0]  # samples behind the sphere's front are not evaluated


@pytest.mark.parametrize("state", ["empty regions", "opaque", "random"])
def test_skipping_renders_the_reference_image_after_a_refresh(state):
    field = density_test_field(state)
    field.refresh_occupancy(dilation=1)
    cam = camera_from_view(CAM, 10)
    counts = _count_queries(field)
    with torch.no_grad():
        ref, skipped = render_dense(field, cam), render(field, cam, skip_empty=True)
        render(field, cam)
    for a, b in [(ref.image, skipped.image), (ref.depth, skipped.depth), (ref.opacity, skipped.opacity)]:
        assert torch.allclose(a, b, atol=1e-4)
    if state != "random":
        assert counts[0] < 0.8 * counts[1]  # it did skip the empty space


def test_skipping_is_stale_until_the_next_refresh():
    field = density_test_field("empty regions")
    field.refresh_occupancy()
    with torch.no_grad():
        field.grid[:, 0] = 3.0  # density appears where the grid said empty
    cam = camera_from_view(CAM, 10)
    stale = render(field, cam, skip_empty=True)
    assert not torch.allclose(stale.image, render(field, cam).image, atol=1e-3)
    field.refresh_occupancy()
    assert torch.allclose(render(field, cam, skip_empty=True).image, render(field, cam).image, atol=1e-5)


def test_training_with_skipping_refreshes_the_grid_on_schedule(monkeypatch):
    import dataclasses

    from oracle import OraclePrior, two_colour_sphere
    from sjc.app.settings.presets import preset
    from sjc.core.fit import FitLoop, build_field, make_generators, sjc_step

    cfg = preset("toy", "tiny")
    cfg = dataclasses.replace(
        cfg, prompt="oracle", field=dataclasses.replace(cfg.field, skip_empty=True, occupancy_every=3)
    )
    prior = OraclePrior(two_colour_sphere(16), 16)
    gens = make_generators(0, torch.device("cpu"))
    field = build_field(prior, cfg.field, torch.device("cpu"), generator=gens["init"])
    refreshed: list[int] = []
    refresh = field.refresh_occupancy
    monkeypatch.setattr(field, "refresh_occupancy", lambda *a: refreshed.append(steps[-1]) or refresh(*a))
    loop, steps = FitLoop.create(field, prior, cfg.fit_settings(), steps=7, generators=gens), []
    for step in range(7):
        steps.append(step)
        result = sjc_step(field, loop, step)
        assert all(torch.isfinite(v) for v in result.losses.values())
    assert refreshed == [0, 3, 6]
