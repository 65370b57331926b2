"""The score-distillation lab: every --scoring.method on the toy suite, with the exact and the learned toy prior.

Each method runs with its own preset (guidance scale and sigma schedule of its paper, `app.presets.method_preset`)
on top of the prior's preset; nothing is tuned per prompt or per method. Prints, and writes as Markdown:
  1. per prior and method, the mean and worst 3D IoU, silhouette IoU, PSNR, shape matches and seconds over the
     prompts (one seed), and the spread over --seeds seeds on --spread-prompts;
  2. for the exact prior, how far each method's average direction is from the exact score of the noised density
     at a degraded render (cosine, and relative error once the method's scalar weight is divided out);
  3. a figure of one prompt under each method (held-out views), and the 2D canvas under each method (PNG).

    python benchmarks/methods.py --steps 300 --prompts "a red and blue cube" "a green cube"
    python benchmarks/methods.py --only directions
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from quality import SUITE, run_one  # noqa: E402
from sjc.core.settings import METHODS  # noqa: E402

EXACT_METHODS = tuple(m for m in METHODS if m != "vsd")  # vsd needs a network to copy
SPREAD_PROMPTS = ("a red and blue cube", "an orange and purple sphere")
FIGURE_PROMPT = "a red and blue cube"
IMAGES = Path(__file__).parent.parent / "docs" / "images"


def method_changes(prior: str, preset_name: str, method: str, lr: float | None) -> dict:
    """The config changes of `method`'s preset over the prior's (as run_one's `changes`)."""
    from sjc.app.settings.presets import method_preset, preset

    base = preset(prior, preset_name).scoring
    scoring = method_preset(base, method)
    changes = {"scoring": {f.name: getattr(scoring, f.name) for f in dataclasses.fields(scoring)}}
    if lr is not None:
        changes["optim"] = {"lr": lr}
    return changes


# Relative cost of one step per method (ms per step at the default preset, one thread, idle; exact / learned
# prior), used only to start the slowest runs first so that a pool of workers finishes together.
STEP_MS = {
    "toy": {"paas": 19, "naive": 19, "sds": 42, "csd": 40, "nfsd": 40, "sdi": 125, "ism": 90},
    "toy-learned": {"paas": 30, "naive": 29, "sds": 42, "csd": 41, "nfsd": 50, "sdi": 130, "ism": 114, "vsd": 96},
}


def job(prompt: str, prior: str, method: str, args, seed: int = 0, lr: float | None = None) -> tuple:
    changes = method_changes(prior, args.preset, method, lr)
    changes["train"] = {"seed": seed}
    variant = method if lr is None else f"{method} (lr {lr:g})"
    return prompt, variant, changes, args.preset, args.steps, prior


def key(job_or_row) -> tuple:
    """(prior, variant, prompt, seed) of a job or of a finished row."""
    if isinstance(job_or_row, dict):
        r = job_or_row
        return r["prior"], r["variant"], r["prompt"], r["seed"]
    prompt, variant, changes, _, _, prior = job_or_row
    return prior, variant, prompt, changes["train"]["seed"]


def run_job(job: tuple, views_dir: Path) -> dict:
    """run_one plus the seed; the held-out views of the figure prompt at seed 0 are kept for the figures."""
    import torch

    row = run_one(job)
    row["seed"] = key(job)[3]
    views = row.pop("views")
    if row["prompt"] == FIGURE_PROMPT and row["seed"] == 0:
        torch.save(views, views_dir / f"{row['prior']}--{row['variant']}.pt")
    return row


def run_suite(jobs: list[tuple], args) -> list[dict]:
    """Run `jobs` in `args.jobs` processes, slowest first, appending each row to rows.jsonl as it finishes (so a
    cut-short run keeps what it did); with --resume, jobs whose row is already there are skipped."""
    from concurrent.futures import as_completed

    rows_file, views_dir = args.out / "rows.jsonl", args.out / "views"
    views_dir.mkdir(exist_ok=True)
    done = read_rows([rows_file]) if args.resume and rows_file.exists() else []
    if not args.resume:
        rows_file.write_text("")
    finished = {key(r) for r in done}
    todo = [j for j in jobs if key(j) not in finished]

    def order(j: tuple) -> tuple:  # seed 0 first; then the slowest first, or in the order of --methods
        prior, variant, _, seed = key(j)
        method = variant.split()[0]  # a variant is its method, or the method and its lr
        return seed != 0, -STEP_MS[prior].get(method, 50) if args.order == "cost" else args.methods.index(method)

    todo.sort(key=order)
    print(f"{len(todo)} runs to do, {len(jobs) - len(todo)} already in {rows_file}", flush=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_job, j, views_dir) for j in todo]
        for n, future in enumerate(as_completed(futures), 1):
            row = future.result()
            with open(rows_file, "a") as f:
                f.write(json.dumps(row) + "\n")
            print(
                f"[{n}/{len(todo)}] {row['prior']} {row['variant']} seed {row['seed']} {row['prompt']}: "
                f"3D IoU {row['iou_3d']:.3f} ({row['seconds']:.0f} s)",
                flush=True,
            )
    wanted = {key(j) for j in jobs}
    return [r for r in read_rows([rows_file]) if key(r) in wanted]


