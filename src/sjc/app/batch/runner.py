"""`sjc batch`: many `sjc generate` runs as Ray tasks, on this machine or on a Ray cluster.

The driver (this process) reads the jobs, checks each one up front (a bad job fails alone, with the message
`sjc generate` would give), skips the runs a previous invocation finished, and submits the others as Ray tasks
asking for --cpus-per-run CPUs (also the run's PyTorch threads, so runs sharing a machine never oversubscribe it)
and --gpus-per-run GPUs. A task (`run_job`) runs `generate` in the run folder, resuming from the newest
checkpoint when there is one; so a task that Ray starts again after its worker died continues where the last
checkpoint left it, as does the same command run again later.

Ctrl-C cannot reach a Ray task from the driver's terminal, so the driver writes a stop file in --out that every
run polls after each step: the run then checkpoints that step and returns, and the driver exits 130 with the
command that resumes the batch (the same command). Ray is imported only here, inside the command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ...core.errors import UserError
from ..runs.restore import write_atomically
from ..settings.config import GenerateConfig, from_dict, to_dict
from .jobs import ResolvedJob, load_jobs, parse_options, resolve_jobs
from .report import summary_row, write_reports

RESULT, ATTEMPTS, STOP_FILE = "result.json", "attempts.jsonl", ".stop"
MISSING_RAY = "install the [batch] extra: pip install 'sjc[batch]'"


# --- the Ray task -------------------------------------------------------------------------------------------
def run_job(config: dict, stop_file: str) -> dict:
    """One run, in a Ray worker: `generate` in its run folder, from its newest checkpoint if it has one.
    Returns {'status': 'done' | 'stopped' | 'failed', ...}; a user mistake or a NaN is a 'failed' result, not
    an exception, so Ray retries only what is worth retrying: a worker that died."""
    import torch

    from ...core.fit import NonFiniteError
    from ..runs.checkpoint import list_checkpoints
    from ..runs.generate import generate
    from ..runs.interrupt import Interrupted

    cfg = from_dict(GenerateConfig, config)
    run_dir, stop = Path(cfg.out), Path(stop_file)
    found = list_checkpoints(run_dir)
    start = found[-1][0] if found else 0
    if stop.exists():
        return {"status": "stopped", "step": start}
    cfg = dataclasses.replace(cfg, resume=str(run_dir)) if start else dataclasses.replace(cfg, overwrite=True)
    torch.set_num_threads(cfg.threads or 1)
    note_attempt(run_dir, "start", start)
    try:
        result = generate(cfg, callback=lambda info: stop.exists(), progress=False)
    except Interrupted as err:  # a signal reached the worker itself: the step is checkpointed all the same
        note_attempt(run_dir, "stopped", err.step)
        return {"status": "stopped", "step": err.step}
    except (UserError, NonFiniteError) as err:
        note_attempt(run_dir, "failed", start)
        return {"status": "failed", "message": str(err)}
    if result.stopped:
        step = list_checkpoints(run_dir)[-1][0]
        note_attempt(run_dir, "stopped", step)
        return {"status": "stopped", "step": step}
    note_attempt(run_dir, "done", cfg.train.steps)
    record = finished_record(run_dir, cfg, result.metrics)
    write_atomically(run_dir / RESULT, json.dumps(record, indent=2) + "\n")
    return record


def note_attempt(run_dir: Path, event: str, step: int) -> None:
    """attempts.jsonl: when each attempt started (with its worker's pid and the step it resumed from) and ended."""
    run_dir.mkdir(parents=True, exist_ok=True)
    line = {"event": event, "step": step, "pid": os.getpid(), "node": _node_id(), "time": time.time()}
    with open(run_dir / ATTEMPTS, "a") as f:
        f.write(json.dumps(line) + "\n")


def _node_id() -> str | None:
    """The Ray node running this attempt (None outside Ray)."""
    try:
        import ray

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None
    except Exception:  # Ray missing or not a worker: the record is still useful without it
        return None


def read_attempts(run_dir: Path) -> list[dict]:
    path = Path(run_dir) / ATTEMPTS
    if not path.exists():
        return []
    lines = []
    for text in path.read_text().splitlines():
        try:
            lines.append(json.loads(text))
        except ValueError:  # a line torn by a killed worker
            continue
    return lines


def run_seconds(attempts: list[dict]) -> float:
    """Time spent on the run over all its attempts: each from its start to its end, or, for an attempt whose
    worker died, to the start of the next one."""
    total, started = 0.0, None
    for a in attempts:
        if started is not None:
            total += a["time"] - started
        started = a["time"] if a["event"] == "start" else None
    return total


def finished_record(run_dir: Path, cfg: GenerateConfig, metrics: dict | None) -> dict:
    """result.json of a finished run: what the summaries show, and what marks the run as done."""
    from ..runs.generate import _json_safe

    attempts = read_attempts(run_dir)
    starts = [a for a in attempts if a["event"] == "start"]
    keep = ("iou_3d", "iou_3d_closed", "silhouette_iou", "psnr", "shape_accuracy", "angle")
    return {
        "status": "done",
        "prompt": cfg.prompt,
        "seed": cfg.train.seed,
        "steps": cfg.train.steps,
        "seconds": round(run_seconds(attempts), 3),
        "attempts": len(starts),
        "resumed_from": [a["step"] for a in starts if a["step"] > 0],
        "metrics": _json_safe({k: metrics[k] for k in keep if k in metrics}) if metrics else None,
    }


# --- the driver ---------------------------------------------------------------------------------------------
def read_result(run_dir: Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / RESULT).read_text())
    except (OSError, ValueError):
        return None


