"""fit(): the SJC optimisation loop, written out plainly.

Each step: sample a training camera, render the field, draw sigma, estimate the score of the render by
PAAS (paper Eq. 16), and back-propagate -(g * y).sum() plus the emptiness and centre-depth losses into the
voxels with Adamax. Image-to-3D adds a `Reference`: a picture seen from a known camera, whose render there
is pulled towards the picture (colour and mask) while the prior scores every other view. The camera sampler
and the render function are parameters (the paper's perspective cameras and `render` by default); a callback
sees every step and may stop the loop. Files are the app's business: `sjc.app.runs` adds logs, validation
renders, checkpoints and resume on top of this loop.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
from torch import Tensor
from tqdm.auto import tqdm

from . import chaining, methods
from .cameras import Camera, View, camera_from_view, sample_training_view
from .denoisers import Prior
from .errors import ConfigError, DeviceError
from .render import Rendering, render
from .settings import CameraConfig, FieldConfig, FitSettings, OptimConfig, ScoringConfig
from .voxel import VoxelField

# (generator, image size) -> the camera of this step, and its View when it has one (priors condition on it).
CameraSampler = Callable[[torch.Generator, int], tuple[Camera, View | None]]
RenderFn = Callable[[VoxelField, Camera], Rendering]
STREAMS = ("init", "camera", "sigma", "noise")  # the random streams of a run, each seeded on its own


class NonFiniteError(RuntimeError):
    """A loss, gradient or parameter stopped being finite."""


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


def make_generators(seed: int, device: torch.device | str = "cpu") -> dict[str, torch.Generator]:
    """The one seeding scheme of sjc: stream k of `STREAMS` is seeded with seed * 1000 + k, so each stream
    is reproducible on its own. 'noise' lives on `device` (noise is drawn there); the others on the CPU."""
    gens = {name: torch.Generator().manual_seed(seed * 1000 + k) for k, name in enumerate(STREAMS)}
    gens["noise"] = torch.Generator(device=device).manual_seed(seed * 1000 + STREAMS.index("noise"))
    return gens


def build_field(
    prior: Prior,
    settings: FieldConfig = FieldConfig(),
    device: torch.device | str = "cpu",
    seed: int = 0,
    generator: torch.Generator | None = None,
) -> VoxelField:
    """A voxel field holding the prior's data space (its channels and feature activation), initialised from
    `generator`, by default the 'init' stream of `seed`, at the resolution of step 0 (the coarse one of a
    coarse-to-fine run)."""
    return VoxelField(
        settings.coarse_resolution,
        prior.channels,
        feature_activation=prior.feature_activation,
        density_shift=settings.density_shift,
        step_ratio=settings.step_ratio,
        background=settings.background,
        background_value=settings.background_value,
        background_size=settings.background_size,
        generator=generator or make_generators(seed)["init"],
    ).to(device)


def make_optimizer(field: VoxelField, optim: OptimConfig = OptimConfig()) -> torch.optim.Optimizer:
    """Adamax (the paper's) or Adam over the field's parameter groups, as `optim` says."""
    kind = {"adamax": torch.optim.Adamax, "adam": torch.optim.Adam}[optim.optimizer]
    return kind(field.param_groups(optim.lr, optim.background_lr), betas=tuple(optim.betas))


@dataclass
class Reference:
    """Image-to-3D: a picture of the object from a known camera, in the prior's data space.

    Every `every` steps the field is rendered from `view` and two losses pull that render towards the picture:
    `rgb_weight` times the mean squared error of the object's pixels (`chaining.reference_rgb_loss`) and
    `mask_weight` times that of the render's opacity against `mask` (`chaining.reference_mask_loss`), and, with
    `depth_smoothness_weight`, the render's depth kept smooth over the object (`chaining.depth_smoothness`). During
    the first `warmup` of the run (a fraction of the schedule's steps) only the picture is fitted: the prior is
    not asked, so the object takes the picture's outline before the prior shapes its unseen sides (1: the picture
    alone all run, what one view gives without a prior)."""

    image: Tensor  # [C, S, S], the prior's data space at its image size
    mask: Tensor  # [S, S] in [0, 1], 1 on the object
    view: View
    rgb_weight: float = 1e2
    mask_weight: float = 1e2
    depth_smoothness_weight: float = 0.0
    every: int = 1
    warmup: float = 0.0

    def __post_init__(self) -> None:
        if self.image.dim() != 3 or self.mask.shape != self.image.shape[1:]:
            raise ValueError(f"a Reference needs image [C, S, S] and mask [S, S], got {tuple(self.image.shape)} "
                             f"and {tuple(self.mask.shape)}")  # fmt: skip
        weights = (self.rgb_weight, self.mask_weight, self.depth_smoothness_weight)
        if self.every < 1 or not 0 <= self.warmup <= 1 or min(weights) < 0:
            raise ConfigError(
                "a reference is rendered every 1 or more steps, warms up for a fraction of the run in [0, 1] and "
                f"has weights >= 0; got every {self.every}, warmup {self.warmup}, weights {weights}"
            )

    def camera(self) -> Camera:
        return camera_from_view(self.view, self.image.shape[-1])

    def to(self, device: torch.device | str) -> Reference:
        return dataclasses.replace(self, image=self.image.to(device), mask=self.mask.to(device))

    def losses(self, field: VoxelField, render_fn: RenderFn, camera: Camera | None = None) -> dict[str, Tensor]:
        """The weighted reference losses of `field` (renders it from the reference camera)."""
        out = render_fn(field, camera or self.camera())
        losses = {}
        if self.rgb_weight > 0:
            losses["reference_rgb"] = self.rgb_weight * chaining.reference_rgb_loss(out.image, self.image, self.mask)
        if self.mask_weight > 0:
            losses["reference_mask"] = self.mask_weight * chaining.reference_mask_loss(out.opacity, self.mask)
        if self.depth_smoothness_weight > 0:
            smooth = chaining.depth_smoothness(out.depth, self.mask)
            losses["reference_depth_smoothness"] = self.depth_smoothness_weight * smooth
        return losses


@dataclass(frozen=True)
class PerspectiveCameras:
    """The paper's training cameras: looking at the origin from an area-uniform cap of directions, with a
    random field of view (`cameras.sample_training_view`)."""

    settings: CameraConfig = CameraConfig()

    def __call__(self, generator: torch.Generator, image_size: int) -> tuple[Camera, View]:
        c = self.settings
        view = sample_training_view(generator, c.radius, (c.fov_min, c.fov_max), c.max_polar_param, c.fov_ends)
        return camera_from_view(view, image_size), view


def default_render(settings: FieldConfig = FieldConfig()) -> RenderFn:
    """`render` with the early-termination and empty-space-skipping settings of the field."""
    return partial(render, min_transmittance=settings.min_transmittance, skip_empty=settings.skip_empty)


class SigmaSchedule:
    """The noise level of each step, checked against the prior once, when built (ConfigError)."""

    def __init__(self, scoring: ScoringConfig, prior: Prior, n_steps: int) -> None:
        kind = scoring.sigma_schedule
        if kind == "auto":  # the method's own; SJC draws from the network's grid, and a continuous prior has none
            kind = methods.PAPER_SCHEDULES.get(scoring.method) or (
                "grid" if prior.sigmas is not None else "log-uniform"
            )
        self.kind, self.n_steps = kind, n_steps
        if kind in ("timestep", "timestep-annealed", "timestep-warmup"):
            self.timesteps = methods.Timesteps(prior.sigmas, *sigma_range(scoring, prior))
        elif kind == "grid":
            if prior.sigmas is None:
                raise ConfigError("this prior has no discrete sigma grid; use --scoring.sigma-schedule log-uniform")
            lo, hi, n = scoring.drop_lowest, scoring.drop_highest, len(prior.sigmas)
            if lo + hi >= n:
                raise ConfigError(
                    f"--scoring.drop-lowest {lo} and --scoring.drop-highest {hi} leave none of the prior's {n} sigmas"
                )
            self.grid, self.drop = prior.sigmas, (lo, hi)
        else:
            self.range = sigma_range(scoring, prior)

    def __call__(self, step: int, generator: torch.Generator) -> float:
        if self.kind == "timestep":
            return self.timesteps.uniform(generator)
        if self.kind == "timestep-annealed":
            return self.timesteps.annealed(step, self.n_steps)
        if self.kind == "timestep-warmup":
            return self.timesteps.warmed_up(step, self.n_steps, generator)
        if self.kind == "log-uniform":
            return chaining.sigma_log_uniform(*self.range, generator)
        if self.kind == "annealed":
            return chaining.sigma_annealed(step, self.n_steps, *self.range)
        if self.kind == "annealed-random":
            return chaining.sigma_annealed_random(step, self.n_steps, *self.range, generator)
        return chaining.sigma_from_grid(self.grid, *self.drop, generator)


def sigma_range(scoring: ScoringConfig, prior: Prior) -> tuple[float, float]:
    """(sigma_min, sigma_max): the settings', else the prior's; ConfigError if reversed."""
    lo = scoring.sigma_min if scoring.sigma_min is not None else prior.sigma_min
    hi = scoring.sigma_max if scoring.sigma_max is not None else prior.sigma_max
    if not 0 < lo < hi:
        raise ConfigError(
            f"the sigma range [{lo}, {hi}] (--scoring.sigma-min / --scoring.sigma-max, else the prior's "
            f"[{prior.sigma_min}, {prior.sigma_max}]) must satisfy 0 < sigma-min < sigma-max"
        )
    return lo, hi


def make_scorer(scoring: ScoringConfig, prior: Prior) -> methods.Scorer | None:
    """The score estimate of `scoring.method` bound to `prior` (None for paas and naive, which the step computes
    itself); ConfigError when the prior cannot serve the method."""
    if scoring.method in ("paas", "naive"):
        return None
    return methods.Scorer(
        scoring.method,
        prior,
        guidance_scale=scoring.guidance_scale,
        sigma_range=sigma_range(scoring, prior),
        negative_prompt=scoring.negative_prompt,
        negative_scale=scoring.negative_scale,
        inversion_steps=scoring.inversion_steps,
        n_noise=scoring.n_noise,
        vsd_lr=scoring.vsd_lr,
    )


@dataclass
class FitStep:
    """What the callback sees after each step."""

    step: int  # steps done, counting this one
    steps: int  # steps of the whole fit
    sigma: float
    losses: dict[str, float]
    grad_norm: float
    field: VoxelField
    image: Tensor  # the training render of this step [1, C, H, W], data space, detached (a live preview)


@dataclass
class FitResult:
    field: VoxelField
    step: int  # steps done
    stopped: bool  # the callback asked to stop before the last step


@dataclass
class FitLoop:
    """Everything a step needs besides the field, built once (`FitLoop.create`)."""

    prior: Prior
    settings: FitSettings
    optimizer: torch.optim.Optimizer
    gens: dict[str, torch.Generator]
    sigmas: SigmaSchedule
    cameras: CameraSampler
    render: RenderFn
    schedule_steps: int
    scorer: methods.Scorer | None = None  # the score estimate of a method other than paas and naive
    reference: Reference | None = None  # image-to-3D: the picture and its camera
    reference_camera: Camera | None = None

    @classmethod
    def create(
        cls,
        field: VoxelField,
        prior: Prior,
        settings: FitSettings = FitSettings(),
        *,
        steps: int,
        seed: int = 0,
        schedule_steps: int | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        generators: dict[str, torch.Generator] | None = None,
        cameras: CameraSampler | None = None,
        render_fn: RenderFn | None = None,
        reference: Reference | None = None,
    ) -> FitLoop:
        """The loop of `fit` (see there); a ConfigError for a sigma schedule the prior cannot serve."""
        n_schedule = schedule_steps or steps
        if reference is not None:
            reference = _checked_reference(reference, prior, field.grid.device)
        return cls(
            prior,
            settings,
            optimizer or make_optimizer(field, settings.optim),
            generators or make_generators(seed, field.grid.device),
            SigmaSchedule(settings.scoring, prior, n_schedule),
            cameras or PerspectiveCameras(settings.camera),
            render_fn or default_render(settings.field),
            n_schedule,
            make_scorer(settings.scoring, prior),
            reference,
            reference.camera() if reference is not None else None,
        )


def _checked_reference(reference: Reference, prior: Prior, device: torch.device) -> Reference:
    """The reference on the field's device; a ConfigError when its picture is not in the prior's data space."""
    shape = (prior.channels, prior.image_size, prior.image_size)
    if tuple(reference.image.shape) != shape:
        raise ConfigError(
            f"the reference picture is {tuple(reference.image.shape)} but this prior renders {shape} "
            "(channels, height, width of its data space); bring it there first (`sjc.app.picture`)"
        )
    return reference.to(device)


@dataclass
class StepResult:
    sigma: float
    losses: dict[str, float]
    grad_norm: float
    image: Tensor  # the training render [1, C, H, W], detached


def sjc_step(field: VoxelField, loop: FitLoop, step: int) -> StepResult:
    """One Score Jacobian Chaining update of `field` at 0-based `step`."""
    prior, c, s, ref = loop.prior, loop.settings.losses, loop.settings.scoring, loop.reference
    camera, view = loop.cameras(loop.gens["camera"], prior.image_size)
    cond = prior.condition(view)
    prepare_step(field, loop.optimizer, loop.settings, step, loop.schedule_steps)
    out = loop.render(field, camera)
    sigma = loop.sigmas(step, loop.gens["sigma"])
    reference_only = ref is not None and step < ref.warmup * loop.schedule_steps
    if reference_only:  # the warm-up of image-to-3D: the picture alone
        g = torch.zeros_like(out.image)
    elif loop.scorer is not None:
        g = loop.scorer(out.image, sigma, view, loop.gens["noise"])
    elif s.method == "naive":
        g = chaining.naive_grad(prior.denoise, out.image.detach(), sigma, cond)
    else:
        g = chaining.paas_grad(
            prior.denoise,
            out.image,
            sigma,
            cond,
            n_noise=s.n_noise,
            variance_reduced=s.variance_reduced,
            generator=loop.gens["noise"],
        )
    losses = {"sjc": chaining.chain_surrogate(out.image, g)}
    w_empty = chaining.emptiness_weight_at(
        step, loop.schedule_steps, c.emptiness_weight, c.emptiness_multiplier, c.emptiness_switch
    )
    if w_empty > 0:
        losses["emptiness"] = w_empty * chaining.emptiness_loss(out.weights, c.emptiness_scale)
    if c.center_depth_weight > 0:
        losses["center_depth"] = c.center_depth_weight * chaining.center_depth_loss(out.depth)
    if c.opacity_weight > 0:
        losses["opacity"] = c.opacity_weight * chaining.opacity_entropy(out.opacity)
    if c.tv_weight > 0:
        losses["tv"] = c.tv_weight * chaining.total_variation(field.grid[0, 0])
    if ref is not None and (reference_only or step % ref.every == 0):
        losses.update(ref.losses(field, loop.render, loop.reference_camera))
    total = sum(losses.values())
    loop.optimizer.zero_grad(set_to_none=True)
    total.backward()
    values = {k: v.item() for k, v in losses.items()}
    grad_norm = _checked_grad_norm(field, values, step)
    loop.optimizer.step()
    for name, param in field.named_parameters():  # e.g. an overflowing update: stop before it is saved
        _check_finite(f"parameter {name}", param.detach(), step)
    return StepResult(sigma, values, grad_norm, out.image.detach())


def prepare_step(
    field: VoxelField, optimizer: torch.optim.Optimizer, settings: FitSettings, step: int, n_steps: int
) -> None:
    """What the schedules do before 0-based `step` of a run spanning `n_steps`: grow the grid (coarse-to-fine),
    refresh the occupancy grid of empty-space skipping, set the decayed learning rates. All functions of the step
    alone and of state saved with the field and optimiser, so a resumed run does exactly the same."""
    f = settings.field
    resolution = f.resolution_at(step, n_steps)
    upsampled = resolution != field.resolution
    if upsampled:
        field.upsample(resolution, optimizer)
    if f.skip_empty and (upsampled or step % f.occupancy_every == 0):
        field.refresh_occupancy(f.occupancy_threshold, f.occupancy_dilation)
    if settings.optim.lr_decay != 1.0:
        decay_learning_rates(optimizer, settings.optim.lr_decay, step, n_steps)


def decay_learning_rates(optimizer: torch.optim.Optimizer, final: float, step: int, n_steps: int) -> None:
    """Set every group's rate to its initial one times final^(step / n_steps): exponential decay to `final` of
    it at the end of the schedule (the initial rate is kept in the group, so checkpoints carry it)."""
    factor = final ** (min(step, n_steps) / max(n_steps, 1))
    for group in optimizer.param_groups:
        group["lr"] = group.setdefault("initial_lr", group["lr"]) * factor


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


def _check_finite(quantity: str, value: Tensor, step: int) -> None:
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
    settings: FitSettings = FitSettings(),
    *,
    steps: int,
    seed: int = 0,
    start_step: int = 0,
    schedule_steps: int | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    generators: dict[str, torch.Generator] | None = None,
    cameras: CameraSampler | None = None,
    render_fn: RenderFn | None = None,
    callback: Callable[[FitStep], bool | None] | None = None,
    progress: bool = True,
    reference: Reference | None = None,
) -> FitResult:
    """Optimise `field` for steps [start_step, steps) against `prior`; with a `reference`, also towards its
    picture at its camera (image-to-3D).

    `schedule_steps` is the length the step-dependent schedules (emptiness switch, annealed sigma) span
    (default `steps`). `cameras` and `render_fn` default to the paper's cameras (`settings.camera`) and
    `render` (`settings.field`). `callback(FitStep)` runs after every step; a true return stops the loop
    (FitResult.stopped). A NaN or inf raises NonFiniteError before the update of its step is kept."""
    loop = FitLoop.create(
        field,
        prior,
        settings,
        steps=steps,
        seed=seed,
        schedule_steps=schedule_steps,
        optimizer=optimizer,
        generators=generators,
        cameras=cameras,
        render_fn=render_fn,
        reference=reference,
    )
    desc = getattr(prior, "prompt", "") or "sjc"
    bar = tqdm(range(start_step, steps), initial=start_step, total=steps, disable=not progress, desc=desc)
    try:
        for step in bar:
            r = sjc_step(field, loop, step)
            bar.set_postfix(sigma=f"{r.sigma:.3f}", loss=f"{sum(r.losses.values()):.3g}", refresh=False)
            info = FitStep(step + 1, steps, r.sigma, r.losses, r.grad_norm, field, r.image)
            if callback is not None and callback(info):
                return FitResult(field, step + 1, stopped=step + 1 < steps)
    finally:
        bar.close()
    return FitResult(field, max(steps, start_step), stopped=False)
