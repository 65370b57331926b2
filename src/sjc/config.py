"""Run configuration: frozen dataclasses whose field docstrings become `sjc --help`.

This module imports no torch, so the command line starts fast. Defaults are the paper's
(official code) values unless a comment says otherwise; `presets` adapts them per prior.
"""

from __future__ import annotations

import dataclasses
import json
import math
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
    min_transmittance: float = 1e-8
    """Samples behind the point where a ray's transmittance drops below this are not evaluated (1e-8 keeps
    renders and gradients within 1e-4 of evaluating every sample; 1e-4 moved depths by ~1e-3)."""
    skip_empty: bool = True
    """Empty-space skipping in training renders: leave out samples in cells the occupancy grid marks
    empty. They get no gradient until the next refresh, so the grid is conservative (below); on the toy
    suite no 3D IoU moved by more than 0.001 and runs took 20% less time (docs/CONVENTIONS.md)."""
    occupancy_every: int = 16
    """With skip_empty: steps between refreshes of the occupancy grid from the density."""
    occupancy_threshold: float = 1e-4
    """With skip_empty: a cell is marked when one of its corner voxels has an alpha (one voxel-length
    step) above this; low, so faint density still counts."""
    occupancy_dilation: int = 2
    """With skip_empty: marked cells grow by this many cells each way, where the surface may grow."""


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
    method: Literal["paas", "naive"] = "paas"
    """'paas' scores a perturbed render (Perturb-and-Average Scoring); 'naive' scores the clean render y as
    (D(y; sigma) - y) / sigma, the baseline the paper shows fails on learned priors (out of distribution)."""
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
    schedule_steps: int | None = None
    """Steps the step-dependent schedules (emptiness switch, annealed sigma) span; None is --train.steps.
    --resume sets it when it raises --steps, so the added steps continue at the schedules' end values."""


TOY_PRIORS = ("toy", "toy-learned")  # the priors of the toy world: ground truth, quality figures, `toy` settings


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
    prior: Literal["toy", "toy-learned", "sd", "pixel"] = "toy"
    """The 2D prior: 'toy' (embedded exact denoiser, nothing downloaded), 'toy-learned' (the small UNet trained on
    the toy world that ships with sjc), 'sd' (Stable Diffusion: [sd] extra, weights, a GPU) or 'pixel' (an
    unconditional pixel-space diffusers model, no prompt: [sd] extra, weights, a GPU)."""
    preset: str = "default"
    """Named set of defaults for the prior ('default', 'tiny' for a smoke test, 'paper'); flags override it."""
    out: str | None = None
    """Run folder; default runs/<prompt-slug> (runs/<model-slug> for the unconditional pixel prior)."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1', ..."""
    threads: int | None = None
    """CPU threads for PyTorch; None keeps PyTorch's default."""
    dry_run: bool = False
    """Print the resolved configuration and exit."""
    overwrite: bool = False
    """Replace an existing run folder."""
    resume: str | None = None
    """Continue the run in this folder from its newest readable checkpoint, with its saved settings; only
    --steps (raised), --threads, and logging, checkpoint and export settings may change."""
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    camera: CameraConfig = dataclasses.field(default_factory=CameraConfig)
    scoring: ScoringConfig = dataclasses.field(default_factory=ScoringConfig)
    losses: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    toy: ToyConfig = dataclasses.field(default_factory=ToyConfig)
    sd: SDConfig = dataclasses.field(default_factory=SDConfig)
    pixel: PixelConfig = dataclasses.field(default_factory=PixelConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)


