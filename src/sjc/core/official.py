"""The volume renderer of the official SJC code, reproduced the way that code does it: `render_ray_bundle` in
pals-ttic/sjc's voxnerf/render.py, with the lookups of voxnerf/vox.py and the ray set-up of run_sjc.py, run on
sjc's VoxelField and Camera. It is the baseline of speed comparisons; where the official conventions differ from
sjc's (sample placement, zeros padding, the feature threshold, the background mapping) it follows the official
ones, so its images differ slightly from `render.render` (docs/CONVENTIONS.md lists how).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .cameras import Camera
from .rays import Rendering
from .voxel import VoxelField

WEIGHT_THRESHOLD = 1e-4  # the official ray_march_weight_thres: features are looked up only above it


def render_official(field: VoxelField, camera: Camera, *, far_depth: float = 10.0) -> Rendering:
    """Render `field` from `camera` as the official code does; differentiable in the field's parameters.

    Samples sit at t_min + k * step for k = 0, 1, ... while k * step < t_max - t_min; every one of them is
    composited, but features are looked up only where a sample's weight exceeds WEIGHT_THRESHOLD (elsewhere
    they count as zero, while the weight still counts in the opacity)."""
    aabb, dtype = field.aabb, field.grid.dtype
    # The official code builds rays and box intersections in float64 (NumPy), then casts them to the model's.
    origins, dirs = camera.rays(device=aabb.device, dtype=torch.float64)
    t_min, t_max = _box_intersect(origins, dirs, aabb.to(torch.float64))
    origins, dirs, t_min, t_max = (x.to(dtype) for x in (origins, dirs, t_min, t_max))

    # One sample count for every ray, from the longest span: int(span / step) + 1 (at least 1 if all miss).
    step = field.step_size
    k = int(((t_max - t_min).max().clamp_min(0) / step).item()) + 1  # a host sync, as in the official code
    ticks = step * torch.arange(k, device=aabb.device, dtype=dtype).view(k, 1)  # [k, 1]
    t = t_min + ticks  # [k, R]: sample-major, as the official code lays samples out
    pts = origins + dirs * t[..., None]  # [k, R, 3]
    inside = ticks < (t_max - t_min)  # [k, R]

    sigma = t.new_zeros(t.shape)  # [k, R]: zero density outside the box
    sigma[inside] = field.activate_density(_grid_sample(field, field.grid[:, :1], pts[inside])[:, 0])
    weights = _weights(sigma, step)  # [k, R]

    shown = weights > WEIGHT_THRESHOLD  # [k, R]: no gradient through the choice, as in the official code
    colours = t.new_zeros(*t.shape, field.channels)  # [k, R, C]
    colours[shown] = field.activate_features(_grid_sample(field, field.grid[:, 1:], pts[shown]))

    opacity = weights.sum(dim=0)  # [R]: every sample counts, shown or not
    bg_weight = 1 - opacity
    colour = (weights[..., None] * colours).sum(dim=0) + bg_weight[:, None] * _background(field, dirs)
    depth = (weights * t).sum(dim=0) + bg_weight * far_depth
    H, W = camera.height, camera.width
    return Rendering(colour.T.reshape(1, -1, H, W), depth.view(H, W), opacity.view(H, W), weights.T)


def _box_intersect(origins: Tensor, dirs: Tensor, aabb: Tensor) -> tuple[Tensor, Tensor]:
    """Entry and exit distances [R] (ray_box_intersect, then scene_box_filter): both clamped at 0, so a box
    behind the camera gives t_min = t_max = 0 and a ray that misses t_min >= t_max, no samples either way."""
    dirs = torch.where(dirs == 0, torch.full_like(dirs, 1e-6), dirs)  # only exact zeros are replaced
    ts = (aabb[:, None, :] - origins) / dirs  # [2, R, 3]: distances to both planes of each axis
    t_min = ts.amin(dim=0).amax(dim=-1).clamp_min(0)  # last entrance
    t_max = ts.amax(dim=0).amin(dim=-1).clamp_min(0)  # first exit
    return t_min, t_max


def _grid_sample(field: VoxelField, grid: Tensor, pts: Tensor) -> Tensor:
    """Values [N, C] of `grid` [1, C, n, n, n] at world points [N, 3] with grid_sample's defaults, as the
    official compute_density_feats / compute_app_feats: trilinear, align_corners=False, zeros padding."""
    lo, hi = field.aabb[0].to(pts.dtype), field.aabb[1].to(pts.dtype)
    coords = ((pts - lo) / (hi - lo) * 2 - 1).reshape(1, -1, 1, 1, 3)
    out = F.grid_sample(grid, coords, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out.view(grid.shape[1], -1).T


def _weights(sigma: Tensor, step: float) -> Tensor:
    """volume_rend_weights: w_i = alpha_i * prod_{j<i} (1 - alpha_j) along dim 0, with a cumulative product."""
    alpha = 1 - torch.exp(-sigma * step)
    transmittance = torch.ones_like(alpha)
    transmittance[1:] = (1 - alpha).cumprod(dim=0)[:-1]
    if not bool((transmittance >= 0).all()):  # the official assert (another host sync)
        raise AssertionError("negative transmittance")
    return alpha * transmittance


def _background(field: VoxelField, dirs: Tensor) -> Tensor:
    """Background [R, C] along unit directions [R, 3]. A texture is read as the official code reads its own:
    the polar angle from world +z (texture x) and the azimuth about +z (texture y), zeros padding. A fixed
    background is the field's constant (the official code's is white, 1.0)."""
    if field.background_mode != "texture":
        return field.background(dirs)
    x, y, z = dirs.to(field.bg.dtype).T  # [R] each
    u = torch.atan2((x**2 + y**2) ** 0.5, z) / math.pi  # [0, 1]
    v = torch.atan2(y, x) / (2 * math.pi) + 0.5  # [0, 1]
    uv = (torch.stack([u, v], dim=-1) * 2 - 1).view(1, -1, 1, 2)
    out = F.grid_sample(field.bg, uv, mode="bilinear", padding_mode="zeros", align_corners=False)
    return field.activate_features(out.view(field.channels, -1).T)
