"""One writer per run folder: the lock between processes and threads, a dead holder's lock taken over, and
`generate`, `--resume` and the page refusing a folder that another run writes."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time

import pytest

from sjc.app.commands.cli import main
from sjc.app.runs.generate import generate
from sjc.app.runs.runlock import LOCK_NAME, RunBusy, RunLock, holder
from sjc.app.settings.presets import preset
from sjc.app.web.jobs import list_runs, open_run

HOLD = """
import sys, time
from sjc.app.runs.runlock import RunLock
lock = RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def hold_in_another_process(run_dir):
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_one_writer_per_folder_within_a_process(tmp_path):
    with RunLock(tmp_path / "run") as lock:
        assert lock.took_over is None and holder(tmp_path / "run").pid == os.getpid()
        with pytest.raises(RunBusy, match=rf"being written by process {os.getpid()} on this machine"):
            RunLock(tmp_path / "run").acquire()
    assert holder(tmp_path / "run") is None and not (tmp_path / "run" / LOCK_NAME).exists()
    with RunLock(tmp_path / "run"):  # free again once released
        pass


def test_a_writer_in_another_process_is_named_and_a_dead_ones_lock_is_taken_over(tmp_path):
    run = tmp_path / "run"
    proc = hold_in_another_process(run)
    try:
        assert holder(run).pid == proc.pid
        with pytest.raises(RunBusy, match=f"process {proc.pid}"):
            RunLock(run).acquire()
    finally:
        proc.send_signal(signal.SIGKILL)  # dies without releasing: its lock file stays behind
        proc.wait()
    assert (run / LOCK_NAME).exists() and holder(run) is None
    with RunLock(run) as lock:
        assert lock.took_over is not None and lock.took_over.pid == proc.pid
        assert json.loads((run / LOCK_NAME).read_text())["pid"] == os.getpid()


def test_generate_and_resume_refuse_a_folder_another_run_writes(tmp_path, capsys):
    cfg = dataclasses.replace(preset("toy", "tiny"), prompt="a red cube", out=str(tmp_path / "run"))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=40))
    started, release = threading.Event(), threading.Event()

    def slow(info):  # the first run pauses at step 10 until released
        if info.step == 10:
            started.set()
            release.wait(60)

    first = threading.Thread(target=generate, args=(cfg,), kwargs={"callback": slow, "progress": False})
    first.start()
    try:
        assert started.wait(60)
        with pytest.raises(RunBusy, match="being written by process"):
            generate(dataclasses.replace(cfg, resume=cfg.out), progress=False)
        assert main(["generate", "--resume", cfg.out]) == 2
        assert "is being written by" in capsys.readouterr().err
        info = open_run(tmp_path, "run")
        assert info.running and not info.resumable and "running elsewhere" in info.status
        assert [i.name for i in list_runs(tmp_path) if i.running] == ["run"]
    finally:
        release.set()
        first.join(120)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 40  # one writer: the log never interleaves
    assert not open_run(tmp_path, "run").running and holder(tmp_path / "run") is None


def test_a_cli_resume_is_refused_while_another_process_writes(tmp_path):
    run = tmp_path / "run"
    assert main(["generate", "a red cube", "--preset", "tiny", "--train.steps", "5", "--out", str(run)]) == 0
    proc = hold_in_another_process(run)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "sjc", "generate", "--resume", str(run), "--train.steps", "8"],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 2 and f"process {proc.pid}" in done.stderr
        assert "Traceback" not in done.stderr
    finally:
        proc.kill()
        proc.wait()
    time.sleep(0.1)
    assert main(["generate", "--resume", str(run), "--train.steps", "8"]) == 0
