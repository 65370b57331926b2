"""Output folders of the 2D commands: `sjc canvas` (PAAS image optimisation) and `sjc sample` (Karras/Heun).

Each folder holds summary.json (resolved config, sigma range, toy-world quality figures), log.csv (sigma
and step size per step), the images as safetensors (data space), a PNG grid of the final images (decoded
to RGB, seeds side by side) and the trajectory as trajectory.gif / trajectory.mp4.
"""

from __future__ import annotations

import csv
import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import imageio.v3 as iio
import numpy as np
import torch
from safetensors.torch import save_file
from torch import Tensor

from ...core.cameras import View
from ...core.canvas import canvas_sigmas, karras_sigmas, optimise_canvas, sample_ode, snap_to_grid
from ...core.denoisers import Prior
from ...core.fit import make_generators, pick_device
from ...core.methods import Scorer
from ...outputs.video import write_gif, write_mp4
from ...priors import TOY_PRIORS
from ..runs.generate import RunFolderError, prior_from_config, run_slug
from ..settings.config import to_dict
from ..settings.config2d import CanvasConfig, Config2D, SampleConfig

TILE_GAP = 2  # white pixels between images in grids
MIN_TILE = 96  # small images are enlarged (nearest) to at least this many pixels a side
STRIP_FRAMES, STRIP_IMAGES = 6, 8  # trajectory.png: this many states (columns) of the first this many images


@dataclass
class Result2D:
    out: Path
    files: dict[str, Path]
    summary: dict[str, Any]


def prior_2d(cfg: Config2D, device: torch.device) -> Prior:
    """The prior of a canvas or sample configuration (for zero123, bound to its picture and that picture's camera;
    a bad picture fails before any weights load)."""
    picture = None
    if cfg.image.path is not None:
        from ..runs.picture import read_picture

        im = cfg.image
        rgb = read_picture(im.path, cfg.zero123.resolution, 1.0, im.background_colour, im.tolerance).rgb
        picture = (rgb, views_2d(cfg)[0])
    return prior_from_config(cfg, device, picture, cfg.guidance_scale)


def views_2d(cfg: Config2D) -> tuple[View | None, View | None]:
    """The reference picture's camera (None without --image) and the camera the images are drawn from (None: any
    view, or for zero123 the reference's), the field of view and radius defaulting to the prior's preset camera."""
    if cfg.image.path is None:
        return None, None
    from ..settings.presets import preset

    reference = cfg.image.camera_view(preset(cfg.prior, cfg.preset).camera)
    if cfg.view is None:
        return reference, None
    az, el, *rest = cfg.view
    fov = rest[0] if rest else reference.fov
    radius = rest[1] if len(rest) > 1 else reference.radius
    return reference, View(float(az), float(el), float(fov), float(radius))


def default_out(cfg: Config2D) -> Path:
    slug = run_slug(cfg)
    if cfg.view is not None:  # each novel view of a picture in its own folder
        slug += "-view" + "-".join(f"{v:g}" for v in cfg.view[:2])
    if isinstance(cfg, CanvasConfig):
        return Path("runs") / "canvas" / f"{slug}-{cfg.scoring}-{cfg.schedule}"
    return Path("runs") / "sample" / f"{slug}-{cfg.sampler}"


def _prepare(cfg: Config2D) -> Path:
    out = Path(cfg.out) if cfg.out else default_out(cfg)
    if (out / "summary.json").exists() and not cfg.overwrite:
        raise RunFolderError(f"{out} already holds results; choose another --out, or pass --overwrite to replace them")
    out.mkdir(parents=True, exist_ok=True)
    return out


# --- sjc canvas ---------------------------------------------------------------------------
def run_canvas(cfg: CanvasConfig) -> Result2D:
    """Optimise `cfg.seeds` canvases with the chosen score estimate and sigma schedule; write the results."""
    device = pick_device(cfg.device)
    prior = prior_2d(cfg, device)  # fails on a bad prompt or missing weights before anything is written
    out = _prepare(cfg)
    lo = cfg.sigma_min if cfg.sigma_min is not None else prior.sigma_min
    hi = cfg.sigma_max if cfg.sigma_max is not None else prior.sigma_max
    finals, frames, rows = [], [], []
    for seed in range(cfg.seed, cfg.seed + cfg.seeds):
        x, kept, records = _one_canvas(cfg, prior, seed, (lo, hi), device)
        finals.append(x)
        frames.append(_decode(prior, torch.cat(kept)))
        rows += [{"seed": seed, **dataclasses.asdict(r)} for r in records]
    finals_t = torch.cat(finals)
    rgb = _decode(prior, finals_t)
    summary = {"command": "canvas", "config": to_dict(cfg), "sigma_range": [lo, hi], "quality": _quality(cfg, rgb)}
    summary.update(_views(cfg))
    return Result2D(out, _write(out, summary, rows, finals_t, rgb, frames, "final", cfg.seeds), summary)


