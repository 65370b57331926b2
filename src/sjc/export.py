"""Turn a trained field into things people look at: frames, turntable videos, contact sheets, meshes.

Pictures come from `render.render` (features decoded to RGB by an optional `decode`); meshes come
from marching cubes on the per-voxel alpha grid, with vertex colours sampled from RGB fields.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path

import imageio.v2 as imageio_v2
import imageio.v3 as iio
import numpy as np
import torch
import trimesh
from skimage.measure import marching_cubes
from torch import Tensor

from .cameras import View, camera_from_view, turntable_views
from .render import Field, render
from .voxel import VoxelField

Decode = Callable[[Tensor], Tensor]

# Same meaning as "occupied" in the metrics (alpha of one voxel-length step > 0.5), so the mesh
# bounds exactly the voxels the 3D IoU counts. Softer fields need a lower value: see extract_mesh.
DEFAULT_MESH_THRESHOLD = 0.5
FAR_DEPTH = 10.0  # render()'s depth for empty space
EMPTY_DEPTH = 9.0  # without opacity, a pixel deeper than this (at least ~90 % empty) is drawn black
SOLID_OPACITY = 0.5  # pixels at least this opaque set the default depth scale
SHEET_AZIMUTHS = (0.0, 90.0, 180.0, 270.0)
SHEET_ELEVATIONS = (15.0, 45.0)
SHEET_GAP = 4  # pixels of white between contact-sheet tiles
GREY = (170, 170, 170, 255)
# macro_block_size=1 keeps our exact frame size instead of imageio's default resize to multiples of 16.
_MP4_OPTIONS = {
    "format": "FFMPEG",
    "mode": "I",
    "codec": "libx264",
    "pixelformat": "yuv420p",
    "macro_block_size": 1,
    "quality": 8,
    "ffmpeg_log_level": "error",
}

# A dark-purple -> magenta -> orange -> pale-yellow ramp (own control points); its dark end is not
# black, so near-empty far pixels stay distinguishable from truly empty ones.
_RAMP_POS = np.array([0.0, 0.35, 0.7, 1.0])
_RAMP_RGB = np.array([[40, 12, 80], [140, 30, 110], [240, 110, 40], [255, 245, 170]], dtype=np.float64)


# --- pictures ------------------------------------------------------------------------------
def to_uint8(image: Tensor) -> np.ndarray:
    """[1, 3, H, W] in [-1, 1] -> [H, W, 3] uint8."""
    x = ((image[0].detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).cpu().numpy()


def _render_all(
    field: Field, views: Sequence[View], size: int, decode: Decode | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB frames, depth maps and opacity maps of `field` from `views` (see render_views)."""
    frames, depths, opacities = [], [], []
    with torch.no_grad():
        for view in views:
            out = render(field, camera_from_view(view, size))
            image = out.image if decode is None else decode(out.image)
            if image.shape[1] != 3:
                raise ValueError(
                    f"renders have {image.shape[1]} channels, not RGB: pass decode= to map features to RGB"
                )
            frames.append(to_uint8(image))
            depths.append(out.depth.float().cpu().numpy())
            opacities.append(out.opacity.float().cpu().numpy())
    return np.stack(frames), np.stack(depths), np.stack(opacities)


def render_views(
    field: Field, views: Sequence[View], size: int, decode: Decode | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """RGB frames [N, H', W', 3] uint8 and depth maps [N, size, size] float32 of `field` from `views`.

    Without `decode` the field's features must be RGB in [-1, 1]; with it, each rendered feature
    image [1, C, size, size] is decoded to [1, 3, H', W'] (a VAE decoder may upsample, so H' may
    differ from `size`). Depth keeps render()'s convention: empty space counts as FAR_DEPTH (10).
    """
    frames, depths, _ = _render_all(field, views, size, decode)
    return frames, depths


def _numpy(x: np.ndarray | Tensor) -> np.ndarray:
    return (x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)).astype(np.float64)