def read_rows(paths: list[Path]) -> list[dict]:
    """The rows of one or more rows.jsonl files, the last row of each (prior, variant, prompt, seed) kept."""
    rows = {}
    for path in paths:
        for line in Path(path).read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                rows[key(row)] = row
    return list(rows.values())


def suite_report(rows: list[dict], args) -> list[str]:
    """Table 1 (seed 0 over the prompts), table 2 (every seed on the spread prompts) and the figures."""
    priors, prompts = ("toy", "toy-learned"), list(SUITE)
    rows = sorted(rows, key=lambda r: (
        priors.index(r["prior"]), METHODS.index(r["variant"].split()[0]), r["variant"],
        prompts.index(r["prompt"]) if r["prompt"] in prompts else len(prompts), r["prompt"], r["seed"],
    ))  # fmt: skip
    first = [r for r in rows if r["seed"] == 0]
    seeded = [r for r in rows if r["prompt"] in args.spread_prompts and "lr" not in r["variant"]]
    for prior in dict.fromkeys(r["prior"] for r in rows):
        figure(
            args.out / "views",
            prior,
            [r["variant"] for r in first if r["prior"] == prior],
            args.figures / f"methods-{prior}.png",
        )
    steps = sorted({r["steps"] for r in rows})
    return [f"steps per run: {steps}", "", summarise(first), "", spread(seeded)]


def summarise(rows: list[dict]) -> str:
    head = "| prior | method | 3D IoU mean | 3D IoU worst | silhouette IoU mean (worst) | PSNR mean (worst) | shape |"
    lines = [head + " s / run |", "|---|---|---|---|---|---|---|---|"]
    for prior in dict.fromkeys(r["prior"] for r in rows):
        for variant in dict.fromkeys(r["variant"] for r in rows if r["prior"] == prior):
            rs = [r for r in rows if r["prior"] == prior and r["variant"] == variant]
            iou, sil, psnr = ([r[k] for r in rs] for k in ("iou_3d", "silhouette_iou", "psnr"))
            lines.append(
                f"| {prior} | {variant} | {statistics.mean(iou):.3f} | {min(iou):.3f} | "
                f"{statistics.mean(sil):.3f} ({min(sil):.3f}) | {statistics.mean(psnr):.2f} ({min(psnr):.2f}) | "
                f"{sum(r['shape_match'] for r in rs)}/{len(rs)} | {statistics.mean(r['seconds'] for r in rs):.0f} |"
            )
    return "\n".join(lines)


def spread(rows: list[dict]) -> str:
    lines = [
        "| prior | method | prompt | 3D IoU over seeds (mean +- sd) | PSNR (mean +- sd) |",
        "|---|---|---|---|---|",
    ]
    keys = dict.fromkeys((r["prior"], r["variant"], r["prompt"]) for r in rows)
    for prior, variant, prompt in keys:
        rs = [r for r in rows if (r["prior"], r["variant"], r["prompt"]) == (prior, variant, prompt)]
        iou, psnr = [r["iou_3d"] for r in rs], [r["psnr"] for r in rs]
        sd = lambda v: statistics.stdev(v) if len(v) > 1 else 0.0
        lines.append(
            f"| {prior} | {variant} | {prompt} | {statistics.mean(iou):.3f} +- {sd(iou):.3f} ({len(rs)} seeds) | "
            f"{statistics.mean(psnr):.2f} +- {sd(psnr):.2f} |"
        )
    return "\n".join(lines)


