"""Pinhole cameras, the paper's training-view distribution, and test orbits.

Frame: OpenGL camera-to-world (the camera looks down its -z axis, +y is up), world +y up,
every camera looks at the origin. Azimuth 0 puts the camera on the +z axis ("front"),
azimuth 90 on +x. FoV is horizontal, in degrees at the API, radians inside formulas.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

# Elevation above which a view counts as "overhead": the official code draws
# v ~ U[0, 100 deg] and calls v < 30 deg overhead; polar = arccos(1 - 2 v / pi)
# maps that to cos(polar) > 2/3, i.e. elevation > asin(2/3) = 41.8 deg.
OVERHEAD_ELEVATION_DEG = math.degrees(math.asin(2.0 / 3.0))


@dataclass(frozen=True)
class View:
    """Where a camera sits on its sphere around the origin (degrees, world units)."""

    azimuth: float
    elevation: float
    fov: float = 60.0
    radius: float = 1.5


@dataclass(frozen=True)
class Camera:
    """A pinhole camera: intrinsics K [3, 3], pose c2w [4, 4], image size in pixels."""

    K: Tensor
    c2w: Tensor
    height: int
    width: int

    def rays(self, device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
        """Origins and unit directions of the rays through every pixel centre: [H*W, 3] each."""
        origins, dirs = batch_rays([self], device, dtype)
        return origins[0], dirs[0]


def batch_rays(cameras: list[Camera], device: torch.device | str | None = None, dtype: torch.dtype = torch.float32):
    """Rays of many cameras of one image size at once: origins, unit dirs [N, H*W, 3]."""
    H, W = cameras[0].height, cameras[0].width
    K = torch.stack([c.K for c in cameras]).to(device=device, dtype=dtype)  # [N, 3, 3]
    c2w = torch.stack([c.c2w for c in cameras]).to(device=device, dtype=dtype)  # [N, 4, 4]
    i = torch.arange(H, device=device, dtype=dtype) + 0.5
    j = torch.arange(W, device=device, dtype=dtype) + 0.5
    ii, jj = (g.reshape(1, -1) for g in torch.meshgrid(i, j, indexing="ij"))  # [1, H*W]
    x = (jj - K[:, 0, 2:3]) / K[:, 0, 0:1]
    y = -(ii - K[:, 1, 2:3]) / K[:, 1, 1:2]  # image rows grow downwards, camera y upwards
    d_cam = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [N, H*W, 3]
    dirs = d_cam @ c2w[:, :3, :3].transpose(1, 2)
    dirs = dirs / dirs.norm(dim=-1, keepdim=True)
    return c2w[:, None, :3, 3].expand_as(dirs), dirs


def intrinsics_from_fov(fov_deg: float, height: int, width: int) -> Tensor:
    """K for a horizontal field of view; square pixels, principal point at the image centre."""
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    return torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]], dtype=torch.float64)


def look_at(eye: Tensor, target: Tensor | None = None, up: Tensor | None = None) -> Tensor:
    """Camera-to-world pose [4, 4] of a camera at `eye` looking at `target` (default origin)."""
    eye = torch.as_tensor(eye, dtype=torch.float64)
    target = torch.zeros(3, dtype=torch.float64) if target is None else torch.as_tensor(target, dtype=torch.float64)
    up = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64) if up is None else torch.as_tensor(up, dtype=torch.float64)
    back = eye - target  # camera +z points away from what it looks at
    back = back / back.norm()
    right = torch.linalg.cross(up, back)
    if right.norm() < 1e-9:  # looking straight along `up`: any horizontal right vector works
        right = torch.tensor([1.0, 0.0, 0.0], dtype=torch.float64)
    right = right / right.norm()
    true_up = torch.linalg.cross(back, right)
    c2w = torch.eye(4, dtype=torch.float64)
    c2w[:3, 0], c2w[:3, 1], c2w[:3, 2], c2w[:3, 3] = right, true_up, back, eye
    return c2w


def eye_position(view: View) -> Tensor:
    """World position of the camera of `view`."""
    az, el = math.radians(view.azimuth), math.radians(view.elevation)
    return view.radius * torch.tensor(
        [math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az)], dtype=torch.float64
    )


def camera_from_view(view: View, height: int, width: int | None = None) -> Camera:
    width = height if width is None else width
    return Camera(intrinsics_from_fov(view.fov, height, width), look_at(eye_position(view)), height, width)


def sample_training_view(
    generator: torch.Generator,
    radius: float = 1.5,
    fov_range: tuple[float, float] = (40.0, 70.0),
    max_polar_param_deg: float = 100.0,
    fov_ends: bool = False,
) -> View:
    """One view from the paper's training distribution.

    Azimuth is uniform; the direction is area-uniform on the spherical cap from the top
    down to polar = arccos(1 - 2 v / pi) with v = `max_polar_param_deg` (100 deg gives an
    elevation of about -6.4 deg); FoV is uniform in `fov_range`, or with `fov_ends` one of its two ends
    with equal chance (the same three draws either way).
    """
    u = torch.rand(3, generator=generator, dtype=torch.float64).tolist()
    v = math.radians(max_polar_param_deg) * u[1]
    polar = math.acos(1.0 - 2.0 * v / math.pi)
    return View(
        azimuth=360.0 * u[0],
        elevation=90.0 - math.degrees(polar),
        fov=fov_range[u[2] >= 0.5] if fov_ends else fov_range[0] + (fov_range[1] - fov_range[0]) * u[2],
        radius=radius,
    )


def view_bucket(view: View) -> str:
    """'overhead' above about 42 deg elevation, else 'front' / 'side' / 'back' by azimuth
    quadrant centred on the front (+z)."""
    if view.elevation > OVERHEAD_ELEVATION_DEG:
        return "overhead"
    quadrant = int(((view.azimuth + 45.0) % 360.0) // 90.0)
    return ("front", "side", "back", "side")[quadrant]


# The paper's view-dependent prompts: the text is prefixed with the side it is seen from.
VIEW_PREFIXES = {
    "front": "front view of",
    "side": "side view of",
    "back": "backside view of",
    "overhead": "overhead view of",
}


def view_prompt(prompt: str, view: View) -> str:
    """`prompt` with the prefix of the view bucket of `view`, e.g. "front view of a red cube"."""
    return f"{VIEW_PREFIXES[view_bucket(view)]} {prompt}"


def turntable_views(n: int, elevation: float = 15.0, radius: float = 1.5, fov: float = 60.0) -> list[View]:
    """`n` views evenly spaced in azimuth at a fixed elevation, starting at the front."""
    return [View(360.0 * k / n, elevation, fov, radius) for k in range(n)]


def spiral_views(
    n: int, rounds: int = 2, elevations: tuple[float, float] = (60.0, -5.0), radius: float = 1.5, fov: float = 60.0
) -> list[View]:
    """`n` views circling `rounds` times while the elevation sweeps from high to low."""
    top, bottom = elevations
    views = []
    for k in range(n):
        s = k / max(n - 1, 1)
        views.append(View((360.0 * rounds * s) % 360.0, top + (bottom - top) * s, fov, radius))
    return views
