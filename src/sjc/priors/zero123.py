"""Zero-1-to-3 (Liu et al., ICCV 2023) as the SJC prior: a Stable Diffusion UNet that draws the object of a
reference picture as seen from another camera.

The network sees the reference twice: its CLIP image embedding, concatenated with the relative camera and
projected back to the embedding's width by `cc_projection` (the cross-attention context, one token), and its
VAE latent, concatenated to the noisy latent (8 input channels). The unconditional branch of classifier-free
guidance has zeros for both (the projected embedding and the latent). The prior is bound to its picture and
the picture's camera: `condition(view)` turns a scored view into the relative camera. Otherwise it is Stable
Diffusion's VE adapter (`sd.py`): D(x; sigma) of an eps-prediction network on the checkpoint's schedule, the
field rendering the VAE's scaled latents. diffusers and transformers are imported only when a model is loaded.

Conventions read from the public code (docs/zero123.md): the camera vector is [change of polar angle (radians;
polar angle = 90 deg - elevation, measured from the top), sin and cos of the change of azimuth, change of
radius]; the reference latent is the VAE posterior's mode, not multiplied by the scaling factor; the CLIP input
is the picture on white in [-1, 1], resized bicubically (corners aligned, no antialiasing) to the encoder's size
and normalised with CLIP's mean and standard deviation.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..core.cameras import View
from ..core.denoisers import ClassifierFreeGuidance
from ..core.errors import ConfigError
from ..core.methods import Branches
from ..core.settings import PAPER_GUIDANCE_SCALE
from .discrete import DiscreteDenoiser
from .loading import ModelKind, WeightsNotFoundError, compiled, import_classes, locate, reading, resolve_dtype
from .sd import LatentDecoder
from .settings import ZERO123_MODEL, Zero123Config

PROJECTION_WEIGHTS = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
KIND = ModelKind(
    title="Zero-1-to-3 model",
    flag="--zero123.model",
    example=ZERO123_MODEL,
    layouts=(
        (
            ("unet", ("config.json",)),
            ("vae", ("config.json",)),
            ("image_encoder", ("config.json",)),
            ("cc_projection", ("config.json",)),
            ("cc_projection", PROJECTION_WEIGHTS),
            ("scheduler", ("scheduler_config.json",)),
        ),
    ),
    holds="unet/ (8 input channels), vae/, image_encoder/, cc_projection/ and scheduler/ (a Zero-1-to-3 checkpoint "
    f"in diffusers layout, such as {ZERO123_MODEL})",
    download='--include "unet/*" "vae/*" "image_encoder/*" "cc_projection/*" "scheduler/*"',
)
CLASSES = {
    "unet": "diffusers.UNet2DConditionModel",
    "vae": "diffusers.AutoencoderKL",
    "schedule": "diffusers.DDPMScheduler",
    "image_encoder": "transformers.CLIPVisionModelWithProjection",
}
# OpenAI CLIP's normalisation, which Zero-1-to-3's image embedder applies (and its diffusers pipeline copies).
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
# Zero-1-to-3's units per sjc world unit: its training objects fill a unit cube ([-0.5, 0.5]^3), sjc's field the box
# [-1, 1]^3, so a radius change of 1 here is 0.5 there.
RADIUS_UNITS = 0.5


# --- cameras ------------------------------------------------------------------------------------
def polar_angle(elevation: float) -> float:
    """Zero-1-to-3's polar angle (degrees from the top, the +up axis) of an sjc elevation (degrees above level)."""
    return 90.0 - elevation


def elevation_of(polar: float) -> float:
    """The sjc elevation of a Zero-1-to-3 polar angle (both in degrees): the inverse of `polar_angle`."""
    return 90.0 - polar


