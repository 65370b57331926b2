"""Vertex colours of a latent field's mesh, baked from decoded views.

Latent features are not colours, so the field is rendered from a ring of cameras, each render is
decoded to RGB once, and every vertex takes the decoded colour of the views that see it (its
distance from the camera matches the rendered surface depth), weighted by cos(normal, view)^FACING_POWER.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial import cKDTree
from torch import Tensor

from ..core.cameras import Camera, View, camera_from_view
from ..core.render import Field, render

Decode = Callable[[Tensor], Tensor]

# cos^2 would let a view at 60 degrees count a quarter as much as a square-on one; cos^4 (a sixteenth)
# keeps the sharpest, least foreshortened view in charge while still blending across seams.
FACING_POWER = 4.0
FAR_DEPTH = 10.0  # render()'s depth for empty space
SEEN_OPACITY = 0.5  # a pixel shows a surface when its rendered opacity reaches this
DEPTH_TOLERANCE_VOXELS = 2.0  # the mesh (alpha level set) and the expected depth differ by about a voxel


def bake_views(radius: float = 1.5, fov: float = 60.0) -> list[View]:
    """17 views around the object: 8 at 15 deg elevation, 4 from above (55), 4 from below (-35), the top."""
    ring = [View(45.0 * k, 15.0, fov, radius) for k in range(8)]
    high = [View(45.0 + 90.0 * k, 55.0, fov, radius) for k in range(4)]
    low = [View(90.0 * k, -35.0, fov, radius) for k in range(4)]
    return [*ring, *high, *low, View(0.0, 90.0, fov, radius)]


def project(camera: Camera, points: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Grid-sample coordinates [V, 2] in [-1, 1] (x right, y down), distance from the camera [V], and
    whether each point is in front of it [V], for world points [V, 3]."""
    c2w = camera.c2w.to(points)
    eye = c2w[:3, 3]
    local = (points - eye) @ c2w[:3, :3]  # camera frame: the camera looks down -z
    ahead = -local[:, 2]
    front = ahead > 1e-6
    ahead = ahead.clamp_min(1e-6)
    K = camera.K.to(points)
    u = K[0, 0] * local[:, 0] / ahead + K[0, 2]  # pixel coordinates, pixel centres at +0.5
    v = K[1, 2] - K[1, 1] * local[:, 1] / ahead  # image rows grow downwards
    grid = torch.stack([2 * u / camera.width - 1, 2 * v / camera.height - 1], dim=-1)
    return grid, (points - eye).norm(dim=-1), front


def _sample(image: Tensor, grid: Tensor, mode: str) -> Tensor:
    """Values [V, C] of image [1, C, H, W] at grid-sample coordinates [V, 2]."""
    out = F.grid_sample(image, grid.view(1, 1, -1, 2), mode=mode, padding_mode="border", align_corners=False)
    return out[0, :, 0].T


def _view_contribution(
    field: Field, camera: Camera, decode: Decode, points: Tensor, normals: Tensor, voxel: float
) -> tuple[Tensor, Tensor]:
    """Decoded colour [V, 3] of each point seen from `camera`, and its weight [V] (0 where unseen)."""
    out = render(field, camera)
    rgb = decode(out.image).float().clamp(-1, 1)  # [1, 3, H', W']: a VAE may upsample
    opacity = out.opacity.float()
    # render() mixes the surface depth with FAR_DEPTH by the opacity; undo that to get the surface.
    surface = (out.depth.float() - (1 - opacity) * FAR_DEPTH) / opacity.clamp_min(1e-4)
    grid, distance, front = project(camera, points)
    inside = front & (grid.abs() <= 1).all(dim=-1)
    pixel_depth = _sample(surface[None, None], grid, "nearest")[:, 0]
    pixel_opacity = _sample(opacity[None, None], grid, "nearest")[:, 0]
    # One pixel spans distance * (2 tan(fov / 2) / W) = distance * 2 / fx in depth at a grazing angle.
    tolerance = DEPTH_TOLERANCE_VOXELS * voxel + 2 * distance / float(camera.K[0, 0])
    visible = inside & (pixel_opacity >= SEEN_OPACITY) & (distance <= pixel_depth + tolerance)
    to_camera = (camera.c2w[:3, 3].to(points) - points) / distance.clamp_min(1e-9)[:, None]
    facing = (normals * to_camera).sum(-1).clamp_min(0)
    weight = torch.where(visible, facing**FACING_POWER, torch.zeros_like(facing))
    return _sample(rgb, grid, "bilinear"), weight


def bake_vertex_colours(
    field: Field,
    vertices: np.ndarray,
    normals: np.ndarray,
    decode: Decode,
    views: Sequence[View] | None = None,
    size: int = 64,
    voxel_size: float | None = None,
) -> np.ndarray:
    """RGBA uint8 [V, 4] for vertices [V, 3] with unit outward normals [V, 3] of `field`'s surface.

    Each view is rendered at `size` (pixels of the field's data space) and decoded once by `decode`
    ([1, C, size, size] -> [1, 3, H', W'] in [-1, 1]). A vertex no view sees takes the colour of the
    nearest vertex that one does (or grey when none is seen at all). `voxel_size` (default: the
    field's, else 2 / 64) sets the depth tolerance of the visibility test.
    """
    device, dtype = field.aabb.device, field.aabb.dtype
    points = torch.tensor(np.asarray(vertices), dtype=dtype, device=device)  # copies: trimesh's arrays are read-only
    dirs = torch.tensor(np.asarray(normals), dtype=dtype, device=device)
    voxel = voxel_size if voxel_size is not None else float(getattr(field, "voxel_size", 2.0 / 64))
    total = torch.zeros(len(points), 3, dtype=torch.float64, device=device)
    weights = torch.zeros(len(points), dtype=torch.float64, device=device)
    with torch.no_grad():
        for view in bake_views() if views is None else views:
            colour, weight = _view_contribution(field, camera_from_view(view, size), decode, points, dirs, voxel)
            total += weight.double()[:, None] * colour.double()
            weights += weight.double()
    seen = (weights > 1e-8).cpu().numpy()
    rgb = (total / weights.clamp_min(1e-8)[:, None]).cpu().numpy()
    if not seen.any():
        rgb[:] = 1.0 / 3.0  # mid grey: nothing to go on
    elif not seen.all():  # occluded pockets and the underside: nearest seen vertex
        _, nearest = cKDTree(vertices[seen]).query(vertices[~seen])
        rgb[~seen] = rgb[seen][nearest]
    rgb8 = np.round((np.clip(rgb, -1, 1) + 1) * 127.5).astype(np.uint8)
    return np.concatenate([rgb8, np.full((len(rgb8), 1), 255, np.uint8)], axis=1)