def _one_canvas(cfg: CanvasConfig, prior: Prior, seed: int, sigma_range: tuple[float, float], device: torch.device):
    """One canvas from `seed`: the final image [1, C, H, W], `cfg.frames` states from start to end, the records.
    The initial canvas, the random sigmas and the PAAS noise come from the 'init', 'sigma' and 'noise' streams."""
    gens = make_generators(seed, device)
    x = cfg.init_std * torch.randn(1, prior.channels, prior.image_size, prior.image_size, generator=gens["init"])
    # Keep the states after these many steps (0 is the start): `frames` of them, evenly spread, the last at the end.
    keep_at = {round(k * cfg.steps / (cfg.frames - 1)) for k in range(cfg.frames)} if cfg.frames > 1 else {cfg.steps}
    kept = [x.to(device)] if 0 in keep_at else []
    x, records = optimise_canvas(
        prior.denoise,
        x.to(device),
        canvas_sigmas(cfg.schedule, cfg.steps, *sigma_range, gens["sigma"]),
        prior.condition(views_2d(cfg)[1]),
        scoring=cfg.scoring,
        lr=cfg.lr,
        n_noise=cfg.n_noise,
        variance_reduced=cfg.variance_reduced,
        generator=gens["noise"],
        on_step=lambda step, image: kept.append(image) if step + 1 in keep_at else None,
        scorer=_scorer(cfg, prior, sigma_range),
    )
    return x, kept, records


def _scorer(cfg: CanvasConfig, prior: Prior, sigma_range: tuple[float, float]) -> Callable | None:
    """The canvas's distillation method bound to the prior and --view (None for paas and naive)."""
    if cfg.scoring in ("paas", "naive"):
        return None
    scorer = Scorer(
        cfg.scoring,
        prior,
        guidance_scale=cfg.guidance_scale,
        sigma_range=sigma_range,
        negative_prompt=cfg.negative_prompt,
        negative_scale=cfg.negative_scale,
        inversion_steps=cfg.inversion_steps,
        n_noise=cfg.n_noise,
        vsd_lr=cfg.vsd_lr,
    )
    view = views_2d(cfg)[1]
    if view is None:
        return scorer
    return lambda x, sigma, _, generator: scorer(x, sigma, view, generator)  # the canvas asks for any view (None)


# --- sjc sample ---------------------------------------------------------------------------
def sample_sigmas(cfg: SampleConfig, prior: Prior) -> Tensor:
    """The Karras schedule over the prior's range (or the flags'), snapped to its grid when it has one."""
    grid = prior.sigmas
    lo = cfg.sigma_min if cfg.sigma_min is not None else prior.sigma_min
    hi = cfg.sigma_max if cfg.sigma_max is not None else prior.sigma_max
    sigmas = karras_sigmas(cfg.steps, lo, hi, cfg.rho)
    return sigmas if grid is None else snap_to_grid(sigmas, grid)


def run_sample(cfg: SampleConfig, batch: int = 8) -> Result2D:
    """Draw `cfg.samples` images with the deterministic ODE sampler; write them and the denoised trajectory."""
    device = pick_device(cfg.device)
    prior = prior_2d(cfg, device)
    out = _prepare(cfg)
    cond = prior.condition(views_2d(cfg)[1])
    sigmas = sample_sigmas(cfg, prior)
    shape = (prior.channels, prior.image_size, prior.image_size)
    noise = [torch.randn(shape, generator=make_generators(cfg.seed + k)["init"]) for k in range(cfg.samples)]
    finals, frames = [], []  # frames: per image, the decoded denoised estimate [steps, 3, H, W] of every step
    for start in range(0, cfg.samples, batch):
        x = float(sigmas[0]) * torch.stack(noise[start : start + batch]).to(device)
        seen: list[Tensor] = []
        keep = lambda i, x, denoised: seen.append(denoised)  # noqa: B023 (called within this iteration)
        finals.append(sample_ode(prior.denoise, x, sigmas, cond, method=cfg.sampler, on_step=keep))
        frames += [_decode(prior, states) for states in torch.stack(seen, dim=1)]
    finals_t = torch.cat(finals)
    rgb = _decode(prior, finals_t)
    pairs = zip(sigmas[:-1].tolist(), sigmas[1:].tolist(), strict=True)
    rows = [{"step": i, "sigma": s, "sigma_next": t, "step_size": s - t} for i, (s, t) in enumerate(pairs)]
    summary = {"command": "sample", "config": to_dict(cfg), "sigmas": sigmas.tolist(), "quality": _quality(cfg, rgb)}
    summary.update(_views(cfg))
    files = _write(out, summary, rows, finals_t, rgb, frames, "samples", columns=min(8, cfg.samples))
    return Result2D(out, files, summary)


