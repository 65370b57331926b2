"""A fused CPU renderer for VoxelField: each ray marched once, by a numba kernel pair.

`render_fused` is the same function as `render.render` (same sample placement, border-padded trilinear
lookups, activations, compositing, outputs, early termination and empty-space skipping), differentiable in
the field's grid and d_scale (through the kernels) and background (in PyTorch), computed in one pass over
each ray instead of PyTorch's many whole-batch passes:

- forward (`_march`): per ray, front to back: the sample's cell and offsets, the 1 + C channels of its 8
  corners from a voxel-major copy of the grid (one short contiguous row per voxel), softplus, the
  compositing weight, then the features' activation; transmittance, colour, depth, opacity and the weights
  row accumulate as it goes. The ray stops at the first sample whose transmittance is below
  `min_transmittance`: the exact transmittance, where the PyTorch renderer cuts on a lower bound of it and
  so evaluates a few more samples, all of weight below `min_transmittance`. Each evaluated sample leaves a
  record for the backward: slot, cell, offsets, d sigma / d raw, d sigma / d d_scale, weight,
  transmittance behind it, activated features.
- backward (`_scatter`): per ray, back to front over the records with the suffix sum of w_k dL/dw_k
  (dL/dtau_i = dL/dw_i T_{i+1} - sum_{k>i} dL/dw_k w_k), then through the activations into the grid's
  gradient, 8 trilinear corners per channel.

Both kernels prefetch the grid rows of the sample a few steps ahead (the lookups are cache misses more than
arithmetic); the record buffers are pooled between calls (fresh ones would fault in tens of MB every step).
The kernels compute in float64 whatever the grid's dtype, except the sample distances and points, in the
grid's dtype as `render` computes them (so a sample is inside the box for both alike); outputs and records
take the grid's dtype.

With several PyTorch threads (torch.get_num_threads()) the kernels run on that many Python threads (they
release the GIL): the forward on chunks of rays, the backward on slabs of the grid (every thread walks all
records and adds only the corners in its own z range, so no two threads write the same voxel).

CPU only, float32 and float64 (the kernels compile once per dtype, a few seconds, then load from numba's
disk cache); CUDA keeps `render.render`. Needs numba: without it `render_fused` raises ImportError and
callers keep `render`. `supports(field)` says whether a field can take this path.
"""

from __future__ import annotations

import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .cameras import Camera
from .fused_kernels import RECORD, _march, _scatter, _transpose, numba
from .rays import Rendering, has_empty_cells, ray_aabb, sample_offsets

CHUNKS_PER_THREAD = 4  # forward ray chunks per thread: rays cost unequal amounts (misses cost nothing)

NUMBA_MISSING = "render_fused needs numba (pip install numba); use sjc.core.render.render instead"


def available() -> bool:
    """Whether numba can be imported (the fused kernels can run)."""
    return numba is not None


def supports(field) -> bool:
    """Whether `field` can be rendered by `render_fused`: numba present, a VoxelField-like field (one grid
    [1, 1 + C, n, n, n] with density and features, d_scale, density shift, feature activation, occupancy
    grid) on CPU in float32 or float64."""
    grid = getattr(field, "grid", None)
    return (
        numba is not None
        and isinstance(grid, Tensor)
        and grid.dim() == 5
        and grid.shape[0] == 1
        and grid.device.type == "cpu"
        and grid.dtype in (torch.float32, torch.float64)
        and all(hasattr(field, a) for a in ("d_scale", "density_shift", "feature_activation", "aabb", "background"))
        and field.feature_activation in ("none", "sigmoid")
    )


