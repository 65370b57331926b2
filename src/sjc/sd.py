"""Stable Diffusion 1.x / 2.x (any diffusers checkpoint) as the SJC prior, in VE sigma form.

The UNet becomes D(x; sigma) through `discrete.DiscreteDenoiser` (sigma = sqrt((1 - a) / a), input
x / sqrt(1 + sigma^2), eps- or v-prediction as the checkpoint's scheduler says), guided as
D_u + scale * (D_c - D_u). The field renders VAE latents; `decode` / `encode` cross to RGB with the VAE.
diffusers and transformers are imported only when a model is loaded (the `[sd]` extra).
"""

from __future__ import annotations

import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from .config import SDConfig
from .denoisers import ClassifierFreeGuidance
from .discrete import DiscreteDenoiser

DEFAULT_MODEL = SDConfig.model
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
# What a diffusers Stable Diffusion folder must hold (any one file of each tuple will do).
REQUIRED_FILES = {
    "unet": ("config.json",),
    "vae": ("config.json",),
    "text_encoder": ("config.json",),
    "tokenizer": ("vocab.json", "tokenizer.json"),
    "scheduler": ("scheduler_config.json",),
}
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_PARTS = "unet/, vae/, text_encoder/, tokenizer/ and scheduler/"
_HOW_TO_FOLDER = (
    f"Give --sd.model a diffusers folder holding {_PARTS} (as StableDiffusionPipeline.save_pretrained writes "
    f"it), or a Hugging Face model id such as {DEFAULT_MODEL} whose files are in your Hugging Face cache."
)
_HOW_TO_HUB = (
    "Download it once, online, with `hf download {model}` (it lands in that cache), or give --sd.model a "
    f"local diffusers folder holding {_PARTS}."
)


class WeightsNotFoundError(Exception):
    """The Stable Diffusion weights, or the packages that read them, are not available."""


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    """'auto' is float16 on CUDA and float32 elsewhere; otherwise the named dtype."""
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use 'auto', {', '.join(repr(k) for k in DTYPES)}")
    return DTYPES[name]


