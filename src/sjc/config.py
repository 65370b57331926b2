"""Run configuration: frozen dataclasses whose field docstrings become `sjc --help`, and presets.

This module imports no torch, so the command line starts fast. Defaults are the paper's
(official code) values unless a comment says otherwise; presets adapt them per prior.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import tyro


@dataclass(frozen=True)
class FieldConfig:
    resolution: int = 100
    """Voxels along each side of the grid over the box [-1, 1]^3."""
    step_ratio: float = 0.5
    """Distance between samples along a ray, in voxels."""
    density_shift: float = -1.0
    """Density = softplus(raw * exp(d_scale) + shift); the shift sets the initial fog."""
    background: Literal["texture", "fixed"] = "texture"
    """'texture': a small learned texture over the sphere of directions; 'fixed': a constant colour."""
    background_value: float = 1.0
    """Colour of a fixed background, in the prior's data space (1.0 is white for pixel priors)."""
    background_size: int = 4
    """Side of the learned background texture, in texels."""
    min_transmittance: float = 1e-4
    """Samples behind the point where a ray's transmittance drops below this are not evaluated."""


@dataclass(frozen=True)
class CameraConfig:
    radius: float = 1.5
    """Distance from the cameras to the origin."""
    fov_min: float = 40.0
    """Smallest horizontal field of view of training cameras, degrees."""
    fov_max: float = 70.0
    """Largest horizontal field of view of training cameras, degrees."""
    test_fov: float = 60.0
    """Field of view of validation, turntable and evaluation cameras, degrees."""
    max_polar_param: float = 100.0
    """Training directions are area-uniform from the top down to polar = arccos(1 - 2v/pi), v this (deg)."""


@dataclass(frozen=True)
class ScoringConfig:
    sigma_schedule: Literal["log-uniform", "grid", "annealed"] = "grid"
    """How sigma is drawn each step: log-uniform in [sigma_min, sigma_max]; uniform over the prior's
    discrete sigma grid minus its extremes; or annealed geometrically from sigma_max to sigma_min."""
    sigma_min: float | None = None
    """Smallest sigma; None takes the prior's own range."""
    sigma_max: float | None = None
    """Largest sigma; None takes the prior's own range."""
    drop_lowest: int = 10
    """With the 'grid' schedule: how many of the smallest grid sigmas are never drawn."""
    drop_highest: int = 30
    """With the 'grid' schedule: how many of the largest grid sigmas are never drawn."""
    variance_reduced: bool = True
    """PAAS with (D(y + sigma n) - y) / sigma (paper Eq. 16) instead of (D - (y + sigma n)) / sigma (Eq. 15)."""
    n_noise: int = 1
    """Noise draws averaged per step (k in the paper)."""
    guidance_scale: float = 100.0
    """Classifier-free guidance scale for text-conditioned priors."""


@dataclass(frozen=True)
class LossConfig:
    emptiness_weight: float = 1e4
    """Weight of the emptiness loss mean(log(1 + scale * w)) over the compositing weights w."""
    emptiness_scale: float = 10.0
    """Scale s inside the emptiness loss."""
    emptiness_multiplier: float = 20.0
    """The emptiness weight is multiplied by this from `emptiness_switch` of the steps on."""
    emptiness_switch: float = 0.5
    """Fraction of the steps after which the emptiness multiplier applies."""
    center_depth_weight: float = 0.0
    """Weight of the loss that keeps the image centre nearer than its border (0 turns it off)."""


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.05
    """Adamax learning rate of the voxel grid."""
    background_lr: float = 1e-4
    """Adamax learning rate of the background texture."""


@dataclass(frozen=True)
class TrainConfig:
    steps: Annotated[int, tyro.conf.arg(aliases=("--steps",))] = 10000
    """Optimisation steps."""
    seed: Annotated[int, tyro.conf.arg(aliases=("--seed",))] = 0
    """Seed of every random draw of the run (field init, cameras, sigma, noise)."""
    checkpoint_every: int = 1000
    """Write a checkpoint every this many steps (and at the end)."""
    keep_checkpoints: int = 3
    """How many of the newest checkpoints to keep."""
    validate_every: int = 500
    """Save a validation render every this many steps (0 turns it off)."""
    log_every: int = 10
    """Write a line to log.jsonl every this many steps."""


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


