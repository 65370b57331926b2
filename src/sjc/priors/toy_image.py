"""The toy world's image-conditioned exact prior: a picture of an object at a known view picks the object, and the
exact denoiser of what that picks scores the views the picture does not show (the toy world's Zero-1-to-3).

The posterior over the suite's objects given the picture y_ref at view v is p(k | y_ref) ∝ exp(-|r_k(v) - y_ref|^2 /
(2 s^2)), r_k(v) the true render of object k from v and s the picture's noise (`picture_noise`, in [-1, 1] units).
Each scored view is then denoised by the exact posterior mean of the mixture of the objects' renders, weighted by
p(k | y_ref): one `EmpiricalDenoiser` per view bucket over the renders of every object that keeps a weight, each
render's log-weight log p(k | y_ref) - log N_k(bucket) (so every object weighs what the posterior says, however
many of its renders fall in the bucket). Objects below `min_weight` are left out, so a sharp posterior gives
exactly the one object's denoiser.
"""

from __future__ import annotations

import math
from collections.abc import Hashable
from pathlib import Path

import torch
from torch import Tensor

from ..core.cameras import View, view_bucket
from ..core.denoisers import ConditionalDenoiser, EmpiricalDenoiser
from .settings import SUITE_PROMPTS
from .toy import BACKGROUND, SIGMA_RANGE, make_dataset, parse_prompt, render_scene_views

PICTURE_NOISE = 0.1  # the picture's noise s, in [-1, 1] units: a toy render differs from another object's by far more
ELEVATION_RANGE = (-30.0, 85.0)  # the elevations `estimate_elevation` weighs, degrees
ESTIMATE_SIZE = 64  # pixels: the side a picture is read at to estimate its elevation


def log_likelihoods(
    picture: Tensor,
    views: list[View],
    prompts: tuple[str, ...] = SUITE_PROMPTS,
    picture_noise: float = PICTURE_NOISE,
    supersample: int = 1,
) -> Tensor:
    """log p(picture | object, view) up to a constant, [objects, views]: -|r_k(v) - picture|^2 / (2 s^2) for a picture
    [3, S, S] in [-1, 1], with the true renders r_k(v) averaged over `supersample`^2 rays a pixel (as a picture
    resized by area averages its pixels; 1: one ray through each pixel's centre)."""
    size, picture = picture.shape[-1], picture.double()
    rows = []
    for p in prompts:
        renders = render_scene_views(parse_prompt(p), views, size * supersample, BACKGROUND)[0]
        if supersample > 1:
            renders = torch.nn.functional.avg_pool2d(renders, supersample)
        rows.append(-(renders.double() - picture).square().sum(dim=(1, 2, 3)) / (2 * picture_noise**2))
    return torch.stack(rows)


def object_posterior(
    picture: Tensor, view: View, prompts: tuple[str, ...] = SUITE_PROMPTS, picture_noise: float = PICTURE_NOISE
) -> dict[str, float]:
    """p(object | picture) over `prompts`, for a picture [3, S, S] in [-1, 1] seen from `view` (uniform prior)."""
    weights = torch.softmax(log_likelihoods(picture, [view], prompts, picture_noise)[:, 0], dim=0)
    return dict(zip(prompts, weights.tolist(), strict=True))


def estimate_elevation(
    picture: Tensor,
    view: View,
    prompts: tuple[str, ...] = SUITE_PROMPTS,
    elevations: tuple[float, float] = ELEVATION_RANGE,
    picture_noise: float = PICTURE_NOISE,
    supersample: int = 2,
) -> tuple[float, dict[str, float]]:
    """The elevation of the camera that took `picture` [3, S, S] (its azimuth, field of view and radius those of
    `view`), to the degree: the most probable one under the joint posterior over (object in `prompts`, elevation),
    both uniform a priori, searched every 3 degrees over `elevations` and then degree by degree around the best.
    Renders are averaged over `supersample`^2 rays a pixel, as a picture resized by area averages its pixels (read
    the picture at 64 px or more: a few pixels of outline do not pin the elevation). Returns the elevation with
    the posterior over the objects there."""

    def logits(candidates: list[float]) -> Tensor:  # [objects, candidates]
        views = [View(view.azimuth, e, view.fov, view.radius) for e in candidates]
        return log_likelihoods(picture, views, prompts, picture_noise, supersample)

    lo, hi = elevations
    coarse = [float(e) for e in range(math.ceil(lo), math.floor(hi) + 1, 3)]
    guess = coarse[int(torch.logsumexp(logits(coarse), dim=0).argmax())]
    fine = [e for e in (guess + d for d in range(-3, 4)) if lo <= e <= hi]
    table = logits(fine)
    best = int(torch.logsumexp(table, dim=0).argmax())
    weights = torch.softmax(table[:, best], dim=0)
    return fine[best], dict(zip(prompts, weights.tolist(), strict=True))


class ToyImagePrior:
    """Exact denoiser of the toy world given one picture of an object at a known view (no prompt)."""

    prompt = ""
    channels = 3
    feature_activation = "sigmoid"
    background = BACKGROUND
    sigma_min, sigma_max = SIGMA_RANGE
    sigmas = None

    def __init__(
        self,
        picture: Tensor,
        view: View,
        n_images: int = 5000,
        seed: int = 0,
        cache_dir: str | Path | None = None,
        picture_noise: float = PICTURE_NOISE,
        min_weight: float = 1e-6,
        device: torch.device | str = "cpu",
    ) -> None:
        self.image_size, self.view = picture.shape[-1], view
        self.posterior = object_posterior(picture, view, picture_noise=picture_noise)
        kept = {p: w for p, w in self.posterior.items() if w >= min_weight}
        datasets = {p: make_dataset(p, n_images, self.image_size, seed, cache_dir) for p in kept}
        denoisers = {}
        for bucket in sorted({b for d in datasets.values() for b in d.buckets}):
            images, log_weights = [], []
            for p, d in datasets.items():
                rows = [i for i, b in enumerate(d.buckets) if b == bucket]
                if rows:
                    images.append(d.images[rows])
                    log_weights.append(torch.full((len(rows),), math.log(kept[p]) - math.log(len(rows))))
            weights = torch.cat(log_weights) if len(images) > 1 else None  # one object: the uniform denoiser
            denoisers[bucket] = EmpiricalDenoiser(torch.cat(images), log_weights=weights).to(device)
        self.denoiser = ConditionalDenoiser(denoisers)

    @property
    def best(self) -> str:
        """The object the picture most likely shows."""
        return max(self.posterior, key=self.posterior.get)

    def condition(self, view: View | None = None) -> Hashable:
        if view is None:
            raise ValueError("the image-conditioned toy prior scores views: give one")
        return view_bucket(view)

    def denoise(self, x: Tensor, sigma: Tensor, cond: Hashable) -> Tensor:
        return self.denoiser(x, sigma, cond)

    def decode(self, x: Tensor) -> Tensor:
        return x
