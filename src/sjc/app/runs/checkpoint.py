"""Checkpoints: one safetensors file per step holding the field, the optimiser state and every
random generator's state, with the step and the resolved config as JSON metadata.

Files are written to a temporary name and renamed, so a crash never leaves a half-written
checkpoint under a real name; no pickled objects are stored.
"""

from __future__ import annotations

import errno
import json
import os
import re
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from ...core.errors import UserError

CHECKPOINT_RE = re.compile(r"step_(\d+)\.safetensors$")


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file that cannot be read; the message names the file."""


class CheckpointWriteError(UserError, RuntimeError):
    """A checkpoint could not be written (e.g. the disk is full); the message names the file."""


def checkpoint_path(run_dir: Path, step: int) -> Path:
    return Path(run_dir) / "checkpoints" / f"step_{step:07d}.safetensors"


def list_checkpoints(run_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of the run's checkpoints, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    found = [(int(m.group(1)), p) for p in folder.glob("step_*.safetensors") if (m := CHECKPOINT_RE.search(p.name))]
    return sorted(found)


def save_checkpoint(
    path: Path,
    field: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    generators: dict[str, torch.Generator],
    step: int,
    config_json: str,
) -> Path:
    """Write the state after `step` steps to `path`; CheckpointWriteError (the older checkpoints
    untouched) if the disk refuses it."""
    tensors: dict[str, Tensor] = {f"field.{k}": v.detach() for k, v in field.state_dict().items()}
    meta: dict = {"step": step, "field": field.spec()}
    if optimizer is not None:
        opt_state = optimizer.state_dict()
        for idx, state in opt_state["state"].items():
            for key, value in state.items():
                tensors[f"optim.{idx}.{key}"] = torch.as_tensor(value)
        meta["param_groups"] = opt_state["param_groups"]
    for name, gen in generators.items():
        tensors[f"rng.{name}"] = gen.get_state()
    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file(tensors, str(tmp), metadata={"sjc": json.dumps(meta), "config": config_json})
        with open(tmp, "rb") as f:  # on disk before the rename, so a power cut cannot leave an empty file
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except (OSError, SafetensorError) as err:
        raise CheckpointWriteError(
            f"cannot write checkpoint {path}: {_reason(err)}; the older checkpoints are kept"
        ) from err
    finally:  # also on KeyboardInterrupt: no stray temporary file
        tmp.unlink(missing_ok=True)
    return path


def _reason(err: Exception) -> str:
    full = getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err) or "StorageFull" in str(err)
    return "no space left on the device" if full else str(err)


def read_checkpoint(path: Path) -> tuple[dict[str, Tensor], dict, str]:
    """(tensors, metadata, config JSON) of a checkpoint; CheckpointError if unreadable."""
    try:
        tensors = load_file(str(path))
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
        return tensors, json.loads(metadata["sjc"]), metadata["config"]
    except (OSError, SafetensorError, KeyError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: {err}") from err


def restore(
    tensors: dict[str, Tensor],
    meta: dict,
    field: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    generators: dict[str, torch.Generator] | None = None,
) -> int:
    """Load a checkpoint's state into `field` (and optimiser, generators); returns its step."""
    device = next(field.parameters()).device
    field_state = {k[len("field.") :]: v for k, v in tensors.items() if k.startswith("field.")}
    if "grid" in field_state and hasattr(field, "resize"):  # a coarse-to-fine run saved after an upsampling
        field.resize(field_state["grid"].shape[-1])
    field.load_state_dict({k: v.to(device) for k, v in field_state.items()})
    if optimizer is not None and "param_groups" in meta:
        state: dict[int, dict[str, Tensor]] = {}
        for key, value in tensors.items():
            if key.startswith("optim."):
                _, idx, name = key.split(".", 2)
                state.setdefault(int(idx), {})[name] = value if name == "step" else value.to(device)
        optimizer.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    for name, gen in (generators or {}).items():
        gen.set_state(tensors[f"rng.{name}"])
    return int(meta["step"])


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    """Delete all but the newest `keep` checkpoints."""
    for _, path in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
        path.unlink(missing_ok=True)


def load_latest(
    run_dir: Path,
    field: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    generators: dict[str, torch.Generator] | None = None,
) -> tuple[int, Path | None, list[str]]:
    """Restore the newest checkpoint that reads and fits; older ones stand in for unreadable ones.

    Returns (step, path, one message per checkpoint skipped); (0, None, []) when the run has no
    checkpoint yet. CheckpointError naming every file when none is usable."""
    found = list_checkpoints(run_dir)
    skipped: list[str] = []
    for _, path in reversed(found):
        try:
            tensors, meta, _ = read_checkpoint(path)
            if not all(torch.isfinite(v).all() for k, v in tensors.items() if k.startswith("field.")):
                raise CheckpointError(f"checkpoint {path} holds non-finite values")
            return restore(tensors, meta, field, optimizer, generators), path, skipped
        except CheckpointError as err:
            skipped.append(str(err))
        except (KeyError, ValueError, RuntimeError) as err:  # a readable file that does not fit this run
            skipped.append(f"checkpoint {path} does not match this run: {err}")
    if found:
        raise CheckpointError("no usable checkpoint: " + "; ".join(skipped))
    return 0, None, skipped
