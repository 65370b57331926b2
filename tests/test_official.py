"""render_official against the official SJC renderer's formulas, worked by hand on one ray.

The ray: a 1x1 camera at z = 1.5 looking down -z, through the box [-1, 1]^3 of a 4^3 grid (voxel 0.5), so it
enters at t_min = 0.5 (z = 1) and leaves at t_max = 2.5 (z = -1), and grid_sample reads an x = y = 0 point as
the plain mean of equal voxels: along the ray a constant grid value g reads g until the outer voxel centres
(|z| = 0.75), then fades linearly to g / 2 at the box faces (zeros padding past the last voxel centre).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from oracle import two_colour_sphere
from sjc.core.cameras import Camera, View, camera_from_view, intrinsics_from_fov, look_at
from sjc.core.official import WEIGHT_THRESHOLD, render_official
from sjc.core.reference import render_dense
from sjc.core.voxel import VoxelField

AXIS_RAY = camera_from_view(View(0.0, 0.0, radius=1.5), 1)  # origin (0, 0, 1.5), direction (0, 0, -1)


def _constant_field(raw: float, shift: float = -1.0, step_ratio: float = 0.3, feature: float = 1.0) -> VoxelField:
    """A float64 4^3 field of one raw density and one raw (unactivated) feature channel, background 0.3."""
    field = VoxelField(4, 1, density_shift=shift, step_ratio=step_ratio, background="fixed", background_value=0.3)
    field = field.double()
    with torch.no_grad():
        field.grid[0, 0], field.grid[0, 1] = raw, feature
    return field


def _by_hand(field: VoxelField, raw: float, feature: float, n_samples: int):
    """The official formulas along AXIS_RAY: sample distances t_k = t_min + k * step, weights w_k, features."""
    step, voxel = field.step_size, field.voxel_size
    t = 0.5 + step * torch.arange(n_samples, dtype=torch.float64)
    fade = ((1 + voxel / 2 - (1.5 - t).abs()) / voxel).clamp(max=1)  # zeros padding past the outer centres
    sigma = F.softplus(raw * fade + field.density_shift)
    alpha = 1 - torch.exp(-sigma * step)
    transmittance = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - alpha, 0)[:-1]])
    return t, alpha * transmittance, feature * fade


def test_one_ray_matches_the_official_formulas_by_hand():
    field = _constant_field(raw=0.8)
    out = render_official(field, AXIS_RAY)
    # step 0.15 over a span of 2: samples k = 0..13 (13 * 0.15 = 1.95 < 2), one slot each
    t, w, feats = _by_hand(field, 0.8, 1.0, 14)
    assert out.weights.shape == (1, 14)
    assert (w > WEIGHT_THRESHOLD).all()  # every sample shows its feature here
    torch.testing.assert_close(out.weights[0], w, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out.opacity.flatten(), w.sum()[None], rtol=1e-12, atol=1e-14)
    expected_colour = (w * feats).sum() + (1 - w.sum()) * 0.3  # the fixed background takes what is left
    torch.testing.assert_close(out.image.flatten(), expected_colour[None], rtol=1e-12, atol=1e-14)
    expected_depth = (w * t).sum() + (1 - w.sum()) * 10.0
    torch.testing.assert_close(out.depth.flatten(), expected_depth[None], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize(
    ("step_ratio", "official", "midpoint"),
    [
        (0.3, 14, 13),  # span / step = 13.33: k * step < 2 for k <= 13, (k + 0.5) * step < 2 for k <= 12
        (0.375, 11, 11),  # span / step = 10.67: a remainder over half a step, one count for both
    ],
)
def test_sample_count_exceeds_the_midpoint_rule_by_one_when_the_remainder_is_under_half_a_step(
    step_ratio, official, midpoint
):
    field = _constant_field(raw=0.8, step_ratio=step_ratio)
    assert math.floor(2 / field.step_size) + 1 == official
    assert math.ceil(2 / field.step_size - 0.5) == midpoint
    out, dense = render_official(field, AXIS_RAY), render_dense(field, AXIS_RAY)
    assert out.weights.shape[1] == official and int((out.weights > 0).sum()) == official
    assert int((dense.weights > 0).sum()) == midpoint


def test_zeros_padding_halves_the_grid_at_the_box_face():
    # Opaque from the face on: the face sample (raw 80 / 2, feature 1 / 2) takes 99.7% of the ray.
    field = _constant_field(raw=80.0)
    out = render_official(field, AXIS_RAY)
    t, w, feats = _by_hand(field, 80.0, 1.0, 14)
    assert feats[0] == 0.5 and w[0] > 0.99
    expected = (w * feats * (w > WEIGHT_THRESHOLD)).sum() + (1 - w.sum()) * 0.3
    torch.testing.assert_close(out.image.flatten(), expected[None], rtol=1e-12, atol=1e-14)
    assert abs(out.image.item() - 0.5) < 0.01
    # sjc's own reference (border padding, first sample half a step in) sees the full feature.
    assert abs(render_dense(field, AXIS_RAY).image.item() - 1.0) < 1e-3


def test_samples_under_the_weight_threshold_show_no_feature_but_count_in_the_opacity():
    field = _constant_field(raw=6.0)  # weights fall from 0.5 to below 1e-4 along the ray
    out = render_official(field, AXIS_RAY)
    t, w, feats = _by_hand(field, 6.0, 1.0, 14)
    shown = w > WEIGHT_THRESHOLD
    assert shown.any() and not shown.all()
    torch.testing.assert_close(out.opacity.flatten(), w.sum()[None], rtol=1e-12, atol=1e-14)
    expected = (w * feats * shown).sum() + (1 - w.sum()) * 0.3
    torch.testing.assert_close(out.image.flatten(), expected[None], rtol=1e-12, atol=1e-14)
    without_threshold = (w * feats).sum() + (1 - w.sum()) * 0.3
    assert float(without_threshold - expected) > 1e-6  # the hidden samples would have shown


def test_a_ray_entirely_under_the_threshold_gives_no_feature_gradient():
    field = _constant_field(raw=0.0, shift=-12.0)  # alpha ~ 1e-6 per sample
    out = render_official(field, AXIS_RAY)
    assert out.opacity.item() > 0 and (out.weights < WEIGHT_THRESHOLD).all()
    torch.testing.assert_close(out.image.flatten(), 0.3 * (1 - out.opacity.flatten()), rtol=1e-12, atol=0)
    (out.image.sum() + out.depth.sum()).backward()
    assert (field.grid.grad[0, 1] == 0).all()  # no feature was looked up
    assert (field.grid.grad[0, 0] != 0).any()  # the density still shapes opacity and depth


def _pixel_along(polar_deg: float, azimuth_deg: float) -> Camera:
    """A 1x1 camera at (0, 0, 3) whose ray leaves the box behind: polar angle from +z, azimuth about +z."""
    p, a = math.radians(polar_deg), math.radians(azimuth_deg)
    direction = torch.tensor([math.sin(p) * math.cos(a), math.sin(p) * math.sin(a), math.cos(p)], dtype=torch.float64)
    eye = torch.tensor([0.0, 0.0, 3.0], dtype=torch.float64)
    return Camera(intrinsics_from_fov(60.0, 1, 1), look_at(eye, eye + direction), 1, 1)


def _texture_field(texels: torch.Tensor) -> VoxelField:
    field = VoxelField(4, 1, background="texture", background_size=4).double()
    with torch.no_grad():
        field.bg.copy_(texels.view(1, 1, 4, 4))
    return field


@pytest.mark.parametrize(
    ("polar", "azimuth", "texel"),
    [
        (22.5, -45.0, 4),  # texture x = 2 * 22.5 / 180 - 1 = -0.75: column 0; y = -45 / 180 = -0.25: row 1
        (67.5, 135.0, 13),  # x = -0.25: column 1; y = 0.75: row 3
    ],
)
def test_background_texture_is_read_by_polar_angle_and_azimuth_about_z(polar, azimuth, texel):
    field = _texture_field(torch.arange(16.0))  # texel [row, column] holds 4 * row + column
    out = render_official(field, _pixel_along(polar, azimuth))
    assert out.weights.shape == (1, 1) and out.opacity.item() == 0  # the ray misses the box: one empty slot
    assert abs(out.image.item() - texel) < 1e-9
    assert out.depth.item() == 10.0


def test_background_texture_fades_to_zero_past_its_edge():
    # Azimuth 180 degrees reads texture y = 1, half a texel past the last row's centre: zeros padding.
    field = _texture_field(torch.full((16,), 2.0))
    assert abs(render_official(field, _pixel_along(22.5, 180.0)).image.item() - 1.0) < 1e-9


def test_gradients_match_finite_differences():
    gen = torch.Generator().manual_seed(0)
    field = VoxelField(3, 2, background="texture", background_size=2, generator=gen).double()
    grid = field.grid.detach().clone()
    grid[:, 0] = 3 * torch.randn(grid[:, 0].shape, generator=gen, dtype=torch.float64)
    bg = field.bg.detach().clone()
    del field.grid, field.bg  # plain tensors stand in for the parameters
    camera = camera_from_view(View(30.0, 20.0), 3)

    def rendered(grid, bg):
        field.grid, field.bg = grid, bg
        out = render_official(field, camera)
        return out.image, out.depth, out.opacity

    assert torch.autograd.gradcheck(rendered, (grid.requires_grad_(), bg.requires_grad_()))


def test_float32_training_step_reaches_every_parameter():
    gen = torch.Generator().manual_seed(1)
    field = VoxelField(16, 4, background="texture", generator=gen)
    with torch.no_grad():  # a non-zero raw density, or d_scale would get no gradient
        field.grid[:, 0] = torch.randn(field.grid[:, 0].shape, generator=gen)
    optim = torch.optim.Adamax(field.parameters(), lr=0.05)
    camera = camera_from_view(View(40.0, 15.0), 16)
    out = render_official(field, camera)
    assert out.image.shape == (1, 4, 16, 16) and out.weights.shape[0] == 256
    (out.image.square().mean() + torch.log1p(10 * out.weights).mean()).backward()
    for name, p in field.named_parameters():
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    optim.step()
    assert not torch.equal(render_official(field, camera).image, out.image)


def test_agrees_with_the_dense_reference_on_an_opaque_sphere():
    # The two differ in sample placement (t_min + k * step against midpoints: surfaces move by up to half a
    # step), padding (zeros against border: nothing there at the faces) and the feature threshold (weights
    # under 1e-4). Pixels fully inside or outside the silhouette agree closely; the silhouette's edge, where
    # the density jumps from raw -40 to 40 within a voxel, can move by up to 0.1 in colour.
    field = two_colour_sphere(32)
    camera = camera_from_view(View(0.0, 0.0), 32)
    out, dense = render_official(field, camera), render_dense(field, camera)
    diff = (out.image - dense.image).abs()[0].amax(dim=0)  # [H, W]
    opaque = (out.opacity > 0.999) & (dense.opacity > 0.999)
    empty = (out.opacity < 1e-3) & (dense.opacity < 1e-3)
    assert (opaque | empty).float().mean() > 0.9 and opaque.sum() > 200
    assert diff[opaque | empty].max() < 1e-3
    assert diff.mean() < 3e-3 and diff.max() < 0.1
    assert (out.depth - dense.depth)[opaque].abs().max() < field.step_size / 2
