"""fit(): the SJC optimisation loop, written out plainly.

Each step: sample a training camera, render the field, draw sigma, estimate the score of
the render by PAAS, and back-propagate -(g * y).sum() plus the emptiness and centre-depth
losses into the voxels with Adamax. Logs, validation renders and checkpoints go to the run folder.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import chaining
from .cameras import View, camera_from_view, sample_training_view
from .checkpoint import checkpoint_path, prune_checkpoints, save_checkpoint
from .config import GenerateConfig, to_json
from .denoisers import Prior
from .interrupt import Interrupted, StopRequest
from .prompts import view_prompt
from .render import render
from .voxel import VoxelField

VALIDATION_VIEW = View(azimuth=30.0, elevation=20.0)


class NonFiniteError(RuntimeError):
    """A loss, gradient or parameter stopped being finite."""


class DeviceError(ValueError):
    """The requested device does not exist on this machine."""


class ConfigError(ValueError):
    """Settings that are valid alone but not with this prior (e.g. a sigma range outside it)."""


def pick_device(name: str = "auto") -> torch.device:
    """'auto' is CUDA when present, else CPU; an unavailable device is a DeviceError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):  # 'meta', 'xpu', ...: not devices a run can use
        raise DeviceError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'")
    if device.type == "cuda" and (not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()):
        raise DeviceError(f"device {name!r} is not available here (no such CUDA device); use --device cpu")
    return device


def make_generators(seed: int, device: torch.device) -> dict[str, torch.Generator]:
    """One generator per random stream, so that each stream is reproducible on its own."""
    gens = {}
    for offset, name in enumerate(("init", "camera", "sigma")):
        gens[name] = torch.Generator().manual_seed(seed * 1000 + offset)
    gens["noise"] = torch.Generator(device=device).manual_seed(seed * 1000 + 3)
    return gens


def build_field(cfg: GenerateConfig, prior: Prior, device: torch.device, generator: torch.Generator) -> VoxelField:
    f = cfg.field
    field = VoxelField(
        f.resolution,
        prior.channels,
        feature_activation=prior.feature_activation,
        density_shift=f.density_shift,
        step_ratio=f.step_ratio,
        background=f.background,
        background_value=f.background_value,
        background_size=f.background_size,
        generator=generator,
    )
    return field.to(device)


def make_optimizer(field: VoxelField, cfg: GenerateConfig) -> torch.optim.Optimizer:
    return torch.optim.Adamax(field.param_groups(cfg.optim.lr, cfg.optim.background_lr))


def schedule_steps(cfg: GenerateConfig) -> int:
    """The length the step-dependent schedules (emptiness switch, annealed sigma) are laid out over.
    It is --train.steps unless a resume raised the step count: the added steps then continue at the
    schedule's end values, so the steps already taken never change meaning."""
    return cfg.train.schedule_steps or cfg.train.steps


def sigma_range(cfg: GenerateConfig, prior: Prior) -> tuple[float, float]:
    """(sigma_min, sigma_max): the config's, else the prior's; ConfigError if reversed."""
    s = cfg.scoring
    lo = s.sigma_min if s.sigma_min is not None else prior.sigma_min
    hi = s.sigma_max if s.sigma_max is not None else prior.sigma_max
    if not 0 < lo < hi:
        raise ConfigError(
            f"the sigma range [{lo}, {hi}] (--scoring.sigma-min / --scoring.sigma-max, else the prior's "
            f"[{prior.sigma_min}, {prior.sigma_max}]) must satisfy 0 < sigma-min < sigma-max"
        )
    return lo, hi


def check_prior_settings(cfg: GenerateConfig, prior: Prior) -> None:
    """ConfigError for settings that are only wrong against this prior; run it before writing anything."""
    s = cfg.scoring
    if s.sigma_schedule != "grid":
        sigma_range(cfg, prior)
    elif prior.sigmas is None:
        raise ConfigError("this prior has no discrete sigma grid; use --scoring.sigma-schedule log-uniform")
    elif s.drop_lowest + s.drop_highest >= len(prior.sigmas):
        raise ConfigError(
            f"--scoring.drop-lowest {s.drop_lowest} and --scoring.drop-highest {s.drop_highest} leave none of "
            f"the prior's {len(prior.sigmas)} sigmas"
        )


def draw_sigma(cfg: GenerateConfig, prior: Prior, step: int, generator: torch.Generator) -> float:
    s = cfg.scoring
    if s.sigma_schedule == "log-uniform":
        return chaining.sigma_log_uniform(*sigma_range(cfg, prior), generator)
    if s.sigma_schedule == "annealed":
        return chaining.sigma_annealed(step, schedule_steps(cfg), *sigma_range(cfg, prior))
    check_prior_settings(cfg, prior)
    return chaining.sigma_from_grid(prior.sigmas, s.drop_lowest, s.drop_highest, generator)


@dataclass
class StepResult:
    sigma: float
    losses: dict[str, float]
    grad_norm: float


