"""Run folders: `generate` builds the prior from a config, runs `core.fit.fit`, and writes what people look at.

A run folder holds config.json (the resolved config, seed included), log.jsonl, checkpoints/ (resumable),
validation/, and after `generate`: turntable.mp4/.gif, views.png, mesh.glb and, for toy prompts, metrics.json.
`RunRecorder` is the fit loop's callback that writes the logs, validation renders and checkpoints.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from ...core import methods
from ...core.cameras import View, camera_from_view
from ...core.denoisers import Prior
from ...core.errors import ConfigError, UserError
from ...core.fit import (
    CameraSampler,
    FitResult,
    FitStep,
    Reference,
    RenderFn,
    SigmaSchedule,
    build_field,
    fit,
    make_generators,
    make_optimizer,
    pick_device,
)
from ...core.render import render
from ...core.voxel import VoxelField
from ...outputs.files import write_outputs
from ...outputs.video import to_uint8
from ...priors import BIG_UNETS, IMAGE_PRIORS, TOY_PRIORS, build_prior
from ...priors.toy import BACKGROUND
from ..settings.config import GenerateConfig, from_dict, picture_title, slug, to_dict, to_json
from ..settings.config2d import Config2D
from .checkpoint import (
    CheckpointError,
    checkpoint_path,
    list_checkpoints,
    prune_checkpoints,
    read_checkpoint,
    restore,
    save_checkpoint,
)
from .interrupt import Interrupted, StopRequest, catch_signals
from .picture import make_reference, picture_size, read_picture
from .restore import restore_run
from .runlock import RunLock
from .tensorboard import TensorBoardLog, wanted

VALIDATION_VIEW = View(azimuth=30.0, elevation=20.0)


class RunFolderError(UserError, ValueError):
    """The output folder cannot be used as asked (it holds another run, or no run)."""


def run_slug(cfg: GenerateConfig | Config2D) -> str:
    """A folder name for a run: its prompt, else its reference picture's name, else the pixel model's name, else
    the prior's."""
    image = getattr(cfg, "image", None)
    picture = picture_title(image.path) if image is not None and image.path else None
    return slug(cfg.prompt or picture or (cfg.pixel.model if cfg.prior == "pixel" else cfg.prior))


def run_name(cfg: GenerateConfig) -> str:
    """The one name of a run folder, for `sjc generate`, the page and `sjc batch` alike: <slug>-seed<seed>."""
    return f"{run_slug(cfg)}-seed{cfg.train.seed}"


def default_run_dir(cfg: GenerateConfig) -> Path:
    """Where a run without --out goes: runs/<slug>-seed<seed>."""
    return Path("runs") / run_name(cfg)


def prior_from_config(
    cfg: GenerateConfig | Config2D,
    device: torch.device | str = "cpu",
    picture=None,
    guidance_scale: float | None = None,
) -> Prior:
    """The prior named by a run's config (or a canvas or sample configuration's), bound to its prompt (and for
    `IMAGE_PRIORS` to `picture`: an RGB image and its View), with `guidance_scale` (None: the run's
    --scoring.guidance-scale)."""
    return build_prior(
        cfg.prior,
        cfg.prompt,
        device=device,
        toy=cfg.toy,
        sd=cfg.sd,
        pixel=cfg.pixel,
        zero123=cfg.zero123,
        guidance_scale=cfg.scoring.guidance_scale if guidance_scale is None else guidance_scale,
        picture=picture,
    )


REFERENCE_COPY = "reference-picture"  # + the picture's suffix: the run's own copy of --image, read on --resume
REFERENCE_INFO = "reference.json"  # how the picture was read: mask, view (estimated or given), the posterior


@dataclass
class ImageSetup:
    """What image-to-3D adds to a run: the fit's reference and what to write about it."""

    reference: Reference
    source: Path  # the picture read
    info: dict


