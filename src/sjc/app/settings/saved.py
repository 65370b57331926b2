"""A run's saved settings, as `sjc generate --resume RUN` reads them back and checks the flags against them.

The run's config.json is the authority. A flag that would change what the remaining steps compute is
refused, naming it; --steps may be raised (the schedules keep the length they had: see
`core.fit.fit`'s schedule_steps); settings that only say how often to log, validate or checkpoint, how many
threads to use, or how to export after training may change. Parsing imports no torch.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from ...core.errors import ConfigError
from .config import GenerateConfig, from_dict, to_dict

# Config keys (or sections) a resume may change: none of them changes the optimised field. --threads may
# change the last bits of large CPU reductions; runs are bit-identical at the same thread count.
RESUMABLE = (
    "resume",
    "dry_run",
    "threads",
    "toy.cache_dir",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.validate_every",
    "train.log_every",
    "export.",
)


def resume_defaults(run_dir: str | Path) -> GenerateConfig:
    """The saved config of `run_dir`, aimed back at it: the defaults the resume flags apply to.
    ConfigError when the folder holds no readable run."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"{run_dir} holds no run to resume (no config.json); start one with: sjc generate PROMPT")
    try:
        saved = from_dict(GenerateConfig, json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise ConfigError(f"cannot read the run's settings {path}: {err}") from None
    return replace(saved, out=str(run_dir), resume=str(run_dir), overwrite=False, dry_run=False)


def resume_config(saved: GenerateConfig, requested: GenerateConfig) -> GenerateConfig:
    """The config a resume runs with: `requested` (the flags over `resume_defaults`) checked against
    `saved`. ConfigError naming the first flag that may not change."""
    if requested.overwrite:
        raise ConfigError("--resume continues a run and --overwrite replaces it: pass one of them")
    if requested.train.schedule_steps is None:  # the schedule length of a run is the run's, not the invocation's
        requested = replace(requested, train=replace(requested.train, schedule_steps=saved.train.schedule_steps))
    requested = _as_resolved(saved, requested)
    old, new = _flatten(to_dict(saved)), _flatten(to_dict(requested))
    for key, value in new.items():
        if key.startswith(RESUMABLE) or key == "train.steps" or value == old.get(key):
            continue
        raise ConfigError(
            f"{_flag(key)} is {old.get(key)!r} in this run and cannot become {value!r} on --resume (it would change "
            "the result); drop the flag, or start a new run with another --out"
        )
    before, steps = saved.train.steps, requested.train.steps
    if steps < before:
        raise ConfigError(f"--train.steps can only be raised on --resume: this run has {before}, got {steps}")
    train = requested.train
    if steps > before and train.schedule_steps is None:
        train = replace(train, schedule_steps=before)  # the steps taken keep their schedule
    return replace(requested, train=train)


def _as_resolved(saved: GenerateConfig, requested: GenerateConfig) -> GenerateConfig:
    """`requested` with its reference view written out as a run saves it (field of view and radius filled in; an
    elevation to estimate taken from the saved run), so asking again for what the run did is no change."""
    image = requested.image
    if image.path is None or saved.image.path is None or len(image.view) < 2:
        return requested
    view = image.camera_view(requested.camera)
    if image.estimate_elevation and len(saved.image.view) > 1:
        view = replace(view, elevation=saved.image.view[1])
    return replace(requested, image=image.resolved(view))


def _flatten(data: dict, prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _flag(key: str) -> str:
    return "the prompt" if key == "prompt" else "--" + key.replace("_", "-")