def is_finished(job: ResolvedJob) -> bool:
    """A run is done when its result.json says so for the steps asked now (raised --steps continue it)."""
    record = read_result(job.run_dir)
    return bool(
        record and record.get("status") == "done" and job.config and record.get("steps") == job.config.train.steps
    )


def continue_config(job: ResolvedJob) -> None:
    """A run folder that already holds this run: its saved settings must be the job's (else the job fails with
    the flag that differs), and a raised --steps keeps the schedules' length, as `sjc generate --resume` does."""
    from ..settings.saved import resume_config, resume_defaults

    if job.error is not None or job.config is None or not (job.run_dir / "config.json").exists():
        return
    requested = dataclasses.replace(job.config, resume=str(job.run_dir))
    try:
        job.config = dataclasses.replace(resume_config(resume_defaults(job.run_dir), requested), resume=None)
    except UserError as err:
        job.error = f"{job.run_dir} holds a run with other settings: {err}"


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError(MISSING_RAY) from None
    return ray


@contextmanager
def ray_session(address: str | None) -> Iterator[Any]:
    """Join the cluster at `address`, or start Ray on this machine: loopback only, no dashboard, one CPU a core.
    Shut down on the way out (for a local Ray, that ends its processes)."""
    import logging

    ray = import_ray()
    common = {"log_to_driver": False, "logging_level": logging.WARNING, "configure_logging": True}
    if address:
        try:
            ray.init(address=address, **common)
        except (ConnectionError, ValueError, RuntimeError) as err:  # no cluster there, or not a Ray address
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise UserError(f"cannot join the Ray cluster at {address}: {reason}") from None
    else:
        ray.init(
            address="local",
            num_cpus=os.cpu_count() or 1,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",
            **common,
        )
    try:
        yield ray
    finally:
        with contextlib.suppress(Exception):  # a Ray that died under the batch may fail to shut down too
            ray.shutdown()


def check_resources(ray: Any, jobs: list[ResolvedJob], cpus: int) -> None:
    """A run asking for more than any node has would wait forever: say so instead."""
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    most_cpus = max((r.get("CPU", 0) for r in nodes), default=0)
    most_gpus = max((r.get("GPU", 0) for r in nodes), default=0)
    if cpus > most_cpus:
        raise UserError(f"--cpus-per-run {cpus} is more than any Ray node has ({most_cpus:g} CPUs)")
    gpus = max((j.gpus for j in jobs), default=0)
    if gpus > most_gpus:
        raise UserError(
            f"the runs ask for {gpus:g} GPU(s) each (the sd and pixel priors, or --device cuda) and no Ray node has "
            f"{'any' if not most_gpus else 'that many'}; pass --gpus-per-run 0 to run them on CPUs"
        )


