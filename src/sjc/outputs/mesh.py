"""Meshes and raw grids of a trained field, for Blender, glTF viewers, game engines and volume tools.

Marching cubes (scikit-image) on the per-voxel alpha at a chosen grid resolution; floaters removed,
optional quadric decimation (fast-simplification through trimesh); vertex colours sampled from RGB
fields or baked from decoded views for latent fields (`bake.py`). Written as .glb, .obj, .ply or .npz.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import trimesh
from skimage.measure import marching_cubes
from torch import Tensor

from ..core.voxel import VoxelField
from .bake import bake_vertex_colours

Decode = Callable[[Tensor], Tensor]

# Same meaning as "occupied" in the metrics (alpha of one voxel-length step > 0.5), so the mesh
# bounds exactly the voxels the 3D IoU counts. Softer fields need a lower value: see extract_mesh.
DEFAULT_MESH_THRESHOLD = 0.5
# With keep_largest off, parts smaller than this fraction of the largest one (in faces) are floaters.
DEFAULT_MIN_PART = 0.01
GREY = (170, 170, 170, 255)
MESH_FORMATS = ("glb", "obj", "ply")


def is_rgb_field(field: VoxelField) -> bool:
    """Whether the features are colours (pixel priors: 3 channels through the sigmoid to [-1, 1])."""
    return field.channels == 3 and field.feature_activation == "sigmoid"


def field_grids(field: VoxelField, resolution: int | None = None) -> tuple[Tensor, Tensor]:
    """Density [m, m, m] and activated features [m, m, m, C] at the voxel centres of an m^3 grid
    over the field's box, indexed [z, y, x]; m is the field's own resolution unless given (at its own
    resolution the grid is read directly).

    Resampling reads the grid exactly as the renderer does (trilinear on the raw values, then the
    activations)."""
    with torch.no_grad():
        if resolution is None or resolution == field.resolution:
            return field.activate_density(field.grid[0, 0]), field.activate_features(field.grid[0, 1:].movedim(0, -1))
        lo, hi = field.aabb[0], field.aabb[1]
        steps = (torch.arange(resolution, dtype=lo.dtype, device=lo.device) + 0.5) / resolution
        xs, ys, zs = (lo[k] + (hi[k] - lo[k]) * steps for k in range(3))
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        densities, features = [], []
        for z in zs:  # one z-slice at a time keeps memory flat at large resolutions
            pts = torch.stack([xx, yy, torch.full_like(xx, float(z))], dim=-1).reshape(-1, 3)
            sigma, feats = field.query(pts)
            densities.append(sigma.view(resolution, resolution))
            features.append(feats.view(resolution, resolution, -1))
        return torch.stack(densities), torch.stack(features)


def alpha_grid(field: VoxelField, resolution: int | None = None) -> np.ndarray:
    """Alpha [m, m, m] ([z, y, x]). It always uses the field's own voxel length, so a threshold
    picks the same surface at any resolution."""
    sigma, _ = field_grids(field, resolution)
    return (1 - torch.exp(-sigma * field.voxel_size)).float().cpu().numpy()


def surface_mesh(field: VoxelField, threshold: float, resolution: int | None = None) -> trimesh.Trimesh:
    """Closed, outward-facing marching-cubes mesh of {alpha > threshold} in world coordinates."""
    if not 0.0 < threshold < 1.0:
        raise ValueError(f"threshold is an alpha and must lie in (0, 1), got {threshold}")
    alpha = alpha_grid(field, resolution)
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
    return mesh


def remove_floaters(
    mesh: trimesh.Trimesh, keep_largest: bool = True, min_part: float = DEFAULT_MIN_PART
) -> tuple[trimesh.Trimesh, int]:
    """The largest connected part (or every part with at least `min_part` of its faces), and how
    many parts were dropped."""
    parts = mesh.split(only_watertight=False)
    if len(parts) <= 1:
        return mesh, 0
    largest = max(len(part.faces) for part in parts)
    if keep_largest:
        kept = [max(parts, key=lambda part: len(part.faces))]
    else:
        kept = [part for part in parts if len(part.faces) >= min_part * largest]
    return trimesh.util.concatenate(kept), len(parts) - len(kept)


def smooth(mesh: trimesh.Trimesh, iterations: int) -> trimesh.Trimesh:
    """Taubin's smoothing, in place: each pass moves every vertex towards the mean of its neighbours (lambda 0.5)
    and then away from it (nu 0.52), which removes the staircase of marching cubes on a voxel grid without the
    shrinking of plain Laplacian smoothing. 0 iterations leaves the mesh as it is."""
    if iterations > 0:
        trimesh.smoothing.filter_taubin(mesh, lamb=0.5, nu=0.52, iterations=iterations)
    return mesh


def decimate(mesh: trimesh.Trimesh, max_faces: int) -> trimesh.Trimesh:
    """Quadric-error decimation down to at most `max_faces` faces (unchanged if already below)."""
    if max_faces < 4:
        raise ValueError(f"--max-faces must be at least 4 (a tetrahedron), got {max_faces}")
    if len(mesh.faces) <= max_faces:
        return mesh
    smaller = mesh.simplify_quadric_decimation(face_count=max_faces)
    if len(smaller.faces) > max_faces:  # the simplifier can stop a little short of its target
        smaller = smaller.simplify_quadric_decimation(face_count=max_faces - (len(smaller.faces) - max_faces))
    return smaller


def vertex_colours(field: VoxelField, mesh: trimesh.Trimesh, decode: Decode | None, bake_size: int = 64) -> str:
    """Give `mesh` RGBA vertex colours; returns where they came from: 'field', 'baked' or 'grey'.

    RGB fields are sampled half a voxel inside the surface, where the colour belongs to the object
    rather than to the near-empty space around it. Latent fields are baked from views decoded by
    `decode` (see bake.py), rendered at `bake_size`; without a decoder they are grey."""
    if is_rgb_field(field):
        inside = mesh.vertices - 0.5 * field.voxel_size * mesh.vertex_normals
        pts = torch.as_tensor(inside, dtype=field.grid.dtype, device=field.grid.device)
        with torch.no_grad():
            _, feats = field.query(pts)
        rgb = ((feats.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu().numpy()
        colours, source = np.concatenate([rgb, np.full((len(rgb), 1), 255, np.uint8)], axis=1), "field"
    elif decode is not None:
        colours = bake_vertex_colours(field, mesh.vertices, mesh.vertex_normals, decode, size=bake_size)
        source = "baked"
    else:
        colours, source = np.tile(np.array(GREY, np.uint8), (len(mesh.vertices), 1)), "grey"
    mesh.visual = trimesh.visual.ColorVisuals(mesh, vertex_colors=colours)
    return source


def extract_mesh(
    field: VoxelField,
    threshold: float = DEFAULT_MESH_THRESHOLD,
    resolution: int | None = None,
    keep_largest: bool = True,
    *,
    min_part: float = DEFAULT_MIN_PART,
    max_faces: int | None = None,
    smoothing: int = 0,
    decode: Decode | None = None,
    bake_size: int = 64,
) -> trimesh.Trimesh:
    """Closed triangle mesh of {alpha > threshold} in world coordinates, outward-facing, coloured.

    alpha is the opacity of one voxel-length step (VoxelField.voxel_alpha); the default threshold
    matches the metrics' occupancy. A field whose surface is soft may have no voxel that opaque:
    the error then reports its largest alpha, and any threshold below it works (lower gives a
    fatter mesh). `resolution` resamples the density first; `keep_largest` keeps one part, else
    parts below `min_part` of the largest are dropped; `smoothing` runs that many passes of Taubin's
    smoothing (`smooth`); `max_faces` decimates. Colours: see vertex_colours. `mesh.metadata['sjc']`
    records the parts dropped and the colour source.
    """
    mesh, dropped = remove_floaters(surface_mesh(field, threshold, resolution), keep_largest, min_part)
    smooth(mesh, smoothing)
    if max_faces is not None:
        mesh = decimate(mesh, max_faces)
    source = vertex_colours(field, mesh, decode, bake_size)
    mesh.metadata["sjc"] = {"threshold": threshold, "parts_dropped": dropped, "colours": source}
    return mesh


def write_mesh(mesh: trimesh.Trimesh, path: str | Path) -> Path:
    """Write `mesh` as .glb, .obj or .ply (chosen by the extension), vertex colours included."""
    path = Path(path)
    if path.suffix.lower().lstrip(".") not in MESH_FORMATS:
        raise ValueError(f"unsupported mesh format {path.suffix!r}: use .glb, .obj or .ply")
    path.parent.mkdir(parents=True, exist_ok=True)
    mesh.export(path)
    return path


def write_grids(field: VoxelField, path: str | Path, resolution: int | None = None) -> Path:
    """Write the raw volume as .npz: density [m, m, m] (inverse world length), alpha [m, m, m] (of
    one voxel-length step, what meshes threshold), features [C, m, m, m] (RGB in [-1, 1] or raw
    latents, see feature_space), all indexed [z, y, x] at voxel centres, and aabb [2, 3] (min, max)."""
    path = Path(path)
    if path.suffix.lower() != ".npz":
        raise ValueError(f"grids are written as .npz, got {path.suffix!r}")
    sigma, feats = field_grids(field, resolution)
    alpha = 1 - torch.exp(-sigma * field.voxel_size)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        path,
        density=sigma.float().cpu().numpy(),
        alpha=alpha.float().cpu().numpy(),
        features=feats.movedim(-1, 0).float().cpu().numpy(),
        aabb=field.aabb.float().cpu().numpy(),
        feature_space=np.array("rgb" if is_rgb_field(field) else "latent"),
    )
    return path
