"""The web page's runs without the page: the form's settings as a `GenerateConfig`, one run in a background
thread that the page polls, and the gallery of a runs folder with every path kept inside it.

Nothing here imports gradio, so all of it is tested without a server; torch is imported when a run starts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import re
import sys
import tempfile
import threading
import time
import traceback
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ...core.errors import ConfigError, UserError
from ...priors import BIG_UNETS, IMAGE_PRIORS, NETWORK_PRIORS
from ...priors.settings import SUITE_PROMPTS
from ..runs.picture import check_picture
from ..runs.runlock import LOCK_NAME, holder
from ..settings.config import GenerateConfig, ImageConfig, check_prompt, from_dict, markdown_text, validate
from ..settings.presets import preset

EXAMPLE_PROMPTS = SUITE_PROMPTS  # the toy suite: every shape, one and two colours
PRESETS = ("tiny", "default", "paper")
SCORING = ("paas", "naive")
WEB_DIR = ".web"  # the page's own files under --runs (zips, gradio's cache); never listed as a run
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")


class RunNotFound(UserError, LookupError):
    """A run name that is not a run folder directly inside the runs folder."""


@dataclass(frozen=True)
class Form:
    """What the page's form sends. None keeps the preset's value."""

    prompt: str
    prior: str = "toy"
    preset: str = "default"
    steps: int | None = None
    seed: int = 0
    scoring: str = "paas"
    resolution: int | None = None
    emptiness_weight: float | None = None
    guidance_scale: float | None = None
    threads: int | None = None
    model: str | None = None  # the weights of 'sd', 'pixel' and 'zero123'
    image: str | None = None  # image-to-3D: the uploaded reference picture (a file on this server)
    image_view: str | None = None  # its camera: "azimuth, elevation[, fov[, radius]]" in degrees
    estimate_elevation: bool = False


@dataclass(frozen=True)
class Limits:
    """What the page lets a visitor ask of this machine (`sjc serve --max-...`), for new runs and resumes alike."""

    max_grid: int = 64  # voxels a side
    max_steps: int = 20_000
    max_threads: int | None = None  # None: this machine's CPU count
    models: dict[str, str] = field(default_factory=dict)  # what the Model menu shows -> the model loaded

    @property
    def threads(self) -> int:
        return self.max_threads or os.cpu_count() or 1

    def check(self, cfg: GenerateConfig) -> None:
        """ConfigError (one line, naming the limit) for a run this server does not take."""
        if cfg.field.resolution > self.max_grid:
            raise ConfigError(f"grid size {cfg.field.resolution} is above this server's limit of {self.max_grid}")
        if cfg.train.steps > self.max_steps:
            raise ConfigError(f"{cfg.train.steps} steps is above this server's limit of {self.max_steps}")
        if cfg.threads is not None and not 1 <= cfg.threads <= self.threads:
            raise ConfigError(f"threads must be between 1 and {self.threads} on this server, got {cfg.threads}")


def available_priors(allow_sd_on_cpu: bool = False) -> list[str]:
    """The priors the page offers: the toy ones always; 'pixel' with the [sd] extra; 'sd' and 'zero123' with the
    extra and a GPU (or `allow_sd_on_cpu`: their UNets take minutes a step on a CPU)."""
    priors = ["toy", "toy-learned", "toy-image"]
    if importlib.util.find_spec("diffusers") is None:
        return priors
    priors.append("pixel")
    if allow_sd_on_cpu or _has_cuda():
        priors[2:2] = list(BIG_UNETS)
    return priors


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def preset_values(prior: str, name: str) -> dict[str, Any]:
    """The form's numbers as a preset sets them, so the page shows what a run will use."""
    try:
        cfg = preset(prior, name)
    except ConfigError:
        cfg = preset("toy", "default")
    return {
        "steps": cfg.train.steps,
        "resolution": cfg.field.resolution,
        "emptiness_weight": cfg.losses.emptiness_weight,
        "guidance_scale": cfg.scoring.guidance_scale,
        "threads": cfg.threads,
    }