def submit(ray: Any, jobs: list[ResolvedJob], cpus: int, retries: int, stop_file: Path) -> dict:
    """One Ray task a run; Ray starts a task again (max_retries) when its worker dies, never on an exception."""
    task = ray.remote(run_job)
    refs = {}
    for job in jobs:
        options = {"num_cpus": cpus, "num_gpus": job.gpus, "max_retries": retries, "retry_exceptions": False}
        refs[task.options(name=f"sjc:{job.name}", **options).remote(to_dict(job.config), str(stop_file))] = job
    return refs


class RayLost(Exception):
    """Ray itself failed under the batch (its node or one of its own processes died), not a run."""


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def outcome(ray: Any, ref: Any, retries: int) -> dict:
    """The task's result, or a 'failed' one with a one-line reason when it raised or its workers kept dying; a run
    lost with its node is marked 'lost' (it is started again once Ray is back)."""
    lost_node = tuple(
        getattr(ray.exceptions, name)
        for name in ("NodeDiedError", "LocalRayletDiedError", "RaySystemError", "ObjectLostError")
        if hasattr(ray.exceptions, name)
    )
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None) or err
        lines = str(cause).strip().splitlines() or [type(cause).__name__]
        return {"status": "failed", "message": f"{type(cause).__name__}: {lines[-1]}"}
    except lost_node as err:
        return {"status": "failed", "message": f"Ray lost the run's node: {_first_line(err)}", "lost": True}
    except ray.exceptions.RayError as err:
        return {"status": "failed", "message": f"its worker died {retries + 1} time(s): {_first_line(err)}"}


def describe(job: ResolvedJob, result: dict) -> str:
    """The line printed when a run ends."""
    status = result["status"]
    if status == "failed":
        return f"failed   {job.name}: {result['message']}"
    if status == "stopped":
        step = result.get("step", 0)
        return f"stopped  {job.name} at step {step} (checkpointed)" if step else f"stopped  {job.name} before step 1"
    text = f"done     {job.name}: {result['steps']} steps in {result['seconds']:.1f} s"
    if result.get("resumed_from"):
        text += f" (resumed from step {result['resumed_from'][-1]})"
    m = result.get("metrics") or {}
    figures = [
        ("3D IoU", "iou_3d", ".3f", ""),
        ("silhouette IoU", "silhouette_iou", ".3f", ""),
        ("PSNR", "psnr", ".2f", " dB"),
    ]
    for label, key, fmt, unit in figures:
        if isinstance(m.get(key), (int, float)):
            text += f", {label} {m[key]:{fmt}}{unit}"
    return text


def wait_all(ray: Any, refs: dict, retries: int, stop_file: Path, bar: Any, results: dict[str, dict]) -> int | None:
    """Collect every task's result into `results`, a line per run and the bar moving; the first Ctrl-C writes the
    stop file (the runs checkpoint and return), a second one quits at once. Runs lost with their node are left
    out of the lines and the bar; RayLost when Ray itself stops answering."""
    from ..runs.interrupt import catch_signals

    with catch_signals() as stop:
        while refs:
            if stop.requested and not stop_file.exists():
                stop_file.write_text("stop\n")
            try:
                ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
            except Exception as err:  # the driver's own connection to Ray is gone
                raise RayLost(_first_line(err)) from err
            for ref in ready:
                job = refs.pop(ref)
                results[job.name] = outcome(ray, ref, retries)
                if not results[job.name].get("lost"):
                    bar.write(describe(job, results[job.name]), file=sys.stdout)
                    bar.update(1)
    return stop.signum


def run_batch(argv: list[str]) -> int:
    """The whole command: jobs, Ray, the summaries; 0 when every run finished, 1 when one failed, 130 when
    stopped by Ctrl-C (with the command that resumes it)."""
    options = parse_options(argv)
    jobs = resolve_jobs(load_jobs(options), options)
    out = Path(options.out)
    out.mkdir(parents=True, exist_ok=True)
    for job in jobs:  # a folder holding this run, finished or not, must hold it with the job's settings
        continue_config(job)
    todo = [j for j in jobs if j.error is None and not is_finished(j)]
    for job in jobs:
        if job.error is not None:
            print(f"failed   {job.name} ({job.job.where}): {job.error}")
    done_before = sum(j.error is None for j in jobs) - len(todo)
    if done_before:
        print(f"skipped  {done_before} run(s) finished before")
    results, signum = run_on_ray(todo, options, out, len(jobs)) if todo else ({}, None)
    report(jobs, results, out)
    return finish(jobs, results, out, signum, argv)


