"""Tests of sjc.outputs.mesh: marching cubes of analytic spheres, floaters, decimation, colours, mesh and grid files."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh
from scipy.spatial import cKDTree

from fields import RADIUS, RAW_IN, RAW_OUT, sphere_field
from sjc.core.voxel import VoxelField
from sjc.outputs import mesh as meshes

N = 32


@pytest.fixture(scope="module")
def field() -> VoxelField:
    return sphere_field(N)


@pytest.fixture(scope="module")
def mesh(field: VoxelField) -> trimesh.Trimesh:
    return meshes.extract_mesh(field)


def test_sphere_mesh_is_closed_outward_and_round(field: VoxelField, mesh: trimesh.Trimesh) -> None:
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.volume > 0  # outward normals
    assert mesh.volume == pytest.approx(4 / 3 * math.pi * RADIUS**3, rel=0.10)
    radii = np.linalg.norm(mesh.vertices, axis=1)
    # Voxel centres straddle the sphere; a mid-edge crossing is within half a voxel of it.
    assert np.abs(radii - RADIUS).max() < 0.5 * field.voxel_size + 1e-3
    # Outward normals point away from the centre.
    assert (np.einsum("ij,ij->i", mesh.vertex_normals, mesh.vertices) > 0).mean() > 0.99
    assert mesh.metadata["sjc"] == {"threshold": 0.5, "parts_dropped": 0, "colours": "field"}


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
    native = meshes.extract_mesh(field)
    same = meshes.extract_mesh(field, resolution=N)  # through the resampling path
    assert np.allclose(same.vertices, native.vertices, atol=1e-5)
    fine = meshes.extract_mesh(field, resolution=48)
    assert fine.is_watertight and fine.volume > 0 and len(fine.vertices) > len(native.vertices)
    for mesh in (native, fine):
        assert np.abs(np.linalg.norm(mesh.vertices, axis=1) - r_star).max() < 0.1 * vs


def test_floaters_are_dropped_as_configured() -> None:
    field = sphere_field()
    with torch.no_grad():
        field.grid[0, 0, 1:3, 1:3, 1:3] = RAW_IN  # a 2^3-voxel speck in a corner
    both = meshes.extract_mesh(field, keep_largest=False, min_part=0.0)
    assert len(both.split(only_watertight=False)) == 2
    main = meshes.extract_mesh(field)
    assert len(main.split(only_watertight=False)) == 1 and main.metadata["sjc"]["parts_dropped"] == 1
    assert np.linalg.norm(main.vertices, axis=1).max() < RADIUS + 0.1
    # Keeping every part still drops specks below min_part of the largest one.
    small = meshes.extract_mesh(field, keep_largest=False, min_part=0.1)
    assert len(small.split(only_watertight=False)) == 1


def test_object_touching_the_box_gives_a_closed_mesh() -> None:
    field = VoxelField(8, 3, feature_activation="sigmoid")
    with torch.no_grad():
        field.grid[0, 0] = RAW_IN  # fills the whole box
    cube = meshes.extract_mesh(field)
    assert cube.is_watertight and cube.volume > 0
    assert np.allclose(cube.bounds, [[-1, -1, -1], [1, 1, 1]], atol=field.voxel_size)


def test_latent_field_mesh_is_grey_without_a_decoder() -> None:
    latent = meshes.extract_mesh(sphere_field(16, channels=4))
    assert latent.is_watertight and latent.metadata["sjc"]["colours"] == "grey"
    assert (np.asarray(latent.visual.vertex_colors) == np.array(meshes.GREY)).all()


def test_empty_field_raises_a_clear_error() -> None:
    empty = sphere_field(16, raw_in=RAW_OUT)
    with pytest.raises(ValueError, match="largest voxel alpha"):
        meshes.extract_mesh(empty)
    with pytest.raises(ValueError, match="threshold"):
        meshes.extract_mesh(sphere_field(16), threshold=1.5)


def test_decimation_caps_the_faces_and_keeps_shape_and_colours(field: VoxelField, mesh: trimesh.Trimesh) -> None:
    small = meshes.extract_mesh(field, max_faces=400)
    assert 200 <= len(small.faces) <= 400 < len(mesh.faces)
    assert np.abs(np.linalg.norm(small.vertices, axis=1) - RADIUS).max() < 2 * field.voxel_size
    colours, z = np.asarray(small.visual.vertex_colors), small.vertices[:, 2]
    assert (colours[z > 0.1, 0] > 200).all() and (colours[z < -0.1, 2] > 200).all()
    assert meshes.extract_mesh(field, max_faces=10**6).faces.shape == mesh.faces.shape  # nothing to remove
    with pytest.raises(ValueError, match="max-faces"):
        meshes.extract_mesh(field, max_faces=2)


def _matched_colours(written: trimesh.Trimesh, loaded: trimesh.Trimesh) -> np.ndarray:
    """Colours of `written` at the vertices nearest to `loaded`'s (file formats may reorder vertices)."""
    distance, index = cKDTree(written.vertices).query(loaded.vertices)
    assert distance.max() < 1e-5
    return np.asarray(written.visual.vertex_colors)[index]


