"""Whole-image volume rendering of a Field seen by a Camera.

Each ray is sampled at a fixed step inside the field's box (midpoint rule) and composited front to back:
alpha_i = 1 - exp(-sigma_i * step), T_i = exp(-sum_{j<i} sigma_j * step), w_i = T_i * alpha_i,
colour = sum_i w_i c_i + (1 - sum_i w_i) * background. Only samples that can matter are evaluated, packed
ray after ray: none where T_i < min_transmittance, and with skip_empty none in cells marked empty.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable

from .cameras import Camera
from .rays import Field, Rendering, has_empty_cells, ray_aabb, sample_offsets

ENGINES = ("auto", "torch")


def render(
    field: Field,
    camera: Camera,
    *,
    min_transmittance: float = 1e-8,
    far_depth: float = 10.0,
    skip_empty: bool = False,
    engine: str = "auto",
) -> Rendering:
    """Render `field` from `camera`; differentiable in the field's parameters.

    Samples behind the point where the transmittance falls below `min_transmittance` are not evaluated
    (at 1e-8, images and gradients stay within 1e-4 of evaluating them all). `skip_empty` leaves out the
    samples in cells the field's occupancy grid marks empty: an approximation in training (they get no
    gradient until the grid is refreshed), exact in the image if the grid was refreshed after the density
    last changed. `engine` 'auto' marches each ray once in the fused kernels of `fused.py` where the field
    allows it (a VoxelField on the CPU with its automatic lookup, numba installed), else in PyTorch ('torch',
    below: the same function, on any device)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown render engine {engine!r}; use one of {ENGINES}")
    if engine == "auto" and _fused_supports(field):
        from .fused import render_fused

        return render_fused(
            field, camera, min_transmittance=min_transmittance, far_depth=far_depth, skip_empty=skip_empty
        )
    aabb = field.aabb
    origins, dirs = camera.rays(device=aabb.device, dtype=aabb.dtype)
    near, far = ray_aabb(origins, dirs, aabb)
    step = field.step_size
    offsets = sample_offsets(near, far, step)
    n_samples = offsets.shape[0]
    t = near[:, None] + offsets  # [R, S]
    rays = _Rays(origins.T.contiguous(), dirs.T.contiguous(), t)
    flat = _samples_to_evaluate(field, rays, t < far[:, None], step, min_transmittance, skip_empty)
    ray = torch.div(flat, n_samples, rounding_mode="floor")
    sigma, feats = field.query(rays.points(flat, ray))
    weights = _weights(t.shape, flat, sigma * step)
    colour = _RaySum.apply(weights.view(-1).index_select(0, flat), feats, ray, origins.shape[0])
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


@dataclass
class _Rays:
    origins: Tensor  # [3, R]: one row per axis, so gathers and arithmetic run on contiguous rows
    dirs: Tensor  # [3, R]
    t: Tensor  # [R, S]: sample distances

    def __post_init__(self) -> None:
        self.pinhole = bool((self.origins == self.origins[:, :1]).all())  # one origin: no per-sample gather

    def points(self, flat: Tensor, ray: Tensor | None = None) -> Tensor:
        """World points [N, 3] of the samples at flat indices [N] into t (on rays `ray` [N] = flat // S):
        the transpose of a [3, N] tensor."""
        if ray is None:
            ray = torch.div(flat, self.t.shape[1], rounding_mode="floor")
        t = self.t.view(-1).index_select(0, flat)
        origins = self.origins[:, :1] if self.pinhole else self.origins.index_select(1, ray)
        return torch.addcmul(origins, self.dirs.index_select(1, ray), t).T


def _weights(shape: torch.Size, flat: Tensor, tau: Tensor) -> Tensor:
    """Compositing weights [R, S] of every sample slot, from the optical depths tau [N] of the samples
    at flat indices [N] into [R, S]; the other slots are empty."""
    tau = tau.new_zeros(shape.numel()).scatter(0, flat, tau).view(shape)
    transmittance = torch.exp(-(torch.cumsum(tau, dim=1) - tau))
    return transmittance * -torch.expm1(-tau)


