"""`sjc batch` on real Ray clusters: a local one on loopback, and a two-node one made on this machine.

Ray binds to the machine's network addresses even when told 127.0.0.1, so these tests run only inside a network
namespace holding nothing but loopback: tests/test_batch.py starts them there (`unshare -n`), with
SJC_RAY_NETNS=1 and SJC_RAY_TMP, the folder every Ray process started here keeps its session in (so the caller
can tell that none is left). Each `sjc batch` runs as its own process, in its own process group.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

if os.environ.get("SJC_RAY_NETNS") != "1":
    pytest.skip("run inside a loopback-only network namespace by tests/test_batch.py", allow_module_level=True)

from sjc.app.batch.runner import read_attempts, read_result  # noqa: E402
from sjc.app.runs.checkpoint import list_checkpoints  # noqa: E402

TINY = ("--preset", "tiny", "--train.checkpoint-every", "20", "--train.log-every", "10")


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    """One toy-data cache for every run of the module (each prompt's renders are made once)."""
    return str(tmp_path_factory.mktemp("toy-cache"))


def _env() -> dict:
    return {**os.environ, "RAY_TMPDIR": os.environ["SJC_RAY_TMP"], "PYTHONUNBUFFERED": "1"}


def start_batch(args: list[str], out: Path) -> subprocess.Popen:
    """`sjc batch ARGS --out OUT` in a new process group (Ray's own processes join it), output to files."""
    out.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "sjc", "batch", *args, "--out", str(out)]
    with open(out.parent / f"{out.name}.log", "w") as log:  # this invocation only; the child keeps its copy
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=_env(), start_new_session=True)


def finish(proc: subprocess.Popen, out: Path, timeout: float = 300) -> tuple[int, str]:
    """Exit status and output of a batch; on a timeout its whole process group is killed (ours alone)."""
    try:
        code = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    text = (out.parent / f"{out.name}.log").read_text()
    print(text)
    return code, text


def run_batch(args: list[str], out: Path, timeout: float = 300) -> tuple[int, str]:
    return finish(start_batch(args, out), out, timeout)