@dataclass(frozen=True)
class ExportConfig:
    turntable_frames: int = 48
    """Frames of the turntable video."""
    turntable_size: int = 128
    """Side of the turntable and contact-sheet renders, pixels of the prior's data space (SD latents decode 8x)."""
    mesh_threshold: float = 0.5
    """Marching-cubes level on the voxel alpha (alpha of one voxel-length step)."""


@dataclass(frozen=True)
class GenerateConfig:
    prompt: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="PROMPT")] = ""
    """What to generate, e.g. "a red and blue cube" for the toy prior."""
    prior: Literal["toy", "sd"] = "toy"
    """The 2D prior: 'toy' (embedded, nothing downloaded) or 'sd' (Stable Diffusion: [sd] extra, weights, a GPU)."""
    preset: str = "default"
    """Named set of defaults for the prior ('default', 'tiny' for a smoke test, 'paper'); flags override it."""
    out: str | None = None
    """Run folder; default runs/<prompt-slug>."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1', ..."""
    threads: int | None = None
    """CPU threads for PyTorch; None keeps PyTorch's default."""
    dry_run: bool = False
    """Print the resolved configuration and exit."""
    overwrite: bool = False
    """Replace an existing run folder."""
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    camera: CameraConfig = dataclasses.field(default_factory=CameraConfig)
    scoring: ScoringConfig = dataclasses.field(default_factory=ScoringConfig)
    losses: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    toy: ToyConfig = dataclasses.field(default_factory=ToyConfig)
    sd: SDConfig = dataclasses.field(default_factory=SDConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)


# --- presets ----------------------------------------------------------------------------
def _toy_default() -> GenerateConfig:
    # A 32^3 grid seen at 32x32 and 2000 steps: about two minutes on a laptop CPU. The emptiness
    # mean runs over ~10x fewer samples per image than the paper's 64x64 renders of a 100^3 grid,
    # so its weight is lower (300) and not multiplied late in the run: on the toy prior's hard
    # silhouettes the paper's x20 only erodes edges (see docs/CONVENTIONS.md).
    return GenerateConfig(
        field=FieldConfig(resolution=32, background="fixed", background_value=1.0),
        scoring=ScoringConfig(sigma_schedule="log-uniform"),
        losses=LossConfig(emptiness_weight=300.0, emptiness_multiplier=1.0),
        train=TrainConfig(steps=2000, checkpoint_every=500, validate_every=250),
    )


def _toy_tiny() -> GenerateConfig:
    # Seconds on a CPU: a 16^3 grid seen at 16x16, for smoke tests and trying out flags.
    base = _toy_default()
    return dataclasses.replace(
        base,
        field=dataclasses.replace(base.field, resolution=16),
        toy=dataclasses.replace(base.toy, n_images=1000, image_size=16),
        train=TrainConfig(steps=300, checkpoint_every=100, validate_every=100, log_every=10),
        export=ExportConfig(turntable_frames=8, turntable_size=48),
    )


def _toy_paper() -> GenerateConfig:
    base = _toy_default()
    return dataclasses.replace(
        base,
        field=dataclasses.replace(base.field, resolution=100),
        toy=dataclasses.replace(base.toy, image_size=64),
        losses=LossConfig(),
        train=TrainConfig(),
    )


def _sd_paper() -> GenerateConfig:
    # The official code's defaults are this module's defaults: a 100^3 grid with raw 4-channel latent
    # features and a learned 4x4 background, 64x64 latents (512 px), Adamax 0.05 (background 1e-4),
    # sigma uniform over the grid minus its 10 lowest and 30 highest values, Eq. 16, emptiness 1e4
    # (scale 10) x20 from step 5000 of 10000, guidance 100, no centre-depth loss. Turntables render
    # 64x64 latents, which the VAE decodes to 512x512 frames.
    return GenerateConfig(
        field=FieldConfig(resolution=100, background="texture"),
        export=ExportConfig(turntable_size=64),
    )


