"""Tests of sjc.outputs.video: depth pictures, sub-pixel (hires) rendering, videos, turntables, contact sheets."""

from __future__ import annotations

import imageio.v2 as imageio_v2
import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fields import cube_field, sphere_field
from sjc.core.cameras import View, camera_from_view, turntable_views
from sjc.core.render import render
from sjc.core.voxel import VoxelField
from sjc.outputs import video as export


@pytest.fixture(scope="module")
def field() -> VoxelField:
    return sphere_field()


def temporal_jitter(frames: np.ndarray) -> float:
    """Root-mean-square second difference in time of frames [N, H, W, 3], in 0-255 units: steady
    motion (pixels changing at a constant rate) scores 0, pixels popping between frames (aliasing)
    score high. Squaring weighs one full pop above the same change spread over several frames."""
    f = frames.astype(np.float64)
    if len(f) < 3:
        raise ValueError(f"jitter needs at least 3 frames, got {len(f)}")
    return float(np.sqrt(np.mean((f[2:] - 2 * f[1:-1] + f[:-2]) ** 2)))


def test_depth_picture_is_bright_near_and_black_when_empty() -> None:
    depth = np.array([[1.0, 1.5, 2.0, 10.0]])
    picture = export.depth_to_image(depth)
    assert picture.shape == (1, 4, 3) and picture.dtype == np.uint8
    brightness = picture[0].astype(int).sum(-1)
    assert brightness[0] > brightness[1] > brightness[2] > 0
    assert brightness[3] == 0
    assert export.depth_to_image(torch.full((2, 3), 10.0)).max() == 0  # all empty: no crash


def test_depth_picture_undoes_the_background_blend_with_opacity() -> None:
    opacity = np.array([1.0, 1.0, 0.5, 0.0])
    surface = np.array([1.0, 2.0, 1.0, 0.0])
    depth = opacity * surface + (1 - opacity) * export.FAR_DEPTH  # what render() reports
    picture = export.depth_to_image(depth, near=1.0, far=2.0, opacity=opacity).astype(int)
    assert np.abs(picture[2] - picture[0] / 2).max() <= 1  # same depth as pixel 0, half as opaque
    assert picture[3].max() == 0
    # The half-covered pixel must not stretch the default scale towards FAR_DEPTH.
    auto = export.depth_to_image(depth, opacity=opacity).astype(int)
    assert auto[0].sum() > auto[1].sum() > 0


def test_render_views_decodes_latents() -> None:
    latent = sphere_field(16, channels=4)

    def decode(x: torch.Tensor) -> torch.Tensor:  # a stand-in VAE: 3 channels, 2x upsampled
        return F.interpolate(x[:, :3].tanh(), scale_factor=2)

    rgb, depth = export.render_views(latent, turntable_views(2), 16, decode)
    assert rgb.shape == (2, 32, 32, 3) and rgb.dtype == np.uint8
    assert depth.shape == (2, 16, 16)
    assert depth.min() < 1.5 and depth.max() >= export.EMPTY_DEPTH  # sphere in the middle, empty corners
    with pytest.raises(ValueError, match="decode"):
        export.render_views(latent, turntable_views(1), 16)


def test_turntable_writes_mp4_and_gif(field: VoxelField, tmp_path) -> None:
    mp4, gif = export.write_turntable(field, tmp_path / "out" / "turn", n_frames=6, size=32, fps=12)
    assert mp4.name == "turn.mp4" and gif.name == "turn.gif"
    reader = imageio_v2.get_reader(mp4, format="FFMPEG")
    try:
        video = [frame for frame in reader]
    finally:
        reader.close()
    assert len(video) == 6 and video[0].shape == (32, 64, 3)
    frames = iio.imread(gif, index=None)
    assert frames.shape[:3] == (6, 32, 64)
    # Left half: the sphere's colour at the centre; right half: a bright (near) depth pixel.
    assert frames[0, 16, 16, 0] > 150 and frames[0, 16, 16, 2] < 100  # front view sees red
    assert frames[0, 16, 48].astype(int).sum() > 200
    assert frames[0, 1, 33].max() == 0  # empty corner of the depth strip is black


def test_contact_sheet_size(field: VoxelField, tmp_path) -> None:
    path = export.contact_sheet(field, tmp_path / "sheet.png", size=24)
    sheet = iio.imread(path)
    gap = export.SHEET_GAP
    assert sheet.shape == (2 * 24 + gap, 4 * 24 + 3 * gap, 3)
    custom = export.contact_sheet(field, tmp_path / "three.png", views=[View(0, 0)] * 3, size=16, columns=2)
    assert iio.imread(custom).shape == (2 * 16 + gap, 2 * 16 + gap, 3)


