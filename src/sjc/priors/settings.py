"""Settings of the priors that ship with sjc: the toy world's, Stable Diffusion's and the pixel-space models'.

Frozen dataclasses whose field docstrings become `--help` (under --toy., --sd., --pixel.). Imports no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

# The learned toy prior scores without classifier-free guidance (one network call a step): guidance 10 did
# not rescue its random-sigma preset (docs/learned-prior.md). Every command's learned preset uses this.
LEARNED_GUIDANCE_SCALE = 1.0

# The toy suite: every shape, one- and two-colour. The learned prior's classes (`sjc train-prior --prompts`),
# the quality benchmarks' prompts, and the toy world's unconditional distribution (the renders of all of them).
SUITE_PROMPTS = (
    "a red and blue cube",
    "a green cube",
    "a yellow sphere",
    "an orange and purple sphere",
    "a blue cylinder",
    "a red and green cylinder",
    "a purple cone",
    "a yellow and blue cone",
    "an orange torus",
    "a green and red torus",
)
EMPTY_SCENE = "empty scene"  # the exact toy prior's default negative prompt: the background alone


@dataclass(frozen=True)
class ToyConfig:
    n_images: int = 5000
    """Renders of the prompt's scene the exact empirical denoiser averages over."""
    image_size: int = 32
    """Side of the toy renders, and of the field's renders, in pixels."""
    view_conditioning: bool = True
    """Condition the prior on the view bucket (front / side / back / overhead); off shows the multi-face failure."""
    data_seed: int = 0
    """Seed of the toy data set (independent of the run seed)."""
    cache_dir: str | None = None
    """Folder caching the toy renders; None uses $SJC_CACHE or ~/.cache/sjc."""
    weights: str | None = None
    """Weights of the learned toy prior (--prior toy-learned, from `sjc train-prior`); None: those shipped with
    sjc. Its image size is the one the weights were trained at (32)."""


@dataclass(frozen=True)
class SDConfig:
    model: str = "stable-diffusion-v1-5/stable-diffusion-v1-5"
    """Stable Diffusion 1.x/2.x weights: a Hugging Face model id in your HF cache, or a local diffusers folder."""
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    """Precision of the UNet and text encoder: 'auto' is float16 on CUDA and float32 on CPU."""
    resolution: int = 512
    """Side of the images the prior scores, in pixels; the field renders latents of resolution / 8 (64 for 512)."""
    negative_prompt: str = ""
    """Text of the unconditional branch of classifier-free guidance ('' is the paper's empty prompt)."""
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = "off"
    """Call the UNet through torch.compile with this mode ('reduce-overhead' adds CUDA graphs); 'off' runs it as
    it is. A machine that cannot compile falls back to 'off' with a warning. Measure it on your GPU with
    benchmarks/device.py (docs/CONVENTIONS.md, "The GPU step")."""


@dataclass(frozen=True)
class PixelConfig:
    model: str = "google/ddpm-bedroom-256"
    """Unconditional diffusers UNet2DModel weights (DDPM or score-SDE VE, e.g. google/ncsnpp-ffhq-256): a Hugging
    Face model id in your HF cache, or a local folder."""
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    """Precision of the UNet: 'auto' is float16 on CUDA and float32 on CPU."""
    resolution: int | None = None
    """Side of the images the prior scores, in pixels; None takes the checkpoint's sample size."""
    data_range: Literal["auto", "unit", "signed"] = "auto"
    """Pixel range the network was trained on: 'unit' [0, 1], 'signed' [-1, 1]; 'auto' is [0, 1] for score-SDE
    VE checkpoints and [-1, 1] for DDPM ones. Images are [-1, 1] here either way (sigma in those units)."""
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = "off"
    """Call the UNet through torch.compile with this mode, as --sd.compile."""


# Zero-1-to-3's conversion to diffusers with its camera projection in its own folder (cc_projection/).
ZERO123_MODEL = "kxic/zero123-xl"


@dataclass(frozen=True)
class Zero123Config:
    model: str = ZERO123_MODEL
    """Zero-1-to-3 weights in diffusers layout (unet/ of 8 input channels, vae/, image_encoder/, cc_projection/,
    scheduler/): a local folder, or a Hugging Face model id in your HF cache (docs/zero123.md)."""
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"
    """Precision of the UNet and image encoder: 'auto' is float16 on CUDA and float32 on CPU."""
    resolution: int = 256
    """Side of the images the prior scores, in pixels (Zero-1-to-3 was trained at 256); the field renders latents
    of resolution / 8, and the reference picture is read at this size."""
    compile: Literal["off", "default", "reduce-overhead", "max-autotune"] = "off"
    """Call the UNet through torch.compile with this mode ('reduce-overhead' adds CUDA graphs); 'off' runs it as
    it is. A machine that cannot compile falls back to 'off' with a warning. Measure it on your GPU with
    benchmarks/device.py (docs/CONVENTIONS.md, "The GPU step")."""
