"""Quality of SJC with the toy-world priors (exact or learned), measured against the ground truth.

Runs a fixed suite of toy prompts (every shape, one- and two-colour) with a preset, plus the
ablations (view-bucket conditioning off, emptiness loss off, Eq. 15 instead of Eq. 16, naive scoring
instead of PAAS) on the two-colour prompts, and prints a table of 3D IoU, 3D IoU with the space no
training camera sees closed (docs/CONVENTIONS.md), silhouette IoU, PSNR, shape match, steps and wall time.
Independent runs go to separate processes (one PyTorch thread each).

'oracle' fits the same field (grid, render size, cameras, steps, optimiser, coarse-to-fine and learning-rate
schedule) directly to the true renders of the prompt, with an L2 loss on the image and the opacity and no
prior: its figures are the ceiling of each prompt, what the representation and the cameras allow. With
`--only oracle suite` the table puts ceiling, SJC and the gap side by side.

'levers' runs the suite once per named variant of the preset (`LEVERS`: grid size, coarse-to-fine, sigma
schedule, learning-rate decay, render size, PAAS draws, opacity and total-variation regularisers, ...), for
docs/quality.md; `--set section.key=value` changes the preset of every job.

    python benchmarks/quality.py                 # the whole suite and the ablations, 2 processes
    python benchmarks/quality.py --prior toy-learned   # the same with the learned toy prior
    python benchmarks/quality.py --only suite    # just the suite
    python benchmarks/quality.py --only oracle suite   # ceiling, SJC and gap per prompt, on both figures
    python benchmarks/quality.py --only levers --levers "grid 48" "opacity 300" --rows runs/levers.jsonl
    python benchmarks/quality.py --prompts "a red cube" --steps 500
    python benchmarks/quality.py --only suite --skipping both   # empty-space skipping off vs on
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from sjc.app.settings.train_prior_config import TrainPriorConfig
from sjc.priors import TOY_PRIORS

SUITE = TrainPriorConfig().prompts  # every shape, one- and two-colour; the learned prior's classes
ABLATIONS = {
    "no view conditioning": {"toy": {"view_conditioning": False}},
    "no emptiness loss": {"losses": {"emptiness_weight": 0.0}},
    "Eq. 15 (no variance reduction)": {"scoring": {"variance_reduced": False}},
    "naive scoring (no PAAS)": {"scoring": {"method": "naive"}},
}
ABLATION_PROMPTS = ("a red and blue cube", "an orange and purple sphere", "a red and green cylinder")


def _merge(*changes: dict) -> dict:
    out: dict = {}
    for change in changes:
        for section, values in change.items():
            out[section] = {**out.get(section, {}), **values}
    return out


# The levers of docs/quality.md, each a change of the preset (section -> values).
LEVERS = {
    "grid 48": {"field": {"resolution": 48}},
    "grid 64": {"field": {"resolution": 64}},
    "coarse-to-fine 16-32": {"field": {"coarse_scale": 0.5, "upsample_at": (0.25,)}},
    "coarse-to-fine 16-48": {"field": {"resolution": 48, "coarse_scale": 0.5, "upsample_at": (0.2, 0.5)}},
    "coarse-to-fine 16-64": {"field": {"resolution": 64, "coarse_scale": 0.5, "upsample_at": (0.2, 0.5)}},
    "sigma annealed": {"scoring": {"sigma_schedule": "annealed"}},
    "sigma annealed-random": {"scoring": {"sigma_schedule": "annealed-random"}},
    "sigma 0.1-0.5": {"scoring": {"sigma_max": 0.5}},
    "lr decay 0.1": {"optim": {"lr_decay": 0.1}},
    "lr 0.3 decay 0.1": {"optim": {"lr": 0.3, "lr_decay": 0.1}},
    "Adam 0.1": {"optim": {"optimizer": "adam", "betas": (0.9, 0.99)}},
    "Adam 0.1 decay 0.1": {"optim": {"optimizer": "adam", "betas": (0.9, 0.99), "lr_decay": 0.1}},
    "Adam 0.03": {"optim": {"optimizer": "adam", "betas": (0.9, 0.99), "lr": 0.03}},
    "fov 50-60": {"camera": {"fov_min": 50.0, "fov_max": 60.0}},
    "fov ends 40/70": {"camera": {"fov_ends": True}},
    "render 48 px": {"toy": {"image_size": 48}},
    "grid 64 render 64 px": {"field": {"resolution": 64}, "toy": {"image_size": 64}},
    "grid 96 render 96 px": {"field": {"resolution": 96}, "toy": {"image_size": 96}},
    "PAAS k=2": {"scoring": {"n_noise": 2}},
    "opacity 30": {"losses": {"opacity_weight": 30.0}},
    "opacity 300": {"losses": {"opacity_weight": 300.0}},
    "tv 1000": {"losses": {"tv_weight": 1000.0}},
    "no emptiness loss": {"losses": {"emptiness_weight": 0.0}},
    "toy data 20000": {"toy": {"n_images": 20000}},
    "previous default (32^3, 2000 steps)": {
        "field": {"coarse_scale": None, "upsample_at": ()},
        "camera": {"fov_min": 40.0},
        "train": {"steps": 2000},
    },
}
C2F = {"field": {"coarse_scale": 0.5, "upsample_at": (0.25,)}}
ADAM = {"optim": {"optimizer": "adam", "betas": (0.9, 0.99)}}
LEVERS.update(
    {
        "coarse-to-fine 16-32 at 0.5": {"field": {"coarse_scale": 0.5, "upsample_at": (0.5,)}},
        "coarse-to-fine 8-16-32": {"field": {"coarse_scale": 0.25, "upsample_at": (0.15, 0.4)}},
        "c2f 16-32 + Adam 0.1": _merge(C2F, ADAM),
        "c2f 16-32 + Adam 0.05": _merge(C2F, ADAM, {"optim": {"lr": 0.05}}),
        "c2f 16-32 + annealed-random": _merge(C2F, {"scoring": {"sigma_schedule": "annealed-random"}}),
        "c2f 16-32 + opacity 300": _merge(C2F, {"losses": {"opacity_weight": 300.0}}),
        "c2f 16-32 + PAAS k=2": _merge(C2F, {"scoring": {"n_noise": 2}}),
        "coarse-to-fine 16-32 at 0.75": {"field": {"coarse_scale": 0.5, "upsample_at": (0.75,)}},
        "c2f 16-32 at 0.5 + Adam 0.1": _merge(ADAM, {"field": {"coarse_scale": 0.5, "upsample_at": (0.5,)}}),
        "coarse-to-fine 16-24-32": {"field": {"coarse_scale": 0.5, "upsample_at": (0.3, 0.6)}},
        "c2f 16-32 at 0.67, 3000 steps": {
            "field": {"coarse_scale": 0.5, "upsample_at": (2 / 3,)},
            "train": {"steps": 3000},
        },
        "c2f 16-32 at 0.75, 4000 steps": {
            "field": {"coarse_scale": 0.5, "upsample_at": (0.75,)},
            "train": {"steps": 4000},
        },
        "c2f 16-32 at 0.67, 3000 steps, sigma annealed-random": {
            "field": {"coarse_scale": 0.5, "upsample_at": (2 / 3,)},
            "train": {"steps": 3000},
            "scoring": {"sigma_schedule": "annealed-random"},
        },
        "c2f 16-32 at 0.67, 3000 steps + Adam 0.1": _merge(
            ADAM, {"field": {"coarse_scale": 0.5, "upsample_at": (2 / 3,)}, "train": {"steps": 3000}}
        ),
        # Adamax's running maximum forgets a spike in about 1 / (1 - beta2) steps: 1000 by default, 100 at 0.99.
        "density ball 5": {"field": {"init_blob": 5.0}},
        "density ball 10": {"field": {"init_blob": 10.0}},
        "sigma 0.3-1.5": {"scoring": {"sigma_min": 0.3}},
        "fov 55-70": {"camera": {"fov_min": 55.0}},
        "guidance 3": {"scoring": {"guidance_scale": 3.0}},
        "sigma down to 0.05": {"scoring": {"sigma_min": 0.05}},
        "fov 60-70": {"camera": {"fov_min": 60.0}},
        "fov 50-70": {"camera": {"fov_min": 50.0}},
        "the default before (fov 40-70, 2500 steps)": {"camera": {"fov_min": 40.0}, "train": {"steps": 2500}},
        "fov 55-70, 2000 steps (16^3 for 1600)": {"camera": {"fov_min": 55.0}, "train": {"steps": 2000}},
        "fov 50-70, 2000 steps (16^3 for 1600)": {"camera": {"fov_min": 50.0}, "train": {"steps": 2000}},
        "fov 55-70, emptiness 1000": {"camera": {"fov_min": 55.0}, "losses": {"emptiness_weight": 1000.0}},
        "Adamax beta2 0.99": {"optim": {"betas": (0.9, 0.99)}},
        "Adamax beta2 0.95": {"optim": {"betas": (0.9, 0.95)}},
        "Adamax beta2 0.99, 2000 steps, c2f at 0.8": {
            "optim": {"betas": (0.9, 0.99)},
            "train": {"steps": 2000},
            "field": {"coarse_scale": 0.5, "upsample_at": (0.8,)},
        },
        **{
            f"{steps} steps, c2f 16-32 at {at:g}" + (f", lr {lr:g}" if lr != 0.1 else ""): {
                "field": {"coarse_scale": 0.5, "upsample_at": (at,)},
                "train": {"steps": steps},
                "optim": {"lr": lr},
            }
            for steps, at, lr in (
                (2000, 0.75, 0.1),
                (2000, 0.75, 0.15),
                (2000, 0.75, 0.2),
                (2000, 0.5, 0.15),
                (2000, 0.9, 0.1),
                (2000, 0.9, 0.15),
                (2500, 0.8, 0.1),
            )
        },
    }
)


# The figure on which the goals of docs/quality.md are judged: the 3D IoU over what the training cameras constrain.
FIGURE = "iou_3d_constrained"


def _override(cfg, changes: dict):
    parts = {name: dataclasses.replace(getattr(cfg, name), **values) for name, values in changes.items()}
    return dataclasses.replace(cfg, **parts)


def job_config(job: dict):
    """The GenerateConfig of a job: the prior's preset, the prompt, the step count and seed, then the changes."""
    from sjc.app.settings.presets import preset

    cfg = dataclasses.replace(preset(job["prior"], job["preset"]), prompt=job["prompt"])
    train = {"seed": job.get("seed", 0)}
    if job.get("steps"):
        train["steps"] = job["steps"]
    return _override(cfg, _merge({"train": train}, job["changes"]))