def test_subpixel_offsets_cover_the_pixel_one_per_cell() -> None:
    assert export.subpixel_offsets(1) == [(0.0, 0.0)]
    offsets = np.array(export.subpixel_offsets(3))
    assert offsets.shape == (9, 2) and (np.abs(offsets) < 0.5).all()
    cells = np.floor((offsets + 0.5) * 3).astype(int)
    assert len({tuple(c) for c in cells}) == 9  # stratified: one sample in each third x third cell
    assert export.subpixel_offsets(3) == export.subpixel_offsets(3)  # the same pattern every frame


def test_shifted_camera_moves_every_ray_by_the_offset_and_crops_rows() -> None:
    camera = camera_from_view(View(20.0, 10.0), 6, 8)
    shifted = export.shifted_camera(camera, 0.25, -0.5, row0=2, rows=3)
    _, dirs = shifted.rays(dtype=torch.float64)
    K = camera.K
    i, j = torch.meshgrid(
        torch.arange(2.0, 5.0, dtype=torch.float64), torch.arange(8.0, dtype=torch.float64), indexing="ij"
    )
    x = (j.flatten() + 0.5 + 0.25 - K[0, 2]) / K[0, 0]
    y = -(i.flatten() + 0.5 - 0.5 - K[1, 2]) / K[1, 1]
    expected = torch.stack([x, y, -torch.ones_like(x)], dim=-1) @ camera.c2w[:3, :3].T
    assert torch.allclose(dirs, expected / expected.norm(dim=-1, keepdim=True), atol=1e-12)


def test_render_in_bands_equals_one_render(field: VoxelField) -> None:
    camera = camera_from_view(View(30.0, 20.0), 20)
    whole = render(field, camera)
    image, depth, opacity = export.render_pixels(field, camera, max_rays=20 * 7)  # bands of 7 rows
    assert torch.allclose(image, whole.image, atol=1e-5) and torch.allclose(depth, whole.depth, atol=1e-4)
    assert torch.allclose(opacity, whole.opacity, atol=1e-5)


def test_hires_frames_are_steadier_than_plain_ones_on_a_slow_turntable() -> None:
    # A sharp-edged cube turning half a degree per frame, 24 pixels wide: each plain pixel flips
    # between cube and background in one frame; averaged sub-pixel rays change it by ninths.
    cube = cube_field(32)
    views = [View(30.0 + 0.5 * k, 15.0) for k in range(10)]
    plain = temporal_jitter(export.render_frames(cube, views, 24)[0])
    hires = temporal_jitter(export.render_frames(cube, views, 24, subpixels=3)[0])
    print(f"temporal jitter (RMS second difference, 0-255): plain {plain:.3f}, hires 3x3 {hires:.3f}")
    assert hires < 0.65 * plain, (plain, hires)
    still = export.render_frames(cube, [View(30.0, 15.0)] * 3, 24, subpixels=3)[0]
    assert temporal_jitter(still) == 0.0  # same view, same pattern: identical frames


def test_hires_decodes_latents_once_per_frame() -> None:
    latent = sphere_field(16, channels=4)
    calls = []

    def decode(x: torch.Tensor) -> torch.Tensor:
        calls.append(x.shape)
        return F.interpolate(x[:, :3].tanh(), scale_factor=2)

    rgb, depth, opacity = export.render_frames(latent, turntable_views(2), 12, decode, subpixels=2)
    assert calls == [(1, 4, 12, 12)] * 2
    assert rgb.shape == (2, 24, 24, 3) and depth.shape == opacity.shape == (2, 12, 12)


def test_write_video_writes_colour_mp4_gif_and_a_depth_video(field: VoxelField, tmp_path) -> None:
    files = export.write_video(field, turntable_views(5), tmp_path / "out" / "spin.mp4", 20, subpixels=2, fps=10)
    assert {k: p.name for k, p in files.items()} == {"mp4": "spin.mp4", "gif": "spin.gif", "depth": "spin-depth.mp4"}
    gif = iio.imread(files["gif"], index=None)
    assert gif.shape == (5, 20, 20, 3)
    for key in ("mp4", "depth"):
        reader = imageio_v2.get_reader(files[key], format="FFMPEG")
        try:
            video = [frame for frame in reader]  # list() asks len(), which is inf for an mp4
        finally:
            reader.close()
        assert len(video) == 5 and video[0].shape == (20, 20, 3)
    reader = imageio_v2.get_reader(files["depth"], format="FFMPEG")
    try:
        depth = reader.get_data(0)
    finally:
        reader.close()
    assert depth[10, 10].astype(int).sum() > 200 and depth[1, 1].max() < 20  # near sphere bright, corner black
    with pytest.raises(ValueError, match=".mp4"):
        export.write_video(field, turntable_views(1), tmp_path / "spin.avi", 8)
