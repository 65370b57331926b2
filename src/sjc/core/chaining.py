"""The score-chaining step: noise levels, Perturb-and-Average Scoring, and the regularisers.

PAAS (paper Eq. 15/16): with z = y + sigma * n, the estimate of sigma * score at the clean
render y is (D(z; sigma) - z) / sigma (Eq. 15) or its lower-variance form (D(z; sigma) - y) / sigma
(Eq. 16). Chaining it through the renderer's Jacobian is the gradient of the surrogate
-(g.detach() * y).sum(), whose derivative with respect to y is exactly -g.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from .denoisers import Denoiser


# --- noise levels -------------------------------------------------------------------------
def sigma_from_grid(sigmas: Tensor, drop_lowest: int, drop_highest: int, generator: torch.Generator) -> float:
    """Uniform over a discrete sigma grid, never drawing its `drop_lowest` smallest or
    `drop_highest` largest values."""
    ordered = torch.sort(torch.as_tensor(sigmas, dtype=torch.float64).flatten()).values
    usable = ordered[drop_lowest : len(ordered) - drop_highest]
    if len(usable) == 0:
        raise ValueError(
            f"dropping {drop_lowest} lowest and {drop_highest} highest of {len(ordered)} sigmas leaves none; "
            "lower --scoring.drop-lowest / --scoring.drop-highest"
        )
    return float(usable[torch.randint(len(usable), (1,), generator=generator)])


def sigma_log_uniform(sigma_min: float, sigma_max: float, generator: torch.Generator) -> float:
    """log(sigma) uniform in [log sigma_min, log sigma_max]."""
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    return math.exp(math.log(sigma_min) + u * (math.log(sigma_max) - math.log(sigma_min)))


def sigma_annealed(step: int, n_steps: int, sigma_min: float, sigma_max: float) -> float:
    """Geometric decay from sigma_max at step 0 to sigma_min at the last step."""
    frac = step / max(n_steps - 1, 1)
    return sigma_max * (sigma_min / sigma_max) ** frac


def sigma_annealed_random(
    step: int, n_steps: int, sigma_min: float, sigma_max: float, generator: torch.Generator
) -> float:
    """Log-uniform in [sigma_min, hi], hi annealed geometrically from sigma_max to sqrt(sigma_min * sigma_max)."""
    hi = sigma_annealed(step, n_steps, math.sqrt(sigma_min * sigma_max), sigma_max)
    return sigma_log_uniform(sigma_min, hi, generator)


# --- PAAS ---------------------------------------------------------------------------------
@torch.no_grad()
def paas_grad(
    denoiser: Denoiser,
    y: Tensor,
    sigma: float,
    cond: Any = None,
    *,
    n_noise: int = 1,
    variance_reduced: bool = True,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Perturb-and-Average Scoring at the renders y [B, C, H, W]: sigma * score, averaged over `n_noise`
    noise draws per image, as (D(y + sigma n) - y) / sigma (Eq. 16, default) or
    (D(y + sigma n) - (y + sigma n)) / sigma (Eq. 15). Returns [B, C, H, W]: each image its own estimate.
    All n_noise * B perturbed images go through one denoiser call, draw k of image b at row k * B + b."""
    y = y.detach()
    noise = torch.randn((n_noise, *y.shape), generator=generator, device=y.device, dtype=y.dtype)
    z = y + sigma * noise  # [k, B, C, H, W]
    sigmas = torch.full((n_noise * y.shape[0],), sigma, device=y.device, dtype=y.dtype)
    denoised = denoiser(z.flatten(0, 1), sigmas, cond).view_as(z)
    reference = y if variance_reduced else z
    return ((denoised - reference) / sigma).mean(dim=0)


@torch.no_grad()
def naive_grad(denoiser: Denoiser, x: Tensor, sigma: float, cond: Any = None) -> Tensor:
    """sigma * score taken at the clean image itself, (D(x; sigma) - x) / sigma: the estimate that fails
    for learned denoisers, which never saw a clean input at noise level sigma."""
    sigmas = torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device)
    return (denoiser(x, sigmas, cond) - x) / sigma