def wait_for(predicate, proc: subprocess.Popen, what: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the batch ended before {what}"
        if predicate():
            return
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    raise AssertionError(f"no {what} within {timeout} s")


def newest_step(run_dir: Path) -> int:
    found = list_checkpoints(run_dir)
    return found[-1][0] if found else 0


def test_a_killed_worker_is_resumed_and_a_second_invocation_skips_everything(tmp_path, cache_dir):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(
        '[[runs]]\nprompt = "a red and blue cube"\noverrides = {"train.steps" = 600}\n\n'
        '[[runs]]\nprompt = "a green cube"\n\n[[runs]]\nprompt = "a yellow sphere"\n'
    )
    out, args = tmp_path / "out", [str(jobs), *TINY, "--steps", "60", "--toy.cache-dir", cache_dir]
    long_run = out / "a-red-and-blue-cube-seed0"
    proc = start_batch(args, out)
    wait_for(lambda: 40 <= newest_step(long_run) < 500, proc, "checkpoint of the long run past step 40")
    victim = [a for a in read_attempts(long_run) if a["event"] == "start"][-1]["pid"]
    os.kill(victim, signal.SIGKILL)  # the worker process running the long run
    code, text = finish(proc, out)
    assert code == 0, text
    record = read_result(long_run)
    starts = [a for a in read_attempts(long_run) if a["event"] == "start"]
    assert record["status"] == "done" and record["steps"] == 600 and record["attempts"] == 2
    assert starts[0]["pid"] == victim and starts[1]["pid"] != victim
    assert starts[1]["step"] >= 40 and record["resumed_from"] == [starts[1]["step"]]
    assert newest_step(long_run) == 600 and "resumed from step" in text
    # Each run's TensorBoard files sit in its folder (one --logdir shows the batch); the killed run's curve goes on
    # after its resume with each step once, as log.jsonl has them.
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    board = EventAccumulator(str(long_run / "tensorboard"), size_guidance={"scalars": 0})
    board.Reload()
    logged = [json.loads(line)["step"] for line in (long_run / "log.jsonl").read_text().splitlines()]
    assert [e.step for e in board.Scalars("loss/sjc")] == logged == sorted(set(logged))
    for name in ("a-green-cube-seed0", "a-yellow-sphere-seed0"):
        assert read_result(out / name)["status"] == "done" and (out / name / "turntable.gif").exists()
    summary = (out / "summary.csv").read_text().splitlines()
    assert len(summary) == 1 + 3 + 2 and summary[-2].startswith("mean,") and summary[-1].startswith("worst,")

    before = {p: p.stat().st_mtime_ns for p in out.glob("*/result.json")}
    start = time.monotonic()
    code, text = run_batch(args, out)
    assert code == 0 and "skipped  3 run(s) finished before" in text, text
    assert time.monotonic() - start < 30 and "sjc batch:" not in text  # no Ray started, no bar
    assert {p: p.stat().st_mtime_ns for p in out.glob("*/result.json")} == before


def test_ctrl_c_stops_every_run_at_a_checkpoint_and_the_same_command_resumes(tmp_path, cache_dir):
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("a blue cylinder\na purple cone\n")
    out, args = tmp_path / "out", [str(jobs), *TINY, "--steps", "400", "--toy.cache-dir", cache_dir]
    runs = [out / "a-blue-cylinder-seed0", out / "a-purple-cone-seed0"]
    proc = start_batch(args, out)
    wait_for(lambda: all(newest_step(r) >= 20 for r in runs), proc, "a checkpoint of both runs")
    proc.send_signal(signal.SIGINT)
    code, text = finish(proc, out)
    assert code == 130, text
    assert "resume with: sjc batch " + str(jobs) in text and "Traceback" not in text
    stopped = {r: newest_step(r) for r in runs}
    for run in runs:
        attempts = read_attempts(run)
        assert attempts[-1]["event"] == "stopped" and attempts[-1]["step"] == stopped[run] < 400
        assert read_result(run) is None
    assert not (out / ".stop").exists()

    code, text = run_batch(args, out)
    assert code == 0, text
    for run in runs:
        record = read_result(run)
        assert record["status"] == "done" and record["resumed_from"] == [stopped[run]] and stopped[run] > 0


def test_a_bad_job_fails_alone_with_its_message(tmp_path, cache_dir):
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(
        '[[runs]]\nprompt = "a red cube"\n\n'
        '[[runs]]\nprompt = "a pink cube"\n\n'
        '[[runs]]\nprompt = "a blue cube"\noverrides = {"optim.lr" = -1}\n\n'
        '[[runs]]\nprompt = "a green cube"\noverrides = ["--no-such-flag", "3"]\n'
    )
    out = tmp_path / "out"
    code, text = run_batch([str(jobs), *TINY, "--steps", "30", "--toy.cache-dir", cache_dir], out)
    assert code == 1, text
    assert "3 of 4 run(s) failed" in text
    assert "a-pink-cube-seed0: cannot parse prompt 'a pink cube'" in text
    assert "a-blue-cube-seed0: --optim.lr must not be negative, got -1.0" in text
    assert "a-green-cube-seed0: Unrecognized options: --no-such-flag, 3" in text
    assert read_result(out / "a-red-cube-seed0")["status"] == "done"
    assert not (out / "a-pink-cube-seed0").exists()
    summary = (out / "summary.md").read_text()
    assert "a-pink-cube-seed0 (failed): cannot parse prompt" in summary and "| **mean** (finished runs) |" in summary


def test_a_cluster_runs_the_batch_and_the_run_of_a_lost_node_resumes_on_the_other(tmp_path, cache_dir):
    """Two worker nodes of one CPU each (the head, with none, only holds the cluster together): one run on each.
    The node running the long run is lost; Ray starts that run again on the other node, from its checkpoint."""
    from ray.cluster_utils import Cluster

    os.environ["RAY_TMPDIR"] = os.environ["SJC_RAY_TMP"]
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(
        '[[runs]]\nprompt = "an orange torus"\noverrides = {"train.steps" = 600}\n\n'
        '[[runs]]\nprompt = "a green and red torus"\n'
    )
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        workers = [cluster.add_node(num_cpus=1) for _ in range(2)]
        cluster.wait_for_nodes()
        out, long_run = tmp_path / "out", tmp_path / "out" / "an-orange-torus-seed0"
        args = [str(jobs), *TINY, "--steps", "60", "--toy.cache-dir", cache_dir, "--address", cluster.address]
        proc = start_batch(args, out)
        wait_for(lambda: 40 <= newest_step(long_run) < 500, proc, "checkpoint of the long run past step 40")
        lost = [a for a in read_attempts(long_run) if a["event"] == "start"][-1]["node"]
        cluster.remove_node(next(n for n in workers if n.node_id == lost), allow_graceful=False)
        code, text = finish(proc, out)
        assert code == 0, text
        starts = [a for a in read_attempts(long_run) if a["event"] == "start"]
        assert len(starts) == 2 and starts[0]["node"] == lost and starts[1]["node"] != lost
        assert starts[1]["step"] >= 40 and read_result(long_run)["resumed_from"] == [starts[1]["step"]]
        short = read_attempts(out / "a-green-and-red-torus-seed0")
        assert read_result(out / "a-green-and-red-torus-seed0")["status"] == "done"
        assert {a["node"] for a in short + starts} == {n.node_id for n in workers}  # both nodes ran runs
        assert json.loads((long_run / "config.json").read_text())["threads"] == 1
    finally:
        cluster.shutdown()


def _ray_processes(name: str) -> list[int]:
    """Pids of this test's own Ray processes called `name` (their command lines name its session folder)."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if proc.name.isdigit() and name.encode() in cmdline and os.environ["SJC_RAY_TMP"].encode() in cmdline:
            found.append(int(proc.name))
    return found


def test_a_killed_raylet_is_started_again_and_its_runs_continue(tmp_path, cache_dir):
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("a red and blue cube\na green cube\n")
    out, args = tmp_path / "out", [str(jobs), *TINY, "--steps", "400", "--toy.cache-dir", cache_dir]
    proc = start_batch(args, out)
    runs = [out / "a-red-and-blue-cube-seed0", out / "a-green-cube-seed0"]
    wait_for(lambda: all(newest_step(r) >= 20 for r in runs), proc, "a checkpoint of both runs")
    raylets = _ray_processes("raylet")
    assert raylets, "no raylet of this batch found"
    workers = [[a for a in read_attempts(r) if a["event"] == "start"][-1]["pid"] for r in runs]
    for pid in raylets + workers:  # Ray's own process, then the runs' workers: the node is gone with its tasks
        os.kill(pid, signal.SIGKILL)
    code, text = finish(proc, out)
    assert code == 0 and "Traceback" not in text and (out / "summary.md").exists(), text
    assert "Ray failed under the batch" in text and "starting it again, 2 run(s) continue" in text
    for run in runs:  # Ray started once more, and each run continued from its checkpoint
        record = read_result(run)
        assert record["status"] == "done" and record["resumed_from"] and record["resumed_from"][-1] >= 20
    code, text = run_batch(args, out)
    assert code == 0, text
    assert all(read_result(run)["status"] == "done" and newest_step(run) == 400 for run in runs)