def depth_to_image(
    depth: np.ndarray | Tensor,
    near: float | None = None,
    far: float | None = None,
    *,
    opacity: np.ndarray | Tensor | None = None,
) -> np.ndarray:
    """Colour-mapped uint8 picture [..., H, W, 3] of depth maps [..., H, W]: near bright, empty black.

    Depth alone: pixels at or beyond EMPTY_DEPTH are empty; a pixel only partly covered mixes its
    surface depth with FAR_DEPTH and shows as far. With the render's `opacity`, that mix is undone
    and the colour fades to black with the opacity, so silhouettes and haze read correctly.
    Unset `near` / `far` come from the 1st and 99th percentiles of the depths of solid pixels
    (all non-empty ones without `opacity`) over the whole array, so a batch shares one scale.
    """
    d = _numpy(depth)
    if opacity is None:
        shade = (d < EMPTY_DEPTH).astype(np.float64)
        solid = shade > 0
    else:
        o = np.clip(_numpy(opacity), 0.0, 1.0)
        seen = o > 1e-4  # below that the division only amplifies rounding
        d = np.where(seen, (d - (1 - o) * FAR_DEPTH) / np.maximum(o, 1e-4), FAR_DEPTH)
        shade = np.where(seen, o, 0.0)
        solid = o >= SOLID_OPACITY
        if not solid.any():  # a faint field still gets a scale from whatever it shows
            solid = seen
    lo, hi = np.percentile(d[solid], [1.0, 99.0]) if solid.any() else (0.0, 1.0)
    near = float(lo) if near is None else near
    far = float(hi) if far is None else far
    v = np.clip((far - d) / max(far - near, 1e-6), 0.0, 1.0)
    rgb = np.stack([np.interp(v, _RAMP_POS, _RAMP_RGB[:, k]) for k in range(3)], axis=-1)
    return (rgb * shade[..., None]).round().astype(np.uint8)