def chain_surrogate(y: Tensor, g: Tensor) -> Tensor:
    """A scalar whose gradient with respect to y is -g: back-propagating it sends the 2D
    score through the renderer's Jacobian into the field (gradient descent then ascends
    the log-density)."""
    return -(g.detach() * y).sum()


# --- regularisers -------------------------------------------------------------------------
def emptiness_weight_at(step: int, n_steps: int, weight: float, multiplier: float, switch: float) -> float:
    """The emptiness weight of `step`: multiplied by `multiplier` from step switch * n_steps on."""
    return weight * multiplier if step >= switch * n_steps else weight


def emptiness_loss(weights: Tensor, scale: float) -> Tensor:
    """mean(log(1 + scale * w)) over every sample slot: a sparsity prior that favours
    empty space, steep near w = 0 so faint fog is cleared first."""
    return torch.log1p(scale * weights).mean()


def center_depth_loss(depth: Tensor, border: float = 7 / 64) -> Tensor:
    """Small when the centre of the image [H, W] is nearer than its border.

    softplus(-(mean border depth - mean centre depth)): the -log(sigmoid) of the depth gap,
    smooth and finite for any sign of the gap. (The official code compares centre minus
    border, which pushes the centre away; this is the intended direction.)
    """
    H, W = depth.shape
    bh, bw = max(1, round(H * border)), max(1, round(W * border))
    center = depth[bh : H - bh, bw : W - bw]
    n_border = depth.numel() - center.numel()
    border_mean = (depth.sum() - center.sum()) / n_border
    return F.softplus(-(border_mean - center.mean()))


def opacity_entropy(opacity: Tensor, eps: float = 1e-4) -> Tensor:
    """Mean binary entropy -(o log o + (1 - o) log(1 - o)) of per-pixel opacities o (clamped to [eps, 1 - eps]):
    zero for empty or opaque pixels, largest at 0.5; its gradient log((1 - o) / o) / N pushes each pixel to the
    nearer of 0 and 1."""
    o = opacity.clamp(eps, 1 - eps)
    return -(o * torch.log(o) + (1 - o) * torch.log1p(-o)).mean()


def total_variation(volume: Tensor) -> Tensor:
    """Sum over the three axes of the mean squared difference of neighbouring voxels of a [n, n, n] volume."""
    return sum((volume.diff(dim=d) ** 2).mean() for d in range(3))


def reference_rgb_loss(image: Tensor, target: Tensor, mask: Tensor | None = None) -> Tensor:
    """Image-to-3D: the mean squared error between the render from the reference camera `image` [1, C, H, W] and
    the reference picture `target` [C, H, W] in the prior's data space; with `mask` [H, W] (1 on the object), only
    the object's pixels count (the background is the mask loss's). Gradient 2 (image - target) m / (C sum m)."""
    diff = (image[0] - target).square()
    if mask is None:
        return diff.mean()
    m = mask.to(diff.dtype)
    return (diff * m).sum() / (m.sum().clamp_min(1.0) * diff.shape[0])


def reference_mask_loss(opacity: Tensor, mask: Tensor) -> Tensor:
    """Image-to-3D: the mean squared error between the render's opacity [H, W] and the picture's object mask [H, W]
    (1 on the object, 0 on the background). Gradient 2 (opacity - mask) / (H W)."""
    return (opacity - mask.to(opacity.dtype)).square().mean()


def depth_smoothness(depth: Tensor, mask: Tensor) -> Tensor:
    """Image-to-3D: the mean squared difference of neighbouring pixels of the render's depth [H, W] (across and
    down), over the pairs whose two pixels are both on the object (`mask` [H, W], 1 on the object, products for
    soft masks): zero for a constant depth, the squared slope for a plane sloping along one axis."""
    m = mask.to(depth.dtype)
    terms = []
    for dim in (0, 1):
        pair = m.narrow(dim, 0, m.shape[dim] - 1) * m.narrow(dim, 1, m.shape[dim] - 1)
        terms.append((depth.diff(dim=dim).square() * pair).sum() / pair.sum().clamp_min(1.0))
    return sum(terms)
