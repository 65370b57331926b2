"""fit(): the SJC optimisation loop, written out plainly.

Each step: sample a training camera, render the field, draw sigma, estimate the score of the render by
PAAS (paper Eq. 16), and back-propagate -(g * y).sum() plus the emptiness and centre-depth losses into the
voxels with Adamax. Image-to-3D adds a `Reference`: a picture seen from a known camera, whose render there
is pulled towards the picture (colour and mask) while the prior scores every other view. The camera sampler
and the render function are parameters (the paper's perspective cameras and `render` by default); a callback
sees every step and may stop the loop. Files are the app's business: `sjc.app.runs.generate` adds logs, validation
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
    field = VoxelField(
        settings.coarse_resolution,
        prior.channels,
        feature_activation=prior.feature_activation,
        density_shift=settings.density_shift,
        step_ratio=settings.step_ratio,
        background=settings.background,
        background_value=settings.background_value,
        background_size=settings.background_size,
        generator=generator or make_generators(seed)["init"],
    )
    if settings.init_blob:
        add_density_blob(field, settings.init_blob, settings.init_blob_radius)
    return field.to(device)


@torch.no_grad()
def add_density_blob(field: VoxelField, height: float, radius: float) -> None:
    """Add `height` * max(0, 1 - r / radius) to the raw density of every voxel at distance r from the box's
    centre (before the density's scale and shift)."""
    if radius <= 0:
        raise ValueError(f"the initial density ball's radius must be positive, got {radius}")
    r = field.voxel_centres().norm(dim=-1)
    field.grid[0, 0] += height * (1 - r / radius).clamp_min(0)


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
    """What the callback sees after each step. `losses` and `grad_norm` are read from the device when first asked
    for (on a GPU, a wait for the step to finish: a callback that reads them every step gives up the loop's
    asynchrony); `check()` raises NonFiniteError if a value of this or an earlier step stopped being finite, and
    is what a callback calls before it saves anything."""

    step: int  # steps done, counting this one
    steps: int  # steps of the whole fit
    sigma: float
    loss_values: dict[str, Tensor]  # 0-d tensors on the field's device, detached
    grad_norm_value: Tensor
    field: VoxelField
    image: Tensor  # the training render of this step [1, C, H, W], data space, detached (a live preview)
    guard: FiniteGuard | None = None

    @property
    def losses(self) -> dict[str, float]:
        return {name: float(value) for name, value in self.loss_values.items()}

    @property
    def grad_norm(self) -> float:
        return float(self.grad_norm_value)

    def check(self) -> None:
        if self.guard is not None:
            self.guard.check()


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
    guard: FiniteGuard = dataclasses.field(default_factory=lambda: FiniteGuard(1))

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
        check_every: int | None = None,
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
            FiniteGuard(check_every or default_check_every(field.grid.device)),
        )


def _checked_reference(reference: Reference, prior: Prior, device: torch.device) -> Reference:
    """The reference on the field's device; a ConfigError when its picture is not in the prior's data space."""
    shape = (prior.channels, prior.image_size, prior.image_size)
    if tuple(reference.image.shape) != shape:
        raise ConfigError(
            f"the reference picture is {tuple(reference.image.shape)} but this prior renders {shape} "
            "(channels, height, width of its data space); bring it there first (`sjc.app.runs.picture`)"
        )
    return reference.to(device)


@dataclass
class StepResult:
    sigma: float
    losses: dict[str, Tensor]  # 0-d, on the field's device, detached: read them (float) only when needed
    grad_norm: Tensor
    image: Tensor  # the training render [1, C, H, W], detached


# Named regions of a step, for `torch.profiler` (benchmarks/device.py --profile: where each millisecond goes).
REGIONS = ("camera", "schedules", "render", "score", "losses", "backward", "guard", "optimizer")


def _region(name: str):
    return torch.profiler.record_function(f"sjc.{name}")