def fit_true_renders(field, cfg, scene, progress: bool = False):
    """The oracle: fit `field` to true renders of `scene` from the run's training cameras (image and opacity
    L2, no prior), with the run's steps, optimiser, learning-rate decay, coarse-to-fine and skipping."""
    from sjc.core.fit import PerspectiveCameras, default_render, make_generators, make_optimizer, prepare_step
    from sjc.priors.toy import render_scene

    gens = make_generators(cfg.train.seed)
    cameras, render_fn = PerspectiveCameras(cfg.camera), default_render(cfg.field)
    optimizer = make_optimizer(field, cfg.optim)
    settings, steps = cfg.fit_settings(), cfg.train.steps
    for step in range(steps):
        camera, _ = cameras(gens["camera"], cfg.toy.image_size)
        image, mask, _ = render_scene(scene, camera)
        prepare_step(field, optimizer, settings, step, steps)
        out = render_fn(field, camera)
        loss = (out.image[0] - image).square().mean() + (out.opacity - mask.to(out.opacity.dtype)).square().mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return field


def run_one(job: dict) -> dict:
    """Fit one prompt under one variant and evaluate it (runs in a worker process)."""
    import torch

    from sjc.app.runs.generate import prior_from_config, run_fit
    from sjc.core.cameras import camera_from_view
    from sjc.core.fit import build_field, make_generators
    from sjc.core.render import render
    from sjc.outputs.metrics import evaluate_field
    from sjc.priors.toy import held_out_views, parse_prompt

    torch.set_num_threads(1)
    cfg = job_config(job)
    scene = parse_prompt(job["prompt"])
    start = time.perf_counter()
    gens = make_generators(cfg.train.seed, torch.device("cpu"))
    if job.get("oracle"):

        class _RGB:  # the toy priors' field: RGB through a sigmoid
            channels, feature_activation = 3, "sigmoid"

        field = build_field(_RGB(), cfg.field, torch.device("cpu"), generator=gens["init"])
        fit_true_renders(field, cfg, scene)
    else:
        prior = prior_from_config(cfg, torch.device("cpu"))
        field = build_field(prior, cfg.field, torch.device("cpu"), generator=gens["init"])
        run_fit(field, prior, cfg, None, gens=gens, progress=False)
    seconds = time.perf_counter() - start
    if job.get("fields"):  # the field itself, for benchmarks/meshes.py and pictures
        from safetensors.torch import save_file

        path = Path(job["fields"]) / f"{_slug(job)}.safetensors"
        path.parent.mkdir(parents=True, exist_ok=True)
        spec = json.dumps({**field.spec(), "prompt": job["prompt"], "variant": job["variant"]})
        save_file({k: v.contiguous() for k, v in field.state_dict().items()}, str(path), metadata={"spec": spec})
    m = evaluate_field(field, scene)
    with torch.no_grad():  # a picture of the result: four held-out views, [4, 3, 64, 64] in [-1, 1]
        views = torch.cat([render(field, camera_from_view(v, 64)).image for v in held_out_views(4)])
    return {
        "prompt": job["prompt"],
        "prior": "oracle" if job.get("oracle") else job["prior"],
        "variant": job["variant"],
        "seed": cfg.train.seed,
        "iou_3d": m["iou_3d"],
        "iou_3d_closed": m["iou_3d_closed"],
        "iou_3d_constrained": m["iou_3d_constrained"],
        "silhouette_iou": m["silhouette_iou"],
        "psnr": m["psnr"],
        "shape_match": m["shape_accuracy"],
        "steps": cfg.train.steps,
        "resolution": field.resolution,
        "seconds": seconds,
        "skipping": cfg.field.skip_empty,
        "views": views.clamp(-1, 1),
    }


