"""Plugging in any denoiser: `DenoiserPrior` wraps a callable D(x, sigma, cond), and `load_plugin` reads a
function that returns a prior from `--prior python:PACKAGE.MODULE:FUNCTION` or the `sjc.priors` entry points.

The loops work on images in [-1, 1] (the field's sigmoid features) or on unbounded latents. A denoiser of
data in [lo, hi] sees x_user = c + s x with c = (hi + lo) / 2, s = (hi - lo) / 2: noise scales by s, so
D(x; sigma) = (D_user(c + s x; s sigma) - c) / s, and its sigma range is divided by s.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..core.denoisers import Denoiser
from ..core.errors import ConfigError, UserError

PRIOR_ATTRIBUTES = ("channels", "image_size", "feature_activation", "sigma_min", "sigma_max", "sigmas")
PRIOR_METHODS = ("condition", "denoise", "decode")


class PluginError(UserError):
    """A plug-in prior that cannot be found, called or used."""


class DenoiserPrior:
    """A `Prior` made of any denoiser D(x, sigma, cond) in the VE convention x = y + sigma n.

    `denoiser(x [B, C, S, S], sigma [B], cond)` returns the posterior mean E[y | x] in the data's own units;
    `data_range` (lo, hi) bounds the data (None: unbounded latents, stored raw by the field); `sigma_min` and
    `sigma_max` are in the data's units, `sigmas` (optional) the network's discrete grid. `condition(view)`
    gives what the denoiser is conditioned on for a `cameras.View` (None: any view); by default None.
    `decode` turns data-space images into RGB in [-1, 1] (default: the identity for 3 channels in range, one
    channel repeated thrice)."""

    def __init__(
        self,
        denoiser: Denoiser,
        *,
        channels: int,
        image_size: int,
        sigma_min: float,
        sigma_max: float,
        data_range: tuple[float, float] | None = (-1.0, 1.0),
        sigmas: Tensor | None = None,
        prompt: str = "",
        condition: Callable[[Any], Any] | None = None,
        decode: Callable[[Tensor], Tensor] | None = None,
    ) -> None:
        if channels < 1 or image_size < 1:
            raise ConfigError(f"channels and image_size must be positive, got {channels} and {image_size}")
        if data_range is not None and not data_range[0] < data_range[1]:
            raise ConfigError(f"data_range must be (low, high) with low < high, got {data_range}")
        if decode is None and channels not in (1, 3):
            raise ConfigError(f"give decode= to turn {channels}-channel images into RGB for pictures")
        self.denoiser, self.prompt, self.channels, self.image_size = denoiser, prompt, channels, image_size
        self.feature_activation = "sigmoid" if data_range is not None else "none"
        lo, hi = data_range if data_range is not None else (-1.0, 1.0)
        self.centre, self.scale = (hi + lo) / 2, (hi - lo) / 2  # x_user = centre + scale * x
        self.sigma_min, self.sigma_max = sigma_min / self.scale, sigma_max / self.scale
        if not 0 < self.sigma_min < self.sigma_max:
            raise ConfigError(f"need 0 < sigma_min < sigma_max, got {sigma_min} and {sigma_max}")
        grid = None if sigmas is None else torch.as_tensor(sigmas, dtype=torch.float64).sort().values
        self.sigmas = None if grid is None else grid / self.scale
        self._condition, self._decode = condition, decode

    def condition(self, view: Any = None) -> Any:
        return self._condition(view) if self._condition is not None else None

    @torch.no_grad()
    def denoise(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        if tuple(x.shape[1:]) != (self.channels, self.image_size, self.image_size):
            size = self.image_size
            raise ValueError(f"this prior expects images [B, {self.channels}, {size}, {size}], got {tuple(x.shape)}")
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        c, s = self.centre, self.scale
        return (self.denoiser(c + s * x, s * sigma, cond).to(x.dtype) - c) / s

    def decode(self, x: Tensor) -> Tensor:
        if self._decode is not None:
            return self._decode(x)
        return x.expand(-1, 3, -1, -1) if self.channels == 1 else x


def load_plugin(spec: str) -> Callable[..., Any]:
    """The factory named by 'python:PACKAGE.MODULE:FUNCTION', or by an `sjc.priors` entry point's name."""
    if spec.startswith("python:"):
        module_name, _, attr = spec[len("python:") :].partition(":")
        if not module_name or not attr:
            raise PluginError(f"--prior {spec}: write python:PACKAGE.MODULE:FUNCTION, e.g. python:mypriors.gmm:make")
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise PluginError(f"--prior {spec}: cannot import {module_name!r} ({err}); is it on PYTHONPATH?") from None
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise PluginError(f"--prior {spec}: {module_name} has no function {attr!r}")
        return factory
    from importlib.metadata import entry_points

    found = [ep for ep in entry_points(group="sjc.priors") if ep.name == spec]
    if not found:
        raise PluginError(f"unknown prior {spec!r}")
    return found[0].load()


def build_plugin(spec: str, prompt: str, device: torch.device) -> Any:
    """Call the factory of `spec` as factory(prompt, device) and check that it returned a prior."""
    factory = load_plugin(spec)
    try:
        inspect.signature(factory).bind(prompt, device)
    except TypeError:
        raise PluginError(f"--prior {spec}: the factory must accept (prompt, device)") from None
    except ValueError:  # no signature to inspect (a builtin): just call it
        pass
    try:
        prior = factory(prompt, device)
    except UserError:
        raise
    except Exception as err:  # a bug in the plug-in: name it in one line; Python shows where when called there
        raise PluginError(f"--prior {spec}: the factory raised {type(err).__name__}: {err}") from err
    missing = [a for a in PRIOR_ATTRIBUTES if not hasattr(prior, a)]
    missing += [m for m in PRIOR_METHODS if not callable(getattr(prior, m, None))]
    if missing:
        raise PluginError(
            f"--prior {spec} returned {type(prior).__name__}, which lacks {', '.join(missing)}; return a "
            "sjc.priors.DenoiserPrior, or an object with every attribute of sjc.core.denoisers.Prior"
        )
    return prior
