import pytest
import torch

from fields import density_test_field
from sjc.core.cameras import View, camera_from_view
from sjc.core.render import ray_aabb, render
from sjc.core.voxel import VoxelField


def _field(resolution=16, channels=3, background="fixed", **kw):
    return VoxelField(resolution, channels, feature_activation="sigmoid", background=background, **kw)


def test_empty_field_renders_the_background():
    field = _field(background_value=0.3)
    with torch.no_grad():
        field.grid[:, 0] = -60.0  # density softplus(-61): nothing there
    out = render(field, camera_from_view(View(30, 20), 12))
    assert torch.allclose(out.image, torch.full_like(out.image, 0.3), atol=1e-6)
    assert out.opacity.max() < 1e-6
    assert torch.allclose(out.depth, torch.full_like(out.depth, 10.0), atol=1e-4)


def test_opaque_slab_gives_its_colour_and_depth():
    n = 32
    field = _field(n)
    z = field.voxel_centres()[..., 2]
    with torch.no_grad():
        field.grid[0, 0] = torch.where((z > -0.3) & (z < 0.2), 60.0, -60.0)
        field.grid[0, 1:] = torch.tensor([2.0, -2.0, 0.0]).view(3, 1, 1, 1)  # sigmoid*2-1 -> (0.76, -0.76, 0)
    out = render(field, camera_from_view(View(0, 0, fov=30), 16))
    centre = out.image[0, :, 6:10, 6:10].reshape(3, -1)
    expected = torch.sigmoid(torch.tensor([2.0, -2.0, 0.0])) * 2 - 1
    assert torch.allclose(centre, expected[:, None].expand_as(centre), atol=1e-3)
    assert out.opacity[6:10, 6:10].min() > 0.999
    # The camera sits on +z at 1.5; the slab's front face is at z = 0.2, blurred by half a voxel.
    d = (out.depth[8, 8] / out.opacity[8, 8]).item()
    assert abs(float(d) - 1.3) < field.voxel_size


def test_weights_are_probabilities_on_random_fields():
    gen = torch.Generator().manual_seed(3)
    field = _field(12, background="texture", generator=gen)
    with torch.no_grad():
        field.grid[:, 0] = 4 * torch.randn(field.grid[:, 0].shape, generator=gen)
    out = render(field, camera_from_view(View(70, 10), 10))
    assert out.weights.min() >= 0 and out.weights.max() <= 1
    assert out.weights.sum(dim=1).max() <= 1 + 1e-6
    assert torch.allclose(out.opacity.flatten(), out.weights.sum(dim=1))


def test_early_termination_changes_nothing_that_matters():
    gen = torch.Generator().manual_seed(4)
    field = _field(16, generator=gen)
    with torch.no_grad():
        field.grid[:, 0] = 3 * torch.randn(field.grid[:, 0].shape, generator=gen) + 20  # dense noise
    cam = camera_from_view(View(10, 30), 12)
    exact, fast = render(field, cam, min_transmittance=0), render(field, cam, min_transmittance=1e-4)
    assert (fast.weights > 0).sum() < (exact.weights > 0).sum()  # it did skip samples
    assert torch.allclose(exact.image, fast.image, atol=1e-3)
    assert torch.allclose(exact.depth, fast.depth, atol=1e-2)


def test_rays_missing_the_box_and_cameras_inside_it():
    origins = torch.tensor([[0.0, 0.0, 3.0], [0.0, 0.0, 0.0], [5.0, 5.0, 5.0]])
    dirs = torch.tensor([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])
    near, far = ray_aabb(origins, dirs, torch.tensor([[-1.0] * 3, [1.0] * 3]))
    assert near.tolist()[:2] == [2.0, 0.0] and far.tolist()[:2] == [4.0, 1.0]
    assert far[2] <= near[2]
    # A very wide camera: corner rays miss the box and see the background.
    field = _field(8, background_value=-0.5)
    out = render(field, camera_from_view(View(0, 0, fov=170), 9))
    assert torch.allclose(out.image[0, :, 0, 0], torch.tensor(-0.5))
    assert out.opacity[4, 4] > 0.1
    # A camera inside the box renders what lies in front of it only.
    inside = render(field, camera_from_view(View(0, 0, radius=0.5), 9))
    assert torch.isfinite(inside.image).all() and inside.depth.min() > 0


