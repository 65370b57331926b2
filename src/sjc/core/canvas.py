"""The 2D canvas (SJC with the identity as renderer) and a reference sampler, on any denoiser D(x; sigma).

Canvas: gradient ascent on log p_sigma(x) of an image x with the step lr * sigma^2 of annealed Langevin
dynamics (without its noise), x <- x + lr * sigma * g, where g estimates sigma * score at x either naively
on the clean image, (D(x; sigma) - x) / sigma, or by PAAS (paper Eq. 16 / 15, `chaining.paas_grad`).
Sampler: the probability-flow ODE dx/dsigma = (x - D(x; sigma)) / sigma on Karras et al.'s (2022) sigmas
sigma_i = (sigma_max^(1/rho) + i / (n - 1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, by Euler or Heun.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .chaining import naive_grad, paas_grad, sigma_annealed, sigma_log_uniform
from .denoisers import Denoiser
from .methods import METHODS

SCORINGS = METHODS  # naive, paas, and the distillation methods of `core.methods` (given as a `scorer`)
SCHEDULES = ("annealed", "random")
SAMPLERS = ("heun", "euler")


# --- the canvas ---------------------------------------------------------------------------
def canvas_sigmas(
    schedule: str, steps: int, sigma_min: float, sigma_max: float, generator: torch.Generator | None = None
) -> list[float]:
    """One sigma per step: 'annealed' decays geometrically from sigma_max to sigma_min; 'random' draws
    log-uniformly in [sigma_min, sigma_max] (as the 3D loop does)."""
    if schedule == "annealed":
        return [sigma_annealed(step, steps, sigma_min, sigma_max) for step in range(steps)]
    if schedule == "random":
        generator = generator or torch.Generator().manual_seed(0)
        return [sigma_log_uniform(sigma_min, sigma_max, generator) for _ in range(steps)]
    raise ValueError(f"unknown sigma schedule {schedule!r}; known: {', '.join(SCHEDULES)}")


@dataclass
class CanvasRecord:
    step: int
    sigma: float
    step_size: float  # lr * sigma: the multiplier of g (lr * sigma^2 on the score itself)
    update_rms: float  # root mean square of the change of x at this step


def optimise_canvas(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: list[float],
    cond: Any = None,
    *,
    scoring: str = "paas",
    lr: float = 0.1,
    n_noise: int = 1,
    variance_reduced: bool = True,
    generator: torch.Generator | None = None,
    on_step: Callable[[int, Tensor], None] | None = None,
    scorer: Callable[[Tensor, float, Any, torch.Generator | None], Tensor] | None = None,
) -> tuple[Tensor, list[CanvasRecord]]:
    """Move the images x [B, C, H, W] up the estimated score, one step per sigma; each image gets its own
    estimate (and its own noise draws under PAAS). Returns the final images and one record per step (update
    RMS over the batch); `on_step(step, x)` sees the images after each step (e.g. to keep frames). Any scoring
    other than naive and paas is computed by `scorer(x, sigma, None, generator)` (a `methods.Scorer`)."""
    if scoring not in SCORINGS:
        raise ValueError(f"unknown scoring {scoring!r}; known: {', '.join(SCORINGS)}")
    if scoring not in ("naive", "paas") and scorer is None:
        raise ValueError(f"scoring {scoring!r} needs its scorer (core.methods.Scorer)")
    records = []
    for step, sigma in enumerate(sigmas):
        if scorer is not None and scoring not in ("naive", "paas"):
            g = scorer(x, sigma, None, generator)
        elif scoring == "paas":
            g = paas_grad(
                denoiser, x, sigma, cond, n_noise=n_noise, variance_reduced=variance_reduced, generator=generator
            )
        else:
            g = naive_grad(denoiser, x, sigma, cond)
        update = lr * sigma * g
        x = x + update
        records.append(CanvasRecord(step, sigma, lr * sigma, float(update.square().mean().sqrt())))
        if on_step is not None:
            on_step(step, x)
    return x, records


# --- the reference sampler ----------------------------------------------------------------
def karras_sigmas(n: int, sigma_min: float, sigma_max: float, rho: float = 7.0) -> Tensor:
    """n noise levels from sigma_max down to sigma_min, spaced evenly in sigma^(1/rho), then a final 0
    (float64, [n + 1]); rho = 7 spends more steps at low noise, where detail forms."""
    if n < 1 or not 0 < sigma_min <= sigma_max:
        raise ValueError(f"need n >= 1 and 0 < sigma_min <= sigma_max, got {n}, {sigma_min}, {sigma_max}")
    ramp = torch.linspace(0, 1, n, dtype=torch.float64)
    lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
    return torch.cat([(hi + ramp * (lo - hi)) ** rho, torch.zeros(1, dtype=torch.float64)])


def snap_to_grid(sigmas: Tensor, grid: Tensor) -> Tensor:
    """Each non-zero sigma replaced by the nearest value of a network's discrete grid (the levels it was
    trained on), repeats dropped, the final 0 kept: the ODE then steps between levels D really uses."""
    grid = torch.as_tensor(grid, dtype=torch.float64).flatten()
    body = sigmas[sigmas > 0].to(torch.float64)
    snapped = grid[(body[:, None] - grid[None]).abs().argmin(dim=1)]
    snapped = torch.unique_consecutive(snapped)
    return torch.cat([snapped, torch.zeros(1, dtype=torch.float64)])


@torch.no_grad()
def sample_ode(
    denoiser: Denoiser,
    x: Tensor,
    sigmas: Tensor,
    cond: Any = None,
    *,
    method: str = "heun",
    on_step: Callable[[int, Tensor, Tensor], None] | None = None,
) -> Tensor:
    """Integrate dx/dsigma = (x - D(x; sigma)) / sigma from sigmas[0] to sigmas[-1] (0), starting from
    x = sigmas[0] * noise [B, C, H, W]. Heun corrects each Euler step with the slope at its end (second
    order), except the last step to sigma = 0, where that slope is undefined. `on_step(i, x, denoised)`."""
    if method not in SAMPLERS:
        raise ValueError(f"unknown sampler {method!r}; known: {', '.join(SAMPLERS)}")
    levels = [float(s) for s in sigmas]
    for i, (sigma, sigma_next) in enumerate(zip(levels[:-1], levels[1:], strict=True)):
        denoised = denoiser(x, torch.full((x.shape[0],), sigma, dtype=x.dtype, device=x.device), cond)
        slope = (x - denoised) / sigma
        x_next = x + (sigma_next - sigma) * slope
        if method == "heun" and sigma_next > 0:
            sig = torch.full((x.shape[0],), sigma_next, dtype=x.dtype, device=x.device)
            slope_next = (x_next - denoiser(x_next, sig, cond)) / sigma_next
            x_next = x + (sigma_next - sigma) * (slope + slope_next) / 2
        x = x_next
        if on_step is not None:
            on_step(i, x, denoised)
    return x
