"""Score-distillation methods beside PAAS: each one short function giving the direction g that the fit loop
chains through the renderer (its surrogate -(g * y).sum() has gradient -g with respect to the render y).

Notation (variance-exploding, docs/CONVENTIONS.md): z = y + sigma n, n ~ N(0, I); D_c the conditional
denoiser, D_u the unconditional one, D_neg a negative prompt's, D_g = D_u + s (D_c - D_u) the guided one;
eps-form predictions convert as eps = (z - D) / sigma. A VP model's x_t = sqrt(abar) z with
sigma = sqrt((1 - abar) / abar), so its eps prediction at x_t is the VE one at z.

SDS (DreamFusion) in eps form is grad_y L = w(t) (eps_hat(x_t) - n). With eps_hat = (z - D_g(z)) / sigma and
z = y + sigma n, eps_hat - n = (y - D_g(z)) / sigma, so g = -grad_y L = w(t) (D_g(z) - y) / sigma: PAAS
(Eq. 16) with the guided denoiser, times w(t) = 1 - abar(t) = sigma^2 / (1 + sigma^2), at DreamFusion's
t ~ U[0.02, 0.98]. The other methods are derived the same way in docs/methods.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from .cameras import View
from .chaining import paas_grad
from .errors import ConfigError
from .settings import GUIDED, METHODS, PAPER_SCHEDULES, VSD_LR  # noqa: F401 (re-exported)

T_RANGE = (0.02, 0.98)  # DreamFusion's timestep range, as a fraction of the T = 1000 training steps
NFSD_T_SPLIT = 0.2  # NFSD: below t = 200 of 1000 the unconditional term, above it unconditional minus negative
SDI_T_END = 0.25  # SDI's t falls linearly from 0.98 to 250 of 1000 over the run (its official code's setting)
ISM_INTERVAL = 0.08  # ISM's delta_T = 80 of 1000 steps between the inverted level s and t (LucidDreamer's default)
ISM_T_MAX, ISM_WARMUP = 0.5, 0.3  # ISM's t ~ U[0.02, hi], hi falling from 0.98 to 0.5 over the first 30% of the run

# A denoiser bound to its condition: D(x [B, C, H, W], sigma) -> E[y | x].
Branch = Callable[[Tensor, float], Tensor]


@dataclass
class Branches:
    """What a prior offers the guided methods for one view: its unguided denoiser and the conditions of the
    prompt, of the unconditional branch and of the negative prompt (`Prior.branches`)."""

    denoise: Callable[[Tensor, Tensor, Any], Tensor]
    cond: Any
    uncond: Any
    negative: Any

    def bind(self, which: str) -> Branch:
        cond = getattr(self, which)
        return lambda x, sigma: self.denoise(x, _sigmas(x, sigma), cond)

    def guided(self, scale: float) -> Branch:
        """D_g = D_u + scale (D_c - D_u) (D_c alone at scale 1)."""
        d_c, d_u = self.bind("cond"), self.bind("uncond")
        if scale == 1:
            return d_c
        return lambda x, sigma: (lambda u: u + scale * (d_c(x, sigma) - u))(d_u(x, sigma))


def _sigmas(x: Tensor, sigma: float) -> Tensor:
    return torch.full((x.shape[0],), float(sigma), dtype=x.dtype, device=x.device)


# --- timesteps and weights ----------------------------------------------------------------
def sd_sigmas(n: int = 1000) -> Tensor:
    """sigma(t) = sqrt((1 - abar) / abar) of Stable Diffusion's (DDPM's) scaled-linear beta schedule
    (beta from 0.00085 to 0.012, evenly spaced in sqrt(beta)), t = 0 .. n - 1: [n], increasing, float64."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, n, dtype=torch.float64) ** 2
    abar = torch.cumprod(1 - betas, 0)
    return ((1 - abar) / abar).sqrt()


