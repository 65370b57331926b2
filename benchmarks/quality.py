"""Quality of SJC with the toy-world priors (exact or learned), measured against the ground truth.

Runs a fixed suite of toy prompts (every shape, one- and two-colour) with a preset, plus the
ablations (view-bucket conditioning off, emptiness loss off, Eq. 15 instead of Eq. 16, naive scoring
instead of PAAS) on the two-colour prompts, and prints a table of 3D IoU, silhouette IoU, PSNR, shape
match, steps and wall time. Independent runs go to separate processes (one PyTorch thread each).

    python benchmarks/quality.py                 # the whole suite and the ablations, 2 processes
    python benchmarks/quality.py --prior toy-learned   # the same with the learned toy prior
    python benchmarks/quality.py --only suite    # just the suite
    python benchmarks/quality.py --prompts "a red cube" --steps 500
    python benchmarks/quality.py --only suite --skipping both   # empty-space skipping off vs on
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from sjc.app.train_prior_config import TrainPriorConfig
from sjc.priors import TOY_PRIORS

SUITE = TrainPriorConfig().prompts  # every shape, one- and two-colour; the learned prior's classes
ABLATIONS = {
    "no view conditioning": {"toy": {"view_conditioning": False}},
    "no emptiness loss": {"losses": {"emptiness_weight": 0.0}},
    "Eq. 15 (no variance reduction)": {"scoring": {"variance_reduced": False}},
    "naive scoring (no PAAS)": {"scoring": {"method": "naive"}},
}
ABLATION_PROMPTS = ("a red and blue cube", "an orange and purple sphere", "a red and green cylinder")


def _override(cfg, changes: dict):
    parts = {name: dataclasses.replace(getattr(cfg, name), **values) for name, values in changes.items()}
    return dataclasses.replace(cfg, **parts)


def run_one(job: tuple[str, str, dict, str, int | None, str]) -> dict:
    """Fit one prompt under one variant and evaluate it (runs in a worker process)."""
    prompt, variant, changes, preset_name, steps, prior_name = job
    import torch

    from sjc.app.presets import preset
    from sjc.app.runs import prior_from_config, run_fit
    from sjc.core.cameras import camera_from_view
    from sjc.core.fit import build_field, make_generators
    from sjc.core.render import render
    from sjc.outputs.metrics import evaluate_field
    from sjc.priors.toy import held_out_views, parse_prompt

    torch.set_num_threads(1)
    cfg = dataclasses.replace(preset(prior_name, preset_name), prompt=prompt)
    if steps:
        cfg = _override(cfg, {"train": {"steps": steps}})
    cfg = _override(cfg, changes)
    start = time.perf_counter()
    prior = prior_from_config(cfg, torch.device("cpu"))
    gens = make_generators(cfg.train.seed, torch.device("cpu"))
    field = build_field(prior, cfg.field, torch.device("cpu"), generator=gens["init"])
    run_fit(field, prior, cfg, None, gens=gens, progress=False)
    seconds = time.perf_counter() - start
    m = evaluate_field(field, parse_prompt(prompt))
    with torch.no_grad():  # a picture of the result: four held-out views, [4, 3, 64, 64] in [-1, 1]
        views = torch.cat([render(field, camera_from_view(v, 64)).image for v in held_out_views(4)])
    return {
        "prompt": prompt,
        "prior": prior_name,
        "variant": variant,
        "iou_3d": m["iou_3d"],
        "silhouette_iou": m["silhouette_iou"],
        "psnr": m["psnr"],
        "shape_match": m["shape_accuracy"],
        "steps": cfg.train.steps,
        "seconds": seconds,
        "skipping": cfg.field.skip_empty,
        "views": views.clamp(-1, 1),
    }


def _with_skipping(job: tuple, skip: bool | None) -> tuple:
    """The job with empty-space skipping set (None keeps the preset's)."""
    prompt, variant, changes, preset_name, steps, prior_name = job
    if skip is not None:
        changes = {**changes, "field": {**changes.get("field", {}), "skip_empty": skip}}
    return prompt, variant, changes, preset_name, steps, prior_name


def table(rows: list[dict]) -> str:
    head = "| prompt | prior | variant | 3D IoU | silhouette IoU | PSNR (dB) | shape | steps | time (s) |"
    lines = [head, "|" + "---|" * 9]
    for r in rows:
        variant = r["variant"] + (", skipping" if r["skipping"] else "")
        lines.append(
            f"| {r['prompt']} | {r['prior']} | {variant} | {r['iou_3d']:.3f} | {r['silhouette_iou']:.3f} | "
            f"{r['psnr']:.2f} | "
            f"{'yes' if r['shape_match'] else 'NO'} | {r['steps']} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", nargs="+", choices=TOY_PRIORS, default=["toy"])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's step count")
    parser.add_argument("--only", choices=("suite", "ablations"), default=None)
    parser.add_argument("--prompts", nargs="*", default=None, help="replace the suite's prompts")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    parser.add_argument(
        "--skipping",
        choices=("on", "off", "both"),
        default=None,
        help="empty-space skipping in training (default: the preset's); 'both' runs every job off and on",
    )
    args = parser.parse_args()

    suite = tuple(args.prompts) if args.prompts else SUITE
    ablation_prompts = tuple(args.prompts) if args.prompts else ABLATION_PROMPTS
    jobs = []
    for prior in args.prior:
        common = (args.preset, args.steps, prior)
        if args.only != "ablations":
            jobs += [(p, "default", {}, *common) for p in suite]
        if args.only != "suite":
            jobs += [(p, name, ch, *common) for name, ch in ABLATIONS.items() for p in ablation_prompts]
            if args.only == "ablations":  # the baseline each ablation is compared with
                jobs += [(p, "default", {}, *common) for p in ablation_prompts]
    settings = {"on": [True], "off": [False], "both": [False, True], None: [None]}[args.skipping]
    jobs = [_with_skipping(job, skip) for skip in settings for job in jobs]
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        rows = list(pool.map(run_one, jobs))
    for row in rows:
        del row["views"]
    order = {name: i for i, name in enumerate(["default", *ABLATIONS])}
    rows.sort(key=lambda r: (r["prior"], r["skipping"], order[r["variant"]], r["prompt"]))
    print(table(rows))
    means = {}
    for prior, skip in sorted({(r["prior"], r["skipping"]) for r in rows}):
        base = [r for r in rows if r["variant"] == "default" and r["prompt"] in suite and r["skipping"] == skip]
        base = [r for r in base if r["prior"] == prior]
        if base:
            means[prior, skip] = sum(r["iou_3d"] for r in base) / len(base)
            print(
                f"\n{prior} suite{' (skipping on)' if skip else ''}: mean 3D IoU {means[prior, skip]:.3f}, "
                f"min {min(r['iou_3d'] for r in base):.3f}, shape accuracy "
                f"{sum(r['shape_match'] for r in base)}/{len(base)}, "
                f"{sum(r['seconds'] for r in base):.0f} s in all"
            )
    for prior in args.prior:
        if (prior, True) in means and (prior, False) in means:
            print(f"{prior}: skipping on minus off: mean 3D IoU {means[prior, True] - means[prior, False]:+.3f}")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