def sjc_step(field: VoxelField, loop: FitLoop, step: int) -> StepResult:
    """One Score Jacobian Chaining update of `field` at 0-based `step`."""
    prior, ref = loop.prior, loop.reference
    with _region("camera"):
        camera, view = loop.cameras(loop.gens["camera"], prior.image_size)
        cond = prior.condition(view)
    with _region("schedules"):
        prepare_step(field, loop.optimizer, loop.settings, step, loop.schedule_steps)
    with _region("render"):
        out = loop.render(field, camera)
    sigma = loop.sigmas(step, loop.gens["sigma"])
    reference_only = ref is not None and step < ref.warmup * loop.schedule_steps
    with _region("score"):
        g = _score(loop, out.image, sigma, view, cond, reference_only)
    with _region("losses"):
        losses = _losses(field, loop, step, out, g, reference_only)
        total = sum(losses.values())
    with _region("backward"):
        loop.optimizer.zero_grad(set_to_none=True)
        total.backward()
    with _region("guard"):
        values = {k: v.detach() for k, v in losses.items()}
        guard = loop.guard
        guard.observe(step, [(f"{name} loss", value) for name, value in values.items()])
        grads = [(name, p.grad) for name, p in field.named_parameters() if p.grad is not None]
        norms = [torch.linalg.vector_norm(g) for _, g in grads]
        grad_norm = torch.linalg.vector_norm(torch.stack(norms))
        guard.observe(step, [(f"gradient of {name}", g) for name, g in grads], norms)
        guard.observe(step, [("gradient norm", grad_norm)])  # finite entries whose norm overflows
    with _region("optimizer"):
        loop.optimizer.step()
    with _region("guard"):  # e.g. an overflowing update: found before it is saved
        guard.observe(step, [(f"parameter {name}", p.detach()) for name, p in field.named_parameters()])
    return StepResult(sigma, values, grad_norm, out.image.detach())


def _score(loop: FitLoop, image: Tensor, sigma: float, view: View | None, cond, reference_only: bool) -> Tensor:
    """The score estimate g chained into the render: PAAS (paper Eq. 16), naive, or another method's."""
    s = loop.settings.scoring
    if reference_only:  # the warm-up of image-to-3D: the picture alone
        return torch.zeros_like(image)
    if loop.scorer is not None:
        return loop.scorer(image, sigma, view, loop.gens["noise"])
    if s.method == "naive":
        return chaining.naive_grad(loop.prior.denoise, image.detach(), sigma, cond)
    return chaining.paas_grad(
        loop.prior.denoise,
        image,
        sigma,
        cond,
        n_noise=s.n_noise,
        variance_reduced=s.variance_reduced,
        generator=loop.gens["noise"],
    )


def _losses(field: VoxelField, loop: FitLoop, step: int, out: Rendering, g: Tensor, reference_only: bool) -> dict:
    """The step's loss terms by name: the chained score, then the regularisers and the reference's that are on."""
    c, ref = loop.settings.losses, loop.reference
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
    return losses


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


# On a GPU the loop reads its losses and its non-finite guard back every this many steps, not every step: a read
# waits for the device to finish the step, and the next step's launches wait with it (a run's checkpoints, logs and
# validation renders read it too, before they write). The CPU runs each operation as it is called: reading costs
# nothing there, so it reads every step and stops before a non-finite update is kept.
DEVICE_CHECK_EVERY = 25


def default_check_every(device: torch.device | str) -> int:
    return 1 if torch.device(device).type == "cpu" else DEVICE_CHECK_EVERY