def render_fused(
    field,
    camera: Camera,
    *,
    min_transmittance: float = 1e-8,
    far_depth: float = 10.0,
    skip_empty: bool = False,
) -> Rendering:
    """`render.render(field, camera, ...)` for a VoxelField on CPU, each ray marched once by numba kernels.

    Differentiable in field.grid, field.d_scale and field.bg. Raises ImportError without numba, ValueError
    for fields it cannot take (see `supports`) and, like `render`, for skip_empty without an occupancy grid."""
    if numba is None:
        raise ImportError(NUMBA_MISSING)
    if not supports(field):
        raise ValueError(
            "render_fused takes a VoxelField on CPU in float32 or float64; use sjc.core.render.render for others"
        )
    grid, aabb = field.grid, field.aabb
    dtype = grid.dtype
    origins, dirs = camera.rays(device=aabb.device, dtype=aabb.dtype)
    origins, dirs = origins.to(dtype), dirs.to(dtype)
    if not (torch.isfinite(origins).all() and torch.isfinite(dirs).all()):  # the kernel indexes with them
        raise ValueError("render_fused: the camera's rays are not finite")
    near, far = ray_aabb(origins, dirs, aabb.to(dtype))
    step = field.step_size
    offsets = sample_offsets(near, far, step)  # as `render` places them, so `t < far` decides alike
    skip = skip_empty and has_empty_cells(field)
    occupancy = field.occupancy.reshape(-1) if skip else torch.ones(1, dtype=torch.bool)
    n = grid.shape[-1]
    lo, hi = aabb[0].to(dtype), aabb[1].to(dtype)
    scale = n / (hi - lo)
    bias = -lo * scale - 0.5  # voxel-centre coordinates x = bias + p * scale, as trilinear.cell_coords
    settings = _Settings(
        n=n,
        step=step,
        shift=float(field.density_shift),
        threshold=-math.log(min_transmittance) if min_transmittance > 0 else math.inf,
        skip=skip,
        sigmoid=field.feature_activation == "sigmoid",
        threads=max(1, torch.get_num_threads()),
    )
    colour, opacity, depth_sum, weights = _FusedRender.apply(
        grid, field.d_scale, origins, dirs, near, far, offsets, occupancy, scale, bias, settings
    )
    colour = colour + (1 - opacity)[:, None] * field.background(dirs).to(dtype)
    depth = depth_sum + (1 - opacity) * far_depth
    H, W = camera.height, camera.width
    return Rendering(
        image=colour.T.reshape(1, -1, H, W), depth=depth.view(H, W), opacity=opacity.view(H, W), weights=weights
    )


class _Settings:
    __slots__ = ("n", "step", "shift", "threshold", "skip", "sigmoid", "threads")

    def __init__(self, *, n, step, shift, threshold, skip, sigmoid, threads) -> None:
        self.n, self.step, self.shift, self.threshold = n, step, shift, threshold
        self.skip, self.sigmoid, self.threads = skip, sigmoid, threads


def _np(t: Tensor) -> np.ndarray:
    return t.detach().contiguous().numpy()


_pool_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _run(jobs: list, threads: int) -> list:
    """Run zero-argument callables, on `threads` worker threads (the kernels release the GIL), each job
    taken by the next free worker; their results in order."""
    global _pool, _pool_size
    if threads == 1:
        return [job() for job in jobs]
    with _pool_lock:
        if _pool is None or _pool_size != threads:
            if _pool is not None:
                _pool.shutdown(wait=False)
            _pool, _pool_size = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sjc-fused"), threads
        pool = _pool
    return [f.result() for f in [pool.submit(job) for job in jobs]]


class _Records:
    """Room for the records of one forward, `capacity` samples: slots, cells and floats. Kept in a pool and
    handed out again when the autograd node that holds them goes, so that steady training does not fault
    tens of MB of fresh pages in every step."""

    __slots__ = ("key", "slots", "cells", "floats")
    _free: dict[tuple, list[list]] = {}
    _lock = threading.Lock()
    KEEP = 1  # free sets kept per (dtype, width)

    def __init__(self, dtype: np.dtype, width: int, capacity: int) -> None:
        self.key = (np.dtype(dtype).str, width) if capacity else None  # no records wanted: not from the pool
        arrays = None
        if self.key is not None:
            with self._lock:
                free = self._free.get(self.key, [])
                found = next((i for i, a in enumerate(free) if a[0].shape[0] >= capacity), None)
                arrays = free.pop(found) if found is not None else None
        if arrays is None:
            room = capacity + capacity // 4  # sample counts vary with the camera
            arrays = [np.empty(room, np.int32), np.empty(room, np.int64), np.empty((room, width), dtype)]
        self.slots, self.cells, self.floats = arrays

    def __del__(self) -> None:
        if self.key is None:
            return
        try:
            with self._lock:
                free = self._free.setdefault(self.key, [])
                free.append([self.slots, self.cells, self.floats])
                free.sort(key=lambda arrays: -arrays[0].shape[0])  # keep the largest
                del free[self.KEEP :]
        except Exception:  # interpreter shutdown
            pass


def release_buffers() -> None:
    """Free the record buffers render_fused keeps between calls (one set per dtype)."""
    with _Records._lock:
        _Records._free.clear()


