"""Configuration of the 2D commands, `sjc canvas` and `sjc sample`: frozen dataclasses whose field
docstrings become `--help`, and their presets, which take each prior's settings from the 3D presets
(`config.preset`). Imports no torch, so `sjc canvas --help` starts fast.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Literal

import tyro

from .config import TOY_PRIORS, PixelConfig, SDConfig, ToyConfig
from .presets import preset


@dataclass(frozen=True)
class Config2D:
    prompt: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="PROMPT")] = ""
    """Text for the toy and sd priors, e.g. "a red cube"; none for the unconditional pixel prior."""
    prior: Literal["toy", "toy-learned", "pixel", "sd"] = "toy"
    """The 2D prior: 'toy' (embedded exact denoiser), 'toy-learned' (the shipped toy UNet), 'pixel' (unconditional
    diffusers UNet2DModel) or 'sd' (Stable Diffusion)."""
    preset: str = "default"
    """Named set of defaults for the prior ('default', 'tiny' for a smoke test, 'paper'); flags override it."""
    seed: int = 0
    """Seed of the first image; image k uses seed + k."""
    out: str | None = None
    """Output folder; default runs/<command>/<prompt-or-model-slug>-<method>."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1', ..."""
    threads: int | None = None
    """CPU threads for PyTorch; None keeps PyTorch's default."""
    dry_run: bool = False
    """Print the resolved configuration and exit."""
    overwrite: bool = False
    """Replace the results in an existing output folder."""
    toy: ToyConfig = dataclasses.field(default_factory=ToyConfig)
    sd: SDConfig = dataclasses.field(default_factory=SDConfig)
    pixel: PixelConfig = dataclasses.field(default_factory=PixelConfig)


@dataclass(frozen=True)
class CanvasConfig(Config2D):
    scoring: Literal["naive", "paas"] = "paas"
    """Score estimate: 'naive' (D(x; sigma) - x) / sigma on the clean image, or 'paas' (perturb, then average)."""
    schedule: Literal["annealed", "random"] = "annealed"
    """Sigma per step: 'annealed' geometrically from sigma-max to sigma-min, or 'random' log-uniform between them."""
    steps: int = 100
    """Optimisation steps."""
    lr: float = 0.2
    """Step x += lr * sigma^2 * score: the fraction of the way to the denoised estimate each step moves (<= 1)."""
    sigma_min: float | None = None
    """Smallest sigma of the schedule (in [-1, 1] image units; latent units for sd); None: the prior's range."""
    sigma_max: float | None = None
    """Largest sigma of the schedule; None: the prior's range."""
    seeds: int = 4
    """Canvases optimised from seeds seed, seed + 1, ..., shown side by side."""
    n_noise: int = 1
    """PAAS noise draws averaged per step (k in the paper)."""
    variance_reduced: bool = True
    """PAAS as (D(x + sigma n) - x) / sigma (Eq. 16) instead of (D(x + sigma n) - (x + sigma n)) / sigma (Eq. 15)."""
    init_std: float = 0.5
    """The canvas starts as init-std * N(0, 1) noise (a flat grey image at 0)."""
    guidance_scale: float = 100.0
    """Classifier-free guidance scale of the sd prior (SJC's 100) and of toy-learned (1 there: no guidance)."""
    frames: int = 40
    """Frames of the trajectory video."""


@dataclass(frozen=True)
class SampleConfig(Config2D):
    sampler: Literal["heun", "euler"] = "heun"
    """Deterministic probability-flow ODE solver: 'heun' (second order, EDM) or 'euler'."""
    steps: int = 40
    """Noise levels of the Karras schedule (Heun evaluates D 2 * steps - 1 times)."""
    samples: int = 16
    """Images to draw."""
    rho: float = 7.0
    """Karras schedule exponent: sigmas evenly spaced in sigma^(1/rho)."""
    sigma_min: float | None = None
    """Last non-zero sigma; None: the prior's smallest grid sigma (0.002 for the continuous toy prior)."""
    sigma_max: float | None = None
    """Starting sigma; None: the prior's largest grid sigma (80 for the continuous toy prior)."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale of the sd prior (the usual sampling value, not SJC's 100) and of
    toy-learned (1 there: no guidance)."""


