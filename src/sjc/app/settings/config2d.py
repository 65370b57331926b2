"""Configuration of the 2D commands, `sjc canvas` and `sjc sample`: frozen dataclasses whose field
docstrings become `--help` (their presets are in `presets`), and their range checks. Imports no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Annotated, Literal

import tyro

from ...core.errors import ConfigError
from ...core.settings import PAPER_GUIDANCE_SCALE, VSD_LR
from ...priors import IMAGE_PRIORS, check_prior
from ...priors.settings import PixelConfig, SDConfig, ToyConfig, Zero123Config
from .config import DEFAULT_THREADS, ImageConfig, raise_first


@dataclass(frozen=True)
class Config2D:
    prompt: Annotated[str, tyro.conf.Positional, tyro.conf.arg(metavar="PROMPT")] = ""
    """Text for the toy and sd priors, e.g. "a red cube"; none for the unconditional pixel prior."""
    prior: str = "toy"
    """The 2D prior: 'toy' (embedded exact denoiser), 'toy-learned' (the shipped toy UNet), 'pixel' (unconditional
    diffusers UNet2DModel), 'sd' (Stable Diffusion), 'zero123' (Zero-1-to-3: the object of --image seen from
    --view), or 'python:PACKAGE.MODULE:FUNCTION' (your own)."""
    preset: str = "default"
    """Named set of defaults for the prior ('default', 'tiny' for a smoke test, 'paper'); flags override it."""
    seed: int = 0
    """Seed of the first image; image k uses seed + k (the run seeding scheme of each, `core.fit.make_generators`)."""
    out: str | None = None
    """Output folder; default runs/canvas/<slug>-<scoring>-<schedule> (canvas) or runs/sample/<slug>-<sampler>
    (sample), the slug of the prompt or the pixel model, with -view<az>-<el> for a --view."""
    device: str = "auto"
    """'auto' (CUDA when present, else CPU), 'cpu', 'cuda', 'cuda:1', ..."""
    threads: int | None = DEFAULT_THREADS
    """CPU threads for PyTorch; None keeps PyTorch's default (all cores)."""
    dry_run: bool = False
    """Print the resolved configuration and exit."""
    overwrite: bool = False
    """Replace the results in an existing output folder."""
    toy: ToyConfig = dataclasses.field(default_factory=ToyConfig)
    sd: SDConfig = dataclasses.field(default_factory=SDConfig)
    pixel: PixelConfig = dataclasses.field(default_factory=PixelConfig)
    zero123: Zero123Config = dataclasses.field(default_factory=Zero123Config)
    image: ImageConfig = dataclasses.field(default_factory=ImageConfig)
    """--prior zero123: the reference picture (--image) and its camera (--image.view); the losses' weights are
    sjc generate's only."""
    view: tuple[float, ...] | None = None
    """--prior zero123: the camera to draw the object from, azimuth and elevation in degrees (the same world as
    --image.view: 90 0 is a quarter turn round from a reference at 0 0), then optionally its field of view and
    radius (default the reference's); None draws the reference view itself."""


@dataclass(frozen=True)
class CanvasConfig(Config2D):
    scoring: Literal["paas", "naive", "sds", "csd", "nfsd", "sdi", "ism", "vsd"] = "paas"
    """Score estimate: 'naive' (D(x; sigma) - x) / sigma on the clean image, 'paas' (perturb, then average), or a
    distillation method of `sjc generate --scoring.method` (docs/methods.md) on the canvas's own sigmas; choosing
    one applies its preset guidance scale (paas and sds 100, csd 40, nfsd, sdi, ism and vsd 7.5)."""
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
    guidance_scale: float = PAPER_GUIDANCE_SCALE
    """Classifier-free guidance scale of text-conditioned priors (SJC's 100; the toy-learned preset: none; the
    other methods: their presets)."""
    negative_prompt: str | None = None
    """nfsd (and csd with --negative-scale): the negative prompt; None takes the prior's own (docs/methods.md)."""
    negative_scale: float = 0.0
    """csd: weight of the negative-prompt term (0: off)."""
    inversion_steps: int = 4
    """sdi and ism: DDIM inversion steps from the smallest sigma up to the step's."""
    vsd_lr: float = VSD_LR
    """vsd: Adam learning rate of the online copy of the network."""
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
    """Last non-zero sigma; None: the prior's smallest sigma (the toy presets: 0.002)."""
    sigma_max: float | None = None
    """Starting sigma; None: the prior's largest sigma (the toy presets: 80)."""
    guidance_scale: float = 7.5
    """Classifier-free guidance scale of text-conditioned priors (the usual sampling value, not SJC's 100; the
    toy-learned preset: none)."""


