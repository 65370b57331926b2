"""The `sjc` command. Parsing and help import no torch; each subcommand imports what it runs.

User mistakes (unknown flags, bad values, prompts outside a prior's vocabulary, occupied
output folders, missing model weights) end with one message and exit status 2, never a traceback.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

import tyro

from .config import GenerateConfig, preset, to_json, validate

COMMANDS = {
    "generate": "optimise a 3D voxel field against a 2D diffusion prior and export it",
}

USAGE = """usage: sjc COMMAND [options]

Score Jacobian Chaining: lift a 2D diffusion model into a 3D asset.

commands:
{commands}

`sjc COMMAND --help` lists a command's options. Quick start:
  sjc generate "a red and blue cube"
"""


class UserError(Exception):
    """A mistake in what the user asked for: printed as one line, exit status 2."""


def parse_generate(argv: list[str]) -> GenerateConfig:
    """Resolve a GenerateConfig: the preset of --prior/--preset, then every flag over it."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--prior", default="toy")
    pre.add_argument("--preset", default="default")
    known, _ = pre.parse_known_args(argv)
    try:
        default = preset(known.prior, known.preset)
    except ValueError as err:
        raise UserError(str(err)) from None
    cfg = tyro.cli(
        GenerateConfig,
        args=argv,
        default=default,
        prog="sjc generate",
        description="Optimise a voxel field so its renders look likely to a 2D diffusion prior.",
    )
    if not cfg.prompt:
        raise UserError('give a prompt, e.g. sjc generate "a red and blue cube"')
    try:
        validate(cfg)
    except ValueError as err:
        raise UserError(str(err)) from None
    return cfg


def cmd_generate(argv: list[str]) -> int:
    cfg = parse_generate(argv)
    if cfg.dry_run:
        print(to_json(dataclasses.replace(cfg, dry_run=False)))
        return 0
    import torch

    from .run import RunFolderError, generate
    from .sd import WeightsNotFoundError
    from .toyworld import PromptError
    from .trainer import DeviceError

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        result = generate(cfg)
    except (PromptError, RunFolderError, DeviceError, WeightsNotFoundError) as err:
        raise UserError(str(err)) from None
    print(f"run folder: {result.run_dir}")
    for name, path in result.files.items():
        print(f"  {name:10s} {path}")
    if result.metrics:
        m = result.metrics
        print(
            f"quality: 3D IoU {m['iou_3d']:.3f}, silhouette IoU {m['silhouette_iou']:.3f}, "
            f"PSNR {m['psnr']:.2f} dB, shape {'matched' if m['shape_accuracy'] else 'NOT matched'}"
        )
    return 0


HANDLERS = {"generate": cmd_generate}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE.format(commands="\n".join(f"  {k:10s} {v}" for k, v in COMMANDS.items())))
        return 0 if argv else 2
    if argv[0] in ("-V", "--version"):
        from . import __version__

        print(f"sjc {__version__}")
        return 0
    command, rest = argv[0], argv[1:]
    if command not in HANDLERS:
        print(f"sjc: unknown command {command!r}; commands: {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    try:
        return HANDLERS[command](rest)
    except UserError as err:
        print(f"sjc {command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
