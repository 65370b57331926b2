"""Tests of sjc.export: meshes of an analytic two-tone sphere, mesh files, turntables, contact sheets."""

from __future__ import annotations

import math

import imageio.v2 as imageio_v2
import imageio.v3 as iio
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import trimesh

from sjc import export
from sjc.cameras import View, turntable_views
from sjc.voxel import VoxelField

N = 32
RADIUS = 0.5
RAW_IN, RAW_OUT = 80.0, -8.0  # alpha ~1 inside, ~0 outside at 32^3: the 0.5 crossing sits mid-edge
RED, BLUE = (4.0, -4.0, -4.0), (-4.0, -4.0, 4.0)  # logits: sigmoid*2-1 gives +-0.96


def sphere_field(n: int = N, channels: int = 3, raw_in: float = RAW_IN) -> VoxelField:
    """Dense sphere of radius 0.5; for RGB fields red in front (z > 0), blue behind."""
    field = VoxelField(n, channels, feature_activation="sigmoid" if channels == 3 else "none", background="fixed")
    with torch.no_grad():
        centres = field.voxel_centres()
        field.grid[0, 0] = torch.where(centres.norm(dim=-1) < RADIUS, raw_in, RAW_OUT)
        if channels == 3:
            front = (centres[..., 2] > 0)[..., None]
            colours = torch.where(front, torch.tensor(RED), torch.tensor(BLUE))
            field.grid[0, 1:] = colours.permute(3, 0, 1, 2)
    return field


@pytest.fixture(scope="module")
def field() -> VoxelField:
    return sphere_field()


@pytest.fixture(scope="module")
def mesh(field: VoxelField) -> trimesh.Trimesh:
    return export.extract_mesh(field)


def test_sphere_mesh_is_closed_outward_and_round(field: VoxelField, mesh: trimesh.Trimesh) -> None:
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # outward normals
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * RADIUS**3, rel=0.10)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    # Voxel centres straddle the sphere; a mid-edge crossing is within half a voxel of it.
    assert np.abs(radii - RADIUS).max() < 0.5 * field.voxel_size + 1e-3
    # Outward normals point away from the centre.
    assert (np.einsum("ij,ij->i", mesh.vertex_normals, mesh.vertices) > 0).mean() > 0.99


def test_vertex_colours_front_red_back_blue(field: VoxelField, mesh: trimesh.Trimesh) -> None:
    colours = np.asarray(mesh.visual.vertex_colors)
    z = mesh.vertices[:, 2]
    margin = 2 * field.voxel_size  # away from the seam, where colours blend
    front, back = colours[z > margin], colours[z < -margin]
    assert len(front) > 50 and len(back) > 50
    assert (front[:, 0] > 200).all() and (front[:, 1:3] < 50).all()
    assert (back[:, 2] > 200).all() and (back[:, :2] < 50).all()
    assert (colours[:, 3] == 255).all()


def test_resampling_follows_the_rendered_density() -> None:
    # Raw density linear in the radius: the alpha = 0.5 surface is a sphere of known radius r*.
    slope = 200.0
    field = VoxelField(N, 3, feature_activation="sigmoid")
    with torch.no_grad():
        field.grid[0, 0] = slope * (RADIUS - field.voxel_centres().norm(dim=-1))
    vs = field.voxel_size
    # alpha = 0.5 where softplus(raw + shift) * vs = ln 2.
    r_star = RADIUS - (math.log(math.expm1(math.log(2) / vs)) - field.density_shift) / slope
    native = export.extract_mesh(field)
    same = export.extract_mesh(field, resolution=N)  # through the resampling path
    assert np.allclose(same.vertices, native.vertices, atol=1e-5)
    fine = export.extract_mesh(field, resolution=48)
    assert fine.is_watertight and fine.volume > 0 and len(fine.vertices) > len(native.vertices)
    for mesh in (native, fine):
        assert np.abs(np.linalg.norm(mesh.vertices, axis=1) - r_star).max() < 0.1 * vs


def test_keep_largest_drops_floater() -> None:
    field = sphere_field()
    with torch.no_grad():
        field.grid[0, 0, 1:3, 1:3, 1:3] = RAW_IN  # a 2^3-voxel speck in a corner
    both = export.extract_mesh(field, keep_largest=False)
    assert len(both.split(only_watertight=False)) == 2
    main = export.extract_mesh(field)
    assert len(main.split(only_watertight=False)) == 1
    assert np.linalg.norm(main.vertices, axis=1).max() < RADIUS + 0.1


def test_object_touching_the_box_gives_a_closed_mesh() -> None:
    field = VoxelField(8, 3, feature_activation="sigmoid")
    with torch.no_grad():
        field.grid[0, 0] = RAW_IN  # fills the whole box
    cube = export.extract_mesh(field)
    assert cube.is_watertight and cube.volume > 0
    assert np.allclose(cube.bounds, [[-1, -1, -1], [1, 1, 1]], atol=field.voxel_size)


def test_latent_field_mesh_is_grey() -> None:
    latent = export.extract_mesh(sphere_field(16, channels=4))
    assert latent.is_watertight
    assert (np.asarray(latent.visual.vertex_colors) == np.array(export.GREY)).all()


def test_empty_field_raises_a_clear_error() -> None:
    empty = sphere_field(16, raw_in=RAW_OUT)
    with pytest.raises(ValueError, match="largest voxel alpha"):
        export.extract_mesh(empty)
    with pytest.raises(ValueError, match="threshold"):
        export.extract_mesh(sphere_field(16), threshold=1.5)


@pytest.mark.parametrize("ext", ["glb", "obj", "ply"])
def test_mesh_files_round_trip_with_colours(mesh: trimesh.Trimesh, tmp_path, ext: str) -> None:
    path = export.write_mesh(mesh, tmp_path / f"sphere.{ext}")
    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.vertices) == len(mesh.vertices)
    assert len(loaded.faces) == len(mesh.faces)
    colours = np.asarray(loaded.visual.vertex_colors)
    z = loaded.vertices[:, 2]
    assert (colours[z > 0.15, 0] > 200).all() and (colours[z > 0.15, 2] < 50).all()
    assert (colours[z < -0.15, 2] > 200).all() and (colours[z < -0.15, 0] < 50).all()


def test_write_mesh_rejects_unknown_format(mesh: trimesh.Trimesh, tmp_path) -> None:
    with pytest.raises(ValueError, match=".glb"):
        export.write_mesh(mesh, tmp_path / "sphere.stl")


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