def sjc_step(
    field: VoxelField,
    prior: Prior,
    optimizer: torch.optim.Optimizer,
    cfg: GenerateConfig,
    step: int,
    gens: dict[str, torch.Generator],
) -> StepResult:
    """One Score Jacobian Chaining update of `field`."""
    c, cam_cfg = cfg.losses, cfg.camera
    view = sample_training_view(
        gens["camera"], cam_cfg.radius, (cam_cfg.fov_min, cam_cfg.fov_max), cam_cfg.max_polar_param
    )
    cond = prior.condition(view_prompt(cfg.prompt, view), view)
    f = cfg.field
    if f.skip_empty and step % f.occupancy_every == 0:  # the grid is saved with the field: resumes skip alike
        field.refresh_occupancy(f.occupancy_threshold, f.occupancy_dilation)
    camera = camera_from_view(view, prior.image_size)
    out = render(field, camera, min_transmittance=f.min_transmittance, skip_empty=f.skip_empty)
    sigma = draw_sigma(cfg, prior, step, gens["sigma"])
    if cfg.scoring.method == "naive":
        g = chaining.naive_grad(prior.denoise, out.image.detach(), sigma, cond)
    else:
        g = chaining.paas_grad(
            prior.denoise,
            out.image,
            sigma,
            cond,
            n_noise=cfg.scoring.n_noise,
            variance_reduced=cfg.scoring.variance_reduced,
            generator=gens["noise"],
        )
    losses = {"sjc": chaining.chain_surrogate(out.image, g)}
    w_empty = chaining.emptiness_weight_at(
        step, schedule_steps(cfg), c.emptiness_weight, c.emptiness_multiplier, c.emptiness_switch
    )
    if w_empty > 0:
        losses["emptiness"] = w_empty * chaining.emptiness_loss(out.weights, c.emptiness_scale)
    if c.center_depth_weight > 0:
        losses["center_depth"] = c.center_depth_weight * chaining.center_depth_loss(out.depth)
    total = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    values = {k: v.item() for k, v in losses.items()}
    grad_norm = _checked_grad_norm(field, values, step)
    optimizer.step()
    for name, param in field.named_parameters():  # e.g. an overflowing update: stop before it is saved
        _check_finite(f"parameter {name}", param.detach(), step)
    return StepResult(sigma, values, grad_norm)


def _checked_grad_norm(field: VoxelField, losses: dict[str, float], step: int) -> float:
    """The norm of the whole gradient, after checking that the loss terms and gradients are finite."""
    for name, value in losses.items():
        if not math.isfinite(value):
            raise _non_finite(f"{name} loss", value, step)
    grads = {name: p.grad for name, p in field.named_parameters() if p.grad is not None}
    grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads.values()])).item()
    if not math.isfinite(grad_norm):
        for name, grad in grads.items():
            _check_finite(f"gradient of {name}", grad, step)
        raise _non_finite("gradient norm", grad_norm, step)  # finite entries whose norm overflows
    return grad_norm


def _check_finite(quantity: str, value: torch.Tensor, step: int) -> None:
    if not bool(torch.isfinite(value).all()):
        raise _non_finite(quantity, value[~torch.isfinite(value)].flatten()[0].item(), step)


def _non_finite(quantity: str, value: float, step: int) -> NonFiniteError:
    """The error for `quantity` turning NaN or inf at 0-based `step` (messages count steps from 1)."""
    return NonFiniteError(
        f"the {quantity} became {value} at step {step + 1}; "
        "the run stopped without saving this state, so the last checkpoint is intact"
    )


def fit(
    field: VoxelField,
    prior: Prior,
    cfg: GenerateConfig,
    run_dir: Path | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    gens: dict[str, torch.Generator] | None = None,
    start_step: int = 0,
    progress: bool = True,
    stop: StopRequest | None = None,
) -> VoxelField:
    """Optimise `field` for steps [start_step, cfg.train.steps) against `prior`.

    When `stop` is requested (a signal), the step in flight completes, its state is checkpointed
    and Interrupted is raised. A NaN or inf raises NonFiniteError before anything of its step is saved."""
    device = field.grid.device
    gens = gens or make_generators(cfg.train.seed, device)
    optimizer = optimizer or make_optimizer(field, cfg)
    t = cfg.train
    run_dir = Path(run_dir) if run_dir else None
    log = open(run_dir / "log.jsonl", "a") if run_dir else None  # noqa: SIM115 (closed below)
    bar = tqdm(
        range(start_step, t.steps), initial=start_step, total=t.steps, disable=not progress, desc=cfg.prompt or "sjc"
    )
    clock = time.perf_counter()
    try:
        for step in bar:
            result = sjc_step(field, prior, optimizer, cfg, step, gens)
            done = step + 1
            if log and (done % t.log_every == 0 or done == t.steps):
                record = {"step": done, "sigma": result.sigma, **result.losses, "grad_norm": result.grad_norm}
                record["seconds"] = round(time.perf_counter() - clock, 3)
                log.write(json.dumps(record) + "\n")
                log.flush()
            bar.set_postfix(sigma=f"{result.sigma:.3f}", loss=f"{sum(result.losses.values()):.3g}", refresh=False)
            if run_dir and t.validate_every and done % t.validate_every == 0:
                save_validation(field, prior, cfg, run_dir / "validation" / f"step_{done:07d}.png")
            stopping = stop is not None and stop.requested
            if run_dir and (done % t.checkpoint_every == 0 or done == t.steps or stopping):
                save_checkpoint(checkpoint_path(run_dir, done), field, optimizer, gens, done, to_json(cfg))
                prune_checkpoints(run_dir, t.keep_checkpoints)
            if stopping:
                raise Interrupted(done, run_dir, stop.signum)
    finally:
        bar.close()
        if log:
            log.close()
    return field


@torch.no_grad()
def save_validation(field: VoxelField, prior: Prior, cfg: GenerateConfig, path: Path) -> None:
    """A render of the field from a fixed three-quarter view, decoded to RGB, as PNG."""
    import imageio.v3 as iio

    from .export import to_uint8

    view = View(VALIDATION_VIEW.azimuth, VALIDATION_VIEW.elevation, cfg.camera.test_fov, cfg.camera.radius)
    out = render(field, camera_from_view(view, prior.image_size))
    path.parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(path, to_uint8(prior.decode(out.image)))
