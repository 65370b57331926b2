"""`sjc generate --resume RUN`: the run folder brought back to its newest usable checkpoint (the settings' side is
`settings.saved`)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from ..settings.config import GenerateConfig, to_json


def restore_run(run_dir: Path, cfg: GenerateConfig, field: Any, optimizer: Any, generators: dict) -> int:
    """Load the newest usable checkpoint of `run_dir` into the field, optimiser and generators, and
    tidy the folder for the continuation. Returns the step to continue from (0 without checkpoints);
    CheckpointError naming the files when every checkpoint is unusable."""
    from .checkpoint import list_checkpoints, load_latest

    run_dir = Path(run_dir)
    step, path, skipped = load_latest(run_dir, field, optimizer, generators)
    for message in skipped:
        print(f"warning: {message}; falling back to the checkpoint before it", file=sys.stderr)
    for later, unusable in list_checkpoints(run_dir):
        if later > step:  # kept for inspection, under a name the run no longer lists
            unusable.rename(unusable.with_name(unusable.name + ".unusable"))
    for stale in (run_dir / "checkpoints").glob("*.tmp"):
        stale.unlink()
    _keep_log_until(run_dir / "log.jsonl", step)
    write_atomically(run_dir / "config.json", to_json(cfg) + "\n")
    where = f"step {step} ({path.name})" if path else "step 0 (no checkpoint was written yet)"
    print(f"resuming {run_dir} from {where}", file=sys.stderr)
    return step


def _keep_log_until(path: Path, step: int) -> None:
    """Drop log lines of steps after `step`: they will be run again (a torn last line goes too)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue
    write_atomically(path, "".join(kept))


def write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)
