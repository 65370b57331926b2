"""Configuration of `sjc generate`, `sjc render` and `sjc export`: frozen dataclasses whose field docstrings
become `--help`, their (de)serialisation, and the range checks of every setting.

`GenerateConfig` gathers the core's settings (`core.settings`), the priors' (`priors.settings`) and the
outputs' (`outputs.settings`) with the run's own (`TrainConfig`). Every default is in those dataclasses;
`presets` holds only what each prior's presets change. Imports no torch, so the command line starts fast.
"""

from __future__ import annotations

import dataclasses
import hashlib
import html
import json
import math
import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal

import tyro

from ...core.errors import ConfigError
from ...core.settings import CameraConfig, FieldConfig, FitSettings, LossConfig, OptimConfig, ScoringConfig
from ...outputs.settings import ExportConfig
from ...priors import check_prior
from ...priors.settings import PixelConfig, SDConfig, ToyConfig, Zero123Config

# One PyTorch thread: the fastest for the toy presets idle or beside other work (a toy step took 18 ms at one
# thread and 28 ms at two on 2 idle cores; 17 and 39 ms beside a busy process), and within 15% of two threads
# at the paper's 100^3 / 64x64 setting (docs/CONVENTIONS.md, "Threads"). Several runs on one machine then
# share it without contention. --threads raises it (e.g. for a pixel prior's network on the CPU).
DEFAULT_THREADS = 1


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


@dataclass(frozen=True)
class LogConfig:
    tensorboard: Literal["auto", "on", "off"] = "auto"
    """TensorBoard event files under <run>/tensorboard: every logged loss, sigma, learning rate, gradient norm and
    steps per second, the validation renders, the toy-world quality figures at the end and the run's settings as
    hyper-parameters. 'auto': when the tensorboard package is installed (the [logs] extra); 'on' needs it."""


@dataclass(frozen=True)
class ImageConfig:
    path: Annotated[str | None, tyro.conf.arg(aliases=("--image",))] = None
    """Image-to-3D: a picture of the object (PNG or JPEG; RGBA uses its alpha as the object's mask, RGB its
    plain background's colour). The field is pulled towards it at --image.view while the prior scores every
    other view (docs/image-to-3d.md). With --prior toy-image the picture alone says what to make (no prompt)."""
    view: tuple[float, ...] = (0.0, 0.0)
    """The reference camera: azimuth and elevation in degrees (0 0 is the front, level), then optionally its
    horizontal field of view (degrees; default --camera.test-fov) and radius (default --camera.radius)."""
    estimate_elevation: bool = False
    """Estimate the reference camera's elevation from the picture where the prior can (the toy priors: the
    elevation whose true render explains it best) instead of taking --image.view's."""
    background_colour: tuple[int, int, int] | None = None
    """RGB pictures: the background colour (0-255 each) that marks pixels outside the object; None takes the
    median colour of the picture's border."""
    tolerance: int = 40
    """RGB pictures: a pixel within this of the background colour (0-255, on every channel) is background."""
    rgb_weight: float = 1e2
    """Weight of the reference colour loss (mean squared error on the object's pixels, in the prior's data
    space: pixels, or Stable Diffusion's latents of the picture). 1e2 with the mask at 1e2 measured best on the toy
    suite; 1e4 (mask 1e3) flattened a cube into a card (docs/image-to-3d.md)."""
    mask_weight: float = 1e2
    """Weight of the reference mask loss (mean squared error of the render's opacity against the mask)."""
    depth_smoothness_weight: float = 0.0
    """Weight of a depth-smoothness term at the reference view: the mean squared difference of neighbouring depth
    pixels on the object (0 turns it off; not needed on the toy world, where the mask fixes the outline)."""
    every: int = 1
    """Render the reference view every this many steps."""
    warmup: float = 0.0
    """Fraction of the run at its start that fits the picture alone, before the prior is asked (1: the picture
    alone all run, no prior: what one view gives)."""

    def camera_view(self, camera: CameraConfig):
        """The reference `View`, the field of view and radius defaulting to `camera`'s test view."""
        from ...core.cameras import View

        az, el, *rest = self.view
        fov = rest[0] if rest else camera.test_fov
        radius = rest[1] if len(rest) > 1 else camera.radius
        return View(azimuth=float(az), elevation=float(el), fov=float(fov), radius=float(radius))

    def resolved(self, view) -> ImageConfig:
        """These settings with `view` written out in full (azimuth, elevation, fov, radius) and nothing left to
        estimate: what a run saves, so its config reproduces it."""
        return dataclasses.replace(
            self, view=(view.azimuth, view.elevation, view.fov, view.radius), estimate_elevation=False
        )


