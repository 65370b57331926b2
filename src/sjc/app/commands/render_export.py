"""`sjc render` and `sjc export`: videos and coloured meshes (or raw grids) of a saved run, at any checkpoint.

Both read the run folder's saved config, so a path is all they need. Latent fields are decoded by the
prior's decoder alone (the SD VAE, not its UNet or text encoder); RGB fields need no decoder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch

from ...core.cameras import spiral_views, turntable_views
from ...core.errors import UserError
from ...core.fit import pick_device
from ...core.voxel import VoxelField
from ...outputs import video
from ...outputs.mesh import MESH_FORMATS, extract_mesh, is_rgb_field, write_grids, write_mesh
from ..runs.generate import load_run, prior_from_config
from ..settings.config import ExportMeshConfig, GenerateConfig, RenderConfig

Log = Callable[[str], None]
FORMATS = (*MESH_FORMATS, "npz")
MIN_RENDER_SIZE = 256  # default frame side: sharper than the training renders of every preset


class AssetError(UserError, ValueError):
    """A render or export request that cannot be met as asked: one line for the user."""


def open_run(run: str, step: int | None, device: str) -> tuple[Path, GenerateConfig, VoxelField, int]:
    """The run folder, its saved config, and its field at `step` (None: the newest readable checkpoint)."""
    if not run:
        raise AssetError("give a run folder written by `sjc generate`, e.g. runs/a-red-and-blue-cube-seed0")
    run_dir = Path(run)
    if not run_dir.is_dir():
        raise AssetError(f"{run} is not a folder; give a run folder written by `sjc generate`")
    cfg, field, found = load_run(run_dir, step, device)
    return run_dir, cfg, field.eval(), found


def decoder_for(cfg: GenerateConfig, field: VoxelField, device: torch.device) -> video.Decode | None:
    """What turns `field`'s renders into RGB: None for RGB fields, else the prior's decoder (an explicit
    match; a prior without a light decoder is built whole, then its `decode` is used)."""
    if is_rgb_field(field):
        return None
    match cfg.prior:
        case "sd":
            from ...priors.sd import LatentDecoder

            return LatentDecoder.from_pretrained(cfg.sd.model, device=device)
        case "zero123":
            from ...priors.sd import LatentDecoder
            from ...priors.zero123 import KIND

            return LatentDecoder.from_pretrained(cfg.zero123.model, device=device, kind=KIND)
        case _:
            return prior_from_config(cfg, device).decode


def upsampling(decode: video.Decode | None, field: VoxelField) -> int:
    """How many output pixels one rendered pixel becomes (8 for the SD VAE), measured on a 4x4 render."""
    if decode is None:
        return 1
    probe = torch.zeros(1, field.channels, 4, 4, dtype=field.grid.dtype, device=field.grid.device)
    return max(1, decode(probe).shape[-1] // 4)


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise AssetError(message)


def render_run(rc: RenderConfig, log: Log = print) -> dict[str, Path]:
    """The whole `sjc render`: returns {'mp4', 'gif', 'depth'} -> path."""
    _check(rc.frames >= 1, f"--frames must be at least 1, got {rc.frames}")
    _check(rc.size is None or rc.size >= 1, f"--size must be positive, got {rc.size}")
    _check(rc.subpixels >= 1, f"--subpixels must be at least 1, got {rc.subpixels}")
    _check(rc.fps >= 1, f"--fps must be at least 1, got {rc.fps}")
    _check(-90.0 <= rc.elevation <= 90.0, f"--elevation must lie in [-90, 90] degrees, got {rc.elevation}")
    _check(rc.video is None or Path(rc.video).suffix.lower() == ".mp4", f"--video must end in .mp4, got {rc.video}")
    device = pick_device(rc.device)
    run_dir, cfg, field, step = open_run(rc.run, rc.step, rc.device)
    decode = decoder_for(cfg, field, device)
    factor = upsampling(decode, field)
    size = rc.size or max(MIN_RENDER_SIZE, cfg.export.turntable_size * factor)
    _check(size % factor == 0, f"--size must be a multiple of {factor} here (one rendered pixel decodes to {factor})")
    c = cfg.camera
    if rc.path == "turntable":
        views = turntable_views(rc.frames, elevation=rc.elevation, radius=c.radius, fov=c.test_fov)
    else:
        views = spiral_views(rc.frames, radius=c.radius, fov=c.test_fov)
    subpixels = rc.subpixels if rc.hires else 1
    rays = f", {subpixels * subpixels} rays per pixel" if subpixels > 1 else ""
    log(f"rendering {rc.frames} {rc.path} frames of step {step} at {size}x{size}{rays}")
    video_path = Path(rc.video) if rc.video else run_dir / "render.mp4"
    return video.write_video(field, views, video_path, size // factor, decode, subpixels, rc.fps)


def _target(ec: ExportMeshConfig, run_dir: Path) -> tuple[str, Path]:
    """The output format and path from --format and --mesh (either may be missing, not contradict)."""
    suffix = Path(ec.mesh).suffix.lower().lstrip(".") if ec.mesh else ""
    _check(not suffix or suffix in FORMATS, f"--mesh {ec.mesh}: unknown extension; use {', '.join(FORMATS)}")
    _check(
        not (suffix and ec.format and suffix != ec.format),
        f"--mesh {ec.mesh} has the extension .{suffix} but --format is {ec.format}; make them agree",
    )
    fmt = ec.format or suffix or "glb"
    if ec.mesh:
        path = Path(ec.mesh) if suffix else Path(f"{ec.mesh}.{fmt}")
        if path.parent == Path(".") and not ec.mesh.startswith(("./", ".\\")):  # a bare name: into the run folder
            path = run_dir / path
    else:
        path = run_dir / ("field.npz" if fmt == "npz" else f"mesh.{fmt}")
    return fmt, path


def export_run(ec: ExportMeshConfig, log: Log = print) -> dict[str, Path]:
    """The whole `sjc export`: returns {'mesh' or 'grids'} -> path."""
    _check(ec.threshold is None or 0 < ec.threshold < 1, f"--threshold is an alpha in (0, 1), got {ec.threshold}")
    _check(ec.resolution is None or ec.resolution >= 2, f"--resolution must be at least 2, got {ec.resolution}")
    _check(ec.smoothing is None or ec.smoothing >= 0, f"--smoothing must not be negative, got {ec.smoothing}")
    _check(0 <= ec.min_part <= 1, f"--min-part is a fraction in [0, 1], got {ec.min_part}")
    _check(ec.max_faces is None or ec.max_faces >= 4, f"--max-faces must be at least 4, got {ec.max_faces}")
    _check(ec.bake_size is None or ec.bake_size >= 1, f"--bake-size must be positive, got {ec.bake_size}")
    device = pick_device(ec.device)
    run_dir, cfg, field, step = open_run(ec.run, ec.step, ec.device)
    fmt, path = _target(ec, run_dir)
    if fmt == "npz":
        log(f"writing the density, alpha and feature grids of step {step}")
        return {"grids": write_grids(field, path, ec.resolution)}
    threshold = ec.threshold if ec.threshold is not None else cfg.export.mesh_threshold
    origin = "--threshold" if ec.threshold is not None else "the run's export.mesh_threshold, the default"
    grid = ec.resolution or field.resolution * cfg.export.mesh_upsample
    smoothing = ec.smoothing if ec.smoothing is not None else cfg.export.mesh_smoothing
    log(
        f"marching cubes on step {step} at alpha {threshold:g} ({origin}; alpha of one voxel step), grid {grid}^3, "
        f"{smoothing} passes of Taubin smoothing"
    )
    decode = decoder_for(cfg, field, device)
    if decode is not None:
        log("baking vertex colours from decoded views")
    try:
        mesh = extract_mesh(
            field,
            threshold,
            grid,
            ec.largest_only,
            min_part=ec.min_part,
            max_faces=ec.max_faces,
            smoothing=smoothing,
            decode=decode,
            bake_size=ec.bake_size or cfg.export.turntable_size,
        )
    except ValueError as err:  # an empty surface at this threshold: the message names the fix
        raise AssetError(str(err)) from None
    info = mesh.metadata["sjc"]
    log(
        f"{len(mesh.vertices)} vertices, {len(mesh.faces)} faces, {info['parts_dropped']} floating parts dropped, "
        f"colours: {info['colours']}"
    )
    return {"mesh": write_mesh(mesh, path)}