# --- directions against the exact score ------------------------------------------------------
def directions(prompt: str = FIGURE_PROMPT, draws: int = 64) -> str:
    """At a degraded render y (0.7 of the prompt's ground-truth render of a held-out view, 0.3 of another suite
    prompt's), each method's g averaged over `draws` noise draws against sigma times the exact score of the
    prompt's noised render distribution at y, at the level the method estimates (sqrt(2) sigma for paas and sds,
    sigma for the rest). The relative error divides out the method's scalar weight (sigma^2/(1+sigma^2) for sds,
    csd and sdi, sigma for ism); the guided methods keep their guidance scale, part of their direction. The
    inversions of sdi and ism start at the prior's smallest sigma (0.1), as in the 3D runs."""
    import torch

    from sjc.core import chaining, methods
    from sjc.core.cameras import camera_from_view
    from sjc.core.settings import PAPER_GUIDANCE
    from sjc.priors.toy import ToyPrior, held_out_views, parse_prompt, render_scene

    torch.set_num_threads(1)
    prior = ToyPrior(prompt)
    view = held_out_views(8)[1]
    camera = camera_from_view(view, prior.image_size)
    other = "a yellow sphere"
    y = (0.7 * render_scene(parse_prompt(prompt), camera)[0] + 0.3 * render_scene(parse_prompt(other), camera)[0])[
        None
    ].double()
    cond = prior.condition(view)
    lines = [
        "| method | sigma | compared with | cosine | relative error |",
        "|---|---|---|---|---|",
    ]
    for sigma in (0.2, 0.5, 1.0):
        for method in EXACT_METHODS:
            gen = torch.Generator().manual_seed(0)
            if method in ("paas", "naive"):
                if method == "paas":
                    g = chaining.paas_grad(prior.denoise, y, sigma, cond, n_noise=draws, generator=gen)
                else:
                    g = chaining.naive_grad(prior.denoise, y, sigma, cond)
                scale = 1.0
            else:
                scorer = methods.Scorer(
                    method, prior, guidance_scale=PAPER_GUIDANCE[method], sigma_range=(prior.sigma_min, 15.0)
                )
                reps = 1 if method in ("sdi", "ism") else draws  # the inversion methods are deterministic
                g = sum(scorer(y, sigma, view, gen) for _ in range(reps)) / reps
                weight = {"nfsd": lambda _: 1.0, "ism": methods.ism_weight}.get(method, methods.vp_weight)
                scale = weight(sigma)
            # PAAS's relation: (E_n[D(y + sigma n; sigma)] - y) / sigma = 2 sigma grad log p_{sqrt(2) sigma}(y), exact
            # for a point mass; the other methods claim sigma grad log p_sigma(y).
            level, factor = (sigma * 2**0.5, 2.0) if method in ("paas", "sds") else (sigma, 1.0)
            d_level = prior.denoise(y, torch.full((1,), level, dtype=y.dtype), cond)
            target = factor * sigma * (d_level - y) / level**2
            cos = torch.nn.functional.cosine_similarity(g.flatten(), target.flatten(), dim=0).item()
            rel = ((g / scale - target).norm() / target.norm()).item()
            claim = "2 sigma score at sqrt(2) sigma" if level != sigma else "sigma score at sigma"
            lines.append(f"| {method} | {sigma} | {claim} | {cos:.3f} | {rel:.3f} |")
    return "\n".join(lines)


def costs(repeats: int = 10) -> str:
    """Median seconds of one g (one render, the prior's preset view) per method and prior, one thread; vsd
    includes the copy's training step."""
    import torch

    from sjc.app.settings.presets import preset
    from sjc.core import methods
    from sjc.core.settings import PAPER_GUIDANCE
    from sjc.priors import build_prior
    from sjc.priors.toy import held_out_views

    torch.set_num_threads(1)
    view = held_out_views(8)[1]
    lines = ["| prior | method | ms per g |", "|---|---|---|"]
    for prior_name in ("toy", "toy-learned"):
        scale = preset(prior_name, "default").scoring.guidance_scale
        prior = build_prior(prior_name, FIGURE_PROMPT, guidance_scale=scale)
        y = torch.rand(1, 3, 32, 32) * 2 - 1
        for method in METHODS if prior_name == "toy-learned" else EXACT_METHODS:
            gen = torch.Generator().manual_seed(0)
            scorer = None
            if method not in ("paas", "naive"):
                scorer = methods.Scorer(method, prior, guidance_scale=PAPER_GUIDANCE[method], sigma_range=(0.1, 1.5))
            fn = partial(_one_g, prior, method, scorer, y, view, gen)
            fn()
            times = []
            for _ in range(repeats):
                start = time.perf_counter()
                fn()
                times.append(time.perf_counter() - start)
            lines.append(f"| {prior_name} | {method} | {1000 * statistics.median(times):.1f} |")
    return "\n".join(lines)


def _one_g(prior, method: str, scorer, y, view, gen):
    from sjc.core import chaining

    if scorer is not None:
        return scorer(y, 0.5, view, gen)
    if method == "paas":
        return chaining.paas_grad(prior.denoise, y, 0.5, prior.condition(view), generator=gen)
    return chaining.naive_grad(prior.denoise, y, 0.5, prior.condition(view))