def form_config(
    form: Form, runs: Path, priors: list[str] | None = None, limits: Limits | None = None
) -> GenerateConfig:
    """The run a form asks for, in a new folder under `runs`: its preset with the form's values over it,
    validated with the command line's own checks and the server's `limits` (ConfigError: one-line messages).
    A model must be one of `limits.models` (by its name in the menu); without any, the preset's is used."""
    priors, limits = priors or available_priors(), limits or Limits()
    for name in ("prompt", "prior", "preset", "scoring"):
        value = getattr(form, name)
        if value is not None and not isinstance(value, str):
            raise ConfigError(f"{name} must be text, got {type(value).__name__}")
    if form.prior not in priors:
        raise ConfigError(f"prior {form.prior!r} is not available on this server; choose one of {', '.join(priors)}")
    if form.preset not in PRESETS:
        raise ConfigError(f"unknown preset {form.preset!r}; choose one of {', '.join(PRESETS)}")
    if form.scoring not in SCORING:
        raise ConfigError(f"unknown scoring {form.scoring!r}; choose one of {', '.join(SCORING)}")
    prompt = " ".join((form.prompt or "").split())
    if form.prior in IMAGE_PRIORS and not form.image:
        raise ConfigError(f"the {form.prior} prior draws the object of a picture: upload one first")
    if not prompt and form.prior not in ("pixel", *IMAGE_PRIORS):
        raise ConfigError(f"type a prompt first, e.g. {EXAMPLE_PROMPTS[0]!r}")
    cfg = preset(form.prior, form.preset)
    if form.image:
        cfg = replace(cfg, image=form_image(form, cfg.image))
    cfg = replace(
        cfg,
        prompt=prompt,
        train=replace(
            cfg.train, steps=whole_number(form.steps, cfg.train.steps, "steps"), seed=whole_number(form.seed, 0, "seed")
        ),
        scoring=replace(
            cfg.scoring,
            method=form.scoring,
            guidance_scale=_num(form.guidance_scale, cfg.scoring.guidance_scale, "guidance scale"),
        ),
        field=replace(cfg.field, resolution=whole_number(form.resolution, cfg.field.resolution, "grid size")),
        losses=replace(
            cfg.losses, emptiness_weight=_num(form.emptiness_weight, cfg.losses.emptiness_weight, "emptiness weight")
        ),
        threads=whole_number(form.threads, cfg.threads, "threads"),
    )
    if form.prior in BIG_UNETS:  # offered here only with a GPU, or as the operator allowed on a CPU
        cfg = replace(cfg, allow_sd_on_cpu=True)
    if form.model and form.prior in NETWORK_PRIORS:
        if form.model not in limits.models:
            offered = ", ".join(limits.models) or "none (the preset's model is used)"
            raise ConfigError(f"model {form.model!r} is not offered on this server; it offers: {offered}")
        part = getattr(cfg, form.prior)
        cfg = replace(cfg, **{form.prior: replace(part, model=limits.models[form.model])})
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads must be at least 1, got {cfg.threads}")
    validate(cfg)
    limits.check(cfg)
    check_prompt(cfg)
    return replace(cfg, out=str(new_run_dir(runs, cfg)))


def form_image(form: Form, image: ImageConfig) -> ImageConfig:
    """The reference picture of a form: the uploaded file, its view as typed ("azimuth, elevation[, fov[,
    radius]]", empty: the front, level), and whether to estimate the elevation."""
    if not isinstance(form.image, str):
        raise ConfigError(f"the picture must be an uploaded file, got {type(form.image).__name__}")
    text = (form.image_view or "").replace(",", " ").split()
    try:
        view = tuple(float(v) for v in text) if text else image.view
    except ValueError:
        raise ConfigError(
            f"the view is azimuth, elevation[, fov[, radius]] in degrees, got {form.image_view!r}"
        ) from None
    image = replace(image, path=form.image, view=view, estimate_elevation=bool(form.estimate_elevation))
    check_picture(image)  # a bad upload fails the form in one line
    return image


def whole_number(value: Any, default: int | None, what: str) -> int | None:
    if value is None or value == "":
        return default
    number = _num(value, 0.0, what)
    if not math.isfinite(number) or number != int(number):
        raise ConfigError(f"{what} must be a whole number, got {value}")
    return int(number)


def _num(value: Any, default: float, what: str = "a number") -> float:
    if value is None or value == "":
        return default
    try:
        return float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what} must be a number, got {str(value)[:40]!r}") from None