# --- quality and files --------------------------------------------------------------------
def _views(cfg: Config2D) -> dict:
    """For a picture's novel views: the reference camera and the drawn one, written out in full."""
    reference, view = views_2d(cfg)
    if reference is None:
        return {}
    return {"reference_view": dataclasses.asdict(reference), "view": dataclasses.asdict(view or reference)}


def _quality(cfg: Config2D, rgb: Tensor) -> dict | None:
    """Toy prompts: nearest-render distance and prompt accuracy (`metrics.nearest_image_quality`)."""
    if cfg.prior not in TOY_PRIORS:
        return None
    from ...outputs.metrics import nearest_image_quality

    t = cfg.toy
    return nearest_image_quality(rgb.cpu(), cfg.prompt, t.n_images, rgb.shape[-1], t.data_seed, t.cache_dir)


def _decode(prior: Prior, x: Tensor, batch: int = 8) -> Tensor:
    """prior.decode in batches (a VAE decoding a whole trajectory at once could run out of memory)."""
    return torch.cat([prior.decode(x[s : s + batch]) for s in range(0, len(x), batch)]).clamp(-1, 1)


def tile(images: Tensor, columns: int) -> np.ndarray:
    """RGB images [N, 3, H, W] in [-1, 1] as one uint8 picture, `columns` per row, white gaps; small
    images enlarged by a whole factor (nearest) so their pixels stay visible."""
    n, _, h, w = images.shape
    zoom = max(1, -(-MIN_TILE // max(h, w)))
    pics = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    pics = pics.repeat_interleave(zoom, 2).repeat_interleave(zoom, 3).permute(0, 2, 3, 1).numpy()
    rows, (H, W) = -(-n // columns), (h * zoom, w * zoom)
    sheet = np.full((rows * H + (rows - 1) * TILE_GAP, columns * W + (columns - 1) * TILE_GAP, 3), 255, np.uint8)
    for k, pic in enumerate(pics):
        r, c = divmod(k, columns)
        sheet[r * (H + TILE_GAP) : r * (H + TILE_GAP) + H, c * (W + TILE_GAP) : c * (W + TILE_GAP) + W] = pic
    return sheet


def _write(
    out: Path,
    summary: dict,
    rows: list[dict],
    images: Tensor,
    rgb: Tensor,
    trajectories: list[Tensor],
    name: str,
    columns: int,
) -> dict[str, Path]:
    """summary.json, log.csv, <name>.safetensors (data space), <name>.png (RGB), the trajectories (frame j
    tiles every image's j-th state [3, H, W]) as GIF and MP4, and a few states of each as trajectory.png."""
    files = {"summary": out / "summary.json", "log": out / "log.csv", "tensors": out / f"{name}.safetensors"}
    files["summary"].write_text(json.dumps(summary, indent=2) + "\n")
    with open(files["log"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    save_file({"images": images.detach().float().cpu().contiguous()}, str(files["tensors"]))
    files["image"] = out / f"{name}.png"
    iio.imwrite(files["image"], tile(rgb, columns))
    n_frames = min(len(t) for t in trajectories)
    video = np.stack([tile(torch.cat([t[j : j + 1] for t in trajectories]), columns) for j in range(n_frames)])
    files["gif"] = write_gif(video, out / "trajectory.gif", fps=12)
    files["mp4"] = write_mp4(video, out / "trajectory.mp4", fps=12)
    picks = torch.linspace(0, n_frames - 1, min(STRIP_FRAMES, n_frames)).round().long()
    strip = torch.cat([t[picks] for t in trajectories[:STRIP_IMAGES]])  # one row of states per image
    files["strip"] = out / "trajectory.png"
    iio.imwrite(files["strip"], tile(strip, len(picks)))
    return files
