"""Speed of the renderer and of whole SJC steps against the official algorithm, idle and beside a busy process.

Times forward, backward and optimiser step (medians after warm-up; contenders interleaved step by step so
machine load hits them alike) and the peak extra memory of a step, for the official renderer as its code does
it (`sjc.core.official.render_official`: the baseline of every speed-up), sjc's PyTorch renderer with empty-
space skipping, and the fused kernels (`sjc.core.fused`, the default on the CPU) exact and with skipping, at
the paper's setting (100^3, 64x64, C = 4) and at 160^3 / 128x128, with the field at initialisation and formed
(an opaque sphere of radius 0.5, empty elsewhere). Each (threads, load) configuration runs in a fresh process,
with sjc's OpenMP settings; 'busy' starts a competing CPU-bound process beside it (bounded in time, stopped
after). Before timing it checks that both fast renderers (skipping off) equal the exact dense reference
(`render_dense`) in image, depth, gradients.

Then: one whole SJC step with the toy prior (`core.fit.sjc_step`, default toy preset, first steps of a run),
the throughput of rendering a turntable, and `sjc generate` with the default toy preset, idle and busy.

    python benchmarks/speed.py                          # everything (about 30 minutes on 2 cores)
    python benchmarks/speed.py --only render --configs paper --threads 1 --load idle
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import dataclasses
import json
import multiprocessing
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from sjc.app.settings.presets import preset
from sjc.core import chaining
from sjc.core import fit as trainer
from sjc.core.cameras import Camera, camera_from_view, sample_training_view, turntable_views
from sjc.core.official import render_official
from sjc.core.reference import render_dense
from sjc.core.render import Rendering, render
from sjc.core.settings import FieldConfig
from sjc.core.voxel import VoxelField

CONFIGS = {"paper": (100, 64), "large": (160, 128)}  # grid resolution, image side
BASELINE = "official"
STATES = ("init", "formed")
CHANNELS = 4
EMPTINESS = 1e4  # the paper's weight: the emptiness loss is part of every step
TOLERANCE = 1e-4


# --- memory: the process's peak resident size over one step ------------------------------------
def _fixed_mmap_threshold() -> None:
    """Big blocks straight from mmap and back on free, so resident size follows live tensors."""
    with contextlib.suppress(OSError):
        ctypes.CDLL("libc.so.6").mallopt(-3, 1 << 16)  # M_MMAP_THRESHOLD


def _rss_kb(key: str) -> int:
    with open("/proc/self/status") as f:
        return int(re.search(rf"{key}:\s+(\d+) kB", f.read()).group(1))


def _reset_peak() -> int:
    """Reset the peak resident size to the current one (Linux); returns the current one in kB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _rss_kb("VmRSS")


# --- fields, cameras, steps -------------------------------------------------------------------
def make_field(resolution: int, state: str, seed: int = 0) -> VoxelField:
    """A paper-like latent field: raw density 0 and N(0, 1) features at 'init'; 'formed' adds an
    opaque sphere of radius 0.5 (alpha of a voxel > 0.5) and empties everything else."""
    field = VoxelField(resolution, CHANNELS, background="texture", generator=torch.Generator().manual_seed(seed))
    if state == "formed":
        with torch.no_grad():
            field.grid[0, 0] = torch.where(field.voxel_centres().norm(dim=-1) < 0.5, 40.0, -30.0)
    return field


def training_cameras(count: int, size: int, seed: int = 0) -> list[Camera]:
    gen = torch.Generator().manual_seed(seed)
    return [camera_from_view(sample_training_view(gen), size) for _ in range(count)]


def step_loss(out: Rendering, g: torch.Tensor) -> torch.Tensor:
    """The SJC surrogate with a fixed stand-in for the prior's score, plus the emptiness loss."""
    return chaining.chain_surrogate(out.image, g) + EMPTINESS * chaining.emptiness_loss(out.weights, 10.0)


class Contender:
    """One renderer with its own copy of the field and its own Adamax."""

    def __init__(self, name: str, field: VoxelField, render_fn: Callable, refresh_every: int = 0) -> None:
        self.name, self.field, self.render_fn, self.refresh_every = name, field, render_fn, refresh_every
        self.optimizer = torch.optim.Adamax(field.param_groups(0.05, 1e-4))
        self.steps = 0

    def step(self, camera: Camera, g: torch.Tensor) -> dict[str, float]:
        t0 = time.perf_counter()
        if self.refresh_every and self.steps % self.refresh_every == 0:
            f = FieldConfig()
            self.field.refresh_occupancy(f.occupancy_threshold, f.occupancy_dilation)
        loss = step_loss(self.render_fn(self.field, camera), g)
        t1 = time.perf_counter()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        self.optimizer.step()
        t3 = time.perf_counter()
        self.steps += 1
        return {"forward": t1 - t0, "backward": t2 - t1, "optimiser": t3 - t2, "total": t3 - t0}


