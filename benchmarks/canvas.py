"""The 2D canvas and the reference sampler, measured on the toy prior and on an analytic Gaussian.

Canvas table: for each toy prompt, naive vs PAAS scoring and annealed vs random sigmas, over the toy
canvas's default range (0.1 to 80) and the 3D loop's (0.1 to 1.5, the toy prior's own), `--seeds` canvases each:
prompt accuracy (the nearest render among the prompt and its near misses belongs to the prompt),
the mean RMS distance to the nearest render of the prompt, and how many distinct renders the canvases
land on. Sampler rows: the same figures for `sjc sample`'s Heun and Euler. Sampler accuracy table: the
largest error against the exact probability-flow solution of a Gaussian prior, by steps.

    python benchmarks/canvas.py                       # everything, one process per job, 2 at a time
    python benchmarks/canvas.py --prior toy toy-learned   # the exact and the learned toy prior side by side
    python benchmarks/canvas.py --prompts "a red cube" --seeds 8 --jobs 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from sjc.priors import TOY_PRIORS

PROMPTS = ("a red cube", "a red and blue cube", "a yellow sphere")
RANGES = {"canvas": (0.1, 80.0), "3d": (0.1, 1.5)}
CANVAS_VARIANTS = [(s, sch) for s in ("naive", "paas") for sch in ("annealed", "random")]


def run_job(job: tuple) -> dict:
    """One (prompt, method) cell over `seeds` images, in a worker process with one PyTorch thread; the
    row holds the final images too (key "pictures", [seeds, 3, S, S] in [-1, 1])."""
    prompt, kind, method, sigma_range, seeds, prior_name = job
    import torch

    from sjc.app.commands.run2d import prior_2d, sample_sigmas
    from sjc.app.settings.presets import canvas_preset, sample_preset
    from sjc.core.canvas import canvas_sigmas, optimise_canvas, sample_ode
    from sjc.core.fit import make_generators
    from sjc.outputs.metrics import nearest_image_quality

    torch.set_num_threads(1)
    make = canvas_preset if kind == "canvas" else sample_preset
    cfg = dataclasses.replace(make(prior_name, "default"), prompt=prompt)
    prior = prior_2d(cfg, torch.device("cpu"))
    cond, shape = prior.condition(None), (1, 3, prior.image_size, prior.image_size)  # an image of any view
    start = time.perf_counter()
    images = []
    for seed in range(seeds):
        gens = make_generators(seed)  # the same streams, drawn in the same order, as `sjc canvas` / `sjc sample`
        if kind == "canvas":
            scoring, schedule = method
            x0 = cfg.init_std * torch.randn(shape, generator=gens["init"])
            sigmas = canvas_sigmas(schedule, cfg.steps, *sigma_range, gens["sigma"])
            x, _ = optimise_canvas(prior.denoise, x0, sigmas, cond, scoring=scoring, lr=cfg.lr, generator=gens["noise"])
        else:
            sigmas = sample_sigmas(cfg, prior)
            x0 = float(sigmas[0]) * torch.randn(shape, generator=gens["init"])
            x = sample_ode(prior.denoise, x0, sigmas, cond, method=method)
        images.append(x)
    seconds = time.perf_counter() - start
    images = torch.cat(images).clamp(-1, 1)
    q = nearest_image_quality(images, prompt, cfg.toy.n_images, prior.image_size)
    name = f"canvas {method[0]}, {method[1]}" if kind == "canvas" else f"sample {method}"
    return {
        "prompt": prompt,
        "prior": prior_name,
        "method": name,
        "sigma_range": list(sigma_range) if kind == "canvas" else None,
        "steps": cfg.steps,
        "images": seeds,
        "prompt_accuracy": q["prompt_accuracy"],
        "mean_nearest_rmse": q["mean_nearest_rmse"],
        "distinct_nearest": q["distinct_nearest"],
        "seconds": seconds,
        "pictures": images,
    }


def sampler_accuracy(steps=(10, 20, 40, 80), mean: float = 0.3, std: float = 0.5) -> list[dict]:
    """Largest error of Heun and Euler against the exact flow of N(mean, std^2) from sigma 80 to 0."""
    import torch

    from sjc.core.canvas import karras_sigmas, sample_ode
    from sjc.core.denoisers import GaussianDenoiser

    noise = torch.randn(256, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    rows = []
    for n in steps:
        sigmas = karras_sigmas(n, 0.002, 80.0)
        x0 = sigmas[0] * noise
        exact = mean + std / math.sqrt(std**2 + 80.0**2) * (x0 - mean)
        row = {"steps": n}
        for method in ("heun", "euler"):
            x = sample_ode(GaussianDenoiser(mean, std), x0, sigmas, method=method)
            row[method] = float((x - exact).abs().max())
            row[f"{method}_evaluations"] = 2 * n - 1 if method == "heun" else n
        rows.append(row)
    return rows


def tables(rows: list[dict], accuracy: list[dict]) -> str:
    head = "| prompt | prior | method | sigma range | steps | prompt accuracy | RMS to nearest render | distinct | "
    head += "time (s) |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        span = "-" if r["sigma_range"] is None else f"{r['sigma_range'][0]:g} - {r['sigma_range'][1]:g}"
        lines.append(
            f"| {r['prompt']} | {r['prior']} | {r['method']} | {span} | {r['steps']} | {r['prompt_accuracy']:.0%} | "
            f"{r['mean_nearest_rmse']:.2g} | {r['distinct_nearest']}/{r['images']} | {r['seconds']:.0f} |"
        )
    lines += ["", "| steps | Heun max error (D evaluations) | Euler max error (D evaluations) |", "|---|---|---|"]
    for a in accuracy:
        heun, euler = f"{a['heun']:.2g} ({a['heun_evaluations']})", f"{a['euler']:.2g} ({a['euler_evaluations']})"
        lines.append(f"| {a['steps']} | {heun} | {euler} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", nargs="*", default=list(PROMPTS))
    parser.add_argument("--prior", nargs="+", choices=TOY_PRIORS, default=["toy"])
    parser.add_argument("--seeds", type=int, default=16, help="canvases / samples per cell")
    parser.add_argument("--ranges", nargs="*", default=list(RANGES), choices=list(RANGES))
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    args = parser.parse_args()

    jobs = []
    for prior in args.prior:
        jobs += [(p, "sample", m, None, args.seeds, prior) for p in args.prompts for m in ("heun", "euler")]
        jobs += [
            (p, "canvas", v, RANGES[r], args.seeds, prior)
            for p in args.prompts
            for r in args.ranges
            for v in CANVAS_VARIANTS
        ]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(run_job, jobs))
    for row in rows:
        del row["pictures"]
    accuracy = sampler_accuracy()
    print(tables(rows, accuracy))
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "sampler_accuracy": accuracy}, indent=2) + "\n")


if __name__ == "__main__":
    main()
