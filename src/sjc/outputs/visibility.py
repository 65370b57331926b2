"""What the training cameras can see of an occupancy grid, and the grid closed over what they cannot.

The training cameras sit on a sphere of radius 1.5 around the origin, from the top down to an elevation of
-6.4 degrees (`core.cameras.sample_training_view`). No camera looks at an object from below, so the underside
of a flat-bottomed object is never rendered: a field whose renders match every training view exactly may be
an open shell there, and the space under its lid is then empty or full as chance leaves it. `hidden_space`
finds the empty voxels that no camera position can see (every straight path from the voxel to a camera
crosses an occupied voxel); `closed_occupancy` adds them to the occupied ones. An enclosed cavity is hidden
from every camera, so the closure also fills what `metrics.fill_interior` fills.

Paths are traced voxel by voxel (Amanatides and Woo's traversal), so each path is a chain of face-adjacent
voxels: empty space sees out exactly where a 6-connected flood fill of the empty voxels would reach.
Grids are [n, n, n] indexed [z, y, x] over [-1, 1]^3 with voxel centres at -1 + (i + 0.5) 2/n, as VoxelField.
"""

from __future__ import annotations

import math

import numba
import numpy as np
import torch
from torch import Tensor

from ..core.settings import CameraConfig


def lowest_training_elevation(max_polar_param: float = CameraConfig().max_polar_param) -> float:
    """The lowest elevation (degrees) of the training cameras: polar = arccos(1 - 2 v / pi) at v = the parameter."""
    return 90.0 - math.degrees(math.acos(1.0 - 2.0 * math.radians(max_polar_param) / math.pi))


def training_camera_positions(
    radius: float = CameraConfig().radius,
    lowest_elevation: float | None = None,
    rings: int = 9,
    per_ring: int = 36,
) -> np.ndarray:
    """World positions [K, 3] (x, y, z) covering the training cameras' cap: `rings` elevations evenly from the
    lowest training elevation to the top (one camera there), `per_ring` azimuths each (10 degrees apart)."""
    low = lowest_training_elevation() if lowest_elevation is None else lowest_elevation
    positions = []
    for elevation in np.linspace(low, 90.0, rings):
        el = math.radians(elevation)
        count = 1 if elevation >= 90.0 - 1e-9 else per_ring
        for k in range(count):
            az = 2 * math.pi * k / count
            positions.append(
                [radius * math.cos(el) * math.sin(az), radius * math.sin(el), radius * math.cos(el) * math.cos(az)]
            )
    return np.asarray(positions, dtype=np.float64)


@numba.njit(cache=True)
def _segment_is_clear(occ: np.ndarray, p: np.ndarray, target: np.ndarray) -> bool:
    """Whether the segment from point `p` to `target` (grid units, a voxel spans [i, i + 1]) leaves the grid, or
    reaches the target, without entering an occupied voxel other than the one `p` lies in."""
    n = occ.shape[0]
    d = (target[0] - p[0], target[1] - p[1], target[2] - p[2])
    cell = [int(math.floor(p[0])), int(math.floor(p[1])), int(math.floor(p[2]))]
    step = [0, 0, 0]
    t_next = [np.inf, np.inf, np.inf]
    t_delta = [np.inf, np.inf, np.inf]
    for a in range(3):
        if d[a] > 1e-12:
            step[a] = 1
            t_delta[a] = 1.0 / d[a]
            t_next[a] = (cell[a] + 1 - p[a]) / d[a]
        elif d[a] < -1e-12:
            step[a] = -1
            t_delta[a] = -1.0 / d[a]
            t_next[a] = (cell[a] - p[a]) / d[a]
    while True:
        a = 0
        if t_next[1] < t_next[a]:
            a = 1
        if t_next[2] < t_next[a]:
            a = 2
        if t_next[a] >= 1.0:  # the target lies in this voxel's stretch of the segment
            return True
        cell[a] += step[a]
        if cell[a] < 0 or cell[a] >= n:
            return True
        if occ[cell[2], cell[1], cell[0]]:
            return False
        t_next[a] += t_delta[a]


