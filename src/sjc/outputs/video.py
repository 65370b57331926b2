"""Turn a trained field into pictures people look at: frames, turntable and spiral videos, contact sheets.

Pictures come from `render.render` (features decoded to RGB by an optional `decode`, once per frame).
High-quality frames average several sub-pixel rays per pixel (a fixed stratified pattern, so edges
are anti-aliased and steady from frame to frame) and render large images in bands of rows.
Meshes and raw grids are in `mesh.py`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import imageio.v2 as imageio_v2
import imageio.v3 as iio
import numpy as np
import torch
from torch import Tensor

from ..core.cameras import Camera, View, camera_from_view, turntable_views
from ..core.render import Field, render

Decode = Callable[[Tensor], Tensor]

FAR_DEPTH = 10.0  # render()'s depth for empty space
EMPTY_DEPTH = 9.0  # without opacity, a pixel deeper than this (at least ~90 % empty) is drawn black
SOLID_OPACITY = 0.5  # pixels at least this opaque set the default depth scale
MAX_RAYS = 1 << 16  # rays per render() call: bigger images go in bands of rows, so memory stays flat
SHEET_AZIMUTHS = (0.0, 90.0, 180.0, 270.0)
SHEET_ELEVATIONS = (15.0, 45.0)
SHEET_GAP = 4  # pixels of white between contact-sheet tiles
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


# --- rendering -----------------------------------------------------------------------------
def to_uint8(image: Tensor) -> np.ndarray:
    """[1, 3, H, W] in [-1, 1] -> [H, W, 3] uint8."""
    x = ((image[0].detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return x.permute(1, 2, 0).cpu().numpy()


def subpixel_offsets(n: int, seed: int = 0) -> list[tuple[float, float]]:
    """n * n offsets (dx, dy) in pixels within (-0.5, 0.5): one jittered point in each cell of an
    n x n grid over the pixel. Seeded, so every frame uses the same pattern and nothing flickers."""
    if n < 1:
        raise ValueError(f"sub-pixel samples per side must be at least 1, got {n}")
    if n == 1:
        return [(0.0, 0.0)]
    jitter = torch.rand(n, n, 2, generator=torch.Generator().manual_seed(seed), dtype=torch.float64).tolist()
    return [((j + jitter[i][j][0]) / n - 0.5, (i + jitter[i][j][1]) / n - 0.5) for i in range(n) for j in range(n)]


def shifted_camera(camera: Camera, dx: float = 0.0, dy: float = 0.0, row0: int = 0, rows: int | None = None) -> Camera:
    """The camera whose pixel centres sit (dx, dy) pixels off `camera`'s, cropped to `rows` rows from `row0`.

    Camera.rays goes through pixel centres (j + 0.5, i + 0.5) relative to the principal point, so
    moving the principal point by (-dx, -dy - row0) moves every ray without touching the renderer."""
    K = camera.K.clone()
    K[0, 2] -= dx
    K[1, 2] -= dy + row0
    return replace(camera, K=K, height=camera.height - row0 if rows is None else rows)


def render_pixels(
    field: Field, camera: Camera, subpixels: int = 1, max_rays: int = MAX_RAYS
) -> tuple[Tensor, Tensor, Tensor]:
    """Image [1, C, H, W], depth [H, W] and opacity [H, W] of `field`, each pixel the mean of
    `subpixels`^2 stratified rays (render()'s conventions otherwise); no gradients."""
    band = max(1, max_rays // camera.width)
    images, depths, opacities = [], [], []
    with torch.no_grad():
        for row0 in range(0, camera.height, band):
            rows = min(band, camera.height - row0)
            image = depth = opacity = 0.0
            for dx, dy in subpixel_offsets(subpixels):
                out = render(field, shifted_camera(camera, dx, dy, row0, rows))
                image, depth, opacity = image + out.image, depth + out.depth, opacity + out.opacity
            n = subpixels**2
            images.append(image / n)
            depths.append(depth / n)
            opacities.append(opacity / n)
    return torch.cat(images, dim=2), torch.cat(depths), torch.cat(opacities)


def render_frames(
    field: Field, views: Sequence[View], size: int, decode: Decode | None = None, subpixels: int = 1
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """RGB frames [N, H', W', 3] uint8, depth maps and opacity maps [N, size, size] of `field` from
    `views`; features are averaged over the sub-pixel rays and then decoded, once per frame."""
    frames, depths, opacities = [], [], []
    for view in views:
        feats, depth, opacity = render_pixels(field, camera_from_view(view, size), subpixels)
        with torch.no_grad():
            image = feats if decode is None else decode(feats)
        if image.shape[1] != 3:
            raise ValueError(f"renders have {image.shape[1]} channels, not RGB: pass decode= to map features to RGB")
        frames.append(to_uint8(image))
        depths.append(depth.float().cpu().numpy())
        opacities.append(opacity.float().cpu().numpy())
    return np.stack(frames), np.stack(depths), np.stack(opacities)


def render_views(
    field: Field, views: Sequence[View], size: int, decode: Decode | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """RGB frames [N, H', W', 3] uint8 and depth maps [N, size, size] float32 of `field` from `views`.

    Without `decode` the field's features must be RGB in [-1, 1]; with it, each rendered feature
    image [1, C, size, size] is decoded to [1, 3, H', W'] (a VAE decoder may upsample, so H' may
    differ from `size`). Depth keeps render()'s convention: empty space counts as FAR_DEPTH (10).
    """
    frames, depths, _ = render_frames(field, views, size, decode)
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


def write_mp4(frames: np.ndarray, path: str | Path, fps: int = 24) -> Path:
    """Write frames [N, H, W, 3] uint8 as an H.264 MP4 (odd sizes padded with black by one pixel)."""
    path = _prepare(path)
    writer = imageio_v2.get_writer(path, fps=fps, **_MP4_OPTIONS)
    try:
        for frame in _pad_even(frames):
            writer.append_data(frame)
    finally:
        writer.close()
    return path


def write_gif(frames: np.ndarray, path: str | Path, fps: int = 24) -> Path:
    """Write frames [N, H, W, 3] uint8 as a looping GIF."""
    path = _prepare(path)
    iio.imwrite(path, frames, extension=".gif", duration=1000.0 / fps, loop=0)
    return path


def depth_frames(depth: np.ndarray, opacity: np.ndarray, height: int, width: int) -> np.ndarray:
    """Depth pictures [N, height, width, 3] of depth and opacity maps [N, h, w], on one scale for all
    frames, enlarged (nearest) to the colour frames' size."""
    return _resize_nearest(depth_to_image(depth, opacity=opacity), height, width)


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
    rgb, depth, opacity = render_frames(field, turntable_views(n_frames, elevation=elevation), size, decode)
    frames = np.concatenate([rgb, depth_frames(depth, opacity, rgb.shape[1], rgb.shape[2])], axis=2)
    stem = Path(path_stem)
    mp4 = write_mp4(frames, stem.with_name(stem.name + ".mp4"), fps)
    return [mp4, write_gif(frames, stem.with_name(stem.name + ".gif"), fps)]


def write_video(
    field: Field,
    views: Sequence[View],
    path: str | Path,
    size: int,
    decode: Decode | None = None,
    subpixels: int = 1,
    fps: int = 24,
) -> dict[str, Path]:
    """Render `views` and write `path` (.mp4), the same frames as a GIF next to it and the depth
    pictures as `<stem>-depth.mp4`; returns {'mp4', 'gif', 'depth'} -> path."""
    path = Path(path)
    if path.suffix.lower() != ".mp4":
        raise ValueError(f"the video path must end in .mp4, got {path.name!r}")
    rgb, depth, opacity = render_frames(field, views, size, decode, subpixels)
    return {
        "mp4": write_mp4(rgb, path, fps),
        "gif": write_gif(rgb, path.with_suffix(".gif"), fps),
        "depth": write_mp4(
            depth_frames(depth, opacity, rgb.shape[1], rgb.shape[2]), path.with_name(f"{path.stem}-depth.mp4"), fps
        ),
    }


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