def prior_and_reference(
    cfg: GenerateConfig, device: torch.device | str, run_dir: Path, prior: Prior | None = None
) -> tuple[Prior, ImageSetup | None, GenerateConfig]:
    """The run's prior and, with --image, its reference: the picture read (from the run's own copy on a
    resume), the elevation estimated when asked, and `cfg` with the reference view written out in full (so the
    saved config reproduces the run). PictureError or ConfigError before anything is written."""
    im = cfg.image
    if im.path is None:
        return prior if prior is not None else prior_from_config(cfg, device), None, cfg
    copies = sorted(run_dir.glob(REFERENCE_COPY + ".*")) if cfg.resume else []
    source = copies[0] if copies else Path(im.path)
    view = im.camera_view(cfg.camera)
    read = partial(read_picture, source, background_colour=im.background_colour, tolerance=im.tolerance)
    view, info = _reference_view(cfg, read, view)
    if prior is None and cfg.prior in IMAGE_PRIORS:  # the prior is the picture's: read it at its size once
        picture = read(_image_prior_size(cfg), BACKGROUND)
        prior = prior_from_config(cfg, device, picture=(picture.rgb, view))
    else:
        if prior is None:
            read(8, BACKGROUND)  # a bad picture fails here, before the prior (maybe gigabytes of weights) loads
            prior = prior_from_config(cfg, device)
        picture = read(picture_size(prior), float(getattr(prior, "background", 1.0)))
    posterior = getattr(prior, "posterior", None)  # an image-conditioned prior's: what it took the picture for
    if isinstance(posterior, dict):
        info["posterior"] = {k: round(v, 6) for k, v in sorted(posterior.items(), key=lambda kv: -kv[1])}
        info["object"] = prior.best
    reference = make_reference(prior, picture, view, im, f"the {cfg.prior} prior")
    info = {"picture": str(im.path), "mask": picture.mask_source, **info}
    return prior, ImageSetup(reference, source, info), replace(cfg, image=im.resolved(view))


def _image_prior_size(cfg: GenerateConfig) -> int:
    """The side, in pixels, at which a prior of `IMAGE_PRIORS` sees its picture (on white, as both were trained)."""
    return cfg.zero123.resolution if cfg.prior == "zero123" else cfg.toy.image_size


def _reference_view(cfg: GenerateConfig, read: Callable, view: View) -> tuple[View, dict]:
    """`view`, its elevation estimated from the picture (`read(size, background)`) when
    --image.estimate-elevation asks (toy priors)."""
    if not cfg.image.estimate_elevation:
        return view, {"view": _view_dict(view)}
    from ...priors.settings import SUITE_PROMPTS
    from ...priors.toy_image import ESTIMATE_SIZE, estimate_elevation

    prompts = SUITE_PROMPTS if cfg.prior in IMAGE_PRIORS else (cfg.prompt,)
    elevation, _ = estimate_elevation(read(ESTIMATE_SIZE, BACKGROUND).rgb, view, prompts)
    print(f"reference view: elevation estimated at {elevation:g} degrees (was {view.elevation:g})", file=sys.stderr)
    estimated = replace(view, elevation=elevation)
    return estimated, {"view": _view_dict(estimated), "elevation_estimated_from": view.elevation}


def _view_dict(view: View) -> dict:
    return {"azimuth": view.azimuth, "elevation": view.elevation, "fov": view.fov, "radius": view.radius}


def _keep_reference(setup: ImageSetup, run_dir: Path) -> None:
    """The run's own copy of its picture (so --resume needs nothing outside the folder) and reference.json."""
    copy = run_dir / (REFERENCE_COPY + (setup.source.suffix.lower() or ".png"))
    if setup.source.resolve() != copy.resolve():
        for old in run_dir.glob(REFERENCE_COPY + ".*"):  # a replaced run's (--overwrite)
            old.unlink()
        shutil.copyfile(setup.source, copy)
    (run_dir / REFERENCE_INFO).write_text(json.dumps(setup.info, indent=2) + "\n")