def picture_title(path: str) -> str:
    """What names a run of a picture without a prompt: image-<the file's name without its suffix>."""
    from pathlib import Path

    return f"image-{Path(path).stem}"


@dataclass(frozen=True)
class GenerateConfig:
    prompt: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="PROMPT")] = ""
    """What to generate, e.g. "a red and blue cube" for the toy prior."""
    prior: str = "toy"
    """The 2D prior: 'toy' (embedded exact denoiser, nothing downloaded), 'toy-learned' (the small UNet trained on
    the toy world that ships with sjc), 'toy-image' (the exact toy prior of the object in --image, no prompt),
    'sd' (Stable Diffusion: [sd] extra, weights, a GPU), 'pixel' (an
    unconditional pixel-space diffusers model, no prompt: [sd] extra, weights, a GPU), 'zero123' (Zero-1-to-3:
    novel views of the object in --image, no prompt: [sd] extra, weights, a GPU), or your own denoiser:
    'python:PACKAGE.MODULE:FUNCTION' names a function (prompt, device) -> prior (docs/python-api.md)."""
    preset: str = "default"
    """Named set of defaults for the prior ('default', 'tiny' for a smoke test, 'paper'); flags override it."""
    out: str | None = None
    """Run folder; default runs/<slug>-seed<seed>: the slug of the prompt (else the picture's image-<name>, else the
    pixel model's name), as the page and sjc batch name runs too."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1', ..."""
    threads: int | None = DEFAULT_THREADS
    """CPU threads for PyTorch; None keeps PyTorch's default (all cores)."""
    allow_sd_on_cpu: bool = False
    """Run --prior sd or zero123 on a CPU anyway: a full-size UNet takes minutes a step there (about a week for the
    paper's 10000 steps), so without this flag such a run is refused when no GPU is used."""
    dry_run: bool = False
    """Print the resolved configuration and exit."""
    overwrite: bool = False
    """Replace an existing run folder."""
    resume: str | None = None
    """Continue the run in this folder from its newest readable checkpoint, with its saved settings; only
    --steps (raised), --threads, --toy.cache-dir, --allow-sd-on-cpu, and logging, checkpoint, TensorBoard and export
    settings may change."""
    config: str | None = None
    """Start from the settings in this TOML or JSON file instead of a preset (a run's own config.json works as it
    is; a file may also hold only what differs from its prior's preset); flags given with it override it."""
    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    camera: CameraConfig = dataclasses.field(default_factory=CameraConfig)
    scoring: ScoringConfig = dataclasses.field(default_factory=ScoringConfig)
    losses: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    log: LogConfig = dataclasses.field(default_factory=LogConfig)
    toy: ToyConfig = dataclasses.field(default_factory=ToyConfig)
    sd: SDConfig = dataclasses.field(default_factory=SDConfig)
    pixel: PixelConfig = dataclasses.field(default_factory=PixelConfig)
    zero123: Zero123Config = dataclasses.field(default_factory=Zero123Config)
    image: ImageConfig = dataclasses.field(default_factory=ImageConfig)
    export: ExportConfig = dataclasses.field(default_factory=ExportConfig)

    def fit_settings(self) -> FitSettings:
        """The sections the fit loop reads."""
        return FitSettings(self.field, self.camera, self.scoring, self.losses, self.optim)


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
    threads: int | None = DEFAULT_THREADS
    """CPU threads for PyTorch; None keeps PyTorch's default (all cores)."""


@dataclass(frozen=True)
class ExportMeshConfig:
    """`sjc export`: a coloured mesh (or the raw grids) of a saved run."""

    run: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="RUN")] = ""
    """Run folder written by `sjc generate` (its saved config says everything else)."""
    step: int | None = None
    """Checkpoint step to export; None takes the newest readable one."""
    mesh: str | None = None
    """Output file: a bare name (e.g. chair.obj) goes into the run folder, a path (./chair.obj, out/chair.obj) where
    it says; None writes RUN/mesh.<format> (RUN/field.npz for npz)."""
    format: Literal["glb", "obj", "ply", "npz"] | None = None
    """File format; None takes it from --mesh's extension, else glb. npz holds the raw grids instead of a mesh."""
    threshold: float | None = None
    """Marching-cubes level on the voxel alpha (opacity of one voxel-length step); None takes the run's
    export.mesh_threshold (0.5 by default: the metrics' occupancy). Lower gives a fatter mesh of a soft field."""
    resolution: int | None = None
    """Grid the density is resampled to before marching cubes (and for npz); None: the field's own times the
    run's export.mesh_upsample (2 by default) for meshes, the field's own for npz."""
    smoothing: int | None = None
    """Passes of Taubin's volume-keeping smoothing (0 keeps marching cubes' staircase); None takes the run's
    export.mesh_smoothing (30 by default)."""
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
    threads: int | None = DEFAULT_THREADS
    """CPU threads for PyTorch; None keeps PyTorch's default (all cores)."""