def _split(total: int, parts: int) -> list[tuple[int, int]]:
    """`parts` contiguous ranges covering range(total), as equal as can be (some may be empty)."""
    bounds = [total * i // parts for i in range(parts + 1)]
    return list(zip(bounds[:-1], bounds[1:], strict=True))


class _FusedRender(torch.autograd.Function):
    """(grid, d_scale) -> per-ray colour sums [R, C], opacity [R], sum of w t [R], weights [R, S]."""

    @staticmethod
    def forward(ctx, grid, d_scale, origins, dirs, near, far, offsets, occupancy, scale, bias, s: _Settings):
        channels, n, dtype = grid.shape[1], s.n, grid.dtype
        rays, slots_per_ray = origins.shape[0], offsets.shape[0]
        threads = s.threads
        # A voxel-major copy of the grid: the 1 + C values of a voxel side by side.
        source = _np(grid).reshape(channels, n**3)
        table = np.empty((n**3, channels), source.dtype)
        _run([lambda a=a, b=b: _transpose(source, table, a, b) for a, b in _split(n**3, threads)], threads)

        colour = torch.empty(rays, channels - 1, dtype=dtype)
        opacity = torch.empty(rays, dtype=dtype)
        depth = torch.empty(rays, dtype=dtype)
        weights = torch.zeros(rays, slots_per_ray, dtype=dtype)
        save = ctx.needs_input_grad[0] or ctx.needs_input_grad[1]
        chunks = _split(rays, 1 if threads == 1 else threads * CHUNKS_PER_THREAD)
        # The records of ray chunk i are packed from starts[i] on: room for every sample inside the box.
        inside = (((far - near).clamp_min(0) / s.step).floor() + 1).clamp_max(slots_per_ray).to(torch.int64)
        starts = torch.cat([inside.new_zeros(1), inside.cumsum(0)]).tolist()
        room = _Records(source.dtype, RECORD + channels - 1, starts[-1] if save else 0)
        begin = torch.empty(rays, dtype=torch.int64)
        end = torch.empty(rays, dtype=torch.int64)
        planes = torch.zeros(len(chunks), n, dtype=torch.int64)  # records per lowest z plane, per chunk
        arrays = [_np(x) for x in (origins, dirs, near, far, offsets, occupancy, scale, bias)]
        outputs = [x.numpy() for x in (colour, opacity, depth, weights, begin, end)]
        outputs += [room.slots, room.cells, room.floats]
        e = math.exp(float(d_scale))

        def march(i: int, r0: int, r1: int) -> int:
            return _march(
                *arrays[:5], table, *arrays[5:], n, e, s.shift, s.step, s.threshold, s.skip, s.sigmoid, save,
                r0, r1, starts[r0], starts[r1], *outputs, planes[i].numpy(),
            )  # fmt: skip

        _run([lambda i=i, r0=r0, r1=r1: march(i, r0, r1) for i, (r0, r1) in enumerate(chunks)], threads)
        if save:
            ctx.save_for_backward(near, offsets, begin, end)
            ctx.room, ctx.settings, ctx.grid_shape, ctx.scalar_shape = room, s, grid.shape, d_scale.shape
            ctx.slabs = _slabs(planes.sum(0).numpy(), threads) if threads > 1 else [(0, n)]
            ctx.grid_grad = ctx.needs_input_grad[0]
        return colour, opacity, depth, weights

    @staticmethod
    @once_differentiable
    def backward(ctx, g_colour, g_opacity, g_depth, g_weights):
        near, offsets, begin, end = ctx.saved_tensors
        s, shape, room = ctx.settings, ctx.grid_shape, ctx.room
        grad = torch.zeros(shape[1] if ctx.grid_grad else 1, s.n**3 if ctx.grid_grad else 1, dtype=near.dtype)
        arrays = [x.numpy() for x in (near, offsets, begin, end)] + [room.slots, room.cells, room.floats]
        arrays += [_np(g) for g in (g_colour, g_opacity, g_depth, g_weights)]
        slabs = ctx.slabs if ctx.grid_grad else [(0, 0)]  # an empty slab: d_scale's gradient only
        jobs = [
            lambda z0=z0, z1=z1: _scatter(*arrays, s.n, s.step, s.sigmoid, z0, z1, grad.numpy()) for z0, z1 in slabs
        ]
        grad_scale = _run(jobs, len(jobs))[0]  # each walk sums all of d_scale's gradient
        grad_d_scale = torch.full(ctx.scalar_shape, grad_scale, dtype=near.dtype)
        return (grad.view(shape) if ctx.grid_grad else None, grad_d_scale) + (None,) * 9


def _slabs(per_plane: np.ndarray, parts: int) -> list[tuple[int, int]]:
    """Split the z planes [0, n) into `parts` contiguous slabs holding about equal numbers of samples (a
    sample adds to its cell's two planes: counted at its lowest)."""
    n = per_plane.shape[0]
    total = int(per_plane.sum())
    if total == 0:
        return _split(n, parts)
    cumulative = np.cumsum(per_plane)
    cuts = [int(np.searchsorted(cumulative, total * i / parts)) + 1 for i in range(1, parts)]
    bounds = np.maximum.accumulate([0, *(min(c, n) for c in cuts), n]).tolist()
    return list(zip(bounds[:-1], bounds[1:], strict=True))