def _slug(job: dict) -> str:
    from sjc.app.settings.config import slug

    prior = "oracle" if job.get("oracle") else job["prior"]
    return slug(f"{prior} {job['variant']} seed {job.get('seed', 0)} {job['prompt']}")


def _with_skipping(job: dict, skip: bool | None) -> dict:
    """The job with empty-space skipping set (None keeps the preset's)."""
    if skip is None:
        return job
    return {**job, "changes": _merge(job["changes"], {"field": {"skip_empty": skip}})}


def table(rows: list[dict]) -> str:
    head = (
        "| prompt | prior | variant | 3D IoU | closed 3D IoU | silhouette IoU | PSNR (dB) | shape | steps | time (s) |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        variant = r["variant"] + (", skipping" if r["skipping"] else "") + (f", seed {r['seed']}" if r["seed"] else "")
        lines.append(
            f"| {r['prompt']} | {r['prior']} | {variant} | {r['iou_3d']:.3f} | {r['iou_3d_closed']:.3f} | "
            f"{r['silhouette_iou']:.3f} | {r['psnr']:.2f} | "
            f"{'yes' if r['shape_match'] else 'NO'} | {r['steps']} | {r['seconds']:.0f} |"
        )
    return "\n".join(lines)


def gap_table(rows: list[dict], prior: str, variant: str = "default", seed: int = 0) -> str:
    """Ceiling (oracle), SJC and their gap per prompt on each figure at one seed, with mean and worst rows."""
    oracle = {r["prompt"]: r for r in rows if r["prior"] == "oracle" and r["variant"] == variant and r["seed"] == seed}
    sjc = {r["prompt"]: r for r in rows if r["prior"] == prior and r["variant"] == variant and r["seed"] == seed}
    prompts = sorted((p for p in oracle if p in sjc), key=lambda p: (SUITE.index(p) if p in SUITE else len(SUITE), p))
    if not prompts:
        return ""
    figures = ["iou_3d", "iou_3d_closed"]
    head = f"| prompt | ceiling 3D IoU | {prior} 3D IoU | gap | ceiling closed | {prior} closed | gap |"
    if all(FIGURE in r for p in prompts for r in (oracle[p], sjc[p])):  # rows from before it lack it
        figures.append(FIGURE)
        head += f" ceiling constrained | {prior} constrained | gap |"
    lines = [head, "|" + "---|" * (1 + 3 * len(figures))]
    cols: list[list[float]] = [[] for _ in range(3 * len(figures))]
    for p in prompts:
        o, s = oracle[p], sjc[p]
        values = [v for f in figures for v in (o[f], s[f], o[f] - s[f])]
        for c, v in zip(cols, values, strict=True):
            c.append(v)
        lines.append(f"| {p} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    lines.append("| **mean** | " + " | ".join(f"{sum(c) / len(c):.3f}" for c in cols) + " |")
    worst = [min(c) if k % 3 != 2 else max(c) for k, c in enumerate(cols)]  # the largest gap is the worst
    lines.append("| **worst** | " + " | ".join(f"{v:.3f}" for v in worst) + " |")
    return "\n".join(lines)


def summary(rows: list[dict]) -> list[str]:
    """A line per (prior, variant, skipping, seed) over the suite: mean and worst of each figure, seconds per prompt."""
    lines = []
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["prior"], r["variant"], r["skipping"], r["seed"]), []).append(r)
    for (prior, variant, skip, seed), group in groups.items():
        n = len(group)

        def stat(key, group=group, n=n):
            if any(key not in g for g in group):  # rows from before the figure
                return "-"
            values = [g[key] for g in group]
            return f"{sum(values) / n:.3f} / {min(values):.3f}"

        lines.append(
            f"| {prior} | {variant}{', skipping' if skip else ''} | {seed} | {n} | {stat('iou_3d')} | "
            f"{stat('iou_3d_closed')} | {stat('silhouette_iou')} | {sum(g['psnr'] for g in group) / n:.2f} | "
            f"{sum(g['shape_match'] for g in group)}/{n} | {stat(FIGURE)} | "
            f"{sum(g['seconds'] for g in group) / n:.0f} |"
        )
    head = (
        "| prior | variant | seed | prompts | 3D IoU mean / worst | closed mean / worst | silhouette IoU mean / worst "
        "| PSNR (dB) | shape | constrained mean / worst | s per prompt |"
    )
    return [head, "|" + "---|" * 11, *lines]