def _resize_nearest(images: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of [N, h, w, 3] (depth pictures next to upsampled decoded frames)."""
    rows = (np.arange(height) * images.shape[1]) // height
    cols = (np.arange(width) * images.shape[2]) // width
    return images[:, rows][:, :, cols]


def _pad_even(frames: np.ndarray) -> np.ndarray:
    """libx264 with yuv420p needs even frame sizes; pad with black rather than resample."""
    h, w = frames.shape[1:3]
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)))


def _prepare(path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def write_turntable(
    field: Field,
    path_stem: str | Path,
    n_frames: int = 48,
    size: int = 128,
    elevation: float = 15.0,
    decode: Decode | None = None,
    fps: int = 24,
) -> list[Path]:
    """Write `<stem>.mp4` and `<stem>.gif` of a full turn; each frame is the RGB render with its
    depth picture on the right. Returns the two paths."""
    rgb, depth, opacity = _render_all(field, turntable_views(n_frames, elevation=elevation), size, decode)
    strip = _resize_nearest(depth_to_image(depth, opacity=opacity), rgb.shape[1], rgb.shape[2])
    frames = np.concatenate([rgb, strip], axis=2)

    stem = _prepare(path_stem)
    mp4, gif = stem.with_name(stem.name + ".mp4"), stem.with_name(stem.name + ".gif")
    writer = imageio_v2.get_writer(mp4, fps=fps, **_MP4_OPTIONS)
    try:
        for frame in _pad_even(frames):
            writer.append_data(frame)
    finally:
        writer.close()
    iio.imwrite(gif, frames, extension=".gif", duration=1000.0 / fps, loop=0)
    return [mp4, gif]


def sheet_views() -> list[View]:
    """The default contact-sheet views: 4 azimuths (front, side, back, side) x 2 elevations."""
    return [View(az, el) for el in SHEET_ELEVATIONS for az in SHEET_AZIMUTHS]


def contact_sheet(
    field: Field,
    path: str | Path,
    views: Sequence[View] | None = None,
    size: int = 128,
    decode: Decode | None = None,
    columns: int = 4,
) -> Path:
    """Write a PNG grid of renders, row by row, SHEET_GAP white pixels between tiles (none outside)."""
    rgb, _ = render_views(field, sheet_views() if views is None else views, size, decode)
    n, h, w = rgb.shape[:3]
    columns = max(1, min(columns, n))
    rows = math.ceil(n / columns)
    sheet = np.full((rows * h + (rows - 1) * SHEET_GAP, columns * w + (columns - 1) * SHEET_GAP, 3), 255, np.uint8)
    for k, tile in enumerate(rgb):
        r, c = divmod(k, columns)
        y, x = r * (h + SHEET_GAP), c * (w + SHEET_GAP)
        sheet[y : y + h, x : x + w] = tile
    path = _prepare(path)
    iio.imwrite(path, sheet, extension=".png")
    return path


# --- meshes --------------------------------------------------------------------------------
def _alpha_grid(field: VoxelField, resolution: int | None) -> np.ndarray:
    """Alpha [m, m, m] ([z, y, x]) at voxel centres of an m^3 grid over the field's box.

    Resampling reads the density exactly as the renderer does (trilinear on the raw grid, then the
    activation), and alpha always uses the field's own voxel length, so a threshold picks the same
    surface at any resolution.
    """
    with torch.no_grad():
        if resolution is None:
            return field.voxel_alpha().float().cpu().numpy()
        lo, hi = field.aabb[0], field.aabb[1]
        steps = (torch.arange(resolution, dtype=lo.dtype, device=lo.device) + 0.5) / resolution
        xs, ys, zs = (lo[k] + (hi[k] - lo[k]) * steps for k in range(3))
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        slices = []
        for z in zs:  # one z-slice at a time keeps memory flat at large resolutions
            pts = torch.stack([xx, yy, torch.full_like(xx, float(z))], dim=-1).reshape(-1, 3)
            slices.append(field.density(pts).view(resolution, resolution))
        sigma = torch.stack(slices)
        return (1 - torch.exp(-sigma * field.voxel_size)).float().cpu().numpy()


def _vertex_colours(field: VoxelField, mesh: trimesh.Trimesh) -> np.ndarray:
    """RGBA uint8 per vertex: RGB fields sampled half a voxel inside the surface, where the colour
    belongs to the object rather than to the near-empty space around it; grey otherwise."""
    if field.channels != 3:
        return np.tile(np.array(GREY, np.uint8), (len(mesh.vertices), 1))
    inside = mesh.vertices - 0.5 * field.voxel_size * mesh.vertex_normals
    pts = torch.as_tensor(inside, dtype=field.grid.dtype, device=field.grid.device)
    with torch.no_grad():
        _, feats = field.query(pts)
    rgb = ((feats.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
    return np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1)


def extract_mesh(
    field: VoxelField,
    threshold: float = DEFAULT_MESH_THRESHOLD,
    resolution: int | None = None,
    keep_largest: bool = True,
) -> trimesh.Trimesh:
    """Closed triangle mesh of {alpha > threshold} in world coordinates, outward-facing.

    alpha is the opacity of one voxel-length step (VoxelField.voxel_alpha); the default threshold
    matches the metrics' occupancy. A field whose surface is soft may have no voxel that opaque:
    the error then reports its largest alpha, and any threshold below it works (lower gives a
    fatter mesh). `resolution` resamples the density to a finer or coarser grid first;
    `keep_largest` drops floaters. RGB fields (3 channels) get sampled vertex colours; other
    fields (latents) get plain grey vertex colours, since their features are not colours.
    """
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold is an alpha and must lie in (0, 1), got {threshold}")
    alpha = _alpha_grid(field, resolution)
    peak = float(alpha.max())
    if not peak > threshold:
        raise ValueError(
            f"empty mesh: no voxel has alpha above the threshold {threshold}; the field's largest voxel "
            f"alpha is {peak:.4g}. Choose a threshold below it (e.g. half of it, {peak / 2:.4g}), or check "
            "that the field holds an object."
        )
    # A layer of zeros around the grid closes the surface where the object touches the box.
    verts, faces, _, _ = marching_cubes(np.pad(alpha, 1), level=threshold, allow_degenerate=False)
    m = alpha.shape[0]
    lo = field.aabb[0].double().cpu().numpy()
    spacing = (field.aabb[1] - field.aabb[0]).double().cpu().numpy() / m
    # Index order is [z, y, x]; index i of the padded grid is the centre of voxel i - 1.
    xyz = lo + (verts[:, ::-1] - 0.5) * spacing
    # Reversing the axis order also mirrors skimage's winding, which makes its faces outward-facing
    # in xyz (checked in the tests); the guard keeps it so if skimage ever changes its convention.
    mesh = trimesh.Trimesh(vertices=xyz, faces=faces, process=True)
    if mesh.volume < 0:
        mesh.invert()
    if keep_largest:
        parts = mesh.split(only_watertight=False)
        if len(parts) > 1:
            mesh = max(parts, key=lambda part: len(part.faces))
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=_vertex_colours(field, mesh))
    return mesh


def write_mesh(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write `mesh` as .glb, .obj or .ply (chosen by the extension), vertex colours included."""
    path = Path(path)
    if path.suffix.lower() not in (".glb", ".obj", ".ply"):
        raise ValueError(f"unsupported mesh format {path.suffix!r}: use .glb, .obj or .ply")
    path = _prepare(path)
    mesh.export(path)
    return path
