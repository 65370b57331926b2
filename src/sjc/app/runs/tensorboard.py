"""TensorBoard event files in a run folder (`--log.tensorboard`): the curves of log.jsonl, the validation renders,
the toy-world quality figures and the run's settings as hyper-parameters, under <run>/tensorboard, so one
`tensorboard --logdir runs` (or a batch's folder) shows every run side by side.

A resumed run writes a new event file that starts with a purge at the step it resumed from: TensorBoard then drops
the steps the interrupted session logged past its last checkpoint, and the curves continue without duplicates.
The `tensorboard` package (the [logs] extra) is imported only when a run writes these files."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..settings.config import flatten

FOLDER = "tensorboard"


def available() -> bool:
    return importlib.util.find_spec("tensorboard") is not None


def wanted(setting: str) -> bool:
    """Whether a run with --log.tensorboard `setting` writes event files ('auto': when the package is there)."""
    return setting == "on" or (setting == "auto" and available())


class TensorBoardLog:
    """One run's writer: `scalars` at each log line, `image` at each validation render, `finish` at the end."""

    def __init__(self, run_dir: Path, start_step: int = 0) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(Path(run_dir) / FOLDER), purge_step=start_step + 1 if start_step else None)
        self.last: tuple[int, float] | None = None

    def scalars(self, step: int, record: dict[str, Any], learning_rates: dict[str, float]) -> None:
        """A log.jsonl record (step, sigma, each loss term, grad_norm) and the optimiser's learning rates."""
        for key, value in record.items():
            if key in ("step", "seconds") or not isinstance(value, int | float):
                continue
            tag = key if key in ("sigma", "grad_norm") else f"loss/{key}"
            self.writer.add_scalar(tag, value, step)
        for name, rate in learning_rates.items():
            self.writer.add_scalar(f"learning_rate/{name}", rate, step)
        now = time.perf_counter()
        if self.last is not None and step > self.last[0]:
            self.writer.add_scalar("steps_per_second", (step - self.last[0]) / max(now - self.last[1], 1e-9), step)
        self.last = (step, now)

    def image(self, step: int, rgb: np.ndarray) -> None:
        """A validation render, RGB uint8 [H, W, 3] (decoded to pixels for latent priors)."""
        self.writer.add_image("validation", rgb, step, dataformats="HWC")

    def finish(self, step: int, settings: dict[str, Any], metrics: dict[str, Any] | None) -> None:
        """The run's settings as hyper-parameters, beside its toy-world quality figures (when it has them)."""
        numbers = {f"quality/{k}": float(v) for k, v in (metrics or {}).items() if _is_number(v)}
        for tag, value in numbers.items():
            self.writer.add_scalar(tag, value, step)
        hparams = {
            k: v if isinstance(v, bool | int | float | str) else str(v)
            for k, v in flatten(settings).items()
            if v is not None
        }
        self.writer.add_hparams(hparams, numbers or {"quality/none": 0.0}, run_name=".", global_step=step)

    def close(self) -> None:
        self.writer.close()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and np.isfinite(value)