def contenders(resolution: int, state: str) -> list[Contender]:
    every = FieldConfig().occupancy_every
    return [
        Contender(BASELINE, make_field(resolution, state), render_official),
        Contender(
            "PyTorch + skipping",
            make_field(resolution, state),
            lambda f, c: render(f, c, skip_empty=True, engine="torch"),
            refresh_every=every,
        ),
        Contender("fused (exact)", make_field(resolution, state), render),
        Contender(
            "fused + skipping",
            make_field(resolution, state),
            lambda f, c: render(f, c, skip_empty=True),
            refresh_every=every,
        ),
    ]


def time_steps(resolution: int, size: int, state: str, steps: int, warmup: int) -> dict[str, dict[str, float]]:
    """Median seconds of each phase (and the largest peak memory) per contender, interleaved."""
    racers = contenders(resolution, state)
    cams = training_cameras(steps + warmup, size)
    gen = torch.Generator().manual_seed(1)
    records: dict[str, list[dict]] = {r.name: [] for r in racers}
    for i, cam in enumerate(cams):
        g = torch.randn(1, CHANNELS, size, size, generator=gen)
        for racer in racers if i % 2 == 0 else racers[::-1]:
            record = racer.step(cam, g)
            if i >= warmup:
                records[racer.name].append(record)
    return {name: {k: statistics.median(r[k] for r in recs) for k in recs[0]} for name, recs in records.items()}


def peak_memory_mb(resolution: int, size: int, state: str, name: str) -> float:
    """Peak resident memory added by one step (after two warm-up steps), measured in a fresh process
    whose allocator returns big blocks to the system at once, so resident size follows live tensors."""
    _fixed_mmap_threshold()
    racer = next(r for r in contenders(resolution, state) if r.name == name)
    cams = training_cameras(3, size)
    g = torch.randn(1, CHANNELS, size, size, generator=torch.Generator().manual_seed(1))
    racer.step(cams[0], g), racer.step(cams[1], g)
    base_kb = _reset_peak()
    racer.step(cams[2], g)
    return (_rss_kb("VmHWM") - base_kb) / 1024