# --- (de)serialisation -------------------------------------------------------------------
def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    """A nested `to_dict` as one level, keys dotted as the flags are ('train.steps')."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def to_json(cfg: Any) -> str:
    return json.dumps(to_dict(cfg), indent=2, sort_keys=False)


def from_dict(cls: type, data: dict) -> Any:
    """Rebuild a (nested) config dataclass from `to_dict` output; unknown keys are an error."""
    kwargs = {}
    hints = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in data.items():
        if key not in hints:
            raise ConfigError(f"unknown configuration key {key!r} for {cls.__name__}")
        sub = _dataclass_type(cls, key)
        if sub is not None and isinstance(value, dict):
            value = from_dict(sub, value)
        elif isinstance(value, list):  # JSON has no tuples (e.g. --field.upsample-at)
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def _dataclass_type(cls: type, key: str) -> type | None:
    default = next(f for f in dataclasses.fields(cls) if f.name == key).default_factory
    if default is not dataclasses.MISSING and dataclasses.is_dataclass(default):
        return default
    return None


SLUG_LENGTH = 60  # characters: long prompts (normal for Stable Diffusion) must still name a folder


def slug(text: str) -> str:
    """A folder name from free text: lower case, runs of anything but [a-z0-9] as one '-' ('run' if nothing is
    left), so no prompt names a path outside the folder it is put in. Longer than SLUG_LENGTH, it is cut and
    ends in a short hash of the whole text, so two long prompts alike at the start still get two names."""
    name = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "run"
    if len(name) <= SLUG_LENGTH:
        return name
    digest = hashlib.sha1(text.encode()).hexdigest()[:8]
    return f"{name[: SLUG_LENGTH - 9].rstrip('-')}-{digest}"


def markdown_text(text: str) -> str:
    """Free text (a prompt, a message) shown as itself inside Markdown, also as one cell of a table: on one
    line, HTML and the marks of links, images, emphasis, code and tables escaped."""
    text = html.escape(" ".join(str(text).split()), quote=False)
    return re.sub(r"([\\`*_\[\]|!~])", r"\\\1", text)


def check_prompt(cfg: GenerateConfig) -> None:
    """The toy priors' prompt grammar (PromptError names the unknown word), checked before a run is started
    elsewhere (a Ray worker, the web page's thread). Imports torch, unlike `validate`."""
    from ...priors import TOY_PRIORS

    if cfg.prior in TOY_PRIORS:
        from ...priors.toy import parse_prompt

        parse_prompt(cfg.prompt)


def validate(cfg: GenerateConfig) -> None:
    """ConfigError naming the first out-of-range setting and what would be valid."""
    check_prior(cfg.prior, cfg.prompt, image=cfg.image.path is not None)
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
        (
            cfg.losses.opacity_weight >= 0,
            f"--losses.opacity-weight must not be negative, got {cfg.losses.opacity_weight}",
        ),
        (cfg.losses.tv_weight >= 0, f"--losses.tv-weight must not be negative, got {cfg.losses.tv_weight}"),
        (
            0 < cfg.optim.lr_decay <= 1,
            f"--optim.lr-decay is the fraction of the rate left at the end: in (0, 1], got {cfg.optim.lr_decay}",
        ),
        *_coarse_to_fine_checks(cfg.field),
        (
            all(0 <= b < 1 for b in cfg.optim.betas) and len(cfg.optim.betas) == 2,
            f"--optim.betas takes two decay rates in [0, 1), got {tuple(cfg.optim.betas)}",
        ),
        (cfg.scoring.n_noise >= 1, f"--scoring.n-noise must be at least 1, got {cfg.scoring.n_noise}"),
        (
            cfg.scoring.method != "vsd" or cfg.prior == "toy-learned",
            f"--scoring.method vsd needs the learned toy prior (--prior toy-learned), not {cfg.prior!r}",
        ),
        (
            cfg.scoring.inversion_steps >= 1,
            f"--scoring.inversion-steps must be at least 1, got {cfg.scoring.inversion_steps}",
        ),
        (cfg.scoring.vsd_lr > 0, f"--scoring.vsd-lr must be positive, got {cfg.scoring.vsd_lr}"),
        (
            cfg.scoring.negative_scale >= 0,
            f"--scoring.negative-scale must not be negative, got {cfg.scoring.negative_scale}",
        ),
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
            cfg.log.tensorboard != "on" or _has_tensorboard(),
            "--log.tensorboard on needs the tensorboard package: pip install 'sjc[logs]' (or --log.tensorboard off)",
        ),
        (
            cfg.prior != "pixel" or cfg.pixel.resolution is None or cfg.pixel.resolution > 0,
            f"--pixel.resolution must be positive, got {cfg.pixel.resolution}",
        ),
        (
            cfg.prior != "sd" or (cfg.sd.resolution > 0 and cfg.sd.resolution % 8 == 0),
            f"--sd.resolution must be a positive multiple of 8 (the VAE's downsampling), got {cfg.sd.resolution}",
        ),
        (
            cfg.prior != "zero123" or (cfg.zero123.resolution > 0 and cfg.zero123.resolution % 8 == 0),
            "--zero123.resolution must be a positive multiple of 8 (the VAE's downsampling), got "
            f"{cfg.zero123.resolution}",
        ),
    ]
    lo, hi = cfg.scoring.sigma_min, cfg.scoring.sigma_max
    if lo is not None:
        checks.append((lo > 0, f"--scoring.sigma-min must be positive, got {lo}"))
    if lo is not None and hi is not None:
        checks.append((lo < hi, f"--scoring.sigma-min ({lo}) must be below --scoring.sigma-max ({hi})"))
    raise_first(*_finite_checks(cfg), *checks, *_run_checks(cfg), *_image_checks(cfg))