def relative_pose(view: View, reference: View) -> Tensor:
    """Zero-1-to-3's camera vector [4] of `view` relative to the `reference` camera: the change of polar angle
    (radians; positive when `view` looks from lower down), sin and cos of the change of azimuth (both
    conventions turn the same way about the up axis), and the change of radius in Zero-1-to-3's units."""
    d_polar = math.radians(polar_angle(view.elevation) - polar_angle(reference.elevation))
    d_azimuth = math.radians((view.azimuth - reference.azimuth) % 360.0)
    d_radius = (view.radius - reference.radius) * RADIUS_UNITS
    return torch.tensor([d_polar, math.sin(d_azimuth), math.cos(d_azimuth), d_radius], dtype=torch.float32)


# --- loading ------------------------------------------------------------------------------------
@dataclass
class Zero123Components:
    unet: Any  # diffusers UNet2DConditionModel, 8 input channels
    vae: Any  # diffusers AutoencoderKL
    image_encoder: Any  # transformers CLIPVisionModelWithProjection
    projection: torch.nn.Linear  # cc_projection: [image embedding, camera] (D + 4) -> D'
    alphas_cumprod: Tensor  # [T], decreasing with the timestep
    prediction_type: str  # from the checkpoint's scheduler config


def load_components(model: str, device: torch.device | str, dtype: torch.dtype) -> Zero123Components:
    """Read UNet, VAE, image encoder, camera projection and noise schedule of `model` (folder or hub id).
    The VAE and the projection stay in float32 (they run once per picture, or are one small matrix)."""
    source, _ = locate(model, KIND)
    lib = import_classes(model, KIND, CLASSES)
    with reading(model, KIND, source):
        config = lib["schedule"].load_config(source, subfolder="scheduler")
        schedule = lib["schedule"].from_config(config)
        image_encoder = lib["image_encoder"].from_pretrained(source, subfolder="image_encoder", torch_dtype=dtype)
        vae = lib["vae"].from_pretrained(source, subfolder="vae", torch_dtype=torch.float32)
        unet = lib["unet"].from_pretrained(source, subfolder="unet", torch_dtype=dtype)
        projection = read_projection(source)
    latent = int(vae.config.latent_channels)
    if int(unet.config.in_channels) != 2 * latent:
        raise WeightsNotFoundError(
            f"{model!r} is not a Zero-1-to-3 model: its unet/ takes {unet.config.in_channels} input channels, where "
            f"Zero-1-to-3's takes {2 * latent} (the noisy latent and the reference's); for text-to-3D with a "
            "Stable Diffusion checkpoint use --prior sd"
        )
    return Zero123Components(
        unet=unet.to(device).eval().requires_grad_(False),
        vae=vae.to(device).eval().requires_grad_(False),
        image_encoder=image_encoder.to(device).eval().requires_grad_(False),
        projection=projection.to(device).eval().requires_grad_(False),
        alphas_cumprod=schedule.alphas_cumprod.clone(),
        prediction_type=config.get("prediction_type", "epsilon"),
    )


def read_projection(source: Path | str) -> torch.nn.Linear:
    """cc_projection/ (a diffusers ModelMixin holding one Linear as `projection`) as a torch Linear, from a
    folder or a hub id. OSError when its files are missing (`loading.reading` turns that into one message)."""
    if isinstance(source, Path):
        folder = source / "cc_projection"
        config_file = folder / "config.json"
        weights_file = next((folder / n for n in PROJECTION_WEIGHTS if (folder / n).is_file()), None)
        if weights_file is None:
            raise OSError(f"cc_projection/ holds none of {', '.join(PROJECTION_WEIGHTS)}")
    else:
        from huggingface_hub import hf_hub_download

        config_file = Path(hf_hub_download(source, "config.json", subfolder="cc_projection"))
        for k, name in enumerate(PROJECTION_WEIGHTS):
            try:
                weights_file = Path(hf_hub_download(source, name, subfolder="cc_projection"))
                break
            except OSError:
                if k == len(PROJECTION_WEIGHTS) - 1:
                    raise
    if weights_file.suffix == ".safetensors":
        from safetensors.torch import load_file

        state = load_file(str(weights_file))
    else:
        state = torch.load(weights_file, map_location="cpu", weights_only=True)
    weight = next((v for k, v in state.items() if k.endswith("weight")), None)
    bias = next((v for k, v in state.items() if k.endswith("bias")), None)
    if weight is None or weight.dim() != 2:
        raise OSError(f"{weights_file.name} in cc_projection/ holds no linear layer's weight")
    config = json.loads(config_file.read_text())
    expected = (config.get("out_channel", weight.shape[0]), config.get("in_channel", weight.shape[1]))
    if tuple(weight.shape) != tuple(expected):
        raise OSError(f"cc_projection/ weight is {tuple(weight.shape)} but its config.json says {expected}")
    layer = torch.nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None)
    with torch.no_grad():
        layer.weight.copy_(weight.float())
        if bias is not None:
            layer.bias.copy_(bias.float())
    return layer


