"""The web page's runs without the page: the form's settings as a `GenerateConfig`, one run in a background
thread that the page polls, and the gallery of a runs folder with every path kept inside it.

Nothing here imports gradio, so all of it is tested without a server; torch is imported when a run starts.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import re
import sys
import threading
import time
import traceback
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..core.errors import ConfigError, UserError
from ..priors.settings import SUITE_PROMPTS
from .config import GenerateConfig, check_prompt, from_dict, validate
from .presets import preset

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
    model: str | None = None  # the weights of 'sd' and 'pixel'


def available_priors(allow_sd_on_cpu: bool = False) -> list[str]:
    """The priors the page offers: the toy ones always; 'pixel' with the [sd] extra; 'sd' with the extra and
    a GPU (or `allow_sd_on_cpu`: Stable Diffusion takes minutes a step on a CPU)."""
    priors = ["toy", "toy-learned"]
    if importlib.util.find_spec("diffusers") is None:
        return priors
    priors.append("pixel")
    if allow_sd_on_cpu or _has_cuda():
        priors.insert(2, "sd")
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


def form_config(form: Form, runs: Path, priors: list[str] | None = None) -> GenerateConfig:
    """The run a form asks for, in a new folder under `runs`: its preset with the form's values over it,
    validated with the command line's own checks (ConfigError: the same one-line messages)."""
    priors = priors or available_priors()
    if form.prior not in priors:
        raise ConfigError(f"prior {form.prior!r} is not available on this server; choose one of {', '.join(priors)}")
    if form.preset not in PRESETS:
        raise ConfigError(f"unknown preset {form.preset!r}; choose one of {', '.join(PRESETS)}")
    if form.scoring not in SCORING:
        raise ConfigError(f"unknown scoring {form.scoring!r}; choose one of {', '.join(SCORING)}")
    prompt = " ".join(form.prompt.split())
    if not prompt and form.prior != "pixel":
        raise ConfigError(f"type a prompt first, e.g. {EXAMPLE_PROMPTS[0]!r}")
    cfg = preset(form.prior, form.preset)
    cfg = replace(
        cfg,
        prompt=prompt,
        train=replace(cfg.train, steps=_int(form.steps, cfg.train.steps, "steps"), seed=_int(form.seed, 0, "seed")),
        scoring=replace(
            cfg.scoring, method=form.scoring, guidance_scale=_num(form.guidance_scale, cfg.scoring.guidance_scale)
        ),
        field=replace(cfg.field, resolution=_int(form.resolution, cfg.field.resolution, "grid size")),
        losses=replace(cfg.losses, emptiness_weight=_num(form.emptiness_weight, cfg.losses.emptiness_weight)),
        threads=_int(form.threads, cfg.threads, "threads"),
    )
    if form.model and form.prior in ("sd", "pixel"):
        part = getattr(cfg, form.prior)
        cfg = replace(cfg, **{form.prior: replace(part, model=form.model.strip())})
    if cfg.threads is not None and cfg.threads < 1:
        raise ConfigError(f"threads must be at least 1, got {cfg.threads}")
    validate(cfg)
    check_prompt(cfg)
    return replace(cfg, out=str(new_run_dir(runs, cfg)))


def _int(value: Any, default: int | None, what: str) -> int | None:
    if value is None or value == "":
        return default
    if float(value) != int(float(value)):
        raise ConfigError(f"{what} must be a whole number, got {value}")
    return int(float(value))


def _num(value: Any, default: float) -> float:
    return default if value is None or value == "" else float(value)


def new_run_dir(runs: Path, cfg: GenerateConfig) -> Path:
    """A new, empty runs/<prompt-slug>-s<seed> (-2, -3, ... when taken), made here so that two visitors starting
    the same prompt at once never share one. The slug keeps [a-z0-9-] alone: no prompt names a folder outside."""
    from .runs import run_slug

    base = f"{run_slug(cfg)[:60]}-s{cfg.train.seed}"
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
        from .interrupt import Interrupted
        from .runs import generate, prior_from_config

        try:
            import torch

            from ..core.fit import pick_device

            if self.cfg.threads:
                torch.set_num_threads(self.cfg.threads)
            self._prior = prior_from_config(self.cfg, pick_device(self.cfg.device))
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
            from ..outputs.video import to_uint8

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