def prepare_run_dir(run_dir: Path, cfg: GenerateConfig, overwrite: bool) -> None:
    """Create the run folder; refuse one that already holds a run unless `overwrite`."""
    if (run_dir / "config.json").exists() or list_checkpoints(run_dir):
        if not overwrite:
            raise RunFolderError(
                f"{run_dir} already holds a run; choose another --out, or pass --overwrite to replace it"
            )
        for _, path in list_checkpoints(run_dir):
            path.unlink()
        (run_dir / "log.jsonl").unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(to_json(cfg) + "\n")


class RunRecorder:
    """The fit callback of a run folder: log.jsonl every `log_every` steps, a validation render every
    `validate_every`, a checkpoint every `checkpoint_every` and at the end; on a stop (a signal, or the
    user's callback returning true) the step in flight is checkpointed first."""

    def __init__(
        self,
        run_dir: Path,
        cfg: GenerateConfig,
        prior: Prior,
        optimizer: torch.optim.Optimizer,
        gens: dict[str, torch.Generator],
        stop: StopRequest,
        user: Callable[[FitStep], bool | None] | None = None,
        tensorboard: TensorBoardLog | None = None,
    ) -> None:
        self.run_dir, self.cfg, self.prior, self.optimizer, self.gens = run_dir, cfg, prior, optimizer, gens
        self.stop, self.user, self.clock, self.tensorboard = stop, user, time.perf_counter(), tensorboard

    def __call__(self, info: FitStep) -> bool:
        t, done = self.cfg.train, info.step
        stopping = bool(self.user(info)) if self.user is not None else False
        stopping = stopping or self.stop.requested
        logs = done % t.log_every == 0 or done == info.steps
        validates = bool(t.validate_every) and done % t.validate_every == 0
        saves = done % t.checkpoint_every == 0 or done == info.steps or stopping
        if logs or validates or saves:
            info.check()  # a NaN since the last read (a GPU reads the loop's guard rarely) stops the run here
        if logs:
            record = {"step": done, "sigma": info.sigma, **info.losses, "grad_norm": info.grad_norm}
            record["seconds"] = round(time.perf_counter() - self.clock, 3)
            with open(self.run_dir / "log.jsonl", "a") as log:
                log.write(json.dumps(record) + "\n")
            if self.tensorboard is not None:
                self.tensorboard.scalars(done, record, learning_rates(self.optimizer))
        if validates:
            rgb = save_validation(
                info.field, self.prior, self.cfg, self.run_dir / "validation" / f"step_{done:07d}.png"
            )
            if self.tensorboard is not None:
                self.tensorboard.image(done, rgb)
        if saves:
            path = checkpoint_path(self.run_dir, done)
            save_checkpoint(path, info.field, self.optimizer, self.gens, done, to_json(self.cfg))
            prune_checkpoints(self.run_dir, t.keep_checkpoints)
        if self.stop.requested:
            raise Interrupted(done, self.run_dir, self.stop.signum)
        return stopping


