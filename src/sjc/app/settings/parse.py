"""The command line of the run commands, in one place: `sjc generate`, `sjc canvas` and `sjc sample` (and the job
files of `sjc batch`, which hold generate's flags) read their flags here. --prior, --preset, --scoring and --resume are
read first, as they choose the defaults the other flags apply to. Imports no torch."""

from __future__ import annotations

import argparse
from typing import Any

import tyro

from ...core.errors import ConfigError
from .config import GenerateConfig, validate
from .presets import preset


def preset_then_flags(argv: list[str]) -> argparse.Namespace:
    """--prior, --preset, --scoring, --resume and --config, read before the full parse: they choose the defaults the
    flags apply to. `given` names the ones on the command line."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--prior", default=None)
    pre.add_argument("--preset", default=None)
    pre.add_argument("--resume", default=None)
    pre.add_argument("--config", default=None)
    pre.add_argument("--scoring.method", "--scoring", dest="method", default="paas")
    known = pre.parse_known_args(argv)[0]
    known.given = {k for k in ("prior", "preset") if getattr(known, k) is not None}
    known.prior = known.prior or "toy"
    known.preset = known.preset or "default"
    return known


def parse_generate(argv: list[str]) -> GenerateConfig:
    """Resolve a GenerateConfig: the preset of --prior/--preset (or a resumed run's settings, or a settings file's),
    then every flag."""
    from .saved import read_settings_file, resume_config, resume_defaults

    known = preset_then_flags(argv)
    # A resume starts from the run's saved settings, --config from the file's, instead of a preset.
    resumed = known.resume is not None
    if resumed and known.config is not None:
        raise ConfigError("--resume continues a run with its own settings; --config starts a new one: pass one")
    if resumed:
        default = resume_defaults(known.resume)
    elif known.config is not None:
        prior = known.prior if "prior" in known.given else None
        default = read_settings_file(known.config, prior, known.preset if "preset" in known.given else None)
    else:
        default = preset(known.prior, known.preset, known.method)
    about = "Optimise a voxel field so its renders look likely to a 2D diffusion prior."
    cfg = tyro.cli(GenerateConfig, args=argv, default=default, prog="sjc generate", description=about)
    if known.resume is not None:
        cfg = resume_config(default, cfg)
    validate(cfg)
    return cfg


def parse_2d(command: str, argv: list[str]) -> Any:
    """Resolve a CanvasConfig or SampleConfig: the preset of --prior/--preset, then every flag over it."""
    from .config2d import CanvasConfig, SampleConfig, validate_2d
    from .presets import canvas_preset, sample_preset

    cls, make = (CanvasConfig, canvas_preset) if command == "canvas" else (SampleConfig, sample_preset)
    known = preset_then_flags(argv)
    about = {
        "canvas": "Optimise an image directly (the renderer is the identity) with a 2D prior's score estimate.",
        "sample": "Draw images from a 2D prior with the deterministic Karras/EDM probability-flow ODE sampler.",
    }
    default = (
        canvas_preset(known.prior, known.preset, known.method)
        if command == "canvas"
        else make(known.prior, known.preset)
    )
    cfg = tyro.cli(cls, args=argv, default=default, prog=f"sjc {command}", description=about[command])
    validate_2d(cfg)
    return cfg