# (default, tiny) steps per prior. Annealed from sigma 80 at lr 0.2, the toy canvas ends 1e-5 RMS from a render
# after 100 steps (32 px), and 0.002 after 60 (tiny, 16 px; 30 leave 0.02); network priors need more.
_CANVAS_STEPS = {"toy": (100, 60), "toy-learned": (100, 20), "pixel": (500, 4), "sd": (500, 4)}
_SAMPLE_STEPS = {"toy": (40, 12), "toy-learned": (40, 8), "pixel": (40, 4), "sd": (40, 4)}


def _preset(cls: type, steps: dict[str, tuple[int, int]], prior: str, name: str, **changes) -> Config2D:
    base = preset(prior, name)  # the prior's data and model settings; ValueError for unknown names
    # The canvas and sampler draw images of any view, so the toy prior pools all its renders.
    toy = dataclasses.replace(base.toy, view_conditioning=False)
    steps_ = steps[prior][1] if name == "tiny" else steps[prior][0]
    return cls(prior=prior, preset=name, toy=toy, sd=base.sd, pixel=base.pixel, steps=steps_, **changes)


def canvas_preset(prior: str, name: str) -> CanvasConfig:
    """The named preset of `sjc canvas` for `prior`."""
    changes: dict = {"seeds": 2, "frames": 8} if name == "tiny" else {}
    if prior in TOY_PRIORS:
        # The toy prior's own range (0.1 to 1.5) is the 3D loop's. A canvas annealed over it never forgets its
        # noisy start and lands on the render nearest to it (a frame-filling close-up); from sigma 80, as the
        # sampler starts, PAAS lands on 16 different renders of 16 seeds (benchmarks/canvas.py).
        changes["sigma_max"] = 80.0
    if prior == "toy-learned":
        changes["guidance_scale"] = 1.0  # see docs/learned-prior.md
    return _preset(CanvasConfig, _CANVAS_STEPS, prior, name, **changes)


def sample_preset(prior: str, name: str) -> SampleConfig:
    """The named preset of `sjc sample` for `prior`."""
    changes: dict = {"samples": 4} if name == "tiny" else {}
    if prior == "toy-learned":
        changes["guidance_scale"] = 1.0  # see docs/learned-prior.md
    return _preset(SampleConfig, _SAMPLE_STEPS, prior, name, **changes)


def validate_2d(cfg: Config2D) -> None:
    """ValueError naming the first bad setting of a canvas or sample configuration and what would be valid."""
    if cfg.prior == "pixel" and cfg.prompt.strip():
        raise ValueError(
            f"the pixel prior is unconditional and takes no prompt (got {cfg.prompt!r}); drop the prompt, "
            "or use --prior toy or --prior sd for text prompts"
        )
    if cfg.prior != "pixel" and not cfg.prompt.strip():
        raise ValueError(f'give a prompt for the {cfg.prior} prior, e.g. sjc {_command(cfg)} "a red cube"')
    checks = [(cfg.steps > 0, f"--steps must be positive, got {cfg.steps}")]
    lo, hi = cfg.sigma_min, cfg.sigma_max
    checks += [(lo is None or lo > 0, f"--sigma-min must be positive, got {lo}")]
    checks += [(lo is None or hi is None or lo < hi, f"--sigma-min ({lo}) must be below --sigma-max ({hi})")]
    if isinstance(cfg, CanvasConfig):
        checks += [
            (0 < cfg.lr <= 1, f"--lr must lie in (0, 1], got {cfg.lr}"),
            (cfg.seeds >= 1, f"--seeds must be at least 1, got {cfg.seeds}"),
            (cfg.n_noise >= 1, f"--n-noise must be at least 1, got {cfg.n_noise}"),
            (cfg.init_std >= 0, f"--init-std must not be negative, got {cfg.init_std}"),
            (cfg.frames >= 1, f"--frames must be at least 1, got {cfg.frames}"),
        ]
    if isinstance(cfg, SampleConfig):
        checks += [
            (cfg.samples >= 1, f"--samples must be at least 1, got {cfg.samples}"),
            (cfg.rho > 0, f"--rho must be positive, got {cfg.rho}"),
        ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)


def _command(cfg: Config2D) -> str:
    return "canvas" if isinstance(cfg, CanvasConfig) else "sample"