def _sd_tiny() -> GenerateConfig:
    # Seconds on a CPU with a tiny test model: a 16^3 grid seen as 8x8 latents (64 px images).
    base = _sd_paper()
    return dataclasses.replace(
        base,
        field=dataclasses.replace(base.field, resolution=16),
        sd=SDConfig(resolution=64),
        train=TrainConfig(steps=20, checkpoint_every=10, validate_every=10, log_every=1),
        export=ExportConfig(turntable_frames=8, turntable_size=8),
    )


PRESETS: dict[str, dict[str, Any]] = {
    "toy": {"default": _toy_default, "tiny": _toy_tiny, "paper": _toy_paper},
    # For Stable Diffusion the paper's settings are the defaults.
    "sd": {"default": _sd_paper, "tiny": _sd_tiny, "paper": _sd_paper},
}


def preset(prior: str, name: str) -> GenerateConfig:
    """The named preset of `prior`; ValueError listing the known names otherwise."""
    table = PRESETS.get(prior)
    if table is None:
        raise ValueError(f"unknown prior {prior!r}; known priors: {', '.join(PRESETS)}")
    if name not in table:
        raise ValueError(f"unknown preset {name!r} for prior {prior!r}; known presets: {', '.join(table)}")
    return dataclasses.replace(table[name](), prior=prior, preset=name)


# --- (de)serialisation -------------------------------------------------------------------
def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=False)


def from_dict(cls: type, data: dict) -> Any:
    """Rebuild a (nested) config dataclass from `to_dict` output; unknown keys are an error."""
    kwargs = {}
    hints = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in hints:
            raise ValueError(f"unknown configuration key {key!r} for {cls.__name__}")
        sub = _dataclass_type(cls, key)
        kwargs[key] = from_dict(sub, value) if sub is not None and isinstance(value, dict) else value
    return cls(**kwargs)


def _dataclass_type(cls: type, key: str) -> type | None:
    default = next(f for f in dataclasses.fields(cls) if f.name == key).default_factory
    if default is not dataclasses.MISSING and dataclasses.is_dataclass(default):
        return default
    return None


def validate(cfg: GenerateConfig) -> None:
    """ValueError naming the first out-of-range setting and what would be valid."""
    checks = [
        (cfg.train.steps > 0, f"--train.steps must be positive, got {cfg.train.steps}"),
        (cfg.field.resolution >= 2, f"--field.resolution must be at least 2, got {cfg.field.resolution}"),
        (cfg.field.step_ratio > 0, f"--field.step-ratio must be positive, got {cfg.field.step_ratio}"),
        (cfg.optim.lr >= 0, f"--optim.lr must not be negative, got {cfg.optim.lr}"),
        (cfg.optim.background_lr >= 0, f"--optim.background-lr must not be negative, got {cfg.optim.background_lr}"),
        (
            cfg.losses.emptiness_weight >= 0,
            f"--losses.emptiness-weight must not be negative, got {cfg.losses.emptiness_weight}",
        ),
        (cfg.losses.center_depth_weight >= 0, "--losses.center-depth-weight must not be negative"),
        (cfg.scoring.n_noise >= 1, f"--scoring.n-noise must be at least 1, got {cfg.scoring.n_noise}"),
        (cfg.camera.fov_min <= cfg.camera.fov_max, "--camera.fov-min must not exceed --camera.fov-max"),
        (cfg.train.checkpoint_every > 0, "--train.checkpoint-every must be positive"),
        (cfg.train.log_every > 0, "--train.log-every must be positive"),
        (
            cfg.prior != "sd" or (cfg.sd.resolution > 0 and cfg.sd.resolution % 8 == 0),
            f"--sd.resolution must be a positive multiple of 8 (the VAE's downsampling), got {cfg.sd.resolution}",
        ),
    ]
    lo, hi = cfg.scoring.sigma_min, cfg.scoring.sigma_max
    if lo is not None:
        checks.append((lo > 0, f"--scoring.sigma-min must be positive, got {lo}"))
    if lo is not None and hi is not None:
        checks.append((lo < hi, f"--scoring.sigma-min ({lo}) must be below --scoring.sigma-max ({hi})"))
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
