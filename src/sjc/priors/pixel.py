"""Unconditional pixel-space diffusers priors (`UNet2DModel` checkpoints) as VE denoisers D(x; sigma).

DDPM-style checkpoints (alphas_cumprod schedule, eps- or v-prediction) go through `discrete.DiscreteDenoiser`
(clipped to the data range when their scheduler clips its x0 prediction).
Score-SDE VE checkpoints (NCSN++) take sigma and return the score s(x; sigma) = grad log p_sigma(x), so
D(x; sigma) = x + sigma^2 s(x; sigma) (Tweedie). Their data lie in [0, 1]: seen from the project's
[-1, 1] images, where noise is twice as large, D(x; sigma) = 2 D01((x + 1) / 2; sigma / 2) - 1.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.denoisers import Denoiser
from ..core.errors import ConfigError
from .discrete import DiscreteDenoiser
from .loading import ModelKind, WeightsNotFoundError, compiled, import_classes, locate, reading, resolve_dtype
from .settings import PixelConfig

VE_SCHEDULER = "ScoreSdeVeScheduler"
# DDPMPipeline.save_pretrained's layout, then the root layout of the public google/ddpm-* and google/ncsnpp-*
# repositories (config.json next to scheduler_config.json).
KIND = ModelKind(
    title="Pixel-space model",
    flag="--pixel.model",
    example=PixelConfig.model,
    layouts=(
        (("unet", ("config.json",)), ("scheduler", ("scheduler_config.json",))),
        (("", ("config.json",)), ("", ("scheduler_config.json",))),
    ),
    holds="config.json and scheduler_config.json, or unet/ and scheduler/ folders holding them (a diffusers "
    "UNet2DModel checkpoint)",
)


class PixelPriorError(ConfigError):
    """Something the pixel prior cannot do: read a class-conditional network, or an image size."""


@dataclass
class PixelComponents:
    unet: Any  # diffusers UNet2DModel
    kind: str  # 'ddpm' (alphas_cumprod, eps/v network) or 'score-sde-ve' (sigma in, score out)
    scheduler_config: dict
    alphas_cumprod: Tensor | None  # [T] for 'ddpm'


def load_components(model: str, device: torch.device | str, dtype: torch.dtype) -> PixelComponents:
    """Read the UNet2DModel and noise schedule of `model` (folder or hub id) in either layout."""
    source, layouts = locate(model, KIND)
    lib = import_classes(model, KIND, {"schedule": "diffusers.DDPMScheduler", "unet": "diffusers.UNet2DModel"})
    for k, layout in enumerate(layouts):
        unet_dir, scheduler_dir = (sub or None for sub, _ in layout)
        try:
            with reading(model, KIND, source):
                config = dict(lib["schedule"].load_config(source, subfolder=scheduler_dir))
                unet = lib["unet"].from_pretrained(source, subfolder=unet_dir, torch_dtype=dtype)
            break
        except WeightsNotFoundError:
            if k == len(layouts) - 1:  # the last layout's reason is the one reported
                raise
    kind = "score-sde-ve" if config.get("_class_name") == VE_SCHEDULER else "ddpm"
    _check_network(model, unet.config, kind)
    alphas_cumprod = None
    if kind == "ddpm":
        alphas_cumprod = lib["schedule"].from_config(config).alphas_cumprod.clone()  # any beta schedule
    return PixelComponents(unet.to(device).eval().requires_grad_(False), kind, config, alphas_cumprod)


def _check_network(model: str, config: Any, kind: str) -> None:
    if getattr(config, "num_class_embeds", None) or getattr(config, "class_embed_type", None):
        raise PixelPriorError(f"{model!r} is class-conditional; the pixel prior reads unconditional UNet2DModels")
    if kind == "score-sde-ve" and config.time_embedding_type != "fourier":
        raise PixelPriorError(
            f"{model!r} has a {VE_SCHEDULER} but a {config.time_embedding_type!r} time embedding; score-SDE "
            "networks embed sigma with a 'fourier' embedding and return the score"
        )


# --- denoisers --------------------------------------------------------------------------------
def ve_sigmas(scheduler_config: dict) -> Tensor:
    """The geometric sigma grid of a score-SDE VE schedule, ascending, float64 (the scheduler's
    discrete_sigmas: num_train_timesteps values from sigma_min to sigma_max)."""
    lo, hi = scheduler_config.get("sigma_min", 0.01), scheduler_config.get("sigma_max", 1348.0)
    n = scheduler_config.get("num_train_timesteps", 2000)
    return torch.linspace(math.log(lo), math.log(hi), n, dtype=torch.float64).exp()


class ScoreDenoiser:
    """D(x; sigma) = x + sigma^2 s(x; sigma) for a network s(x, sigma [B]) returning the score."""

    def __init__(self, network: Callable[[Tensor, Tensor], Tensor], sigmas: Tensor) -> None:
        self.network, self.sigmas = network, sigmas

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        sigma = torch.as_tensor(sigma, dtype=x.dtype, device=x.device).reshape(-1).expand(x.shape[0])
        return x + sigma.view(-1, *([1] * (x.dim() - 1))) ** 2 * self.network(x, sigma).to(x.dtype)


class ClippedDenoiser:
    """D clamped to [-limit, limit], as DDPM schedulers with clip_sample clamp their x0 prediction: the
    posterior mean of data in that range lies in it, so this only removes the network's overshoot."""

    def __init__(self, denoiser: Denoiser, limit: float = 1.0) -> None:
        self.denoiser, self.limit = denoiser, limit

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        return self.denoiser(x, sigma, cond).clamp(-self.limit, self.limit)


