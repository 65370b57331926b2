"""A dense reference renderer: the same compositing as `render.render`, written the plain way.

Every sample inside the box is evaluated, density and features by separate grid_sample lookups,
with boolean-mask scatter into dense [rays, samples] tensors, in sjc's conventions (midpoint samples,
border padding, every feature looked up). It is slow on purpose: tests and the speed benchmark check the
fast renderer against it. The official code's own algorithm, the baseline of speed-ups, is `official`.
"""

from __future__ import annotations

import math
from typing import Protocol

import torch
from torch import Tensor

from .cameras import Camera
from .rays import Field, Rendering, ray_aabb


class DenseField(Field, Protocol):
    def features(self, pts: Tensor) -> Tensor: ...  # [N, 3] -> [N, C], a lookup of its own


def render_dense(field: DenseField, camera: Camera, *, far_depth: float = 10.0) -> Rendering:
    aabb = field.aabb
    origins, dirs = camera.rays(device=aabb.device, dtype=aabb.dtype)
    near, far = ray_aabb(origins, dirs, aabb)
    step = field.step_size
    n_samples = max(1, math.ceil(float((far - near).clamp_min(0).max()) / step))
    t = near[:, None] + step * (torch.arange(n_samples, device=aabb.device, dtype=aabb.dtype) + 0.5)
    inside = t < far[:, None]
    pts = origins[:, None, :] + dirs[:, None, :] * t[..., None]  # [R, S, 3]

    sigma = torch.zeros_like(t)
    sigma[inside] = field.density(pts[inside])
    feats_inside = field.features(pts[inside])
    feats = torch.zeros(*t.shape, feats_inside.shape[1], dtype=t.dtype, device=t.device)
    feats[inside] = feats_inside

    alpha = 1 - torch.exp(-sigma * step)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:, :1]), 1 - alpha[:, :-1]], dim=1), dim=1)
    weights = transmittance * alpha
    opacity = weights.sum(dim=1)
    colour = (weights[..., None] * feats).sum(dim=1) + (1 - opacity)[:, None] * field.background(dirs)
    depth = (weights * t).sum(dim=1) + (1 - opacity) * far_depth
    H, W = camera.height, camera.width
    return Rendering(colour.T.reshape(1, -1, H, W), depth.view(H, W), opacity.view(H, W), weights)
