"""Whole-image volume rendering of a Field seen by a Camera.

Each ray is sampled at a fixed step inside the field's box (midpoint rule), and composited
front to back: alpha_i = 1 - exp(-sigma_i * step), T_i = exp(-sum_{j<i} sigma_j * step),
w_i = T_i * alpha_i, colour = sum_i w_i c_i + (1 - sum_i w_i) * background.
Samples behind a point where the transmittance has fallen below `min_transmittance` are
not evaluated: their weights, and the gradients they would receive, are below it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor

from .cameras import Camera


class Field(Protocol):
    aabb: Tensor  # [2, 3]: min and max corners

    @property
    def step_size(self) -> float: ...

    def density(self, pts: Tensor) -> Tensor: ...  # [N, 3] -> [N]

    def query(self, pts: Tensor) -> tuple[Tensor, Tensor]: ...  # [N, 3] -> [N], [N, C]

    def background(self, dirs: Tensor) -> Tensor: ...  # [R, 3] -> [R, C]


@dataclass
class Rendering:
    image: Tensor  # [1, C, H, W]
    depth: Tensor  # [H, W]: expected distance, empty space counted at `far_depth`
    opacity: Tensor  # [H, W]: sum of the weights along each ray
    weights: Tensor  # [H*W, S]: compositing weight of every sample slot (0 where unused)


def ray_aabb(origins: Tensor, dirs: Tensor, aabb: Tensor) -> tuple[Tensor, Tensor]:
    """Entry and exit distances [R] of rays through the box; entry clamped at 0 (the camera
    may sit inside the box). A ray that misses has exit <= entry."""
    safe = torch.where(dirs.abs() < 1e-9, torch.full_like(dirs, 1e-9), dirs)
    t0 = (aabb[0].to(dirs) - origins) / safe
    t1 = (aabb[1].to(dirs) - origins) / safe
    near = torch.minimum(t0, t1).amax(-1).clamp_min(0.0)
    far = torch.maximum(t0, t1).amin(-1)
    return near, far


def render(field: Field, camera: Camera, *, min_transmittance: float = 1e-4, far_depth: float = 10.0) -> Rendering:
    """Render `field` from `camera`; differentiable in the field's parameters."""
    aabb = field.aabb
    origins, dirs = camera.rays(device=aabb.device, dtype=aabb.dtype)
    near, far = ray_aabb(origins, dirs, aabb)
    step = field.step_size
    span = float((far - near).clamp_min(0).max())
    n_samples = max(1, math.ceil(span / step))

    t = near[:, None] + step * (torch.arange(n_samples, device=aabb.device, dtype=aabb.dtype) + 0.5)  # [R, S]
    inside = t < far[:, None]
    pts = origins[:, None, :] + dirs[:, None, :] * t[..., None]  # [R, S, 3]

    keep = inside
    if min_transmittance > 0:
        with torch.no_grad():  # a cheap density-only pass finds where each ray is used up
            tau = torch.zeros_like(t)
            tau[inside] = field.density(pts[inside]) * step
            transmittance = torch.exp(-(torch.cumsum(tau, dim=1) - tau))
            keep = inside & (transmittance > min_transmittance)

    sigma_kept, feats_kept = field.query(pts[keep])
    tau = torch.zeros_like(t).index_put((keep,), sigma_kept * step)  # [R, S]
    transmittance = torch.exp(-(torch.cumsum(tau, dim=1) - tau))
    weights = transmittance * -torch.expm1(-tau)

    ray_index = torch.nonzero(keep)[:, 0]
    w_kept = weights[keep]
    colour = torch.zeros(t.shape[0], feats_kept.shape[1], dtype=feats_kept.dtype, device=feats_kept.device)
    colour = colour.index_add(0, ray_index, w_kept[:, None] * feats_kept)
    opacity = weights.sum(dim=1)
    colour = colour + (1 - opacity)[:, None] * field.background(dirs)
    depth = (weights * t).sum(dim=1) + (1 - opacity) * far_depth

    H, W = camera.height, camera.width
    return Rendering(
        image=colour.T.reshape(1, -1, H, W),
        depth=depth.view(H, W),
        opacity=opacity.view(H, W),
        weights=weights,
    )
