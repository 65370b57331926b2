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
from .prompts import view_prompt
from .render import render
from .voxel import VoxelField

VALIDATION_VIEW = View(azimuth=30.0, elevation=20.0)


class NonFiniteError(RuntimeError):
    """A loss, gradient or parameter stopped being finite."""


class DeviceError(ValueError):
    """The requested device does not exist on this machine."""


def pick_device(name: str = "auto") -> torch.device:
    """'auto' is CUDA when present, else CPU; an unavailable device is a DeviceError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise DeviceError(f"unknown device {name!r}; use 'auto', 'cpu', 'cuda' or 'cuda:N'") from None
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


def draw_sigma(cfg: GenerateConfig, prior: Prior, step: int, generator: torch.Generator) -> float:
    s = cfg.scoring
    lo = s.sigma_min if s.sigma_min is not None else prior.sigma_min
    hi = s.sigma_max if s.sigma_max is not None else prior.sigma_max
    if s.sigma_schedule == "log-uniform":
        return chaining.sigma_log_uniform(lo, hi, generator)
    if s.sigma_schedule == "annealed":
        return chaining.sigma_annealed(step, cfg.train.steps, lo, hi)
    if prior.sigmas is None:
        raise ValueError("this prior has no discrete sigma grid; use --scoring.sigma-schedule log-uniform")
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
    out = render(field, camera_from_view(view, prior.image_size), min_transmittance=cfg.field.min_transmittance)
    sigma = draw_sigma(cfg, prior, step, gens["sigma"])
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
        step, cfg.train.steps, c.emptiness_weight, c.emptiness_multiplier, c.emptiness_switch
    )
    if w_empty > 0:
        losses["emptiness"] = w_empty * chaining.emptiness_loss(out.weights, c.emptiness_scale)
    if c.center_depth_weight > 0:
        losses["center_depth"] = c.center_depth_weight * chaining.center_depth_loss(out.depth)
    total = sum(losses.values())
    optimizer.zero_grad(set_to_none=True)
    total.backward()
    grad_norm = torch.linalg.vector_norm(field.grid.grad).item()
    values = {k: v.item() for k, v in losses.items()}
    for name, value in [*values.items(), ("grad_norm", grad_norm)]:
        if not math.isfinite(value):
            raise NonFiniteError(f"the {name} became {value} at step {step}; the last checkpoint is intact")
    optimizer.step()
    return StepResult(sigma, values, grad_norm)


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
) -> VoxelField:
    """Optimise `field` for steps [start_step, cfg.train.steps) against `prior`."""
    device = field.grid.device
    gens = gens or make_generators(cfg.train.seed, device)
    optimizer = optimizer or make_optimizer(field, cfg)
    t = cfg.train
    log = open(Path(run_dir) / "log.jsonl", "a") if run_dir else None  # noqa: SIM115 (closed below)
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
                save_validation(field, prior, cfg, Path(run_dir) / "validation" / f"step_{done:07d}.png")
            if run_dir and (done % t.checkpoint_every == 0 or done == t.steps):
                save_checkpoint(checkpoint_path(run_dir, done), field, optimizer, gens, done, to_json(cfg))
                prune_checkpoints(run_dir, t.keep_checkpoints)
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