@dataclass(frozen=True)
class TrainPriorConfig:
    """Train the learned toy prior (`--prior toy-learned`): an EDM-preconditioned class- and view-conditional
    UNet on toy renders. Seeded and resumable; the defaults reproduce the weights shipped with sjc."""

    out: str = "runs/train-prior"
    """Output folder: weights.safetensors (EMA weights), checkpoint.safetensors, log.jsonl, config.json."""
    prompts: tuple[str, ...] = (
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
    """The prompts (classes) the network learns; each is a toy-world prompt."""
    n_images: int = 5000
    """Renders per prompt (the same cached data sets the exact toy prior uses)."""
    image_size: int = 32
    """Side of the renders, pixels."""
    data_seed: int = 0
    """Seed of the toy data sets."""
    steps: int = 3000
    """Optimisation steps."""
    batch_size: int = 64
    """Images per step."""
    lr: float = 1e-3
    """Adam learning rate (after a linear warm-up over the first `warmup` steps)."""
    warmup: int = 200
    """Warm-up steps of the learning rate."""
    ema: float = 0.999
    """Decay of the exponential moving average of the weights; the average is what ships."""
    channels: tuple[int, ...] = (32, 64, 64)
    """UNet channels per resolution level (32, 16, 8 pixels for 32-pixel images)."""
    blocks: int = 1
    """Residual blocks per level on the way down (one more on the way up)."""
    sigma_data: float = 0.75
    """EDM's sigma_data: the standard deviation of the toy renders in [-1, 1] (measured: 0.766)."""
    p_mean: float = -0.8
    """Training sigmas: ln(sigma) ~ N(p-mean, p-std^2), centred on the 3D loop's range 0.1-1.5 ..."""
    p_std: float = 1.4
    """... with this spread."""
    uniform_fraction: float = 0.1
    """... except this fraction, drawn log-uniform over sampling's whole range [0.002, 80]."""
    class_dropout: float = 0.1
    """Probability that both the class and the view are replaced by the dropped tokens (unconditional branch)."""
    view_dropout: float = 0.1
    """Probability that only the view is dropped (the prompt without its view, for --toy.no-view-conditioning)."""
    seed: int = 0
    """Seed of the initial weights and every batch, sigma, noise and dropout draw."""
    checkpoint_every: int = 250
    """Steps between resumable checkpoints (and weights.safetensors updates)."""
    log_every: int = 50
    """Steps between lines of log.jsonl (mean loss per sigma band)."""
    time_limit: float | None = None
    """Stop cleanly (checkpoint written, resumable) after this many minutes."""
    resume: bool = False
    """Continue from out/checkpoint.safetensors (same settings; --steps may be raised)."""
    overwrite: bool = False
    """Replace a training run already in the output folder."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda', ..."""
    threads: int | None = None
    """CPU threads for PyTorch; None keeps PyTorch's default."""
    dry_run: bool = False
    """Print the resolved configuration and exit."""


def validate_train_prior(cfg: TrainPriorConfig) -> None:
    """ValueError naming the first bad setting of `sjc train-prior`."""
    checks = [
        (len(cfg.prompts) >= 1, "--prompts needs at least one prompt"),
        (cfg.steps > 0, f"--steps must be positive, got {cfg.steps}"),
        (cfg.batch_size >= 1, f"--batch-size must be at least 1, got {cfg.batch_size}"),
        (cfg.n_images >= 1, f"--n-images must be at least 1, got {cfg.n_images}"),
        (
            cfg.image_size % (2 ** (len(cfg.channels) - 1)) == 0,
            f"--image-size {cfg.image_size} must be divisible by {2 ** (len(cfg.channels) - 1)} "
            f"for {len(cfg.channels)} levels of --channels",
        ),
        (cfg.lr > 0, f"--lr must be positive, got {cfg.lr}"),
        (0 <= cfg.ema < 1, f"--ema must lie in [0, 1), got {cfg.ema}"),
        (cfg.sigma_data > 0, f"--sigma-data must be positive, got {cfg.sigma_data}"),
        (cfg.p_std > 0, f"--p-std must be positive, got {cfg.p_std}"),
        (0 <= cfg.uniform_fraction <= 1, f"--uniform-fraction must lie in [0, 1], got {cfg.uniform_fraction}"),
        (0 <= cfg.class_dropout < 1, f"--class-dropout must lie in [0, 1), got {cfg.class_dropout}"),
        (0 <= cfg.view_dropout < 1, f"--view-dropout must lie in [0, 1), got {cfg.view_dropout}"),
        (all(c >= 8 and c % 8 == 0 for c in cfg.channels), f"--channels must be multiples of 8, got {cfg.channels}"),
        (cfg.checkpoint_every >= 1, f"--checkpoint-every must be at least 1, got {cfg.checkpoint_every}"),
        (cfg.log_every >= 1, f"--log-every must be at least 1, got {cfg.log_every}"),
    ]
    for ok, message in checks:
        if not ok:
            raise ValueError(message)