@torch.no_grad()
def save_validation(field: VoxelField, prior: Prior, cfg: GenerateConfig, path: Path) -> np.ndarray:
    """A render of the field from a fixed three-quarter view, decoded to RGB, as PNG; returns its pixels."""
    view = replace(VALIDATION_VIEW, fov=cfg.camera.test_fov, radius=cfg.camera.radius)
    out = render(field, camera_from_view(view, prior.image_size))
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = to_uint8(prior.decode(out.image))
    iio.imwrite(path, rgb)
    return rgb


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The optimiser's current rate of each parameter group, by the group's name (else its index)."""
    return {str(g.get("name", k)): float(g["lr"]) for k, g in enumerate(optimizer.param_groups)}


@dataclass
class RunResult:
    run_dir: Path
    field: VoxelField
    prior: Prior
    files: dict[str, Path]
    metrics: dict | None
    stopped: bool = False  # the callback stopped the run: checkpointed, no outputs written


def generate(
    cfg: GenerateConfig,
    *,
    prior: Prior | None = None,
    cameras: CameraSampler | None = None,
    render_fn: RenderFn | None = None,
    callback: Callable[[FitStep], bool | None] | None = None,
    progress: bool = True,
) -> RunResult:
    """The whole `sjc generate`: optimise in a run folder (checkpoints, resume, Ctrl-C), then write turntable,
    views, mesh and metrics. `prior` replaces the one the config names (built in Python, e.g. a
    `DenoiserPrior`); `cameras`, `render_fn` and `callback` go to `core.fit.fit`."""
    device = pick_device(cfg.device)
    check_device(cfg, device)
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg)
    cfg = replace(cfg, out=str(run_dir))
    # A bad prompt or picture fails here, before any write.
    prior, image, cfg = prior_and_reference(cfg, device, run_dir, prior)
    gens = make_generators(cfg.train.seed, device)
    field = build_field(prior, cfg.field, device, generator=gens["init"])
    print(f"{run_dir}: {describe_device(cfg, device, prior, field)}", file=sys.stderr)
    optimizer = make_optimizer(field, cfg.optim)
    SigmaSchedule(cfg.scoring, prior, cfg.train.schedule_steps or cfg.train.steps)  # ConfigError before writing
    methods.Scorer.check(cfg.scoring.method, prior)  # a prior the method cannot use fails before writing too
    with RunLock(run_dir) as lock:  # one writer per folder: a second run of it (a resume, the page) is refused
        if lock.took_over is not None:
            print(f"{run_dir}: taking over from {lock.took_over.describe()}, which is gone", file=sys.stderr)
        start = restore_run(run_dir, cfg, field, optimizer, gens) if cfg.resume else 0
        if not cfg.resume:
            prepare_run_dir(run_dir, cfg, cfg.overwrite)
            if image is not None:
                _keep_reference(image, run_dir)
        tensorboard = TensorBoardLog(run_dir, start) if wanted(cfg.log.tensorboard) else None
        try:
            with catch_signals() as stop:  # Ctrl-C: checkpoint the current step, then raise Interrupted
                result = run_fit(
                    field,
                    prior,
                    cfg,
                    run_dir,
                    optimizer=optimizer,
                    gens=gens,
                    start_step=start,
                    stop=stop,
                    cameras=cameras,
                    render_fn=render_fn,
                    callback=callback,
                    progress=progress,
                    reference=image.reference if image is not None else None,
                    tensorboard=tensorboard,
                )
            if result.stopped:
                return RunResult(run_dir, field, prior, {}, None, stopped=True)
            files = write_outputs(field, prior, run_dir, cfg.export)
            metrics = evaluate(field, cfg, prior)
            if metrics is not None:
                files["metrics"] = run_dir / "metrics.json"
                files["metrics"].write_text(json.dumps(_json_safe(metrics), indent=2) + "\n")
            if tensorboard is not None:
                tensorboard.finish(result.step, to_dict(cfg), metrics)
            return RunResult(run_dir, field, prior, files, metrics)
        finally:
            if tensorboard is not None:
                tensorboard.close()


def check_device(cfg: GenerateConfig, device: torch.device) -> None:
    """ConfigError for a full-size diffusion UNet on a CPU without --allow-sd-on-cpu."""
    if cfg.prior in BIG_UNETS and device.type == "cpu" and not cfg.allow_sd_on_cpu:
        why = "no CUDA GPU was found (--device auto)" if cfg.device == "auto" else f"--device {cfg.device} is a CPU"
        raise ConfigError(
            f"--prior {cfg.prior} runs a full-size UNet, minutes a step on a CPU, and {why}; run it on a machine with "
            "an NVIDIA GPU, or pass --allow-sd-on-cpu to run it here anyway (small test models take seconds)"
        )


def describe_device(cfg: GenerateConfig, device: torch.device, prior: Prior, field: VoxelField) -> str:
    """Where and in what precision a run computes, e.g. 'cuda:0 (NVIDIA H200), prior float16, field float32'."""
    name = str(device)
    if device.type == "cuda":
        name += f" ({torch.cuda.get_device_name(device)})"
    elif cfg.device == "auto":
        name += " (--device auto: no CUDA GPU found)"
    network = getattr(prior, "unet", None) or getattr(prior, "network", None)
    precision = getattr(network, "dtype", None)
    prior_part = f"prior {str(precision).removeprefix('torch.')}, " if precision is not None else ""
    return f"running on {name}, {prior_part}field {str(field.grid.dtype).removeprefix('torch.')}"


def run_fit(
    field: VoxelField,
    prior: Prior,
    cfg: GenerateConfig,
    run_dir: Path | None = None,
    *,
    optimizer: torch.optim.Optimizer | None = None,
    gens: dict[str, torch.Generator] | None = None,
    start_step: int = 0,
    stop: StopRequest | None = None,
    cameras: CameraSampler | None = None,
    render_fn: RenderFn | None = None,
    callback: Callable[[FitStep], bool | None] | None = None,
    progress: bool = True,
    reference: Reference | None = None,
    check_every: int | None = None,
    tensorboard: TensorBoardLog | None = None,
) -> FitResult:
    """`core.fit.fit` with a run's settings (and image-to-3D's `reference`); with `run_dir`, its logs, validation
    renders and checkpoints (`RunRecorder`, which reads the non-finite guard before it writes anything), and
    Interrupted raised once a requested `stop` is checkpointed. `check_every`: `core.fit.fit`'s."""
    gens = gens or make_generators(cfg.train.seed, field.grid.device)
    optimizer = optimizer or make_optimizer(field, cfg.optim)
    if run_dir is not None:
        callback = RunRecorder(Path(run_dir), cfg, prior, optimizer, gens, stop or StopRequest(), callback, tensorboard)
    return fit(
        field,
        prior,
        cfg.fit_settings(),
        steps=cfg.train.steps,
        start_step=start_step,
        schedule_steps=cfg.train.schedule_steps,
        optimizer=optimizer,
        generators=gens,
        cameras=cameras,
        render_fn=render_fn,
        callback=callback,
        progress=progress,
        reference=reference,
        check_every=check_every,
    )