@dataclass(frozen=True)
class RenderConfig:
    """`sjc render`: a turntable or spiral video of a saved run, at any resolution."""

    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")] = ""
    """Run folder written by `sjc generate` (its saved config says everything else)."""
    step: int | None = None
    """Checkpoint step to render; None takes the newest readable one."""
    frames: int = 72
    """Frames of the video (a full turn: 5 degrees per frame at 72)."""
    size: int | None = None
    """Side of the frames in pixels; None: 256, or the prior's full picture size if larger (512 for SD)."""
    elevation: float = 15.0
    """Camera elevation of the turntable, degrees above the horizontal."""
    path: Literal["turntable", "spiral"] = "turntable"
    """'turntable': one turn at --elevation; 'spiral': two turns descending from 60 to -5 degrees."""
    hires: bool = False
    """Average --subpixels^2 stratified rays per pixel (anti-aliased, steady from frame to frame)."""
    subpixels: int = 3
    """Rays per pixel side with --hires (3 averages 9 rays per pixel)."""
    fps: int = 24
    """Frames per second of the videos."""
    video: str | None = None
    """MP4 path; None writes RUN/render.mp4. The GIF (.gif) and the depth video (-depth.mp4) go next to it."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda', ..."""
    threads: int | None = None
    """CPU threads for PyTorch; None keeps PyTorch's default."""


@dataclass(frozen=True)
class ExportMeshConfig:
    """`sjc export`: a coloured mesh (or the raw grids) of a saved run."""

    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")] = ""
    """Run folder written by `sjc generate` (its saved config says everything else)."""
    step: int | None = None
    """Checkpoint step to export; None takes the newest readable one."""
    mesh: str | None = None
    """Output path; None writes RUN/mesh.<format> (RUN/field.npz for npz)."""
    format: Literal["glb", "obj", "ply", "npz"] | None = None
    """File format; None takes it from --mesh's extension, else glb. npz holds the raw grids instead of a mesh."""
    threshold: float | None = None
    """Marching-cubes level on the voxel alpha (opacity of one voxel-length step); None takes the run's
    export.mesh_threshold (0.5 by default: the metrics' occupancy). Lower gives a fatter mesh of a soft field."""
    resolution: int | None = None
    """Grid the density is resampled to before marching cubes (and for npz); None keeps the field's own."""
    largest_only: bool = True
    """Keep only the largest connected part; --no-largest-only keeps every part but the floaters."""
    min_part: float = 0.01
    """With --no-largest-only: parts with fewer faces than this fraction of the largest part are floaters."""
    max_faces: int | None = None
    """Decimate (quadric error) to at most this many faces; None keeps marching cubes' mesh."""
    bake_size: int | None = None
    """Latent fields: side of the renders (field pixels, before decoding) colours are baked from; None takes
    the run's export.turntable_size (64 latents, decoded to 512 px, for SD)."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda', ..."""
    threads: int | None = None
    """CPU threads for PyTorch; None keeps PyTorch's default."""


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
        (
            cfg.losses.center_depth_weight >= 0,
            f"--losses.center-depth-weight must not be negative, got {cfg.losses.center_depth_weight}",
        ),
        (cfg.scoring.n_noise >= 1, f"--scoring.n-noise must be at least 1, got {cfg.scoring.n_noise}"),
        (
            cfg.camera.fov_min <= cfg.camera.fov_max,
            f"--camera.fov-min ({cfg.camera.fov_min}) must not exceed --camera.fov-max ({cfg.camera.fov_max})",
        ),
        (
            cfg.train.checkpoint_every > 0,
            f"--train.checkpoint-every must be positive, got {cfg.train.checkpoint_every}",
        ),
        (cfg.train.log_every > 0, f"--train.log-every must be positive, got {cfg.train.log_every}"),
        (
            cfg.prior != "pixel" or not cfg.prompt.strip(),
            f"the pixel prior is unconditional and takes no prompt (got {cfg.prompt!r}); drop the prompt, "
            "or use --prior toy or --prior sd for text prompts",
        ),
        (
            cfg.prior != "pixel" or cfg.pixel.resolution is None or cfg.pixel.resolution > 0,
            f"--pixel.resolution must be positive, got {cfg.pixel.resolution}",
        ),
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
    for ok, message in [*_finite_checks(cfg), *checks, *_run_checks(cfg)]:
        if not ok:
            raise ValueError(message)