# --- pictures --------------------------------------------------------------------------------
def figure(views_dir: Path, prior: str, variants: list[str], path: Path) -> None:
    """One row per method: the four held-out views of FIGURE_PROMPT (seed 0), as saved by run_job."""
    import imageio.v3 as iio
    import torch

    from sjc.app.commands.run2d import tile

    files = [views_dir / f"{prior}--{v}.pt" for v in dict.fromkeys(variants)]
    missing = [f.name for f in files if not f.exists()]
    if missing:  # never overwrite a figure with fewer rows than its table
        print(f"{path}: not written, no views of {', '.join(missing)} in {views_dir}")
        return
    iio.imwrite(path, tile(torch.cat([torch.load(f) for f in files]), 4))
    print(f"{path}: rows " + ", ".join(f.stem.split("--")[1] for f in files))


def canvases(prior_name: str, path: Path, steps: int) -> dict:
    """The 2D canvas of FIGURE_PROMPT under each method (its canvas preset, two seeds), tiled one row a method;
    returns the prompt accuracy and distance to the nearest render per method."""
    import imageio.v3 as iio
    import torch

    from sjc.app.commands.run2d import _one_canvas, _quality, prior_2d, tile
    from sjc.app.settings.presets import canvas_preset

    torch.set_num_threads(1)
    base = dataclasses.replace(canvas_preset(prior_name, "default"), prompt=FIGURE_PROMPT)
    prior = prior_2d(base, torch.device("cpu"))
    out, quality = [], {}
    for method in METHODS if prior_name == "toy-learned" else EXACT_METHODS:
        cfg = dataclasses.replace(canvas_preset(prior_name, "default", method), prompt=FIGURE_PROMPT, steps=steps)
        lo, hi = prior.sigma_min, cfg.sigma_max
        images = torch.cat([_one_canvas(cfg, prior, seed, (lo, hi), torch.device("cpu"))[0] for seed in (0, 1)])
        out.append(images.clamp(-1, 1))
        q = _quality(cfg, images.clamp(-1, 1))
        quality[method] = {"prompt_accuracy": q["prompt_accuracy"], "nearest_rmse": q["mean_nearest_rmse"]}
    iio.imwrite(path, tile(torch.cat(out), 2))
    return quality


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", nargs="+", default=["toy", "toy-learned"])
    parser.add_argument("--methods", nargs="+", default=list(METHODS))
    parser.add_argument("--preset", default="default")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's step count")
    parser.add_argument("--prompts", nargs="*", default=list(SUITE))
    parser.add_argument("--seeds", type=int, default=3, help="seeds of the spread runs")
    parser.add_argument("--spread-prompts", nargs="*", default=list(SPREAD_PROMPTS))
    parser.add_argument("--lr", type=float, nargs="*", default=[], help="also run every method at these lrs")
    parser.add_argument("--canvas-steps", type=int, default=100)
    parser.add_argument("--only", choices=("suite", "directions", "canvas", "cost"), default=None)
    parser.add_argument("--jobs", type=int, default=2)
    parser.add_argument("--figures", type=Path, default=IMAGES, help="where the PNG figures go")
    parser.add_argument(
        "--order", choices=("cost", "methods"), default="cost", help="start the slowest runs first, or --methods' order"
    )
    parser.add_argument("--resume", action="store_true", help="skip the runs already in OUT/rows.jsonl")
    parser.add_argument(
        "--report-from", nargs="+", type=Path, default=None, help="make the suite tables from these rows.jsonl files"
    )
    parser.add_argument("--out", type=Path, default=Path("runs/methods"))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_from and args.only is None:
        args.only = "suite"
    report = [f"command: {' '.join(sys.argv)}"]

    if args.report_from:
        report += suite_report(read_rows(args.report_from), args)
    elif args.only in (None, "suite"):
        jobs = []
        for prior in args.prior:
            for method in args.methods:
                if method == "vsd" and prior != "toy-learned":
                    continue
                for lr in [None, *args.lr]:
                    jobs += [job(p, prior, method, args, lr=lr) for p in args.prompts]
                jobs += [job(p, prior, method, args, seed=s) for p in args.spread_prompts for s in range(1, args.seeds)]
        start = time.perf_counter()
        rows = run_suite(jobs, args)
        report += suite_report(rows, args) + ["", f"wall time {time.perf_counter() - start:.0f} s"]
        (args.out / "rows.json").write_text(json.dumps(rows, indent=1) + "\n")
    if args.only in (None, "directions"):
        report += ["", directions()]
    if args.only in (None, "cost"):
        report += ["", costs()]
    if args.only in (None, "canvas"):
        for prior in args.prior:
            q = canvases(prior, args.figures / f"methods-canvas-{prior}.png", args.canvas_steps)
            report += ["", f"canvas {prior}: " + json.dumps(q)]
    text = "\n".join(report)
    print(text)
    (args.out / "report.md").write_text(text + "\n")


if __name__ == "__main__":
    main()
