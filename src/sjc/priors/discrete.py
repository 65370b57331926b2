"""A discrete-time diffusion network (DDPM-style alphas_cumprod schedule) as a VE denoiser D(x; sigma).

With a = alphas_cumprod[t], the VP sample x_t = sqrt(a) y + sqrt(1 - a) n equals sqrt(a) (y + sigma n)
for sigma = sqrt((1 - a) / a); since sqrt(a) = 1 / sqrt(1 + sigma^2), the network sees x / sqrt(1 + sigma^2).
eps-prediction gives D = x - sigma * eps; v-prediction (v = sqrt(a) n - sqrt(1 - a) y) gives
D = (x - sigma * sqrt(1 + sigma^2) * v) / (1 + sigma^2). Sigma is snapped to the network's grid.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

# network(x_in [B, C, H, W], timesteps [B] long, cond) -> eps, v or x0 prediction [B, C, H, W]
Network = Callable[[Tensor, Tensor, Any], Tensor]
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")


def sigmas_from_alphas_cumprod(alphas_cumprod: Tensor) -> Tensor:
    """The VE noise level of every timestep: sqrt((1 - a) / a), float64, ascending with t."""
    a = torch.as_tensor(alphas_cumprod, dtype=torch.float64)
    return ((1 - a) / a).sqrt()


class DiscreteDenoiser:
    """D(x; sigma, cond) of an eps-, v- or x0-prediction network trained on an alphas_cumprod schedule.

    `sigmas` is the ascending grid, one value per timestep (sigmas[t] is the noise level of timestep t).
    A sigma off the grid is snapped to the nearest grid value, and the snapped value is used throughout,
    so the network only ever sees noise levels it was trained on.
    """

    def __init__(self, network: Network, alphas_cumprod: Tensor, prediction_type: str = "epsilon") -> None:
        if prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"unknown prediction_type {prediction_type!r}; known: {', '.join(PREDICTION_TYPES)}")
        self.network = network
        self.prediction_type = prediction_type
        self.sigmas = sigmas_from_alphas_cumprod(alphas_cumprod)
        self._grid: Tensor | None = None  # the grid on the device last asked for
        if not bool((self.sigmas[1:] > self.sigmas[:-1]).all()):
            raise ValueError("alphas_cumprod must decrease strictly with the timestep")

    @property
    def sigma_min(self) -> float:
        return float(self.sigmas[0])

    @property
    def sigma_max(self) -> float:
        return float(self.sigmas[-1])

    def _grid_on(self, device: torch.device) -> Tensor:
        if self._grid is None or self._grid.device != device:
            self._grid = self.sigmas.to(device)
        return self._grid

    def timestep(self, sigma: Tensor) -> Tensor:
        """Index [B] (long) of the grid value nearest to each sigma [B], on sigma's device (no read back to the
        host: on a GPU the step's launches keep running ahead)."""
        sigma = torch.as_tensor(sigma)
        grid = self._grid_on(sigma.device)
        return (sigma.to(torch.float64).reshape(-1, 1) - grid[None]).abs().argmin(dim=1)

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        """x [B, C, H, W] noised as y + sigma n, sigma [B] (or a scalar) -> E[y | x] [B, C, H, W]."""
        sigma = torch.as_tensor(sigma, device=x.device)
        t = self.timestep(sigma.reshape(-1).expand(x.shape[0]))  # a scalar or [B]
        s = self._grid_on(x.device)[t].to(dtype=x.dtype).reshape(-1, *([1] * (x.dim() - 1)))
        scale = 1 / (1 + s**2).sqrt()  # = sqrt(alphas_cumprod[t])
        with torch.profiler.record_function("sjc.network"):  # the UNet's share of a step, in profiles
            out = self.network(x * scale, t, cond).to(x.dtype)
        if self.prediction_type == "epsilon":
            return x - s * out
        if self.prediction_type == "v_prediction":
            # x0 = sqrt(a) x_t - sqrt(1 - a) v with x_t = x sqrt(a), sqrt(a) = scale, sqrt(1 - a) = s * scale.
            return scale**2 * x - s * scale * out
        return out