def _has_tensorboard() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def _image_checks(cfg: GenerateConfig) -> list[tuple[bool, str]]:
    im = cfg.image
    if im.path is None:
        return []
    view = ", ".join(f"{v:g}" for v in im.view)
    checks = [(2 <= len(im.view) <= 4, f"--image.view takes azimuth elevation [fov [radius]], got ({view})")]
    if len(im.view) >= 2:
        v = im.camera_view(cfg.camera)
        checks += [
            (-90 <= v.elevation <= 90, f"--image.view's elevation must be in [-90, 90] degrees, got {v.elevation}"),
            (0 < v.fov < 180, f"--image.view's field of view must be in (0, 180) degrees, got {v.fov}"),
            (
                v.radius > 1,
                f"--image.view's radius must put the camera outside the object's unit sphere (> 1), got {v.radius}",
            ),
        ]
    colour = im.background_colour
    checks += [
        (
            colour is None or (len(colour) == 3 and all(0 <= c <= 255 for c in colour)),
            f"--image.background-colour takes three values in 0-255, got {colour}",
        ),
        (0 <= im.tolerance <= 255, f"--image.tolerance must be in [0, 255], got {im.tolerance}"),
        (im.rgb_weight >= 0, f"--image.rgb-weight must not be negative, got {im.rgb_weight}"),
        (im.mask_weight >= 0, f"--image.mask-weight must not be negative, got {im.mask_weight}"),
        (
            im.depth_smoothness_weight >= 0,
            f"--image.depth-smoothness-weight must not be negative, got {im.depth_smoothness_weight}",
        ),
        (im.every >= 1, f"--image.every must be at least 1, got {im.every}"),
        (0 <= im.warmup <= 1, f"--image.warmup is a fraction of the run in [0, 1], got {im.warmup}"),
        (
            not im.estimate_elevation or cfg.prior in ("toy", "toy-image"),
            "--image.estimate-elevation needs a prior with the truth of its objects (toy, toy-image), not "
            f"{cfg.prior!r}; give the elevation in --image.view",
        ),
    ]
    return checks


def _coarse_to_fine_checks(field) -> list[tuple[bool, str]]:
    scale, at = field.coarse_scale, field.upsample_at
    if scale is None and not at:
        return []
    fractions = ", ".join(f"{f:g}" for f in at)
    return [
        (
            scale is not None and bool(at),
            "coarse-to-fine needs both --field.coarse-scale (the first grid's fraction of --field.resolution) and "
            f"--field.upsample-at (fractions of the run), got {scale} and ({fractions})",
        ),
        (
            scale is None or (0 < scale < 1 and field.coarse_resolution < field.resolution),
            f"--field.coarse-scale must lie in (0, 1) and give a grid below --field.resolution ({field.resolution}), "
            f"got {scale} (a {field.coarse_resolution}^3 first grid); raise the resolution, or turn coarse-to-fine "
            "off with --field.upsample-at and no fractions",
        ),
        (
            all(0 < f < 1 for f in at) and list(at) == sorted(set(at)),
            f"--field.upsample-at takes increasing fractions of the run between 0 and 1, got ({fractions})",
        ),
    ]


def raise_first(*checks: tuple[bool, str]) -> None:
    """ConfigError with the message of the first failed (ok, message) check."""
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)


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
        ("--export.mesh-upsample", e.mesh_upsample, 1),
        ("--export.mesh-smoothing", e.mesh_smoothing, 0),
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