@numba.njit(cache=True)
def _points_hidden(occ: np.ndarray, points: np.ndarray, cameras: np.ndarray) -> np.ndarray:
    hidden = np.zeros(points.shape[0], dtype=np.bool_)
    for i in range(points.shape[0]):
        seen = False
        for k in range(cameras.shape[0]):
            if _segment_is_clear(occ, points[i], cameras[k]):
                seen = True
                break
        hidden[i] = not seen
    return hidden


def hidden_space(occ: Tensor, cameras: np.ndarray | None = None) -> Tensor:
    """Empty voxels of a boolean grid [n, n, n] (z, y, x) that no camera position [K, 3] (world units; default
    `training_camera_positions()`) can see: every path from the voxel's centre to each camera crosses an
    occupied voxel."""
    grid = np.ascontiguousarray(occ.cpu().numpy().astype(np.bool_))
    empty = np.argwhere(~grid)  # [K, 3] (z, y, x), in the order a boolean mask reads them
    points = np.ascontiguousarray(empty[:, ::-1] + 0.5)  # their centres, (x, y, z) grid units
    hidden = np.zeros_like(grid)
    hidden[~grid] = _points_hidden(grid, points, _grid_cameras(cameras, grid.shape[0]))
    return torch.from_numpy(hidden).to(occ.device)


def _grid_cameras(cameras: np.ndarray | None, m: int) -> np.ndarray:
    """Camera positions (world units; default `training_camera_positions()`) in the grid units of an m^3 grid."""
    cams = training_camera_positions() if cameras is None else np.asarray(cameras, dtype=np.float64)
    return np.ascontiguousarray((cams + 1.0) / 2.0 * m)  # world [-1, 1] -> grid units [0, m]


def closed_occupancy(occ: Tensor, cameras: np.ndarray | None = None) -> Tensor:
    """The occupied voxels together with the empty ones no training camera can see (`hidden_space`)."""
    return occ.bool() | hidden_space(occ, cameras)


def hidden_centres(occluder: Tensor, resolution: int, cameras: np.ndarray | None = None) -> Tensor:
    """Which voxel centres of a [n, n, n] grid (n = `resolution`, over [-1, 1]^3) no camera position can see past
    `occluder`, a boolean grid [m, m, m] (z, y, x) of any resolution over the same box, typically finer: every
    segment from the centre to each camera crosses an occupied voxel of the occluder (the one holding the centre
    does not count). With the true shape voxelised finely as the occluder this is what the shape itself hides."""
    m, n = occluder.shape[-1], resolution
    c = (np.arange(n) + 0.5) * (m / n)  # the coarse centres in the occluder's grid units
    zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
    points = np.ascontiguousarray(np.stack([xx, yy, zz], axis=-1).reshape(-1, 3))
    grid = np.ascontiguousarray(occluder.cpu().numpy().astype(np.bool_))
    hidden = _points_hidden(grid, points, _grid_cameras(cameras, m))
    return torch.from_numpy(hidden).view(n, n, n).to(occluder.device)


def constrained_iou(
    occ: Tensor,
    truth: Tensor,
    truth_hidden: Tensor,
    cameras: np.ndarray | None = None,
    closed: Tensor | None = None,
) -> float:
    """The IoU of an occupancy grid (its enclosed cavities filled) with the truth over what the training cameras
    constrain (docs/CONVENTIONS.md): the 3D IoU with two things no camera can see left out.

    `truth_hidden`: the truth's empty voxels that the true shape hides from every camera (`hidden_centres` of a
    fine voxelisation of the shape). They are not counted: a field may hold anything there and render the same.
    A voxel of the truth that the field leaves empty but hides from every camera behind its own occupied voxels
    (an inside open underneath, which renders as the solid) counts as matched. `closed`: `closed_occupancy` of the
    grid (or of it before its cavities were filled: the same voxels) if the caller has it already."""
    occ, truth = occ.bool(), truth.bool()
    hidden = truth_hidden.bool() & ~truth
    closed = closed_occupancy(occ, cameras) if closed is None else closed.bool()
    matched = (closed & truth).sum().item()
    extra = (occ & ~truth & ~hidden).sum().item()
    union = truth.sum().item() + extra
    return 1.0 if union == 0 else matched / union