@pytest.mark.parametrize("engine", ["auto", "torch"])  # 'auto' is the fused kernels on the CPU
@pytest.mark.parametrize("part", ["density", "features", "background", "d_scale"])
def test_gradcheck_float64(part, engine):
    gen = torch.Generator().manual_seed(5)
    field = VoxelField(4, 2, feature_activation="sigmoid", background="texture", background_size=2, generator=gen)
    field = field.double()
    with torch.no_grad():
        field.grid[:, 0] = torch.randn(field.grid[:, 0].shape, generator=gen, dtype=torch.float64) + 1
        field.d_scale.fill_(0.3)
    cam = camera_from_view(View(25, 15, fov=50), 3)
    name = {"background": "bg", "d_scale": "d_scale"}.get(part, "grid")
    base = {"density": field.grid[:, :1], "features": field.grid[:, 1:]}.get(part, field._parameters[name])
    x = base.detach().clone().requires_grad_(True)

    def fn(values):
        grid = field.grid
        if part == "density":
            values = torch.cat([values, grid[:, 1:]], 1)
        elif part == "features":
            values = torch.cat([grid[:, :1], values], 1)
        saved = field._parameters[name]
        field._parameters[name] = values
        try:
            out = render(field, cam, min_transmittance=0, engine=engine)
        finally:
            field._parameters[name] = saved
        return out.image, out.depth, out.opacity, out.weights

    assert torch.autograd.gradcheck(fn, (x,), eps=1e-6, atol=1e-5)


def _grads(field, out):
    field.zero_grad()
    ramp = torch.linspace(-1, 1, out.image.numel(), device=out.image.device, dtype=out.image.dtype)
    loss = (out.image * ramp.view_as(out.image)).sum() + out.depth.mean()
    loss = loss + out.weights.square().sum()
    loss.backward()
    return [p.grad.clone() for p in (field.grid, field.d_scale, field.bg)]


@pytest.mark.parametrize("engine", ["auto", "torch"])  # 'auto' is the fused kernels on the CPU
@pytest.mark.parametrize("state", ["random", "empty regions", "opaque"])
def test_fast_renderer_equals_the_dense_reference(state, engine):
    from sjc.core.reference import render_dense

    field = density_test_field(state)
    cam = camera_from_view(View(40, 25, fov=55), 10)
    ref = render_dense(field, cam)
    fast = render(field, cam, min_transmittance=0, engine=engine)
    for a, b in zip((ref.image, ref.depth, ref.weights), (fast.image, fast.depth, fast.weights), strict=True):
        assert torch.allclose(a, b, atol=1e-4)
    again = render(field, cam, min_transmittance=0, engine=engine)
    for ga, gb in zip(_grads(field, ref), _grads(field, again), strict=True):
        assert torch.allclose(ga, gb, atol=1e-4)
    with pytest.raises(ValueError, match="unknown render engine"):
        render(field, cam, engine="magic")


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("engine", ["auto", "torch"])
@pytest.mark.parametrize("skip_empty", [False, True])
def test_every_device_renders_as_the_dense_reference_with_its_own_lookup(device, engine, skip_empty):
    # The field picks its lookup per device ('auto': the sparse product on CPU, grid_sample elsewhere), and
    # the whole training path (occupancy, early termination, skipping, compositing, backward) must agree.
    from sjc.core.official import render_official
    from sjc.core.reference import render_dense

    field = density_test_field("empty regions").to(device)
    field.refresh_occupancy()
    cam = camera_from_view(View(40, 25, fov=55), 10)
    ref, fast = render_dense(field, cam), render(field, cam, skip_empty=skip_empty, engine=engine)
    assert fast.image.device.type == device
    for a, b in zip((ref.image, ref.depth, ref.weights), (fast.image, fast.depth, fast.weights), strict=True):
        assert torch.allclose(a, b, atol=1e-4)
    again = render(field, cam, skip_empty=skip_empty, engine=engine)
    for ga, gb in zip(_grads(field, ref), _grads(field, again), strict=True):
        assert torch.allclose(ga, gb, atol=1e-4)
    official = render_official(field, cam)  # the speed baseline runs on every device too
    assert official.image.device.type == device and torch.isfinite(official.image).all()