def _finite_checks(cfg: Any, prefix: str = "--") -> list[tuple[bool, str]]:
    """Every float setting must be a number: NaN or inf would only surface steps later, deep in the loop."""
    checks = []
    for f in dataclasses.fields(cfg):
        value, flag = getattr(cfg, f.name), prefix + f.name.replace("_", "-")
        if dataclasses.is_dataclass(value):
            checks += _finite_checks(value, flag + ".")
        elif isinstance(value, float) and not math.isfinite(value):
            checks.append((False, f"{flag} must be a finite number, got {value}"))
    return checks


def _run_checks(cfg: GenerateConfig) -> list[tuple[bool, str]]:
    """Ranges of the settings a long run depends on (found by feeding random values to `sjc generate`)."""
    t, c, f, s, e = cfg.train, cfg.camera, cfg.field, cfg.scoring, cfg.export
    at_least = [
        ("--train.keep-checkpoints", t.keep_checkpoints, 1),
        ("--train.validate-every", t.validate_every, 0),
        ("--train.schedule-steps", t.schedule_steps, 1),
        ("--threads", cfg.threads, 1),
        ("--field.step-ratio", f.step_ratio, 0.01),  # more than 100 samples per voxel only fills memory
        ("--field.background-size", f.background_size, 1),
        ("--field.occupancy-every", f.occupancy_every, 1),
        ("--field.occupancy-dilation", f.occupancy_dilation, 0),
        ("--scoring.drop-lowest", s.drop_lowest, 0),
        ("--scoring.drop-highest", s.drop_highest, 0),
        ("--losses.emptiness-scale", cfg.losses.emptiness_scale, 0),
        ("--losses.emptiness-multiplier", cfg.losses.emptiness_multiplier, 0),
        # With view conditioning, fewer renders can leave a view bucket without any.
        ("--toy.n-images", cfg.toy.n_images, 100 if cfg.toy.view_conditioning else 1),
        ("--toy.image-size", cfg.toy.image_size, 4),
        ("--export.turntable-frames", e.turntable_frames, 1),
        ("--export.turntable-size", e.turntable_size, 1),
    ]
    # (flag, value, low, high, ends): "(" and ")" exclude a bound, "[" and "]" include it.
    within = [
        ("--train.seed", t.seed, 0, 2**53, "[)"),
        ("--toy.data-seed", cfg.toy.data_seed, 0, 2**53, "[)"),
        ("--field.min-transmittance", f.min_transmittance, 0, 1, "[)"),
        ("--field.occupancy-threshold", f.occupancy_threshold, 0, 1, "[)"),
        ("--camera.radius", c.radius, 0, math.inf, "()"),
        ("--camera.fov-min", c.fov_min, 0, 180, "()"),
        ("--camera.fov-max", c.fov_max, 0, 180, "()"),
        ("--camera.test-fov", c.test_fov, 0, 180, "()"),
        ("--camera.max-polar-param", c.max_polar_param, 0, 180, "(]"),
        ("--scoring.sigma-max", s.sigma_max, 0, math.inf, "()"),
        ("--export.mesh-threshold", e.mesh_threshold, 0, 1, "()"),
    ]
    # Adamax moves each value by about lr per step: beyond these nothing is learned, and past float32's
    # range (about 3e38) PyTorch fails inside the update.
    at_most = [("--optim.lr", cfg.optim.lr, 1e3), ("--optim.background-lr", cfg.optim.background_lr, 1e3)]
    checks = [(v >= lo, f"{k} must be at least {lo}, got {v}") for k, v, lo in at_least if v is not None]
    checks += [(v <= hi, f"{k} must be at most {hi:g}, got {v}") for k, v, hi in at_most]
    for flag, v, lo, hi, ends in within:
        if v is not None:
            ok = (v >= lo if ends[0] == "[" else v > lo) and (v <= hi if ends[1] == "]" else v < hi)
            checks.append((ok, f"{flag} must be in {ends[0]}{lo}, {hi}{ends[1]}, got {v}"))
    return checks
