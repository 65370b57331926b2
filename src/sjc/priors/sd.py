"""Stable Diffusion 1.x / 2.x (any diffusers checkpoint) as the SJC prior, in VE sigma form.

The UNet becomes D(x; sigma) through `discrete.DiscreteDenoiser` (sigma = sqrt((1 - a) / a), input
x / sqrt(1 + sigma^2), eps- or v-prediction as the checkpoint's scheduler says), guided as
D_u + scale * (D_c - D_u). The field renders VAE latents; `decode` / `encode` cross to RGB with the VAE.
diffusers and transformers are imported only when a model is loaded (the `[sd]` extra).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from ..core.cameras import View, view_prompt
from ..core.denoisers import ClassifierFreeGuidance
from ..core.errors import ConfigError
from ..core.methods import Branches
from ..core.settings import PAPER_GUIDANCE_SCALE
from .discrete import DiscreteDenoiser
from .loading import ModelKind, compiled, import_classes, locate, reading, resolve_dtype
from .settings import SDConfig

KIND = ModelKind(
    title="Stable Diffusion model",
    flag="--sd.model",
    example=SDConfig.model,
    layouts=(
        (
            ("unet", ("config.json",)),
            ("vae", ("config.json",)),
            ("text_encoder", ("config.json",)),
            ("tokenizer", ("vocab.json", "tokenizer.json")),
            ("scheduler", ("scheduler_config.json",)),
        ),
    ),
    holds="unet/, vae/, text_encoder/, tokenizer/ and scheduler/ (a diffusers folder, as "
    "StableDiffusionPipeline.save_pretrained writes it)",
    # What the prior reads and no more: the configs, the tokenizer's files, one safetensors file per network.
    download='--include "*.json" --include "*.txt" --include "*/diffusion_pytorch_model.safetensors" '
    '--include "text_encoder/model.safetensors"',
    size="about 4 GB for Stable Diffusion 1.5",
)
CLASSES = {
    "unet": "diffusers.UNet2DConditionModel",
    "vae": "diffusers.AutoencoderKL",
    "schedule": "diffusers.DDPMScheduler",
    "text": "transformers.CLIPTextModel",
    "tok": "transformers.CLIPTokenizer",
}


@dataclass
class SDComponents:
    unet: Any  # diffusers UNet2DConditionModel
    vae: Any  # diffusers AutoencoderKL
    text_encoder: Any  # transformers CLIPTextModel
    tokenizer: Any  # transformers CLIPTokenizer
    alphas_cumprod: Tensor  # [T], decreasing with the timestep
    prediction_type: str  # 'epsilon' or 'v_prediction', from the checkpoint's scheduler config


def load_components(model: str, device: torch.device | str, dtype: torch.dtype) -> SDComponents:
    """Read UNet, VAE, text encoder, tokenizer and noise schedule of `model` (folder or hub id).

    The VAE stays in float32: it only runs for pictures, and half-precision VAEs can overflow."""
    source, _ = locate(model, KIND)
    lib = import_classes(model, KIND, CLASSES)
    with reading(model, KIND, source):
        config = lib["schedule"].load_config(source, subfolder="scheduler")
        schedule = lib["schedule"].from_config(config)  # computes alphas_cumprod for any beta schedule
        tokenizer = lib["tok"].from_pretrained(source, subfolder="tokenizer")
        text_encoder = lib["text"].from_pretrained(source, subfolder="text_encoder")
        vae = lib["vae"].from_pretrained(source, subfolder="vae", torch_dtype=torch.float32)
        unet = lib["unet"].from_pretrained(source, subfolder="unet", torch_dtype=dtype)
    return SDComponents(
        unet=unet.to(device).eval().requires_grad_(False),
        vae=vae.to(device).eval().requires_grad_(False),
        text_encoder=text_encoder.to(device=device, dtype=dtype).eval().requires_grad_(False),
        tokenizer=tokenizer,
        alphas_cumprod=schedule.alphas_cumprod.clone(),
        prediction_type=config.get("prediction_type", "epsilon"),
    )


class LatentDecoder:
    """The VAE decoder alone: all that pictures and mesh colours of a saved latent field need
    (`sjc render`, `sjc export`), without loading the UNet or the text encoder."""

    def __init__(self, vae: Any, device: torch.device | str = "cpu") -> None:
        self.vae, self.device = vae, torch.device(device)
        self.factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.scaling_factor = float(vae.config.scaling_factor)
        self.shift_factor = float(getattr(vae.config, "shift_factor", None) or 0.0)

    @classmethod
    def from_pretrained(
        cls, model: str = SDConfig.model, *, device: torch.device | str = "cpu", kind: ModelKind | None = None
    ) -> LatentDecoder:
        """Read the VAE of `model` (folder or hub id; a checkpoint of `kind`, Stable Diffusion's by default) in
        float32; WeightsNotFoundError says where it looked."""
        kind = kind or KIND
        source, _ = locate(model, kind)
        lib = import_classes(model, kind, {"vae": CLASSES["vae"]})
        with reading(model, kind, source):
            vae = lib["vae"].from_pretrained(source, subfolder="vae", torch_dtype=torch.float32)
        return cls(vae.to(device).eval().requires_grad_(False), device)

    @torch.no_grad()
    def __call__(self, x: Tensor) -> Tensor:
        """Latents [B, 4, h, w] -> RGB [B, 3, 8h, 8w] in [-1, 1] (the VAE's scaling applied here only)."""
        z = x.to(self.device, torch.float32) / self.scaling_factor + self.shift_factor
        return self.vae.decode(z).sample.clamp(-1, 1).to(x.device, x.dtype)

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """RGB [B, 3, H, W] in [-1, 1] -> latents [B, 4, H/8, W/8] (the posterior mean, scaled)."""
        mean = self.vae.encode(images.to(self.device, torch.float32)).latent_dist.mean
        return ((mean - self.shift_factor) * self.scaling_factor).to(images.device, images.dtype)


class StableDiffusionPrior:
    """The `Prior` of text-to-3D: guided D(x; sigma, text) over 4-channel latents of resolution / 8."""

    feature_activation = "none"  # the field holds latents directly

    def __init__(
        self,
        parts: SDComponents,
        prompt: str,
        *,
        guidance_scale: float = PAPER_GUIDANCE_SCALE,
        negative_prompt: str = "",
        view_prompts: bool = True,
        resolution: int = 512,
        device: torch.device | str = "cpu",
        compile: str = "off",
    ) -> None:
        self.parts, self.device = parts, torch.device(device)
        self.unet, self.vae = compiled(parts.unet, compile, self.device), parts.vae
        self.channels = int(parts.unet.config.in_channels)
        self.latents = LatentDecoder(parts.vae, device)
        self.vae_factor, self.scaling_factor = self.latents.factor, self.latents.scaling_factor
        if resolution % self.vae_factor:
            raise ConfigError(f"--sd.resolution must be a multiple of {self.vae_factor}, got {resolution}")
        self.image_size = resolution // self.vae_factor
        self.prompt, self.negative_prompt, self.view_prompts = prompt, negative_prompt, view_prompts
        self.discrete = DiscreteDenoiser(self._network, parts.alphas_cumprod, parts.prediction_type)
        self.guided = ClassifierFreeGuidance(self.discrete, guidance_scale, batch_conds=_batch_embeddings)
        self.sigmas = self.discrete.sigmas.float()
        self.sigma_min, self.sigma_max = self.discrete.sigma_min, self.discrete.sigma_max
        self._embeddings: dict[str, Tensor] = {}

    @classmethod
    def from_pretrained(
        cls,
        prompt: str,
        model: str = SDConfig.model,
        *,
        device: torch.device | str = "cpu",
        dtype: str = "auto",
        **kwargs: Any,
    ) -> StableDiffusionPrior:
        """Load `model` (folder or hub id) onto `device`, bound to `prompt`; kwargs go to the constructor."""
        parts = load_components(model, device, resolve_dtype(dtype, torch.device(device)))
        return cls(parts, prompt, device=device, **kwargs)

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

    def condition(self, view: View | None = None) -> tuple[Tensor, Tensor]:
        """(conditional, unconditional) embeddings. Seen from a view, the text gets the paper's view prefix
        ("front view of ..."); with no view (2D images) or view_prompts off, the prompt as given."""
        text = view_prompt(self.prompt, view) if view is not None and self.view_prompts else self.prompt
        return self.embed(text), self.embed(self.negative_prompt)

    def branches(self, view: View | None = None, negative_prompt: str | None = None) -> Branches:
        """For the guided methods (`core.methods`): the unguided denoiser with the view-prefixed prompt's
        embeddings, the unconditional ones (--sd.negative-prompt, '' by default, as for guidance) and a
        negative prompt's (None: --sd.negative-prompt)."""
        cond, uncond = self.condition(view)
        negative = uncond if negative_prompt is None else self.embed(negative_prompt)
        return Branches(self._denoise_unguided, cond, uncond, negative)

    @torch.no_grad()
    def _denoise_unguided(self, x: Tensor, sigma: Tensor, embeddings: Tensor) -> Tensor:
        return self.discrete(x, sigma, embeddings.expand(x.shape[0], -1, -1))

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
    def decode(self, x: Tensor) -> Tensor:
        """Latents [B, 4, h, w] -> RGB [B, 3, 8h, 8w] in [-1, 1]."""
        return self.latents(x)

    def encode(self, images: Tensor) -> Tensor:
        """RGB [B, 3, H, W] in [-1, 1] -> latents [B, 4, H/8, W/8]."""
        return self.latents.encode(images)


def _batch_embeddings(cond: Tensor, uncond: Tensor, n: int) -> Tensor:
    """[2n, L, D]: n copies of the conditional embeddings, then n of the unconditional ones."""
    return torch.cat([cond.expand(n, -1, -1), uncond.expand(n, -1, -1)])
