"""The learned toy prior against the exact one: what naive scoring costs when the denoiser is learned.

1. Samples: `sjc sample`'s Heun sampler draws `--seeds` images per prompt from each prior (views pooled);
   a small CNN trained on true renders (`metrics.train_prompt_classifier`) says which prompt each shows.
2. 2D canvas: naive vs PAAS scoring, annealed from sigma 80 (the canvas preset), on `--canvas-prompts`:
   classifier accuracy and RMS distance to the nearest true render of the prompt.
3. 3D: `generate` with each prior's default preset, PAAS and naive scoring, on `--prompts-3d` (the suite's cube
   prompts): 3D IoU and silhouette IoU against the ground truth.

Jobs run in separate processes with one PyTorch thread each; `--pictures DIR` writes the PNGs of
docs/learned-prior.md.

    python benchmarks/learned_prior.py                 # everything (about 20 minutes on 2 cores)
    python benchmarks/learned_prior.py --only samples --seeds 8
"""

from __future__ import annotations

import argparse
import json
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import imageio.v3 as iio
import torch

from canvas import run_job as canvas_job
from quality import run_one as generate_job
from sjc.app.commands.run2d import tile
from sjc.app.settings.train_prior_config import TrainPriorConfig
from sjc.outputs.metrics import train_prompt_classifier
from sjc.priors import TOY_PRIORS

CANVAS_PROMPTS = ("a red and blue cube", "a yellow sphere", "a purple cone")
PROMPTS_3D = ("a red and blue cube", "a green cube")


def accuracy(classifier, images: torch.Tensor, prompt: str) -> float:
    return sum(p == prompt for p in classifier.predict(images)) / len(images)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("samples", "canvas", "3d"), nargs="+", default=["samples", "canvas", "3d"])
    parser.add_argument("--seeds", type=int, default=16, help="samples per prompt and canvases per cell")
    parser.add_argument("--canvas-prompts", nargs="*", default=list(CANVAS_PROMPTS))
    parser.add_argument("--prompts-3d", nargs="*", default=list(PROMPTS_3D))
    parser.add_argument("--steps", type=int, default=None, help="override the 3D preset's step count")
    parser.add_argument("--classifier-images", type=int, default=2000, help="true renders per prompt it learns from")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--pictures", type=Path, default=None, help="write PNG pictures to this folder")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    args = parser.parse_args()
    prompts = list(TrainPriorConfig().prompts)
    if args.pictures:
        args.pictures.mkdir(parents=True, exist_ok=True)

    if {"samples", "canvas"} & set(args.only):
        print("training the prompt classifier on true renders ...", flush=True)
        torch.set_num_threads(2)
        classifier = train_prompt_classifier(prompts, n=args.classifier_images)
        torch.set_num_threads(1)
    results: dict[str, list[dict]] = {}
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        if "samples" in args.only:
            jobs = [(p, "sample", "heun", None, args.seeds, prior) for prior in TOY_PRIORS for p in prompts]
            rows = list(pool.map(canvas_job, jobs))
            print("\n| prior | " + " | ".join(prompts) + " | all prompts |")
            print("|---|" + "---|" * (len(prompts) + 1))
            for prior in TOY_PRIORS:
                mine = [r for r in rows if r["prior"] == prior]
                accs = [accuracy(classifier, r["pictures"], r["prompt"]) for r in mine]
                for r, a in zip(mine, accs, strict=True):
                    r["classifier_accuracy"] = a
                cells = " | ".join(f"{a:.0%}" for a in accs)
                print(f"| {prior} | {cells} | {sum(accs) / len(accs):.1%} |")
                if args.pictures:
                    grid = torch.cat([r["pictures"][:8] for r in mine])
                    iio.imwrite(args.pictures / f"samples-{prior}.png", tile(grid, 8))
            results["samples"] = rows
        if "canvas" in args.only:
            variants = [("naive", "annealed"), ("paas", "annealed")]
            jobs = [
                (p, "canvas", v, (0.1, 80.0), args.seeds, prior)
                for prior in TOY_PRIORS
                for p in args.canvas_prompts
                for v in variants
            ]
            rows = list(pool.map(canvas_job, jobs))
            print("\n| prompt | prior | scoring | classifier accuracy | RMS to nearest render | distinct renders |")
            print("|---|---|---|---|---|---|")
            for r in rows:
                r["classifier_accuracy"] = accuracy(classifier, r["pictures"], r["prompt"])
                print(
                    f"| {r['prompt']} | {r['prior']} | {r['method'].split()[1].rstrip(',')} | "
                    f"{r['classifier_accuracy']:.0%} | {r['mean_nearest_rmse']:.3f} | "
                    f"{r['distinct_nearest']}/{r['images']} |"
                )
            if args.pictures:
                for p in args.canvas_prompts:
                    mine = [r for r in rows if r["prompt"] == p]
                    grid = torch.cat([r["pictures"][:8] for r in mine])
                    slug = p.replace(" ", "-")
                    iio.imwrite(args.pictures / f"canvas-{slug}.png", tile(grid, 8))
            results["canvas"] = rows
        if "3d" in args.only:
            scorings = {"PAAS": {}, "naive": {"scoring": {"method": "naive"}}}
            jobs = [
                (p, name, changes, "default", args.steps, prior)
                for prior in TOY_PRIORS
                for p in args.prompts_3d
                for name, changes in scorings.items()
            ]
            rows = list(pool.map(generate_job, jobs))
            print("\n| prompt | prior | scoring | 3D IoU | silhouette IoU | PSNR (dB) | time (s) |")
            print("|---|---|---|---|---|---|---|")
            for r in rows:
                print(
                    f"| {r['prompt']} | {r['prior']} | {r['variant']} | {r['iou_3d']:.3f} | "
                    f"{r['silhouette_iou']:.3f} | {r['psnr']:.2f} | {r['seconds']:.0f} |"
                )
            if args.pictures:
                for p in args.prompts_3d:
                    grid = torch.cat([r["views"] for r in rows if r["prompt"] == p])
                    iio.imwrite(args.pictures / f"3d-{p.replace(' ', '-')}.png", tile(grid, 4))
            results["3d"] = rows
    if args.json:
        for rows in results.values():
            for r in rows:
                r.pop("pictures", None)
                r.pop("views", None)
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