def run_on_ray(todo: list[ResolvedJob], options: Any, out: Path, total: int) -> tuple[dict[str, dict], int | None]:
    """Run the jobs as Ray tasks under one progress bar: (results by run name, the signal that stopped them). When
    the local Ray dies under the batch, it is started once more and the runs it lost continue from their
    checkpoints; on a cluster (--address), or the second time, they are reported with the cause."""
    from tqdm import tqdm

    stop_file = out / STOP_FILE
    stop_file.unlink(missing_ok=True)  # a stale request of an earlier, killed driver
    results: dict[str, dict] = {}
    restarts, bar = (0 if options.address else 1), None

    def unfinished(jobs: list[ResolvedJob]) -> list[ResolvedJob]:  # not run yet, or lost with Ray
        return [j for j in jobs if j.name not in results or results[j.name].get("lost")]

    try:
        while True:
            left = unfinished(todo)
            cause, signum = None, None
            try:
                with ray_session(options.address) as ray:
                    check_resources(ray, left, options.cpus_per_run)
                    if bar is None:  # after the checks, so that a refusal is the only line printed
                        bar = tqdm(
                            total=total, initial=total - len(todo), unit="run", desc="sjc batch", file=sys.stderr
                        )
                    refs = submit(ray, left, options.cpus_per_run, options.retries, stop_file)
                    signum = wait_all(ray, refs, options.retries, stop_file, bar, results)
            except RayLost as err:
                cause = str(err)
            lost = unfinished(left)
            if signum is not None or not lost:
                return results, signum
            cause = cause or results[lost[0].name]["message"]
            if restarts == 0:
                for job in lost:
                    results[job.name] = {
                        "status": "failed",
                        "message": f"Ray failed under the run ({cause}); run the same command to resume it",
                    }
                    bar.write(describe(job, results[job.name]), file=sys.stdout)
                return results, None
            restarts -= 1
            bar.write(
                f"Ray failed under the batch ({cause}); starting it again, {len(lost)} run(s) continue from "
                "their checkpoints",
                file=sys.stderr,
            )
    finally:
        if bar is not None:
            bar.close()
        stop_file.unlink(missing_ok=True)


def report(jobs: list[ResolvedJob], results: dict[str, dict], out: Path) -> None:
    rows = []
    for job in jobs:
        seed = job.seed
        record = results.get(job.name) or (read_result(job.run_dir) if job.error is None else None)
        if job.error is not None:
            rows.append(summary_row(job.name, job.job.title, seed, "failed", message=job.error))
        elif record and record.get("status") == "done":
            rows.append(summary_row(job.name, job.job.title, seed, "done", record))
        else:
            record = record or {"status": "stopped"}
            message = record.get("message") or f"stopped at step {record.get('step', 0)}"
            rows.append(summary_row(job.name, job.job.title, seed, record["status"], message=message))
    files = write_reports(out, rows)
    print(f"summary: {files['md']}, {files['csv']}; gallery: {files['html']}")


def finish(jobs: list[ResolvedJob], results: dict, out: Path, signum: int | None, argv: list[str]) -> int:
    """Name the failures and the way to resume; the exit status."""
    failed = [j for j in jobs if j.error is not None or results.get(j.name, {}).get("status") == "failed"]
    if signum is not None:
        stopped = sum(r.get("status") == "stopped" for r in results.values())
        print(
            f"sjc batch: interrupted: {stopped} run(s) stopped at a checkpoint; resume with: "
            f"{shlex.join(['sjc', 'batch', *argv])}",
            file=sys.stderr,
        )
        return 128 + int(signum)
    if failed:
        lines = [f"  {j.name}: {j.error or results[j.name]['message']}" for j in failed]
        print(f"sjc batch: {len(failed)} of {len(jobs)} run(s) failed:\n" + "\n".join(lines), file=sys.stderr)
        return 1
    print(f"all {len(jobs)} run(s) finished in {out}")
    return 0