def hub_cache_dir() -> str:
    """Where huggingface_hub keeps downloaded models ($HF_HUB_CACHE, $HF_HOME/hub, or the default)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:
        home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
        return os.environ.get("HF_HUB_CACHE", os.path.join(home, "hub"))


def _not_found(model: str, where: str, reason: str, how_to: str = _HOW_TO_FOLDER) -> WeightsNotFoundError:
    how_to = how_to.format(model=model)
    return WeightsNotFoundError(f"Stable Diffusion model {model!r} not found: looked for {where}; {reason}. {how_to}")


def locate(model: str) -> Path | str:
    """A local checkpoint folder (checked for its parts), or `model` itself when it reads as a hub id."""
    path = Path(model).expanduser()
    if path.is_dir():
        missing = [f"{sub}/{names[0]}" for sub, names in REQUIRED_FILES.items() if not _any_file(path / sub, names)]
        if missing:
            raise _not_found(model, f"the folder {path.resolve()}", f"it lacks {', '.join(missing)}")
        return path
    if path.exists():
        raise _not_found(model, f"the folder {path.resolve()}", "it is a file, not a folder")
    if not REPO_ID.match(model):
        raise _not_found(model, f"the folder {path.resolve()}", "no such folder")
    return model


def _any_file(folder: Path, names: tuple[str, ...]) -> bool:
    return any((folder / name).is_file() for name in names)


def where_on_hub(model: str) -> str:
    """Where a model named by a hub id was looked for (for missing-weights messages)."""
    where = f"a local folder named {model!r} (none here), then the Hugging Face cache at {hub_cache_dir()}"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return where + " (HF_HUB_OFFLINE is set, so nothing was downloaded)"
    return where + " and the hub"


@dataclass
class SDComponents:
    unet: Any  # diffusers UNet2DConditionModel
    vae: Any  # diffusers AutoencoderKL
    text_encoder: Any  # transformers CLIPTextModel
    tokenizer: Any  # transformers CLIPTokenizer
    alphas_cumprod: Tensor  # [T], decreasing with the timestep
    prediction_type: str  # 'epsilon' or 'v_prediction', from the checkpoint's scheduler config


def _import_libraries(model: str) -> dict[str, Any]:
    """The diffusers / transformers classes the loader needs (imported here: the [sd] extra)."""
    try:
        from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as err:
        raise WeightsNotFoundError(
            f"Stable Diffusion model {model!r} cannot be read: the [sd] extra is not installed ({err}). "
            "Install it with `pip install 'sjc[sd]'` (diffusers, transformers), then give --sd.model a "
            "diffusers checkpoint folder or a Hugging Face model id in your Hugging Face cache."
        ) from None
    return dict(
        unet=UNet2DConditionModel, vae=AutoencoderKL, schedule=DDPMScheduler, text=CLIPTextModel, tok=CLIPTokenizer
    )


def load_components(model: str, device: torch.device | str, dtype: torch.dtype) -> SDComponents:
    """Read UNet, VAE, text encoder, tokenizer and noise schedule of `model` (folder or hub id).

    The VAE stays in float32: it only runs for pictures, and half-precision VAEs can overflow."""
    source = locate(model)
    lib = _import_libraries(model)
    local = isinstance(source, Path)
    where = f"the folder {Path(source).resolve()}" if local else where_on_hub(model)
    try:
        with warnings.catch_warnings():  # deprecation chatter of the hub client, not the user's business
            warnings.filterwarnings("ignore", module=r"huggingface_hub\.")
            config = lib["schedule"].load_config(source, subfolder="scheduler")
            schedule = lib["schedule"].from_config(config)  # computes alphas_cumprod for any beta schedule
            tokenizer = lib["tok"].from_pretrained(source, subfolder="tokenizer")
            text_encoder = lib["text"].from_pretrained(source, subfolder="text_encoder")
            vae = lib["vae"].from_pretrained(source, subfolder="vae", torch_dtype=torch.float32)
            unet = lib["unet"].from_pretrained(source, subfolder="unet", torch_dtype=dtype)
    except (OSError, ValueError) as err:  # what diffusers / transformers raise for absent or unreadable files
        reason = str(err).strip().splitlines()[0].rstrip(".")
        raise _not_found(model, where, reason, _HOW_TO_FOLDER if local else _HOW_TO_HUB) from None
    return SDComponents(
        unet=unet.to(device).eval().requires_grad_(False),
        vae=vae.to(device).eval().requires_grad_(False),
        text_encoder=text_encoder.to(device=device, dtype=dtype).eval().requires_grad_(False),
        tokenizer=tokenizer,
        alphas_cumprod=schedule.alphas_cumprod.clone(),
        prediction_type=config.get("prediction_type", "epsilon"),
    )


class StableDiffusionPrior:
    """The `Prior` of text-to-3D: guided D(x; sigma, text) over 4-channel latents of resolution / 8."""

    feature_activation = "none"  # the field holds latents directly

    def __init__(
        self,
        parts: SDComponents,
        *,
        guidance_scale: float = 100.0,
        negative_prompt: str = "",
        resolution: int = 512,
        device: torch.device | str = "cpu",
    ) -> None:
        self.parts, self.device = parts, torch.device(device)
        self.unet, self.vae = parts.unet, parts.vae
        self.channels = int(parts.unet.config.in_channels)
        self.vae_factor = 2 ** (len(parts.vae.config.block_out_channels) - 1)
        if resolution % self.vae_factor:
            raise ValueError(f"--sd.resolution must be a multiple of {self.vae_factor}, got {resolution}")
        self.image_size = resolution // self.vae_factor
        self.scaling_factor = float(parts.vae.config.scaling_factor)
        self.shift_factor = float(getattr(parts.vae.config, "shift_factor", None) or 0.0)
        self.negative_prompt = negative_prompt
        self.discrete = DiscreteDenoiser(self._network, parts.alphas_cumprod, parts.prediction_type)
        self.guided = ClassifierFreeGuidance(self.discrete, guidance_scale, batch_conds=_batch_embeddings)
        self.sigmas = self.discrete.sigmas.float()
        self.sigma_min, self.sigma_max = self.discrete.sigma_min, self.discrete.sigma_max
        self._embeddings: dict[str, Tensor] = {}

    @classmethod
    def from_pretrained(
        cls, model: str = DEFAULT_MODEL, *, device: torch.device | str = "cpu", dtype: str = "auto", **kwargs: Any
    ) -> StableDiffusionPrior:
        """Load `model` (folder or hub id) onto `device`; kwargs go to the constructor."""
        parts = load_components(model, device, resolve_dtype(dtype, torch.device(device)))
        return cls(parts, device=device, **kwargs)

    @property
    def guidance_scale(self) -> float:
        return self.guided.scale

    # --- text ------------------------------------------------------------------------------
    @torch.no_grad()
    def embed(self, prompt: str) -> Tensor:
        """CLIP token embeddings [1, L, D] of `prompt`, computed once per distinct text."""
        if prompt not in self._embeddings:
            tok = self.parts.tokenizer
            ids = tok(
                prompt, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt"
            )
            self._embeddings[prompt] = self.parts.text_encoder(ids.input_ids.to(self.device)).last_hidden_state
        return self._embeddings[prompt]

    def condition(self, prompt: str, view: Any = None) -> tuple[Tensor, Tensor]:
        """(conditional, unconditional) embeddings; the view is already in the prompt's prefix."""
        return self.embed(prompt), self.embed(self.negative_prompt)

    # --- denoising -------------------------------------------------------------------------
    def _network(self, x_in: Tensor, t: Tensor, embeddings: Tensor) -> Tensor:
        dtype = self.unet.dtype
        out = self.unet(x_in.to(self.device, dtype), t.to(self.device), encoder_hidden_states=embeddings.to(dtype))
        return out.sample.float()

    @torch.no_grad()
    def denoise(self, x: Tensor, sigma: Tensor, cond: tuple[Tensor, Tensor]) -> Tensor:
        """Guided D(x; sigma) [B, 4, h, w] for latents x [B, 4, h, w], sigma [B], cond from `condition`."""
        return self.guided(x, sigma, cond)

    # --- latents <-> RGB -------------------------------------------------------------------
    @torch.no_grad()
    def decode(self, x: Tensor) -> Tensor:
        """Latents [B, 4, h, w] -> RGB [B, 3, 8h, 8w] in [-1, 1] (the VAE factor applied here only)."""
        z = x.to(self.device, torch.float32) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample.clamp(-1, 1).to(x.device, x.dtype)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """RGB [B, 3, H, W] in [-1, 1] -> latents [B, 4, H/8, W/8] (the posterior mean, scaled)."""
        mean = self.vae.encode(images.to(self.device, torch.float32)).latent_dist.mean
        return ((mean - self.shift_factor) * self.scaling_factor).to(images.device, images.dtype)