@pytest.mark.parametrize("ext", ["glb", "obj", "ply"])
def test_mesh_files_round_trip_with_vertex_count_and_colours(mesh: trimesh.Trimesh, tmp_path, ext: str) -> None:
    path = meshes.write_mesh(mesh, tmp_path / f"sphere.{ext}")
    loaded = trimesh.load(path, force="mesh")
    assert len(loaded.vertices) == len(mesh.vertices)
    assert len(loaded.faces) == len(mesh.faces)
    colours = np.asarray(loaded.visual.vertex_colors)
    assert np.array_equal(colours, _matched_colours(mesh, loaded))
    z = loaded.vertices[:, 2]
    assert (colours[z > 0.15, 0] > 200).all() and (colours[z > 0.15, 2] < 50).all()
    assert (colours[z < -0.15, 2] > 200).all() and (colours[z < -0.15, 0] < 50).all()


def test_write_mesh_rejects_unknown_format(mesh: trimesh.Trimesh, tmp_path) -> None:
    with pytest.raises(ValueError, match=".glb"):
        meshes.write_mesh(mesh, tmp_path / "sphere.stl")


def test_grids_npz_hold_density_alpha_features_and_box(field: VoxelField, tmp_path) -> None:
    path = meshes.write_grids(field, tmp_path / "field.npz")
    with np.load(path) as data:
        grids = dict(data)
    assert grids["density"].shape == grids["alpha"].shape == (N, N, N)
    assert grids["features"].shape == (3, N, N, N)
    assert np.allclose(grids["aabb"], [[-1, -1, -1], [1, 1, 1]])
    assert str(grids["feature_space"]) == "rgb"
    with torch.no_grad():
        assert np.allclose(grids["alpha"], field.voxel_alpha().numpy(), atol=1e-6)
        assert np.allclose(grids["features"], field.activate_features(field.grid[0, 1:]).numpy(), atol=1e-6)
    # Indexed [channel, z, y, x]: red on the front (large z index), blue behind.
    assert grids["features"][0, -4, N // 2, N // 2] > 0.9 and grids["features"][2, 3, N // 2, N // 2] > 0.9
    coarse = meshes.write_grids(field, tmp_path / "coarse.npz", resolution=12)
    with np.load(coarse) as data:
        assert data["density"].shape == (12, 12, 12) and data["features"].shape == (3, 12, 12, 12)


def _normal_error_deg(mesh: trimesh.Trimesh) -> float:
    """Area-weighted mean angle between face normals and a centred sphere's normals (the radial direction)."""
    radial = mesh.triangles_center / np.linalg.norm(mesh.triangles_center, axis=1, keepdims=True)
    cos = np.clip((mesh.face_normals * radial).sum(axis=1), -1, 1)
    return float(np.degrees(np.arccos(cos)) @ mesh.area_faces / mesh.area_faces.sum())


def test_taubin_smoothing_removes_the_staircase_and_keeps_the_volume() -> None:
    blocky = sphere_field(24)  # hard-edged voxels: marching cubes' terraces
    raw = meshes.extract_mesh(blocky)
    smooth = meshes.extract_mesh(blocky, smoothing=30)
    assert smooth.is_watertight and smooth.volume > 0 and len(smooth.faces) == len(raw.faces)
    # The terraces go: the faces turn towards the true sphere's normals (20 degrees off on average before)...
    assert _normal_error_deg(raw) > 15 and _normal_error_deg(smooth) < 0.4 * _normal_error_deg(raw)
    # ...and, unlike plain Laplacian smoothing, Taubin's keeps the enclosed volume.
    assert smooth.volume == pytest.approx(raw.volume, rel=0.02)
    shrunk = meshes.extract_mesh(blocky)
    trimesh.smoothing.filter_laplacian(shrunk, iterations=30, volume_constraint=False)
    assert shrunk.volume < 0.95 * raw.volume
    assert meshes.smooth(raw.copy(), 0).vertices.tolist() == raw.vertices.tolist()
    finer = meshes.extract_mesh(blocky, resolution=48, smoothing=10)
    assert finer.is_watertight and _normal_error_deg(finer) < _normal_error_deg(raw)