class _RaySum(torch.autograd.Function):
    """colour [R, C] = per-ray sums of w [N] * feats [N, C] over samples packed ray after ray (ray [N]
    sorted): sparse products forward, gathers backward, one feature channel at a time (features are
    the transpose of a [C, N] tensor, as VoxelField returns them)."""

    @staticmethod
    def forward(ctx, w: Tensor, feats: Tensor, ray: Tensor, n_rays: int) -> Tensor:
        index = torch.int32 if w.shape[0] < 2**31 else torch.int64
        counts = torch.bincount(ray, minlength=n_rays)
        crow = torch.cat([counts.new_zeros(1), counts.cumsum(0)]).to(index)
        columns = torch.arange(w.shape[0], device=w.device, dtype=index)
        channels = feats.T.contiguous()  # [C, N]; no copy for VoxelField's features
        with warnings.catch_warnings():  # "sparse CSR support is in beta state"
            warnings.simplefilter("ignore", UserWarning)
            matrix = torch.sparse_csr_tensor(crow, columns, w, size=(n_rays, w.shape[0]), check_invariants=False)
            colour = torch.stack([torch.mv(matrix, channel) for channel in channels])  # [C, R]
        ctx.save_for_backward(w, channels, ray)
        return colour.T

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:
        w, channels, ray = ctx.saved_tensors
        grad_w, grad_channels = torch.zeros_like(w), torch.empty_like(channels)
        for c, grad_colour in enumerate(grad.T):  # [R] per channel
            per_sample = grad_colour.index_select(0, ray)
            grad_w.addcmul_(per_sample, channels[c])
            torch.mul(per_sample, w, out=grad_channels[c])
        return grad_w, grad_channels.T, None, None


def _may_terminate(field: Field, step: float, n_samples: int, min_transmittance: float) -> bool:
    """False when no ray can lose enough transmittance to be cut: then no pre-pass is needed."""
    if not hasattr(field, "max_density"):
        return True
    return field.max_density() * step * (n_samples - 1) >= -math.log(min_transmittance)


def _samples_to_evaluate(
    field: Field, rays: _Rays, inside: Tensor, step: float, min_transmittance: float, skip_empty: bool
) -> Tensor:
    """Flat indices [N] into [R, S] of the samples worth evaluating, ray after ray (ray-major)."""
    flat = inside.view(-1).nonzero().squeeze(1)
    skip_empty = skip_empty and has_empty_cells(field)
    terminate = min_transmittance > 0 and _may_terminate(field, step, inside.shape[1], min_transmittance)
    if not (terminate or skip_empty):
        return flat
    with torch.no_grad():
        pts = rays.points(flat)
        if hasattr(field, "cell_query"):
            lower, keep = field.cell_query(pts, lower_bound=terminate, occupancy=skip_empty)
        else:
            lower, keep = field.density(pts), None
        if terminate:
            if keep is not None:
                lower = lower * keep  # skipped samples count as empty, as they render
            tau = lower.new_zeros(inside.numel()).scatter_(0, flat, lower * step).view(inside.shape)
            in_front = torch.cumsum(tau, dim=1) - tau  # optical depth before each sample, at least
            alive = in_front.view(-1).index_select(0, flat) < -math.log(min_transmittance)
            keep = alive if keep is None else keep & alive
    return flat.masked_select(keep)


def _fused_supports(field: Field) -> bool:
    """Whether the fused kernels can render `field` (imported on first use: numba takes a moment to load)."""
    if getattr(field, "lookup", None) != "auto" or field.aabb.device.type != "cpu":
        return False
    try:
        from . import fused
    except ImportError:
        return False
    return fused.supports(field)
