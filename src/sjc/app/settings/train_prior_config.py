"""Configuration of `sjc train-prior`: a frozen dataclass whose field docstrings become `--help`, and its range
checks. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass

from ...priors.settings import SUITE_PROMPTS
from .config import raise_first


@dataclass(frozen=True)
class TrainPriorConfig:
    """Train the learned toy prior (`--prior toy-learned`): an EDM-preconditioned class- and view-conditional
    UNet on toy renders. Seeded and resumable; the defaults reproduce the weights shipped with sjc."""

    out: str = "runs/train-prior"
    """Output folder: weights.safetensors (EMA weights), checkpoint.safetensors, log.jsonl, config.json."""
    prompts: tuple[str, ...] = SUITE_PROMPTS
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
    """ConfigError naming the first bad setting of `sjc train-prior`."""
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
    raise_first(*checks)
