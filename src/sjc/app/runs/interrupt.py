"""Stopping a long run cleanly: SIGINT / SIGTERM ask the loop to stop after the current step.

The first signal only sets a flag, so the step in flight completes and `fit` writes a checkpoint
of a consistent state before raising `Interrupted`; a second signal raises KeyboardInterrupt at
once (the atomic checkpoint writes mean no half-written file is left under a real name).
"""

from __future__ import annotations

import shlex
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(Exception):
    """The run stopped on a signal after `step` steps; its state is checkpointed in `run_dir`."""

    def __init__(
        self, step: int, run_dir: Path | None, signum: int = signal.SIGINT, resume_command: str | None = None
    ) -> None:
        self.step, self.run_dir, self.signum = step, run_dir, signum
        if run_dir is None:
            message = f"interrupted at step {step} (no run folder: nothing was saved)"
        else:
            resume = resume_command or f"sjc generate --resume {shlex.quote(str(run_dir))}"
            message = f"interrupted at step {step}; resume with: {resume}"
        super().__init__(message)

    @property
    def exit_code(self) -> int:
        """The shell convention for death by a signal: 128 + its number (130 for Ctrl-C)."""
        return 128 + int(self.signum)


class StopRequest:
    """Set by the first SIGINT/SIGTERM; `fit` polls it between steps."""

    def __init__(self) -> None:
        self.signum: int | None = None

    @property
    def requested(self) -> bool:
        return self.signum is not None


@contextmanager
def catch_signals() -> Iterator[StopRequest]:
    """Within the block, a first SIGINT/SIGTERM sets the returned StopRequest and a second one
    raises KeyboardInterrupt. Outside the main thread signals cannot be caught: the request then
    never fires and Ctrl-C keeps its usual meaning."""
    stop = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return

    def handler(signum: int, frame: object) -> None:
        if stop.requested:
            raise KeyboardInterrupt
        stop.signum = signum
        print("\nstopping after this step to save a checkpoint (press Ctrl-C again to quit at once)", file=sys.stderr)

    previous = {sig: signal.signal(sig, handler) for sig in SIGNALS}
    try:
        yield stop
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