# --- the prior ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Zero123Condition:
    """One branch's conditioning: the cross-attention context [B, 1, D'] and the reference latent [B, 4, h, w]."""

    context: Tensor
    latent: Tensor

    def expand(self, n: int) -> Zero123Condition:
        return Zero123Condition(self.context.expand(n, -1, -1), self.latent.expand(n, -1, -1, -1))


def _batch_conditions(cond: Zero123Condition, uncond: Zero123Condition, n: int) -> Zero123Condition:
    """n copies of the conditional branch, then n of the unconditional one."""
    c, u = cond.expand(n), uncond.expand(n)
    return Zero123Condition(torch.cat([c.context, u.context]), torch.cat([c.latent, u.latent]))


class Zero123Prior:
    """The `Prior` of image-to-3D with Zero-1-to-3: guided D(x; sigma, picture, camera) over 4-channel latents of
    resolution / 8. Built from the reference picture (RGB [3, S, S] in [-1, 1] on white) and its `View`; the
    picture's CLIP embedding and VAE latent are computed once, here."""

    feature_activation = "none"  # the field holds latents directly
    prompt = ""  # the picture says what to make

    def __init__(
        self,
        parts: Zero123Components,
        picture: Tensor,
        reference: View,
        *,
        guidance_scale: float = PAPER_GUIDANCE_SCALE,
        resolution: int = Zero123Config.resolution,
        device: torch.device | str = "cpu",
        compile: str = "off",
    ) -> None:
        self.parts, self.device, self.reference = parts, torch.device(device), reference
        self.unet, self.vae = compiled(parts.unet, compile, self.device), parts.vae
        self.channels = int(parts.vae.config.latent_channels)
        self.latents = LatentDecoder(parts.vae, device)
        self.vae_factor, self.scaling_factor = self.latents.factor, self.latents.scaling_factor
        if resolution % self.vae_factor:
            raise ConfigError(f"--zero123.resolution must be a multiple of {self.vae_factor}, got {resolution}")
        self.resolution, self.image_size = resolution, resolution // self.vae_factor
        self.discrete = DiscreteDenoiser(self._network, parts.alphas_cumprod, parts.prediction_type)
        self.guided = ClassifierFreeGuidance(self.discrete, guidance_scale, batch_conds=_batch_conditions)
        self.sigmas = self.discrete.sigmas.float()
        self.sigma_min, self.sigma_max = self.discrete.sigma_min, self.discrete.sigma_max
        picture = self._at_resolution(picture)
        self.image_embedding = self.embed_image(picture)  # [1, 1, D]
        self.reference_latent = self.reference_latents(picture)  # [1, 4, h, w], unscaled

    @classmethod
    def from_pretrained(
        cls,
        picture: Tensor,
        reference: View,
        model: str = ZERO123_MODEL,
        *,
        device: torch.device | str = "cpu",
        dtype: str = "auto",
        **kwargs: Any,
    ) -> Zero123Prior:
        """Load `model` (folder or hub id) onto `device`, bound to `picture` seen from `reference`; kwargs go to
        the constructor."""
        parts = load_components(model, device, resolve_dtype(dtype, torch.device(device)))
        return cls(parts, picture, reference, device=device, **kwargs)

    @property
    def guidance_scale(self) -> float:
        return self.guided.scale

    def _at_resolution(self, picture: Tensor) -> Tensor:
        picture = picture.to(self.device, torch.float32)[None]
        if picture.shape[-1] != self.resolution or picture.shape[-2] != self.resolution:
            picture = torch.nn.functional.interpolate(picture, size=(self.resolution,) * 2, mode="area")
        return picture.clamp(-1, 1)

    # --- the reference, once ---------------------------------------------------------------------
    @torch.no_grad()
    def embed_image(self, picture: Tensor) -> Tensor:
        """CLIP image embedding [1, 1, D] of a picture [1, 3, S, S] in [-1, 1]."""
        encoder = self.parts.image_encoder
        size = int(encoder.config.image_size)
        x = torch.nn.functional.interpolate(picture, size=(size, size), mode="bicubic", align_corners=True)
        mean = torch.tensor(CLIP_MEAN, device=x.device).reshape(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).reshape(1, 3, 1, 1)
        x = ((x + 1) / 2 - mean) / std
        return encoder(x.to(encoder.dtype)).image_embeds.float()[:, None]

    @torch.no_grad()
    def reference_latents(self, picture: Tensor) -> Tensor:
        """The VAE posterior's mode [1, 4, S/8, S/8] of a picture [1, 3, S, S], unscaled (as Zero-1-to-3 trained)."""
        return self.vae.encode(picture.float()).latent_dist.mode().float()

    # --- conditioning ----------------------------------------------------------------------------
    def pose(self, view: View | None) -> Tensor:
        """The camera vector of `view` (None: the reference's own camera) against the reference's."""
        return relative_pose(self.reference if view is None else view, self.reference)

    @torch.no_grad()
    def condition(self, view: View | None = None) -> tuple[Zero123Condition, Zero123Condition]:
        """(conditional, unconditional) branches for an image seen from `view` (None: the reference view)."""
        pose = self.pose(view).to(self.device)[None, None]
        context = self.parts.projection(torch.cat([self.image_embedding, pose], dim=-1))
        cond = Zero123Condition(context, self.reference_latent)
        return cond, Zero123Condition(torch.zeros_like(context), torch.zeros_like(self.reference_latent))

    def branches(self, view: View | None = None, negative_prompt: str | None = None) -> Branches:
        """For the guided methods (`core.methods`): the unguided denoiser and the view's two branches; the
        unconditional branch also stands for the negative one (the model takes no text)."""
        if negative_prompt is not None:
            raise ConfigError("the zero123 prior takes no text, so no negative prompt; drop --scoring.negative-prompt")
        cond, uncond = self.condition(view)
        return Branches(self._denoise_unguided, cond, uncond, uncond)

    @torch.no_grad()
    def _denoise_unguided(self, x: Tensor, sigma: Tensor, cond: Zero123Condition) -> Tensor:
        return self.discrete(x, sigma, cond.expand(x.shape[0]))

    # --- denoising -------------------------------------------------------------------------------
    def _network(self, x_in: Tensor, t: Tensor, cond: Zero123Condition) -> Tensor:
        dtype = self.unet.dtype
        x = torch.cat([x_in.to(self.device, dtype), cond.latent.to(dtype)], dim=1)
        return self.unet(x, t.to(self.device), encoder_hidden_states=cond.context.to(dtype)).sample.float()

    @torch.no_grad()
    def denoise(self, x: Tensor, sigma: Tensor, cond: tuple[Zero123Condition, Zero123Condition]) -> Tensor:
        """Guided D(x; sigma) [B, 4, h, w] for latents x [B, 4, h, w], sigma [B], cond from `condition`."""
        return self.guided(x, sigma, cond)

    # --- latents <-> RGB -------------------------------------------------------------------------
    def decode(self, x: Tensor) -> Tensor:
        """Latents [B, 4, h, w] -> RGB [B, 3, 8h, 8w] in [-1, 1]."""
        return self.latents(x)

    def encode(self, images: Tensor) -> Tensor:
        """RGB [B, 3, H, W] in [-1, 1] -> the field's (scaled) latents [B, 4, H/8, W/8]: the reference loss's space."""
        return self.latents.encode(images)