def evaluate(field: VoxelField, cfg: GenerateConfig, prior: Prior | None = None) -> dict | None:
    """Quality figures against the ground truth, where the prior has one (the toy world: the prompt's object,
    or the one the toy-image prior took its picture for)."""
    if cfg.prior == "toy-image" and prior is not None:
        truth = prior.best
    elif cfg.prior in TOY_PRIORS:
        truth = cfg.prompt
    else:
        return None
    from ...outputs.metrics import evaluate_field
    from ...priors.toy import parse_prompt

    metrics = evaluate_field(field, parse_prompt(truth), threshold=0.5)
    return {"object": truth, **metrics} if cfg.prior == "toy-image" else metrics


def _json_safe(value):
    """Strict JSON: non-finite floats become null (e.g. the PSNR of identical images)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def load_run(run_dir: Path, step: int | None = None, device: str = "cpu") -> tuple[GenerateConfig, VoxelField, int]:
    """The config and field of a run folder at its newest readable checkpoint (or `step`)."""
    run_dir = Path(run_dir)
    found = list_checkpoints(run_dir)
    if not found:
        raise RunFolderError(f"{run_dir} holds no checkpoints (is it a run folder made by `sjc generate`?)")
    if step is not None:
        found = [(s, p) for s, p in found if s == step]
        if not found:
            steps = ", ".join(str(s) for s, _ in list_checkpoints(run_dir))
            raise RunFolderError(f"{run_dir} has no checkpoint at step {step}; available steps: {steps}")
    errors = []
    for _, path in reversed(found):
        try:
            tensors, meta, config_json = read_checkpoint(path)
        except CheckpointError as err:
            errors.append(str(err))
            continue
        cfg = from_dict(GenerateConfig, json.loads(config_json))
        field = VoxelField(**meta["field"]).to(pick_device(device))
        return cfg, field, restore(tensors, meta, field)
    raise RunFolderError("no readable checkpoint: " + "; ".join(errors))