def _batch_embeddings(cond: Tensor, uncond: Tensor, n: int) -> Tensor:
    """[2n, L, D]: n copies of the conditional embeddings, then n of the unconditional ones."""
    return torch.cat([cond.expand(n, -1, -1), uncond.expand(n, -1, -1)])


class LatentDecoder:
    """The VAE decoder alone: all that pictures and mesh colours of a saved latent field need
    (`sjc render`, `sjc export`), without loading the UNet or the text encoder."""

    def __init__(self, vae: Any, device: torch.device | str = "cpu") -> None:
        self.vae, self.device = vae, torch.device(device)
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)

    @classmethod
    def from_pretrained(cls, model: str = DEFAULT_MODEL, *, device: torch.device | str = "cpu") -> LatentDecoder:
        """Read the VAE of `model` (folder or hub id) in float32; WeightsNotFoundError says where it looked."""
        source = locate(model)
        lib = _import_libraries(model)
        local = isinstance(source, Path)
        try:
            with warnings.catch_warnings():  # deprecation chatter of the hub client, not the user's business
                warnings.filterwarnings("ignore", module=r"huggingface_hub\.")
                vae = lib["vae"].from_pretrained(source, subfolder="vae", torch_dtype=torch.float32)
        except (OSError, ValueError) as err:
            where = f"the folder {Path(source).resolve()}" if local else where_on_hub(model)
            reason = str(err).strip().splitlines()[0].rstrip(".")
            raise _not_found(model, where, reason, _HOW_TO_FOLDER if local else _HOW_TO_HUB) from None
        return cls(vae.to(device).eval().requires_grad_(False), device)

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        """Latents [B, 4, h, w] -> RGB [B, 3, 8h, 8w] in [-1, 1], exactly as StableDiffusionPrior.decode."""
        z = x.to(self.device, torch.float32) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample.clamp(-1, 1).to(x.device, x.dtype)
