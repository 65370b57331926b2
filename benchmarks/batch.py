"""`sjc batch --suite` against the same 10 toy prompts run one after another, as `sjc generate` runs them.

Both sides run the same commands' settings (preset, steps, seed 0, one PyTorch thread a run unless
--sequential-threads says otherwise) from a warm toy-data cache, so each prompt's metrics must come out the same;
the table shows them side by side, then the wall time of each side and the ratio. On a 2-core machine the batch
runs two runs at a time (--cpus-per-run 1).

    python benchmarks/batch.py                      # default preset (2000 steps a run)
    python benchmarks/batch.py --steps 500          # shorter runs
    python benchmarks/batch.py --loopback-namespace # run Ray inside `unshare -n` (loopback only; needs root)
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sjc.app.settings.config import slug
from sjc.priors.settings import SUITE_PROMPTS as SUITE

KEYS = ("iou_3d", "silhouette_iou", "psnr", "shape_accuracy")


def warm_cache(preset_name: str, cache: Path) -> None:
    """Render every prompt's toy data set once, so neither side pays for it."""
    from sjc.app.settings.presets import preset
    from sjc.priors.toy import make_dataset

    toy = preset("toy", preset_name).toy
    for prompt in SUITE:
        make_dataset(prompt, toy.n_images, toy.image_size, toy.data_seed, cache)


def common_flags(args: argparse.Namespace, cache: Path) -> list[str]:
    flags = ["--preset", args.preset, "--toy.cache-dir", str(cache)]
    return flags + (["--steps", str(args.steps)] if args.steps else [])


def quiet(cmd: list[str]) -> None:
    """Run a command, showing its output only when it fails (the progress bars would fill the screen)."""
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr[-3000:]}")


def run_sequential(args: argparse.Namespace, cache: Path, out: Path) -> tuple[float, dict]:
    """Each prompt by `sjc generate`, one after another; (wall seconds, metrics by prompt)."""
    start, metrics = time.perf_counter(), {}
    for prompt in SUITE:
        run = out / f"{slug(prompt)}-seed0"
        cmd = [sys.executable, "-m", "sjc", "generate", prompt, *common_flags(args, cache), "--seed", "0"]
        cmd += ["--threads", str(args.sequential_threads), "--out", str(run)]
        quiet(cmd)
        metrics[prompt] = json.loads((run / "metrics.json").read_text())
    return time.perf_counter() - start, metrics


def run_batch(args: argparse.Namespace, cache: Path, out: Path) -> tuple[float, dict]:
    """`sjc batch --suite` (inside a loopback-only network namespace if asked); (wall seconds, metrics)."""
    cmd = [sys.executable, "-m", "sjc", "batch", "--suite", *common_flags(args, cache), "--seeds", "0"]
    cmd += ["--cpus-per-run", "1", "--out", str(out)]
    if args.loopback_namespace:
        cmd = ["unshare", "-n", "sh", "-c", "ip link set lo up && exec " + " ".join(f"'{c}'" for c in cmd)]
    start = time.perf_counter()
    quiet(cmd)
    seconds = time.perf_counter() - start
    return seconds, {p: json.loads((out / f"{slug(p)}-seed0" / "metrics.json").read_text()) for p in SUITE}


def table(seq: dict, bat: dict) -> str:
    lines = ["| prompt | 3D IoU | silhouette IoU | PSNR (dB) | shape | batch = sequential |", "|" + "---|" * 6]
    for prompt in SUITE:
        s, b = seq[prompt], bat[prompt]
        same = all(s[k] == b[k] for k in KEYS)
        shape = "yes" if b["shape_accuracy"] else "NO"
        lines.append(
            f"| {prompt} | {b['iou_3d']:.3f} | {b['silhouette_iou']:.3f} | {b['psnr']:.2f} | {shape} | "
            f"{'identical' if same else 'DIFFERENT'} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="default")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's step count")
    parser.add_argument("--sequential-threads", type=int, default=1, help="PyTorch threads of each sequential run")
    parser.add_argument("--loopback-namespace", action="store_true", help="run the batch under `unshare -n`")
    parser.add_argument("--out", type=Path, default=None, help="keep the run folders here (default: a temp folder)")
    args = parser.parse_args()

    root = args.out or Path(tempfile.mkdtemp(prefix="sjc-batch-bench-"))
    cache = root / "toy-cache"
    warm_cache(args.preset, cache)
    seq_seconds, seq = run_sequential(args, cache, root / "sequential")
    bat_seconds, bat = run_batch(args, cache, root / "batch")
    print(table(seq, bat))
    steps = f"{args.steps} steps" if args.steps else f"the {args.preset} preset's steps"
    print(f"\n10 prompts, {steps}, seed 0, folders in {root}")
    print(f"one after another (sjc generate, {args.sequential_threads} thread(s)): {seq_seconds:.0f} s")
    print(f"sjc batch --suite (2 runs at a time, 1 thread each): {bat_seconds:.0f} s")
    print(f"ratio: {seq_seconds / bat_seconds:.2f}x")


if __name__ == "__main__":
    main()
