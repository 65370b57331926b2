"""What every renderer shares: the Field protocol they render, the Rendering they return, where rays cross
the field's box and where along them the samples sit, and whether an occupancy grid leaves anything to skip."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


class Field(Protocol):
    aabb: Tensor  # [2, 3]: min and max corners

    @property
    def step_size(self) -> float: ...

    def density(self, pts: Tensor) -> Tensor: ...  # [N, 3] -> [N]

    def query(self, pts: Tensor) -> tuple[Tensor, Tensor]: ...  # [N, 3] -> [N], [N, C]

    def background(self, dirs: Tensor) -> Tensor: ...  # [R, 3] -> [R, C]

    # Optional, used when present (VoxelField has them): max_density() -> float, a bound on the density
    # anywhere; cell_query(pts, lower_bound=..., occupancy=...) -> ([N] density lower bound or None,
    # [N] bool "may be non-empty" or None), cheap and gradient-free; occupancy, a bool grid (all True:
    # nothing to skip). skip_empty needs the last two.


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


def sample_offsets(near: Tensor, far: Tensor, step: float) -> Tensor:
    """Distances [S] of the samples from each ray's entry: the midpoints of steps, as many as the longest
    span [near, far) of the rays [R] needs (a ray keeps the samples with near + offset < far)."""
    n_samples = max(1, math.ceil(float((far - near).clamp_min(0).max()) / step))
    return step * (torch.arange(n_samples, device=near.device, dtype=near.dtype) + 0.5)


def has_empty_cells(field: Field) -> bool:
    """Whether the field's occupancy grid marks anything empty (all marked: nothing to skip)."""
    occupancy = getattr(field, "occupancy", None)
    if occupancy is None or not hasattr(field, "cell_query"):
        raise ValueError(f"skip_empty needs a field with an occupancy grid; {type(field).__name__} has none")
    return not bool(occupancy.all())