def resume_config(run_dir: Path, threads: int | None = None) -> GenerateConfig:
    """The config that continues a stopped or unfinished run, as `sjc generate --resume` builds it."""
    from .resume import resume_config as checked
    from .resume import resume_defaults

    saved = resume_defaults(run_dir)
    return checked(saved, saved if threads is None else replace(saved, threads=threads))


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

    @property
    def status(self) -> str:
        if self.finished:
            return f"finished, {self.steps} steps"
        return f"stopped at step {self.step} of {self.steps}; resumable"

    @property
    def resumable(self) -> bool:
        return not self.finished


def list_runs(runs: Path) -> list[RunInfo]:
    """The run folders directly inside `runs` (made by the page or by `sjc generate --out`), newest first."""
    if not runs.is_dir():
        return []
    found = []
    for path in runs.iterdir():
        if path.is_dir() and _NAME.fullmatch(path.name) and (path / "config.json").is_file():
            try:
                found.append(_read_run(path))
            except (OSError, ValueError, TypeError):
                continue  # a folder being written, or not ours
    return sorted(found, key=lambda info: info.path.stat().st_mtime, reverse=True)


def open_run(runs: Path, name: str) -> RunInfo:
    """The run called `name` inside `runs`. Only a plain folder name directly inside `runs` is accepted:
    '..', slashes, absolute paths and links that lead elsewhere find nothing."""
    root = runs.resolve()
    if not isinstance(name, str) or not _NAME.fullmatch(name) or name == WEB_DIR:
        raise RunNotFound(f"no run named {name!r} in {runs}")
    path = (root / name).resolve()
    if path.parent != root or not (path / "config.json").is_file():
        raise RunNotFound(f"no run named {name!r} in {runs}")
    try:
        return _read_run(path)
    except (OSError, ValueError, TypeError) as err:
        raise RunNotFound(f"cannot read the run {name!r}: {err}") from None


def _read_run(path: Path) -> RunInfo:
    from .checkpoint import list_checkpoints

    cfg = from_dict(GenerateConfig, json.loads((path / "config.json").read_text()))
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
    validation = sorted((path / "validation").glob("step_*.png"))
    thumbnail = files.get("views") or (validation[-1] if validation else None)
    return RunInfo(path.name, path, cfg.prompt, cfg.prior, cfg.train.steps, step, finished, metrics, thumbnail, files)


def zip_run(runs: Path, info: RunInfo) -> Path:
    """The whole run folder as runs/.web/zips/<name>.zip (remade when the run changed since)."""
    target = runs / WEB_DIR / "zips" / f"{info.name}.zip"
    newest = max((p.stat().st_mtime for p in info.path.rglob("*") if p.is_file()), default=0.0)
    if target.exists() and target.stat().st_mtime >= newest:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
        for item in sorted(info.path.rglob("*")):
            if item.is_file() and not item.is_symlink():
                archive.write(item, Path(info.name) / item.relative_to(info.path))
    tmp.replace(target)
    return target


def metrics_table(metrics: dict | None) -> str:
    """The toy world's quality figures as a Markdown table ('' without them)."""
    if not metrics:
        return ""
    rows = [
        ("3D IoU", f"{metrics['iou_3d']:.3f}"),
        *([("closed 3D IoU", f"{metrics['iou_3d_closed']:.3f}")] if "iou_3d_closed" in metrics else []),
        ("silhouette IoU", f"{metrics['silhouette_iou']:.3f}"),
        ("PSNR", f"{metrics['psnr']:.2f} dB" if metrics.get("psnr") is not None else "n/a"),
        ("shape", "matched" if metrics.get("shape_accuracy") else "not matched"),
    ]
    return "| measure | value |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows)