class UnitRangeDenoiser:
    """A denoiser of data in [0, 1] seen from images in [-1, 1]: x = 2u - 1 doubles the noise, so
    D(x; sigma) = 2 D_unit((x + 1) / 2; sigma / 2) - 1."""

    def __init__(self, denoiser: Denoiser) -> None:
        self.denoiser = denoiser

    def __call__(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        return 2 * self.denoiser((x + 1) / 2, torch.as_tensor(sigma) / 2, cond) - 1


class PixelPrior:
    """The `Prior` of an unconditional RGB UNet2DModel: D(x; sigma) on [B, 3, S, S] images in [-1, 1]."""

    channels = 3
    feature_activation = "sigmoid"  # the field holds RGB in [-1, 1]

    prompt = ""  # unconditional

    def __init__(
        self,
        parts: PixelComponents,
        *,
        resolution: int | None = None,
        data_range: str = "auto",
        device: torch.device | str = "cpu",
        compile: str = "off",
    ) -> None:
        self.parts, self.kind, self.device = parts, parts.kind, torch.device(device)
        self.unet = compiled(parts.unet, compile, self.device)
        self.image_size = int(resolution or _sample_size(self.unet.config))
        factor = 2 ** (len(self.unet.config.block_out_channels) - 1)
        if self.image_size % factor:
            raise PixelPriorError(f"--pixel.resolution must be a multiple of {factor} here, got {self.image_size}")
        if data_range not in ("auto", "unit", "signed"):
            raise PixelPriorError(f"unknown data range {data_range!r}; use 'auto', 'unit' ([0, 1]) or 'signed'")
        # Score-SDE VE models were trained on [0, 1] images (their pipeline clamps to [0, 1]); DDPMs on [-1, 1].
        self.data_range = data_range if data_range != "auto" else ("unit" if self.kind == "score-sde-ve" else "signed")
        if self.kind == "score-sde-ve":
            grid = ve_sigmas(parts.scheduler_config)
            native: Denoiser = ScoreDenoiser(self._score_network, grid)
        else:
            native = DiscreteDenoiser(self._eps_network, parts.alphas_cumprod, _prediction_type(parts))
            grid = native.sigmas
            if parts.scheduler_config.get("clip_sample", True):  # the checkpoint's x0 prediction is clipped
                native = ClippedDenoiser(native, parts.scheduler_config.get("clip_sample_range", 1.0))
        unit = self.data_range == "unit"
        self.denoiser: Denoiser = UnitRangeDenoiser(native) if unit else native
        self.sigmas = (2 * grid if unit else grid).float()
        self.sigma_min, self.sigma_max = float(self.sigmas[0]), float(self.sigmas[-1])

    @classmethod
    def from_pretrained(
        cls, model: str = PixelConfig.model, *, device: torch.device | str = "cpu", dtype: str = "auto", **kwargs: Any
    ) -> PixelPrior:
        """Load `model` (folder or hub id) onto `device`; kwargs go to the constructor."""
        return cls(load_components(model, device, resolve_dtype(dtype, torch.device(device))), device=device, **kwargs)

    def _eps_network(self, x_in: Tensor, t: Tensor, cond: Any = None) -> Tensor:
        out = self.unet(x_in.to(self.device, self.unet.dtype), t.to(self.device)).sample.float()
        # Checkpoints with learned variances (improved DDPM) append C variance channels to the C eps channels.
        return out[:, : x_in.shape[1]].to(x_in.device)

    def _score_network(self, x: Tensor, sigma: Tensor) -> Tensor:
        out = self.unet(x.to(self.device, self.unet.dtype), sigma.to(self.device, torch.float32)).sample
        return out.float().to(x.device)

    def condition(self, view: Any = None) -> None:
        """Nothing: the model is unconditional (`sjc.priors.build_prior` refuses prompts)."""
        return None

    @torch.no_grad()
    def denoise(self, x: Tensor, sigma: Tensor, cond: Any = None) -> Tensor:
        """Posterior mean E[y | x] [B, 3, S, S] for images x in [-1, 1] noised by sigma [B]."""
        if tuple(x.shape[1:]) != (3, self.image_size, self.image_size):
            size = self.image_size
            raise ValueError(f"PixelPrior expects images [B, 3, {size}, {size}], got {tuple(x.shape)}")
        return self.denoiser(x, sigma, None)

    def decode(self, x: Tensor) -> Tensor:
        """Identity: the prior works in RGB pixel space."""
        return x


def _sample_size(config: Any) -> int:
    size = config.sample_size
    return int(size[0] if isinstance(size, list | tuple) else size)


def _prediction_type(parts: PixelComponents) -> str:
    return parts.scheduler_config.get("prediction_type", "epsilon")
