"""Denoisers D(x; sigma, cond) in the variance-exploding convention x = y + sigma * n.

Every prior the project uses is a Denoiser; the score of the noised density is
(D(x; sigma) - x) / sigma^2 (Tweedie). The analytic denoisers here are exact, so the rest
of the pipeline can be tested against closed forms.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor


class Denoiser(Protocol):
    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        """x [B, C, H, W], sigma [B] -> the posterior mean E[y | x] [B, C, H, W]."""
        ...


def _per_sample(sigma: Tensor, x: Tensor) -> Tensor:
    """sigma [B] (or a scalar) shaped to broadcast over x [B, ...]."""
    sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device)
    return sigma.reshape(-1, *([1] * (x.dim() - 1)))


def score(denoiser: Denoiser, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
    """Score of the sigma-noised data density at x: (D(x; sigma) - x) / sigma^2."""
    return (denoiser(x, sigma, cond) - x) / _per_sample(sigma, x) ** 2


class PointMassDenoiser:
    """Data is the single image `target`: D(x; sigma) = target for every x and sigma."""

    def __init__(self, target: Tensor) -> None:
        self.target = target

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        return self.target.to(x).expand_as(x).clone()


class GaussianDenoiser:
    """Data ~ N(mean, std^2 I): D(x; sigma) = mean + std^2 / (std^2 + sigma^2) (x - mean)."""

    def __init__(self, mean: Tensor | float, std: float) -> None:
        self.mean, self.std = mean, std

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        s2 = _per_sample(sigma, x) ** 2
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device)
        return mean + self.std**2 / (self.std**2 + s2) * (x - mean)


class EmpiricalDenoiser:
    """Data is uniform over a set of images y_i (N, C, H, W), or weighted by `log_weights` [N] (log p_i up to a
    constant): the exact posterior mean D(x; sigma) = sum_i softmax_i(log p_i - |x - y_i|^2 / (2 sigma^2)) y_i.

    Distances use |x|^2 - 2 x.y + |y|^2 in float64 (in float32 the small gaps between
    similar images would cancel away); the softmax is accumulated over chunks of the set
    with a running log-sum-exp, so no weight underflows to a 0/0 at small sigma.

    Sets of at least `screen_from` images (default 512: every view bucket of the toy prior) are screened
    first: float32 distances to every image, with a worst-case bound on their rounding, pick the images
    whose weight can be within e^-SCREEN_NATS of the largest, and only those enter the float64 sum. The
    rest weigh less than N e^-SCREEN_NATS (below 1e-17 for N up to 10^5) of the total, under float64's
    own rounding, so the result is the unscreened one to rounding; at small sigma, where the posterior
    sits on a few images, it costs a float32 product instead of two float64 ones over the whole set.
    """

    SCREEN_NATS = 50.0

    def __init__(
        self, images: Tensor, chunk: int = 2048, screen_from: int = 512, log_weights: Tensor | None = None
    ) -> None:
        if images.dim() != 4 or images.shape[0] == 0:
            raise ValueError(f"expected a non-empty image set [N, C, H, W], got shape {tuple(images.shape)}")
        self.images = images.reshape(images.shape[0], -1).to(torch.float64)
        self.sq_norms = self.images.square().sum(-1)
        if log_weights is not None and tuple(log_weights.shape) != (images.shape[0],):
            raise ValueError(f"log_weights must have one value per image, got shape {tuple(log_weights.shape)}")
        self.log_weights = None if log_weights is None else log_weights.to(self.images)
        self.chunk = chunk
        self.screen = self.images.shape[0] >= screen_from
        if self.screen:  # the screen's float32 copy of the set and its norms; the largest norm bounds its rounding
            self.images32, self.sq_norms32 = self.images.float(), self.sq_norms.float()
            self.max_sq_norm = self.sq_norms.max()

    def to(self, device: torch.device | str) -> EmpiricalDenoiser:
        self.images, self.sq_norms = self.images.to(device), self.sq_norms.to(device)
        if self.log_weights is not None:
            self.log_weights = self.log_weights.to(device)
        if self.screen:
            self.images32, self.sq_norms32 = self.images32.to(device), self.sq_norms32.to(device)
            self.max_sq_norm = self.max_sq_norm.to(device)
        return self

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        B = x.shape[0]
        flat_x = x.reshape(B, -1).to(self.images)
        inv_two_var = 1.0 / (2 * _per_sample(sigma, flat_x) ** 2)  # [B, 1]
        images, sq_norms, log_weights = self.images, self.sq_norms, self.log_weights
        if self.screen:
            keep = self._screened(flat_x, inv_two_var)
            if keep is not None:
                images, sq_norms = images[keep], sq_norms[keep]
                log_weights = None if log_weights is None else log_weights[keep]
        return self._posterior_mean(flat_x, inv_two_var, images, sq_norms, log_weights).reshape_as(x).to(x.dtype)

    def _screened(self, flat_x: Tensor, inv_two_var: Tensor) -> Tensor | None:
        """Indices of the images that can weigh more than e^-SCREEN_NATS of the largest for some sample
        of the batch, or None when that is a quarter of the set or more (then the full sum is cheaper)."""
        x32 = flat_x.float()
        d2 = x32.square().sum(-1, keepdim=True) - 2 * x32 @ self.images32.T + self.sq_norms32  # [B, N]
        # float32 rounding of |x|^2 - 2 x.y + |y|^2 is at most 2 gamma_d (|x|^2 + |y|^2) (gamma_d = d u / (1 - d u)
        # for d-term sums); a difference of two such distances at most twice that.
        d, unit = flat_x.shape[1], torch.finfo(torch.float32).eps / 2
        gamma = d * unit / (1 - d * unit)
        slack = 4 * gamma * (flat_x.square().sum(-1, keepdim=True) + self.max_sq_norm)
        if self.log_weights is not None:  # a weight e^w moves an image's logit as a distance w / inv_two_var closer
            d2 = d2 - self.log_weights.float()[None] / inv_two_var.float()
        reach = d2.amin(dim=1, keepdim=True) + self.SCREEN_NATS / inv_two_var + slack
        keep = (d2 <= reach).any(dim=0).nonzero().squeeze(1)
        return None if 4 * keep.numel() >= d2.shape[1] else keep

    def _posterior_mean(
        self, flat_x: Tensor, inv_two_var: Tensor, images: Tensor, sq_norms: Tensor, log_weights: Tensor | None = None
    ) -> Tensor:
        B = flat_x.shape[0]
        x_sq = flat_x.square().sum(-1, keepdim=True)
        run_max = torch.full((B, 1), -torch.inf, dtype=flat_x.dtype, device=flat_x.device)
        run_sum = torch.zeros_like(run_max)
        run_acc = torch.zeros_like(flat_x)
        for start in range(0, images.shape[0], self.chunk):
            ys, y_sq = images[start : start + self.chunk], sq_norms[start : start + self.chunk]
            d2 = (x_sq - 2 * flat_x @ ys.T + y_sq).clamp_min(0)  # [B, n]
            logits = -d2 * inv_two_var
            if log_weights is not None:
                logits = logits + log_weights[start : start + self.chunk]
            new_max = torch.maximum(run_max, logits.amax(dim=1, keepdim=True))
            rescale = torch.exp(run_max - new_max)
            w = torch.exp(logits - new_max)
            run_sum = run_sum * rescale + w.sum(dim=1, keepdim=True)
            run_acc = run_acc * rescale + w @ ys
            run_max = new_max
        return run_acc / run_sum


class ConditionalDenoiser:
    """Routes each call to the denoiser registered under its `cond` key (a class-conditional
    prior built from one denoiser per label)."""

    def __init__(self, denoisers: Mapping[Hashable, Denoiser]) -> None:
        self.denoisers = dict(denoisers)

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        if cond not in self.denoisers:
            known = ", ".join(map(str, self.denoisers))
            raise KeyError(f"no denoiser for condition {cond!r}; known conditions: {known}")
        return self.denoisers[cond](x, sigma, None)


class ClassifierFreeGuidance:
    """D_uncond + scale * (D_cond - D_uncond), both branches in one batched call.

    `cond` is a pair (conditional, unconditional) and the wrapped denoiser must accept a
    batch of conditions built by `batch_conds` (default: a Python list).
    """

    def __init__(self, denoiser: Denoiser, scale: float, batch_conds=None) -> None:
        self.denoiser, self.scale = denoiser, scale
        self.batch_conds = batch_conds or (lambda c, u, n: [c] * n + [u] * n)

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        cond_c, cond_u = cond
        B = x.shape[0]
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(B)
        both = self.denoiser(torch.cat([x, x]), torch.cat([sigma, sigma]), self.batch_conds(cond_c, cond_u, B))
        d_cond, d_uncond = both[:B], both[B:]
        return d_uncond + self.scale * (d_cond - d_uncond)


class Prior(Protocol):
    """A 2D diffusion prior as the loops see it: a denoiser bound to its prompt, plus its data space.

    The prompt enters once, when the prior is built; the loop then asks only for the conditioning of a view
    (`condition`), where a text prior adds its own view prefix. `sjc.priors.DenoiserPrior` makes one from
    any callable D(x, sigma, cond).

    Two optional methods serve the score-distillation methods of `core.methods` (docs/methods.md); a prior
    without them runs paas, naive, sds and sdi only:
      branches(view, negative_prompt=None) -> methods.Branches: its unguided denoiser and the conditions of the
        prompt, of its unconditional branch and of a negative prompt (csd, nfsd, ism, vsd; sds and sdi guide
        with them when present);
      online_copy(lr) -> an object with denoise(x, sigma, view) and train_step(y, view, generator) (vsd).
    A third lets image-to-3D use a prior whose data space is not RGB pixels: encode(rgb [B, 3, H, W] in [-1, 1])
    -> data-space images (Stable Diffusion's VAE latents); an RGB prior needs none."""

    prompt: str  # what it was built for ('' for an unconditional prior)
    channels: int  # channels of the data space the field renders (3 for RGB, 4 for SD latents)
    image_size: int  # side of the data-space image the field renders
    feature_activation: str  # 'sigmoid' for pixel priors in [-1, 1], 'none' for latents
    sigma_min: float
    sigma_max: float
    sigmas: Tensor | None  # the discrete sigma grid of the network, or None when continuous

    def condition(self, view: Any = None) -> Any:
        """What `denoise` is conditioned on for an image of the prompt seen from `view` (a `cameras.View`;
        None: an image of any view, as the 2D canvas and the sampler draw)."""
        ...

    def denoise(self, x: Tensor, sigma: Tensor, cond: Any) -> Tensor:
        """x [B, C, H, W] noised as y + sigma n, sigma [B] -> the posterior mean E[y | x] [B, C, H, W]."""
        ...

    def decode(self, x: Tensor) -> Tensor:
        """Data-space images [B, C, H, W] to RGB in [-1, 1] for viewing."""
        ...
