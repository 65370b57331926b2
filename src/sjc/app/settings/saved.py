"""A run's saved settings, as `sjc generate --resume RUN` reads them back and checks the flags against them, and
settings files (`sjc generate --config FILE`: TOML or JSON, a run's config.json among them), checked key by key.

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
from .config import GenerateConfig, flatten, from_dict, to_dict

# Config keys (or sections) a resume may change: none of them changes the optimised field. --threads may
# change the last bits of large CPU reductions; runs are bit-identical at the same thread count.
RESUMABLE = (
    "resume",
    "config",
    "dry_run",
    "threads",
    "allow_sd_on_cpu",
    "toy.cache_dir",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "train.validate_every",
    "train.log_every",
    "export.",
    "log.",
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
    old, new = flatten(to_dict(saved)), flatten(to_dict(requested))
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


def _flag(key: str) -> str:
    return "the prompt" if key == "prompt" else "--" + key.replace("_", "-")


# --- settings files: sjc generate --config FILE ------------------------------------------------------------
def read_settings_file(path: str | Path, prior: str | None = None, preset_name: str | None = None) -> GenerateConfig:
    """The GenerateConfig of a TOML or JSON settings file: its keys over the preset of its own prior and preset
    (so a file may hold only what differs), the run-folder keys of a saved run (resume) dropped. `prior` and
    `preset_name`, when given on the command line, must agree with the file's. ConfigError, one line naming the
    file and the key, for a file that cannot be read, an unknown key or a value of the wrong type."""
    from .presets import preset

    path = Path(path)
    data = _read_data(path)
    problem = _type_problem(GenerateConfig, data, "")
    if problem:
        raise ConfigError(f"{path}: {problem}")
    own_prior, own_preset = data.get("prior", "toy"), data.get("preset", "default")
    if prior is not None and prior != own_prior:
        raise ConfigError(
            f"{path} holds settings for the {own_prior} prior, not {prior}: drop --prior, or start the {prior} run "
            "from its preset without --config"
        )
    if preset_name is not None and preset_name != own_preset:
        raise ConfigError(f"--preset and --config both choose where the settings start; pass one (got {preset_name})")
    method = data.get("scoring", {}).get("method", "paas")
    base = to_dict(preset(own_prior, own_preset, method))
    merged = _overlay(base, data)
    merged.update(resume=None, dry_run=False, config=str(path))
    return from_dict(GenerateConfig, merged)


def _read_data(path: Path) -> dict:
    import tomllib

    if not path.is_file():
        raise ConfigError(f"no settings file at {path}; give --config a TOML or JSON file (a run's config.json works)")
    try:
        text = path.read_text()
        data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"cannot read the settings file {path}: {err}") from None
    except (ValueError, tomllib.TOMLDecodeError) as err:
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ConfigError(
            f"{path} is not valid {kind} ({first}); --config reads .toml files as TOML, others as JSON"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} holds a {type(data).__name__}, not a table of settings")
    return data


def _overlay(base: dict, data: dict) -> dict:
    out = dict(base)
    for key, value in data.items():
        out[key] = _overlay(base[key], value) if isinstance(value, dict) and isinstance(base.get(key), dict) else value
    return out


def _type_problem(cls: type, data: dict, prefix: str) -> str | None:
    """What is wrong with `data` as settings of the dataclass `cls` (None: nothing): an unknown key, with the
    nearest known one, or a value its field cannot hold."""
    import dataclasses
    import difflib
    import typing

    hints = typing.get_type_hints(cls, include_extras=True)
    names = [f.name for f in dataclasses.fields(cls)]
    for key, value in data.items():
        dotted = prefix + key
        if key not in names:
            near = difflib.get_close_matches(key, names, n=1)
            hint = f"; did you mean {prefix + near[0]!r}?" if near else f"; {cls.__name__} has {', '.join(names)}"
            return f"unknown key {dotted!r}{hint}"
        kind = _strip(hints[key])
        if dataclasses.is_dataclass(kind):
            if not isinstance(value, dict):
                return f"{dotted!r} is a section of settings (a table), got {value!r}"
            problem = _type_problem(kind, value, dotted + ".")
            if problem:
                return problem
        elif not _holds(kind, value):
            return f"{dotted!r} must be {_describe(kind)}, got {value!r}"
    return None


def _strip(kind: Any) -> Any:
    import typing

    return typing.get_args(kind)[0] if typing.get_origin(kind) is typing.Annotated else kind


def _holds(kind: Any, value: Any) -> bool:
    import types
    import typing

    kind = _strip(kind)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_holds(a, value) for a in args)
    if kind is type(None):
        return value is None
    if origin is typing.Literal:
        return value in args
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind is str:
        return isinstance(value, str)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_holds(args[0], v) for v in value)
        return len(value) == len(args) and all(_holds(a, v) for a, v in zip(args, value, strict=True))
    return True  # a kind this check does not know: the dataclass decides


def _describe(kind: Any) -> str:
    import types
    import typing

    kind = _strip(kind)
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if kind is type(None):
        return "null (omit it in TOML)"
    if origin is typing.Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin is tuple:
        return "a list of " + (_describe(args[0]) + "s" if args[-1] is Ellipsis else f"{len(args)} values")
    return {bool: "true or false", int: "a whole number", float: "a number", str: "text"}.get(kind, str(kind))