def _parse_set(items: list[str]) -> dict:
    """`section.key=value` strings as changes; values are Python literals (numbers, tuples, True) or text."""
    changes: dict = {}
    for item in items:
        key, _, text = item.partition("=")
        section, _, name = key.replace("-", "_").partition(".")
        try:
            value = ast.literal_eval(text)
        except (ValueError, SyntaxError):
            value = text
        changes.setdefault(section, {})[name] = value
    return changes


def _key(row_or_job: dict) -> tuple:
    prior = "oracle" if row_or_job.get("oracle") else row_or_job["prior"]
    return (prior, row_or_job["prompt"], row_or_job["variant"], row_or_job.get("seed", 0), row_or_job.get("skipping"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prior", nargs="+", choices=TOY_PRIORS, default=["toy"])
    parser.add_argument("--preset", default="default")
    parser.add_argument("--steps", type=int, default=None, help="override the preset's step count")
    parser.add_argument(
        "--only", nargs="+", choices=("suite", "ablations", "oracle", "levers"), default=None,
        help="what to run (default: suite and ablations)",
    )  # fmt: skip
    parser.add_argument("--levers", nargs="*", default=None, help=f"which levers (default all): {', '.join(LEVERS)}")
    parser.add_argument("--oracle-only", action="store_true", help="with levers: fit only the true renders")
    parser.add_argument("--set", nargs="*", default=[], metavar="SECTION.KEY=VALUE", help="change every job's preset")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--prompts", nargs="*", default=None, help="replace the suite's prompts")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes")
    parser.add_argument("--json", type=Path, default=None, help="also write the rows to this file")
    parser.add_argument("--rows", type=Path, default=None, help="append each row here as it finishes; skip rows in it")
    parser.add_argument("--fields", type=Path, default=None, help="save each fitted field here (safetensors)")
    parser.add_argument("--report-from", type=Path, nargs="*", default=None, help="only print tables from row files")
    parser.add_argument(
        "--skipping",
        choices=("on", "off", "both"),
        default=None,
        help="empty-space skipping in training (default: the preset's); 'both' runs every job off and on",
    )
    args = parser.parse_args()

    if args.report_from is not None:
        rows = [json.loads(line) for path in args.report_from for line in path.read_text().splitlines() if line]
        report(rows, args)
        return
    only = set(args.only or ("suite", "ablations"))
    suite = tuple(args.prompts) if args.prompts else SUITE
    ablation_prompts = tuple(args.prompts) if args.prompts else ABLATION_PROMPTS
    base = _parse_set(args.set)
    jobs = []
    for prior in args.prior:
        for seed in args.seeds:
            common = {"preset": args.preset, "steps": args.steps, "prior": prior, "seed": seed}
            if "suite" in only or "oracle" in only and "levers" not in only:
                kinds = [{}] * ("suite" in only) + [{"oracle": True}] * ("oracle" in only)
                jobs += [
                    {"prompt": p, "variant": "default", "changes": base, **common, **k} for k in kinds for p in suite
                ]
            if "levers" in only:
                names = args.levers if args.levers is not None else list(LEVERS)
                kinds = [{}] * (not args.oracle_only) + [{"oracle": True}] * ("oracle" in only or args.oracle_only)
                jobs += [
                    {"prompt": p, "variant": name, "changes": _merge(base, LEVERS[name]), **common, **k}
                    for k in kinds
                    for name in names
                    for p in suite
                ]
            if "ablations" in only:
                jobs += [
                    {"prompt": p, "variant": name, "changes": _merge(base, ch), **common}
                    for name, ch in ABLATIONS.items()
                    for p in ablation_prompts
                ]
                if "suite" not in only:  # the baseline each ablation is compared with
                    jobs += [{"prompt": p, "variant": "default", "changes": base, **common} for p in ablation_prompts]
    settings = {"on": [True], "off": [False], "both": [False, True], None: [None]}[args.skipping]
    jobs = [_with_skipping(job, skip) for skip in settings for job in jobs]
    for job in jobs:
        job["skipping"] = job_config(job).field.skip_empty
        job["fields"] = str(args.fields) if args.fields else None
    rows = []
    if args.rows and args.rows.exists():
        rows = [json.loads(line) for line in args.rows.read_text().splitlines() if line]
        done = {_key(r) for r in rows}
        jobs = [j for j in jobs if _key(j) not in done]
        print(f"{len(jobs)} runs to do, {len(rows)} already in {args.rows}", flush=True)
    with ProcessPoolExecutor(max_workers=args.jobs) as pool:
        futures = [pool.submit(run_one, job) for job in jobs]
        for future in as_completed(futures):
            row = future.result()
            del row["views"]
            rows.append(row)
            print(
                f"{row['prior']:11s} {row['variant']:24s} seed {row['seed']} {row['prompt']:28s} "
                f"IoU {row['iou_3d']:.3f} closed {row['iou_3d_closed']:.3f} "
                f"constrained {row['iou_3d_constrained']:.3f} {row['seconds']:.0f} s",
                flush=True,
            )
            if args.rows:
                args.rows.parent.mkdir(parents=True, exist_ok=True)
                with open(args.rows, "a") as f:
                    f.write(json.dumps(row) + "\n")
    report(rows, args)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


def report(rows: list[dict], args: argparse.Namespace) -> None:
    variants = ["default", *ABLATIONS, *LEVERS]
    order = {name: i for i, name in enumerate(dict.fromkeys(variants))}
    rows.sort(key=lambda r: (r["prior"], r["skipping"], r["seed"], order.get(r["variant"], 99), r["prompt"]))
    print(table(rows))
    print()
    print("\n".join(summary(rows)))
    for prior in sorted({r["prior"] for r in rows} - {"oracle"}):
        for variant in sorted({r["variant"] for r in rows if r["prior"] == "oracle"}, key=lambda v: order.get(v, 99)):
            gaps = gap_table([r for r in rows if r["seed"] == 0], prior, variant)
            if gaps:
                print(f"\nceiling (oracle), {prior} and gap, {variant}, seed 0:\n{gaps}")


if __name__ == "__main__":
    main()