class Timesteps:
    """t in [0, 1] <-> sigma through a VP table (a prior's own discrete grid, else `sd_sigmas`), clipped to
    [lo, hi]: t indexes the table at round(t (T - 1))."""

    def __init__(self, table: Tensor | None, lo: float, hi: float) -> None:
        grid = sd_sigmas() if table is None else torch.as_tensor(table, dtype=torch.float64).flatten()
        self.table, self.lo, self.hi = torch.sort(grid).values, lo, hi

    def sigma(self, t: float) -> float:
        raw = float(self.table[round(min(max(t, 0.0), 1.0) * (len(self.table) - 1))])
        return min(max(raw, self.lo), self.hi)

    def t(self, sigma: float) -> float:
        """The fraction of the table below sigma (the inverse of `sigma` before clipping)."""
        return float(torch.searchsorted(self.table, torch.tensor(float(sigma), dtype=torch.float64))) / (
            len(self.table) - 1
        )

    def uniform(self, generator: torch.Generator, hi: float = T_RANGE[1]) -> float:
        """DreamFusion's draw: t ~ U[0.02, hi], hi 0.98."""
        u = float(torch.rand((), generator=generator, dtype=torch.float64))
        return self.sigma(T_RANGE[0] + u * (hi - T_RANGE[0]))

    def annealed(self, step: int, n_steps: int, end: float = SDI_T_END) -> float:
        """SDI's schedule: t falling linearly from 0.98 at step 0 to `end` at the last step."""
        frac = step / max(n_steps - 1, 1)
        return self.sigma(T_RANGE[1] + frac * (end - T_RANGE[1]))

    def warmed_up(self, step: int, n_steps: int, generator: torch.Generator) -> float:
        """ISM's schedule: t ~ U[0.02, hi], hi falling linearly from 0.98 to 0.5 over the first 30% of the run."""
        frac = min(step / max(ISM_WARMUP * n_steps, 1), 1.0)
        return self.uniform(generator, hi=T_RANGE[1] + frac * (ISM_T_MAX - T_RANGE[1]))


def vp_weight(sigma: float) -> float:
    """DreamFusion's w(t) = 1 - abar(t) in VE terms: sigma^2 / (1 + sigma^2)."""
    return sigma**2 / (1 + sigma**2)


def ism_weight(sigma: float) -> float:
    """LucidDreamer's w(t) = sqrt((1 - abar(t)) / abar(t)) in VE terms: sigma itself."""
    return sigma