def peak_memories(resolution: int, size: int, state: str, names: list[str], threads: int) -> dict[str, float]:
    context = multiprocessing.get_context("spawn")
    with context.Pool(1, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        peaks = pool.starmap(peak_memory_mb, [(resolution, size, state, name) for name in names])
    return dict(zip(names, peaks, strict=True))


# --- equality before timing -------------------------------------------------------------------
def _outputs_and_grads(field: VoxelField, out: Rendering, g: torch.Tensor) -> dict[str, torch.Tensor]:
    field.zero_grad(set_to_none=True)
    step_loss(out, g).backward()
    grads = {f"grad {name}": p.grad.clone() for name, p in field.named_parameters() if p.grad is not None}
    return {"image": out.image.detach(), "depth": out.depth.detach(), "weights": out.weights.detach(), **grads}


def max_differences(resolution: int, size: int, state: str, dtype: torch.dtype) -> dict[str, float]:
    """Largest absolute difference between the fast renderer (skipping off) and the reference."""
    field = make_field(resolution, state).to(dtype)
    cam = training_cameras(1, size, seed=5)[0]
    g = torch.randn(1, CHANNELS, size, size, generator=torch.Generator().manual_seed(2)).to(dtype)
    ref = _outputs_and_grads(field, render_dense(field, cam), g)
    diffs: dict[str, float] = {}
    for engine in ("auto", "torch"):  # the fused kernels and the PyTorch path
        fast = _outputs_and_grads(field, render(field, cam, engine=engine), g)
        diffs |= {f"{engine} {k}": float((ref[k] - fast[k]).abs().max()) for k in ref}
    return diffs


def check_equal(resolution: int, size: int, state: str) -> bool:
    """Print the differences; True when all are within TOLERANCE in float64, where they measure the
    algorithms (in float32, rounding alone moves sums over ~10^6 samples by ~1e-4)."""
    exact = max_differences(resolution, size, state, torch.float64)
    rounded = max_differences(resolution, size, state, torch.float32)
    ok = max(exact.values()) <= TOLERANCE
    print(
        f"fused (auto) and PyTorch (torch) renderers vs reference, {state}, largest difference in float64 "
        f"({'OK' if ok else 'MISMATCH'}): " + ", ".join(f"{k} {v:.1e}" for k, v in exact.items())
    )
    print("  the same in float32: " + ", ".join(f"{k} {v:.1e}" for k, v in rounded.items()))
    return ok


# --- whole steps, turntables, `sjc generate` ------------------------------------------------
TOY_PROMPT = "a red and blue cube"


def _official_render(field, camera, **_):
    return render_official(field, camera)


def toy_step_ms(steps: int, warmup: int) -> dict[str, float]:
    """Median milliseconds of core.fit.sjc_step (toy prior, default preset) per renderer, interleaved."""
    from sjc.app.runs.generate import prior_from_config

    cfg = dataclasses.replace(preset("toy", "default"), prompt=TOY_PROMPT)
    prior, cpu = prior_from_config(cfg, torch.device("cpu")), torch.device("cpu")
    runs = {}
    for name, skip in ((BASELINE, False), ("fused (exact)", False), ("fused + skipping", True)):
        c = dataclasses.replace(cfg, field=dataclasses.replace(cfg.field, skip_empty=skip))
        gens = trainer.make_generators(c.train.seed, cpu)
        field = trainer.build_field(prior, c.field, cpu, generator=gens["init"])
        loop = trainer.FitLoop.create(
            field,
            prior,
            c.fit_settings(),
            steps=c.train.steps,
            schedule_steps=c.train.schedule_steps,
            optimizer=trainer.make_optimizer(field, c.optim),
            generators=gens,
            render_fn=_official_render if name == BASELINE else None,  # None: `render` with the field settings
        )
        runs[name] = (field, loop)
    times: dict[str, list[float]] = {name: [] for name in runs}
    for step in range(warmup + steps):
        for name, (field, loop) in runs.items():
            start = time.perf_counter()
            trainer.sjc_step(field, loop, step)
            if step >= warmup:
                times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


@torch.no_grad()
def turntable_fps(frames: int, size: int) -> dict[str, float]:
    """Frames per second rendering a turntable of the formed 100^3 field (no gradients), interleaved."""
    field = make_field(100, "formed")
    seconds = {BASELINE: 0.0, "fused (exact)": 0.0}
    for view in turntable_views(frames):
        camera = camera_from_view(view, size)
        for name, fn in ((BASELINE, render_official), ("fused (exact)", render)):
            start = time.perf_counter()
            fn(field, camera)
            seconds[name] += time.perf_counter() - start
    return {name: frames / s for name, s in seconds.items()}


# `sjc generate` variants timed against each other: the default toy preset, the one before it (training fields of
# view 40-70 degrees, 2500 steps) and the one before that (a 32^3 grid all run and 2000 steps, no coarse-to-fine),
# which the README's earlier times were measured with.
GENERATE_VARIANTS = {
    "default": [],
    "the default before (fov 40-70, 2500 steps)": ["--camera.fov-min", "40", "--steps", "2500"],
    "previous default (32^3 all run, 2000 steps, fov 40-70)": [
        "--field.coarse-scale",
        "None",
        "--field.upsample-at",
        "--steps",
        "2000",
        "--camera.fov-min",
        "40",
    ],
}


def generate_seconds(threads: int | None, flags: list[str] = ()) -> dict[str, float]:
    """`sjc generate` with the default toy preset and `flags` (and `--threads` unless None): wall seconds in all,
    and of its training loop, and its 3D IoU."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [str(Path(sys.executable).parent / "sjc"), "generate", TOY_PROMPT, "--out", str(out), *flags]
        command += ["--threads", str(threads)] if threads else []
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        wall = time.perf_counter() - start
        last = json.loads((out / "log.jsonl").read_text().splitlines()[-1])
        iou = json.loads((out / "metrics.json").read_text())["iou_3d"]
        return {"wall": wall, "training": last["seconds"], "steps": last["step"], "iou": iou}


# --- load: a competing CPU-bound process --------------------------------------------------------
@contextlib.contextmanager
def competing_load(busy: bool, seconds: float = 1800.0):
    """Within the block, with `busy`, another process spins on one core (it stops by itself after
    `seconds`, and is stopped at the end of the block)."""
    if not busy:
        yield
        return
    spin = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"
    proc = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.5)  # running before the first timed step
        yield
    finally:
        proc.kill()
        proc.wait()


def _in_process(threads: int, busy: bool, job: Callable, *args):
    """job(*args) in a fresh process with `threads` PyTorch threads (and sjc's OpenMP settings), beside a
    competing process when `busy`."""
    context = multiprocessing.get_context("spawn")
    with competing_load(busy), context.Pool(1, initializer=torch.set_num_threads, initargs=(threads,)) as pool:
        return pool.apply(job, args)


# --- tables -----------------------------------------------------------------------------------
def render_table(results: list[tuple[str, str, int, dict]]) -> str:
    lines = [
        "| setting | state | threads | renderer | forward (ms) | backward (ms) | step idle (ms) | speed-up | "
        "step busy (ms) | busy / idle | peak memory (MB) |",
        "|" + "---|" * 11,
    ]
    for setting, state, threads, by_load in results:
        idle, busy = by_load.get("idle"), by_load.get("busy")
        first = idle or busy
        for name in first:
            i, b = (idle or {}).get(name), (busy or {}).get(name)
            speed_up = f"{idle[BASELINE]['total'] / i['total']:.2f}x" if i else "-"
            ratio = f"{b['total'] / i['total']:.2f}" if i and b else "-"
            s = i or b
            step_idle, step_busy = (f"{1e3 * x['total']:.0f}" if x else "-" for x in (i, b))
            lines.append(
                f"| {setting} | {state} | {threads} | {name} | {1e3 * s['forward']:.0f} | {1e3 * s['backward']:.0f} | "
                f"{step_idle} | {speed_up} | {step_busy} | {ratio} | {s.get('peak_mb', float('nan')):.0f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", nargs="*", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--steps", type=int, default=21, help="timed steps per contender (after warm-up)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="PyTorch threads to measure")
    parser.add_argument("--load", nargs="+", choices=("idle", "busy"), default=["idle", "busy"])
    parser.add_argument("--rounds", type=int, default=1, help="sjc generate: times each variant runs, interleaved")
    parser.add_argument(
        "--only", choices=("render", "steps", "generate"), default=None, help="the renderer table, or one of the rest"
    )
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {os.cpu_count()} cores, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}")
    if args.only in (None, "render"):
        render_tables(args)
    if args.only in (None, "steps"):
        other_timings(args)
    if args.only in (None, "generate"):
        generate_timings(args)


def _other(steps: int, warmup: int) -> tuple[dict, dict]:
    return toy_step_ms(steps, warmup), turntable_fps(24, 128)


def other_timings(args: argparse.Namespace) -> None:
    for threads in args.threads:
        for load in args.load:
            ms, fps = _in_process(threads, load == "busy", _other, args.steps, args.warmup)
            print(f"\n{threads} thread(s), {load}:")
            print(
                f"  whole SJC step, toy prior, default preset (32^3, 32x32), {args.steps} steps after warm-up: ", end=""
            )
            print(" | ".join(f"{name} {t:.1f} ms ({ms[BASELINE] / t:.2f}x)" for name, t in ms.items()))
            print("  turntable of the formed 100^3 field at 128x128, no gradients: ", end="")
            print(" | ".join(f"{name} {f:.2f} frames/s" for name, f in fps.items()), flush=True)


def generate_timings(args: argparse.Namespace) -> None:
    """Each variant of GENERATE_VARIANTS in turn, `args.rounds` times (interleaved, so load hits them alike)."""
    for threads in args.threads:
        for load in args.load:
            for round_ in range(args.rounds):
                for name, flags in GENERATE_VARIANTS.items():
                    with competing_load(load == "busy"):
                        g = generate_seconds(threads, flags)
                    print(
                        f"sjc generate '{TOY_PROMPT}' ({name}) --threads {threads}, {load}, round {round_ + 1}: "
                        f"{g['wall']:.0f} s in all, training loop {g['training']:.0f} s "
                        f"({1e3 * g['training'] / g['steps']:.1f} ms/step over {g['steps']} steps), "
                        f"3D IoU {g['iou']:.3f}",
                        flush=True,
                    )


def _timed(resolution: int, size: int, state: str, steps: int, warmup: int) -> dict:
    return time_steps(resolution, size, state, steps, warmup)


def render_tables(args: argparse.Namespace) -> None:
    results = []
    for setting in args.configs:
        resolution, size = CONFIGS[setting]
        for state in STATES:
            check_equal(resolution, size, state)
            for threads in args.threads:
                by_load = {}
                for load in args.load:
                    by_load[load] = _in_process(
                        threads, load == "busy", _timed, resolution, size, state, args.steps, args.warmup
                    )
                if "idle" in by_load:
                    names = list(by_load["idle"])
                    for name, peak in peak_memories(resolution, size, state, names, threads).items():
                        by_load["idle"][name]["peak_mb"] = peak
                results.append((f"{setting} ({resolution}^3, {size}x{size})", state, threads, by_load))
                print(render_table(results[-1:]), flush=True)
    print()
    print(render_table(results))


if __name__ == "__main__":
    main()