class FiniteGuard:
    """The fit loop's watch for NaN and inf in its losses, gradients and parameters.

    Every `every` steps (`due`) the values are read at once, as they are observed, and the first non-finite one
    raises NonFiniteError before the step's update is kept. Between reads the check stays on the device: the first
    non-finite value, the step and the quantity are recorded there without waiting, and `check()` reads them (the
    loop calls it every `every` steps, a run before anything is saved) and raises for the first bad step, so the
    message names the same quantity and step either way."""

    def __init__(self, every: int = 1) -> None:
        self.every = every
        self.names: list[str] = []  # quantity names by code
        self._codes: dict[tuple[str, ...], Tensor] = {}
        self.first: tuple[Tensor, Tensor, Tensor] | None = None  # step (-1: none), quantity code, value

    @property
    def eager(self) -> bool:
        return self.every == 1

    def due(self, step: int) -> bool:
        """Whether the loop reads the guard after 0-based `step`."""
        return (step + 1) % self.every == 0

    def observe(self, step: int, quantities: list[tuple[str, Tensor]], norms: list[Tensor] | None = None) -> None:
        """Watch each (name, tensor) of 0-based `step`; `norms`, when given, are the tensors' norms (finite exactly
        when the tensors are), watched in their place between reads."""
        if not quantities:
            return
        if self.eager:
            for k, (name, value) in enumerate(quantities):
                if norms is None or not math.isfinite(float(norms[k])):
                    _check_finite(name, value.detach(), step)
            return
        if norms is not None:
            quantities = [(name, norm) for (name, _), norm in zip(quantities, norms, strict=True)]
        flats = [value.detach().reshape(-1) for _, value in quantities]
        firsts = []  # each tensor's first non-finite element (its first element when it has none), in float64
        bad = []
        for flat in flats:
            finite = torch.isfinite(flat)
            where = torch.argmin(finite.to(torch.uint8)).reshape(1)
            firsts.append(flat.gather(0, where).to(torch.float64))
            bad.append(~finite.all())
        bad_t = torch.stack(bad)
        which = torch.argmax(bad_t.to(torch.uint8)).reshape(1)
        value = torch.cat(firsts).gather(0, which)[0]
        code = self._code_tensor(tuple(name for name, _ in quantities), value.device).gather(0, which)[0]
        if self.first is None:
            self.first = (value.new_tensor(-1.0), code.new_tensor(-1), value.new_tensor(0.0))
        seen, old_code, old_value = self.first
        new = bad_t.any() & (seen < 0)
        self.first = (
            torch.where(new, float(step), seen),
            torch.where(new, code, old_code),
            torch.where(new, value, old_value),
        )

    def _code_tensor(self, names: tuple[str, ...], device: torch.device) -> Tensor:
        if names not in self._codes:  # built once per set of names: no copy to the device each step
            for name in names:
                if name not in self.names:
                    self.names.append(name)
            self._codes[names] = torch.tensor([self.names.index(n) for n in names], device=device)
        return self._codes[names]

    def check(self) -> None:
        """Read what was observed since the last read (a wait on a GPU); NonFiniteError for its first bad value."""
        if self.first is None:
            return
        step, code, value = (float(t) for t in self.first)
        if step >= 0:
            raise _non_finite(self.names[int(code)], value, int(step))


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
    check_every: int | None = None,
) -> FitResult:
    """Optimise `field` for steps [start_step, steps) against `prior`; with a `reference`, also towards its
    picture at its camera (image-to-3D).

    `schedule_steps` is the length the step-dependent schedules (emptiness switch, annealed sigma) span
    (default `steps`). `cameras` and `render_fn` default to the paper's cameras (`settings.camera`) and
    `render` (`settings.field`). `callback(FitStep)` runs after every step; a true return stops the loop
    (FitResult.stopped). A NaN or inf raises NonFiniteError: on the CPU before the update of its step is kept; on
    a GPU at the next read of the guard (every `check_every` steps, default `DEVICE_CHECK_EVERY`, and whenever
    a callback calls `FitStep.check()`), naming the step where it appeared."""
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
        check_every=check_every,
    )
    desc = getattr(prior, "prompt", "") or "sjc"
    bar = tqdm(range(start_step, steps), initial=start_step, total=steps, disable=not progress, desc=desc)
    guard = loop.guard
    try:
        for step in bar:
            r = sjc_step(field, loop, step)
            info = FitStep(step + 1, steps, r.sigma, r.losses, r.grad_norm, field, r.image, guard)
            if guard.due(step) or step + 1 == steps:
                guard.check()
                bar.set_postfix(sigma=f"{r.sigma:.3f}", loss=f"{sum(info.losses.values()):.3g}", refresh=False)
            if callback is not None and callback(info):
                guard.check()
                return FitResult(field, step + 1, stopped=step + 1 < steps)
    finally:
        bar.close()
    return FitResult(field, max(steps, start_step), stopped=False)