def new_run_dir(runs: Path, cfg: GenerateConfig) -> Path:
    """A new, empty runs/<prompt-slug>-seed<seed> (-2, -3, ... when taken), made here so that two visitors starting
    the same prompt at once never share one. The slug keeps [a-z0-9-] alone: no prompt names a folder outside."""
    from ..runs.generate import run_name

    base = run_name(cfg)
    runs.mkdir(parents=True, exist_ok=True)
    for n in range(1, 10_000):
        path = runs / (base if n == 1 else f"{base}-{n}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise ConfigError(f"{runs} already holds 9999 runs named {base}; choose another seed")


# --- one run, polled by the page ------------------------------------------------------------------
@dataclass
class Snapshot:
    """A run's state as the page shows it."""

    state: str  # 'starting', 'running', 'finished', 'stopped', 'failed'
    step: int
    steps: int
    elapsed: float
    rate: float  # steps per second over the last few seconds
    eta: float | None  # seconds left
    history: list[tuple[int, float, float]]  # (step, loss, sigma)
    preview: Any  # the latest training render, [H, W, 3] uint8, or None
    message: str
    run_dir: Path


class Job:
    """One run of `generate` in a thread. The page polls `snapshot()`; `stop()` ends it at the end of the
    current step with a checkpoint (the callback's stop: the same checkpoint as Ctrl-C), so it can be resumed."""

    PREVIEW_EVERY = 0.4  # seconds between decoded previews
    HISTORY = 400  # plot points kept

    def __init__(self, cfg: GenerateConfig) -> None:
        self.cfg, self.run_dir = cfg, Path(cfg.out or "")
        self._stop, self._lock = threading.Event(), threading.Lock()
        self.state, self.message, self.result = "starting", "", None
        self.step, self.start_step, self.steps = 0, 0, cfg.train.steps
        self.history: list[tuple[int, float, float]] = []
        self.preview: Any = None
        self._t0, self._last_preview = time.perf_counter(), -math.inf  # the first step always shows
        self._rates: list[tuple[float, int]] = []
        self._prior: Any = None
        self.thread = threading.Thread(target=self._run, name=f"sjc-run-{self.run_dir.name}", daemon=True)

    def start(self) -> Job:
        self.thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def wait(self, timeout: float | None = None) -> bool:
        self.thread.join(timeout)
        return not self.thread.is_alive()

    def _run(self) -> None:
        from ...priors.loading import WeightsNotFoundError
        from ..runs.generate import generate, prior_and_reference
        from ..runs.interrupt import Interrupted

        try:
            import torch

            from ...core.fit import pick_device

            if self.cfg.threads:
                torch.set_num_threads(self.cfg.threads)
            # The prior first, to decode the live previews; with a picture, its view is resolved (an estimated
            # elevation) once, here.
            self._prior, _, self.cfg = prior_and_reference(self.cfg, pick_device(self.cfg.device), self.run_dir)
            self.state = "running"
            result = generate(self.cfg, prior=self._prior, callback=self._callback, progress=False)
            if result.stopped:
                self.state, self.message = "stopped", f"stopped at step {self.step}; the checkpoint is saved"
            else:
                export_obj(self.run_dir)
                self.state, self.message = "finished", f"finished {self.steps} steps"
            self.result = result
        except Interrupted as err:
            self.state, self.message = "stopped", str(err)
        except WeightsNotFoundError as err:  # it names the server's folders and cache: in the log only
            print(f"{self.run_dir.name}: {err}", file=sys.stderr)
            self.state, self.message = "failed", "the model could not be loaded on this server; its log says why"
            _remove_if_empty(self.run_dir)
        except UserError as err:
            self.state, self.message = "failed", str(err)
            _remove_if_empty(self.run_dir)
        except Exception as err:  # a bug, or the machine (memory): shown in the page, logged in full here
            traceback.print_exc(file=sys.stderr)
            self.state, self.message = "failed", f"{type(err).__name__}: {err}"
            _remove_if_empty(self.run_dir)

    def _callback(self, info: Any) -> bool:
        now = time.perf_counter()
        loss = float(sum(info.losses.values()))
        with self._lock:
            if not self._rates:
                self.start_step = info.step - 1
            self.step, self.steps = info.step, info.steps
            self.history.append((info.step, loss, float(info.sigma)))
            if len(self.history) > 2 * self.HISTORY:
                self.history = self.history[::2]
            self._rates = [(t, s) for t, s in self._rates if now - t < 5.0] + [(now, info.step)]
        if now - self._last_preview > self.PREVIEW_EVERY or info.step == info.steps:
            from ...outputs.video import to_uint8

            self.preview, self._last_preview = to_uint8(self._prior.decode(info.image)), now
        return self._stop.is_set()

    def snapshot(self) -> Snapshot:
        with self._lock:
            rates, history = list(self._rates), list(self.history)
        rate = 0.0
        if len(rates) > 1 and rates[-1][0] > rates[0][0]:
            rate = (rates[-1][1] - rates[0][1]) / (rates[-1][0] - rates[0][0])
        eta = (self.steps - self.step) / rate if rate > 0 else None
        return Snapshot(
            self.state,
            self.step,
            self.steps,
            time.perf_counter() - self._t0,
            rate,
            eta,
            history,
            self.preview,
            self.message,
            self.run_dir,
        )


def _remove_if_empty(path: Path) -> None:
    """A run that failed before writing anything leaves no folder behind."""
    with contextlib.suppress(OSError):
        path.rmdir()


def resume_config(run_dir: Path, threads: int | None = None, limits: Limits | None = None) -> GenerateConfig:
    """The config that continues a stopped or unfinished run, as `sjc generate --resume` builds it, checked
    against the server's `limits` like a new run (a run made by `sjc generate` may be larger)."""
    from ..settings.saved import resume_config as checked
    from ..settings.saved import resume_defaults

    saved = resume_defaults(run_dir)
    cfg = checked(saved, saved if threads is None else replace(saved, threads=threads))
    (limits or Limits()).check(cfg)
    return cfg


def export_obj(run_dir: Path) -> Path | None:
    """mesh.obj beside mesh.glb (vertex colours kept), for the page's download; None without a mesh."""
    glb, obj = run_dir / "mesh.glb", run_dir / "mesh.obj"
    if not glb.exists():
        return None
    if not obj.exists() or obj.stat().st_mtime < glb.stat().st_mtime:
        import trimesh

        trimesh.load(glb, force="mesh").export(obj)
    return obj


# --- the gallery -----------------------------------------------------------------------------------
@dataclass
class RunInfo:
    """A run folder as the gallery shows it."""

    name: str
    path: Path
    prompt: str
    prior: str
    steps: int
    step: int  # the newest checkpoint's step
    finished: bool
    metrics: dict | None
    thumbnail: Path | None
    files: dict[str, Path] = field(default_factory=dict)
    running: bool = False  # a writer holds the folder (a run of this page, `sjc generate`, a batch)

    @property
    def status(self) -> str:
        if self.finished:
            return f"finished, {self.steps} steps"
        if self.running:
            return f"running elsewhere, step {self.step} of {self.steps} checkpointed"
        return f"stopped at step {self.step} of {self.steps}; resumable"

    @property
    def resumable(self) -> bool:
        return not self.finished and not self.running


def list_runs(runs: Path) -> list[RunInfo]:
    """The run folders directly inside `runs` (made by the page or by `sjc generate --out`), newest first."""
    if not runs.is_dir():
        return []
    found = []
    for path in runs.iterdir():
        if _is_run_folder(path):
            try:
                found.append(_read_run(path))
            except Exception as err:  # one malformed folder must not take the gallery down
                _warn_once(path, err)
    return sorted(found, key=lambda info: _mtime(info.path), reverse=True)


def _is_run_folder(path: Path) -> bool:
    """A plain folder (not a link: `open_run` would refuse it) with a run's name and config.json."""
    return (
        not path.is_symlink()
        and path.is_dir()
        and bool(_NAME.fullmatch(path.name))
        and path.name != WEB_DIR
        and (path / "config.json").is_file()
    )


_warned: set[tuple[str, str]] = set()


def _warn_once(path: Path, err: Exception) -> None:
    key = (str(path), str(err))
    if key not in _warned:
        _warned.add(key)
        print(f"warning: skipping the run folder {path}: {type(err).__name__}: {err}", file=sys.stderr)


def open_run(runs: Path, name: str) -> RunInfo:
    """The run called `name` inside `runs`. Only a plain folder name directly inside `runs` is accepted:
    '..', slashes, absolute paths and links that lead elsewhere find nothing."""
    root = runs.resolve()
    shown = name[:80] if isinstance(name, str) else name
    if not isinstance(name, str) or not _NAME.fullmatch(name) or not _is_run_folder(root / name):
        raise RunNotFound(f"no run named {shown!r}")
    try:
        return _read_run(root / name)
    except Exception as err:
        _warn_once(root / name, err)
        raise RunNotFound(f"the run {name!r} cannot be read (its files are damaged)") from None


def _read_run(path: Path) -> RunInfo:
    from ..runs.checkpoint import list_checkpoints

    data = json.loads((path / "config.json").read_text())
    if not isinstance(data, dict):
        raise ValueError(f"config.json holds a {type(data).__name__}, not a run's settings")
    cfg = from_dict(GenerateConfig, data)
    checkpoints = list_checkpoints(path)
    step = checkpoints[-1][0] if checkpoints else 0
    files = {
        kind: path / name
        for kind, name in (("glb", "mesh.glb"), ("obj", "mesh.obj"), ("mp4", "turntable.mp4"), ("views", "views.png"))
        if (path / name).is_file()
    }
    finished = step >= cfg.train.steps and "mp4" in files
    metrics_file = path / "metrics.json"
    metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else None
    metrics = metrics if isinstance(metrics, dict) else None
    validation = sorted((path / "validation").glob("step_*.png"))
    thumbnail = files.get("views") or (validation[-1] if validation else None)
    running = holder(path) is not None
    return RunInfo(
        path.name, path, cfg.prompt, cfg.prior, cfg.train.steps, step, finished, metrics, thumbnail, files, running
    )


def zip_run(runs: Path, info: RunInfo) -> Path:
    """The whole run folder as runs/.web/zips/<name>.zip, made again only when the run changed since. Files being
    written (`*.tmp`, renamed into place when whole) and the writer's lock are left out, so a zip of a running run
    holds whole checkpoints; each zip is built under a name of its own, so two visitors opening the same run at
    once never write one file."""
    target = runs / WEB_DIR / "zips" / f"{info.name}.zip"
    members = [p for p in sorted(info.path.rglob("*")) if _zippable(p)]
    newest = max((_mtime(p) for p in members), default=0.0)
    if target.exists() and target.stat().st_mtime >= newest:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{info.name}-", suffix=".zip.tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as raw, zipfile.ZipFile(raw, "w", zipfile.ZIP_DEFLATED) as archive:
            for item in members:
                with contextlib.suppress(FileNotFoundError):  # an old checkpoint pruned meanwhile
                    archive.write(item, Path(info.name) / item.relative_to(info.path))
        os.replace(name, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
    return target


def _zippable(path: Path) -> bool:
    return path.is_file() and not path.is_symlink() and path.name != LOCK_NAME and not path.name.endswith(".tmp")


def _mtime(path: Path) -> float:
    try:
        return path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def metrics_table(metrics: dict | None) -> str:
    """The toy world's quality figures as a Markdown table ('' without them; figures missing from the file or
    not numbers are left out)."""
    if not metrics:
        return ""

    def number(key: str, fmt: str) -> str | None:
        value = metrics.get(key)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        return format(value, fmt) if ok else None

    shows = metrics.get("object")
    rows = [
        ("the picture shows", markdown_text(shows) if isinstance(shows, str) else None),
        ("3D IoU", number("iou_3d", ".3f")),
        ("closed 3D IoU", number("iou_3d_closed", ".3f")),
        ("silhouette IoU", number("silhouette_iou", ".3f")),
        ("PSNR", None if "psnr" not in metrics else f"{psnr} dB" if (psnr := number("psnr", ".2f")) else "n/a"),
        (
            "shape",
            None if "shape_accuracy" not in metrics else "matched" if metrics["shape_accuracy"] else "not matched",
        ),
    ]
    rows = [(k, v) for k, v in rows if v is not None]
    if not rows:
        return ""
    return "| measure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
