"""Run folders: build a prior from config, run `fit`, and write the artefacts people look at.

A run folder holds config.json (resolved config, seed included), log.jsonl, checkpoints/,
validation/, and after `generate`: turntable.mp4/.gif, views.png, mesh.glb, metrics.json.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .checkpoint import CheckpointError, list_checkpoints, read_checkpoint, restore
from .config import TOY_PRIORS, GenerateConfig, from_dict, to_json
from .denoisers import Prior
from .interrupt import catch_signals
from .resume import restore_run
from .trainer import build_field, check_prior_settings, fit, make_generators, make_optimizer, pick_device
from .voxel import VoxelField


class RunFolderError(ValueError):
    """The output folder cannot be used as asked (it holds another run, or no run)."""


def default_run_dir(prompt: str) -> Path:
    slug = re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-") or "run"
    return Path("runs") / slug


def build_prior(cfg: GenerateConfig, device: torch.device) -> Prior:
    """The prior named by the config (an explicit match: one line per prior)."""
    match cfg.prior:
        case "toy":
            from .toyworld import ToyPrior

            t = cfg.toy
            return ToyPrior(
                cfg.prompt,
                n_images=t.n_images,
                image_size=t.image_size,
                seed=t.data_seed,
                view_conditioning=t.view_conditioning,
                cache_dir=t.cache_dir,
                device=device,
            )
        case "toy-learned":
            from .learned import LearnedToyPrior

            return LearnedToyPrior.from_file(
                cfg.toy.weights,
                device=device,
                prompt=cfg.prompt,
                view_conditioning=cfg.toy.view_conditioning,
                guidance_scale=cfg.scoring.guidance_scale,
            )
        case "sd":
            from .sd import StableDiffusionPrior

            s = cfg.sd
            return StableDiffusionPrior.from_pretrained(
                s.model,
                device=device,
                dtype=s.dtype,
                guidance_scale=cfg.scoring.guidance_scale,
                negative_prompt=s.negative_prompt,
                resolution=s.resolution,
            )
        case "pixel":
            from .pixel import PixelPrior, refuse_prompt

            refuse_prompt(cfg.prompt)
            p = cfg.pixel
            return PixelPrior.from_pretrained(
                p.model, device=device, dtype=p.dtype, resolution=p.resolution, data_range=p.data_range
            )
        case _:
            raise ValueError(f"unknown prior {cfg.prior!r}")


def prepare_run_dir(run_dir: Path, cfg: GenerateConfig, overwrite: bool) -> None:
    """Create the run folder; refuse one that already holds a run unless `overwrite`."""
    if (run_dir / "config.json").exists() or list_checkpoints(run_dir):
        if not overwrite:
            raise RunFolderError(
                f"{run_dir} already holds a run; choose another --out, or pass --overwrite to replace it"
            )
        for _, path in list_checkpoints(run_dir):
            path.unlink()
        (run_dir / "log.jsonl").unlink(missing_ok=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(to_json(cfg) + "\n")


@dataclass
class RunResult:
    run_dir: Path
    field: VoxelField
    prior: Prior
    files: dict[str, Path]
    metrics: dict | None


def generate(cfg: GenerateConfig, *, progress: bool = True) -> RunResult:
    """The whole `sjc generate`: optimise, then export turntable, views, mesh and metrics."""
    device = pick_device(cfg.device)
    run_dir = Path(cfg.out) if cfg.out else default_run_dir(cfg.prompt or cfg.pixel.model)
    cfg = replace(cfg, out=str(run_dir))
    prior = build_prior(cfg, device)  # fails on a bad prompt before anything is written
    check_prior_settings(cfg, prior)
    gens = make_generators(cfg.train.seed, device)
    field = build_field(cfg, prior, device, gens["init"])
    optimizer = make_optimizer(field, cfg)
    if cfg.resume:
        start = restore_run(run_dir, cfg, field, optimizer, gens)
    else:
        prepare_run_dir(run_dir, cfg, cfg.overwrite)
        start = 0
    with catch_signals() as stop:  # Ctrl-C: checkpoint the current step, then raise Interrupted
        fit(field, prior, cfg, run_dir, optimizer=optimizer, gens=gens, start_step=start, stop=stop, progress=progress)
    files = write_artefacts(field, prior, cfg, run_dir)
    metrics = evaluate(field, cfg)
    if metrics is not None:
        files["metrics"] = run_dir / "metrics.json"
        files["metrics"].write_text(json.dumps(_json_safe(metrics), indent=2) + "\n")
    return RunResult(run_dir, field, prior, files, metrics)


def write_artefacts(field: VoxelField, prior: Prior, cfg: GenerateConfig, run_dir: Path) -> dict[str, Path]:
    from . import export, mesh

    e = cfg.export
    files: dict[str, Path] = {}
    written = export.write_turntable(
        field, run_dir / "turntable", n_frames=e.turntable_frames, size=e.turntable_size, decode=prior.decode
    )
    for path in written:
        files[Path(path).suffix.lstrip(".")] = Path(path)
    files["views"] = Path(
        export.contact_sheet(field, run_dir / "views.png", size=e.turntable_size, decode=prior.decode)
    )
    try:
        # RGB fields colour the mesh themselves; latent ones are baked from views the prior decodes.
        surface = mesh.extract_mesh(field, threshold=e.mesh_threshold, decode=prior.decode, bake_size=e.turntable_size)
        files["mesh"] = Path(mesh.write_mesh(surface, run_dir / "mesh.glb"))
    except ValueError as err:  # an empty field has no surface: say so, keep the other results
        print(f"no mesh written: {err}")
    return files


def evaluate(field: VoxelField, cfg: GenerateConfig) -> dict | None:
    """Quality figures against the ground truth, where the prior has one (the toy world)."""
    if cfg.prior not in TOY_PRIORS:
        return None
    from .metrics import evaluate_field
    from .toyworld import parse_prompt

    return evaluate_field(field, parse_prompt(cfg.prompt), threshold=0.5)


def _json_safe(value):
    """Strict JSON: non-finite floats become null (e.g. the PSNR of identical images)."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def load_run(run_dir: Path, step: int | None = None, device: str = "cpu") -> tuple[GenerateConfig, VoxelField, int]:
    """The config and field of a run folder at its newest readable checkpoint (or `step`)."""
    run_dir = Path(run_dir)
    found = list_checkpoints(run_dir)
    if not found:
        raise RunFolderError(f"{run_dir} holds no checkpoints (is it a run folder made by `sjc generate`?)")
    if step is not None:
        found = [(s, p) for s, p in found if s == step]
        if not found:
            steps = ", ".join(str(s) for s, _ in list_checkpoints(run_dir))
            raise RunFolderError(f"{run_dir} has no checkpoint at step {step}; available steps: {steps}")
    errors = []
    for _, path in reversed(found):
        try:
            tensors, meta, config_json = read_checkpoint(path)
        except CheckpointError as err:
            errors.append(str(err))
            continue
        cfg = from_dict(GenerateConfig, json.loads(config_json))
        field = VoxelField(**meta["field"]).to(pick_device(device))
        return cfg, field, restore(tensors, meta, field)
    raise RunFolderError("no readable checkpoint: " + "; ".join(errors))