# --- the methods --------------------------------------------------------------------------
def _draws(y: Tensor, sigma: float, n_noise: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
    """(y repeated, z = y + sigma n), both [k B, C, H, W]: draw k of image b at row k * B + b, as paas_grad."""
    noise = torch.randn((n_noise, *y.shape), generator=generator, device=y.device, dtype=y.dtype)
    ys = y.expand(n_noise, *y.shape)
    return ys.flatten(0, 1), (ys + sigma * noise).flatten(0, 1)


def _mean(g: Tensor, n_noise: int) -> Tensor:
    return g.view(n_noise, -1, *g.shape[1:]).mean(dim=0)


@torch.no_grad()
def sds_grad(
    d_g: Branch, y: Tensor, sigma: float, *, n_noise: int = 1, generator: torch.Generator | None = None
) -> Tensor:
    """DreamFusion: g = w(sigma) (D_g(y + sigma n) - y) / sigma, w = sigma^2 / (1 + sigma^2): PAAS (Eq. 16) of
    the guided denoiser times w, on the same noise draws."""
    return vp_weight(sigma) * paas_grad(lambda x, s, c: d_g(x, sigma), y, sigma, n_noise=n_noise, generator=generator)


@torch.no_grad()
def csd_grad(
    d_c: Branch,
    d_u: Branch,
    y: Tensor,
    sigma: float,
    scale: float,
    *,
    d_neg: Branch | None = None,
    negative_scale: float = 0.0,
    n_noise: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Classifier score distillation: only the guidance term, g = w (s (D_c(z) - D_u(z)) - s_neg (D_neg(z) -
    D_u(z))) / sigma, the eps form w (s (eps_c - eps_u) - s_neg (eps_neg - eps_u)) negated and converted."""
    _, z = _draws(y, sigma, n_noise, generator)
    u = d_u(z, sigma)
    g = scale * (d_c(z, sigma) - u)
    if d_neg is not None and negative_scale:
        g = g - negative_scale * (d_neg(z, sigma) - u)
    return vp_weight(sigma) * _mean(g, n_noise) / sigma


@torch.no_grad()
def nfsd_grad(
    d_c: Branch,
    d_u: Branch,
    d_neg: Branch,
    y: Tensor,
    sigma: float,
    scale: float,
    sigma_split: float,
    *,
    n_noise: int = 1,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Noise-free score distillation: loss gradient delta_D + s delta_C with delta_C = eps_c - eps_u and
    delta_D = eps_u below the split (t < 200), eps_u - eps_neg above it. Negated and converted:
    g = s (D_c(z) - D_u(z)) / sigma + [(D_u(z) - z) / sigma if sigma <= sigma_split else (D_u(z) - D_neg(z)) / sigma].
    No timestep weighting."""
    _, z = _draws(y, sigma, n_noise, generator)
    u = d_u(z, sigma)
    domain = u - z if sigma <= sigma_split else u - d_neg(z, sigma)
    return _mean(scale * (d_c(z, sigma) - u) + domain, n_noise) / sigma


@torch.no_grad()
def ddim_invert(d: Branch, y: Tensor, sigmas: list[float]) -> Tensor:
    """Deterministic (DDIM, i.e. probability-flow Euler in sigma) inversion of y from sigmas[0] up to sigmas[-1]:
    z_0 = y, z_{i+1} = D(z_i; s_i) + s_{i+1} (z_i - D(z_i; s_i)) / s_i (DDIM's x0-estimate plus the next level's
    multiple of its eps estimate). For a point mass at a this is exact: z = a + (s_K / s_0) (y - a)."""
    z = y
    for s, s_next in zip(sigmas[:-1], sigmas[1:], strict=True):
        denoised = d(z, s)
        z = denoised + s_next * (z - denoised) / s
    return z


def inversion_levels(sigma_start: float, sigma: float, steps: int) -> list[float]:
    """steps + 1 levels from sigma_start up to sigma, evenly spaced in log sigma."""
    if sigma <= sigma_start:
        return [sigma_start, sigma_start]
    return [sigma_start * (sigma / sigma_start) ** (i / steps) for i in range(steps + 1)]


@torch.no_grad()
def sdi_grad(d_g: Branch, d_inv: Branch, y: Tensor, sigma: float, sigma_start: float, steps: int) -> Tensor:
    """Score distillation via inversion: SDS with the noise inferred by DDIM inversion instead of drawn.
    z = invert(y) to sigma with d_inv, whose implied noise is (z - y) / sigma, so
    g = w (D_g(z) - y) / sigma."""
    z = ddim_invert(d_inv, y, inversion_levels(sigma_start, sigma, steps))
    return vp_weight(sigma) * (d_g(z, sigma) - y) / sigma


@torch.no_grad()
def ism_grad(
    d_g: Branch, d_u: Branch, y: Tensor, sigma: float, sigma_s: float, sigma_start: float, steps: int
) -> Tensor:
    """Interval score matching: invert y to z_s at sigma_s < sigma with D_u, take one DDIM step on to
    z_t = D_u(z_s) + sigma (z_s - D_u(z_s)) / sigma_s; the loss gradient w (eps_g(z_t) - eps_u(z_s)) with ISM's
    w = sigma becomes g = D_g(z_t) - D_u(z_s) (both eps forms share z_t)."""
    sigma_s = min(max(sigma_s, sigma_start), sigma)
    z_s = ddim_invert(d_u, y, inversion_levels(sigma_start, sigma_s, steps))
    x0_s = d_u(z_s, sigma_s)
    z_t = x0_s + sigma * (z_s - x0_s) / sigma_s
    return ism_weight(sigma) * (d_g(z_t, sigma) - x0_s) / sigma


@torch.no_grad()
def vsd_grad(
    d_g: Branch, d_phi: Branch, y: Tensor, sigma: float, *, n_noise: int = 1, generator: torch.Generator | None = None
) -> Tensor:
    """Variational score distillation: loss gradient w (eps_g(z) - eps_phi(z)) with eps_phi the copy trained on
    the renders; negated and converted, g = w (D_g(z) - D_phi(z)) / sigma."""
    _, z = _draws(y, sigma, n_noise, generator)
    return vp_weight(sigma) * _mean(d_g(z, sigma) - d_phi(z, sigma), n_noise) / sigma


# --- a method bound to a prior ------------------------------------------------------------
class Scorer:
    """One of `METHODS` other than paas and naive, bound to a prior: g(y, sigma, view) for the fit loop and the
    canvas. ConfigError when the prior lacks what the method needs (separate branches; an online copy for vsd)."""

    def __init__(
        self,
        method: str,
        prior: Any,
        *,
        guidance_scale: float,
        sigma_range: tuple[float, float],
        negative_prompt: str | None = None,
        negative_scale: float = 0.0,
        inversion_steps: int = 4,
        n_noise: int = 1,
        vsd_lr: float = VSD_LR,
    ) -> None:
        if method in ("paas", "naive"):
            raise ConfigError(f"{method} is computed by core.chaining, not a Scorer")
        self.check(method, prior)
        has_branches = callable(getattr(prior, "branches", None))
        self.method, self.prior, self.scale = method, prior, guidance_scale
        self.has_branches, self.negative_prompt, self.negative_scale = has_branches, negative_prompt, negative_scale
        self.steps, self.n_noise, self.sigma_start = inversion_steps, n_noise, sigma_range[0]
        self.timesteps = Timesteps(prior.sigmas, *sigma_range)
        self.sigma_split = Timesteps(prior.sigmas, 0.0, math.inf).sigma(NFSD_T_SPLIT)
        self.copy = prior.online_copy(vsd_lr) if method == "vsd" else None
        if has_branches and (method in ("nfsd", "csd")):
            prior.branches(View(0.0, 0.0, 60.0, 1.5), negative_prompt)  # a bad negative prompt fails here, not later

    @staticmethod
    def check(method: str, prior: Any) -> None:
        """ConfigError for an unknown method, or a prior that cannot serve it."""
        if method not in METHODS:
            raise ConfigError(f"unknown scoring method {method!r}; known: {', '.join(METHODS)}")
        if method in GUIDED and not callable(getattr(prior, "branches", None)):
            raise ConfigError(
                f"--scoring.method {method} needs a prior with separate conditional and unconditional denoisers "
                "(toy, toy-learned, sd); this prior offers only its guided one"
            )
        if method == "vsd" and not callable(getattr(prior, "online_copy", None)):
            raise ConfigError("--scoring.method vsd needs a network to copy and adapt online: use --prior toy-learned")

    def __call__(self, y: Tensor, sigma: float, view: Any, generator: torch.Generator | None = None) -> Tensor:
        y = y.detach()
        m, k = self.method, self.n_noise
        if self.has_branches:
            b = self.prior.branches(view, self.negative_prompt)
            d_c, d_u, d_g = b.bind("cond"), b.bind("uncond"), b.guided(self.scale)
        else:  # sds and sdi on a prior with only its own (guided) denoiser
            cond = self.prior.condition(view)
            d_g = d_c = lambda x, s: self.prior.denoise(x, _sigmas(x, s), cond)  # noqa: E731
        if m == "sds":
            return sds_grad(d_g, y, sigma, n_noise=k, generator=generator)
        if m == "csd":
            neg = b.bind("negative") if self.negative_scale else None
            return csd_grad(
                d_c, d_u, y, sigma, self.scale, d_neg=neg, negative_scale=self.negative_scale, n_noise=k,
                generator=generator,
            )  # fmt: skip
        if m == "nfsd":
            return nfsd_grad(
                d_c, d_u, b.bind("negative"), y, sigma, self.scale, self.sigma_split, n_noise=k, generator=generator
            )
        if m == "sdi":  # SDI inverts with the guidance reversed, D_u - s (D_c - D_u), where it has both branches
            d_inv = b.guided(-self.scale) if self.has_branches else d_c
            return sdi_grad(d_g, d_inv, y, sigma, self.sigma_start, self.steps)
        if m == "ism":
            sigma_s = self.timesteps.sigma(self.timesteps.t(sigma) - ISM_INTERVAL)
            return ism_grad(d_g, d_u, y, sigma, sigma_s, self.sigma_start, self.steps)
        g = vsd_grad(d_g, lambda x, s: self.copy.denoise(x, s, view), y, sigma, n_noise=k, generator=generator)
        self.copy.train_step(y, view, generator)
        return g