def validate_2d(cfg: Config2D) -> None:
    """ConfigError naming the first bad setting of a canvas or sample configuration and what would be valid."""
    if cfg.prior in IMAGE_PRIORS and cfg.prior != "zero123":
        raise ConfigError(
            f"the {cfg.prior} prior is conditioned on a picture, which only sjc generate takes (--image); "
            "use --prior toy with a prompt here"
        )
    if cfg.prior != "zero123" and (cfg.image.path is not None or cfg.view is not None):
        flag = "--image" if cfg.image.path is not None else "--view"
        raise ConfigError(f"{flag} draws novel views of a picture with --prior zero123, not --prior {cfg.prior}")
    check_prior(cfg.prior, cfg.prompt, image=cfg.image.path is not None)
    if cfg.prior == "zero123":
        shown = ", ".join(f"{v:g}" for v in cfg.view or ())
        raise_first(
            (2 <= len(cfg.image.view) <= 4, "--image.view takes azimuth elevation [fov [radius]]"),
            (
                cfg.view is None or 2 <= len(cfg.view) <= 4,
                f"--view takes azimuth elevation [fov [radius]], got ({shown})",
            ),
            (
                cfg.zero123.resolution > 0 and cfg.zero123.resolution % 8 == 0,
                f"--zero123.resolution must be a positive multiple of 8, got {cfg.zero123.resolution}",
            ),
        )
    lo, hi = cfg.sigma_min, cfg.sigma_max
    checks = [
        (cfg.steps > 0, f"--steps must be positive, got {cfg.steps}"),
        (lo is None or lo > 0, f"--sigma-min must be positive, got {lo}"),
        (lo is None or hi is None or lo < hi, f"--sigma-min ({lo}) must be below --sigma-max ({hi})"),
    ]
    if isinstance(cfg, CanvasConfig):
        checks += [
            (0 < cfg.lr <= 1, f"--lr must lie in (0, 1], got {cfg.lr}"),
            (cfg.seeds >= 1, f"--seeds must be at least 1, got {cfg.seeds}"),
            (cfg.n_noise >= 1, f"--n-noise must be at least 1, got {cfg.n_noise}"),
            (cfg.init_std >= 0, f"--init-std must not be negative, got {cfg.init_std}"),
            (cfg.frames >= 1, f"--frames must be at least 1, got {cfg.frames}"),
            (cfg.inversion_steps >= 1, f"--inversion-steps must be at least 1, got {cfg.inversion_steps}"),
            (cfg.vsd_lr > 0, f"--vsd-lr must be positive, got {cfg.vsd_lr}"),
            (cfg.negative_scale >= 0, f"--negative-scale must not be negative, got {cfg.negative_scale}"),
            (
                cfg.scoring != "vsd" or cfg.prior == "toy-learned",
                f"--scoring vsd needs the learned toy prior (--prior toy-learned), not {cfg.prior!r}",
            ),
        ]
    if isinstance(cfg, SampleConfig):
        checks += [
            (cfg.samples >= 1, f"--samples must be at least 1, got {cfg.samples}"),
            (cfg.rho > 0, f"--rho must be positive, got {cfg.rho}"),
        ]
    raise_first(*checks)
