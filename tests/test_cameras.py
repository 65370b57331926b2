import math

import pytest
import torch

from sjc.core.cameras import (
    OVERHEAD_ELEVATION_DEG,
    View,
    camera_from_view,
    look_at,
    sample_training_view,
    spiral_views,
    turntable_views,
    view_bucket,
    view_prompt,
)


@pytest.mark.parametrize("view", [View(0, 0), View(37, 20), View(200, -6), View(300, 89.9), View(90, 90)])
def test_pose_is_orthonormal_right_handed_and_looks_at_origin(view):
    c2w = camera_from_view(view, 8).c2w
    R = c2w[:3, :3]
    assert torch.allclose(R.T @ R, torch.eye(3, dtype=R.dtype), atol=1e-9)
    assert torch.det(R) == pytest.approx(1.0, abs=1e-9)
    forward = -R[:, 2]  # OpenGL: the camera looks down -z
    to_origin = -c2w[:3, 3] / c2w[:3, 3].norm()
    assert torch.allclose(forward, to_origin, atol=1e-9)
    assert c2w[:3, 3].norm() == pytest.approx(view.radius)


def test_look_at_keeps_up_vector_upright():
    c2w = look_at(torch.tensor([0.0, 0.0, 2.0]))
    assert torch.allclose(c2w[:3, 1], torch.tensor([0.0, 1.0, 0.0], dtype=c2w.dtype))
    assert torch.allclose(c2w[:3, 0], torch.tensor([1.0, 0.0, 0.0], dtype=c2w.dtype))


@pytest.mark.parametrize("size", [(8, 8), (6, 10)])
def test_ray_through_principal_point_hits_origin(size):
    H, W = size
    cam = camera_from_view(View(123, 31, fov=50), H, W)
    K = cam.K
    # A ray through the principal point: average the four centre pixels' rays.
    origins, dirs = cam.rays(dtype=torch.float64)
    dirs = dirs.view(H, W, 3)[H // 2 - 1 : H // 2 + 1, W // 2 - 1 : W // 2 + 1].mean((0, 1))
    dirs = dirs / dirs.norm()
    closest = origins[0] + dirs * (-origins[0] @ dirs)
    assert closest.norm() < 1e-9
    assert K[0, 2] == W / 2 and K[1, 2] == H / 2


def test_fov_sets_the_angle_between_edge_rays():
    cam = camera_from_view(View(0, 0, fov=60), 1, 200)  # one row: rays purely horizontal
    _, dirs = cam.rays(dtype=torch.float64)
    left, right = dirs[0], dirs[199]
    angle = math.degrees(math.acos(float(left @ right)))
    # Pixel centres sit half a pixel inside the image edges.
    expected = 2 * math.degrees(math.atan(math.tan(math.radians(30)) * 199 / 200))
    assert angle == pytest.approx(expected, abs=1e-6)


def test_training_views_lie_in_their_ranges_and_cover_them():
    gen = torch.Generator().manual_seed(0)
    views = [sample_training_view(gen) for _ in range(4000)]
    az = torch.tensor([v.azimuth for v in views])
    el = torch.tensor([v.elevation for v in views])
    fov = torch.tensor([v.fov for v in views])
    lowest = 90 - math.degrees(math.acos(1 - 2 * math.radians(100) / math.pi))
    assert az.min() >= 0 and az.max() < 360 and az.min() < 2 and az.max() > 358
    assert el.min() >= lowest - 1e-9 and el.max() <= 90 and el.min() < lowest + 1
    assert fov.min() >= 40 and fov.max() <= 70
    assert all(v.radius == 1.5 for v in views)
    # Area-uniform on the cap: sin(elevation) is uniform on [sin(lowest), 1].
    s = torch.sin(torch.deg2rad(el))
    lo = math.sin(math.radians(lowest))
    assert float(s.mean()) == pytest.approx((lo + 1) / 2, abs=0.02)


def test_view_buckets_follow_azimuth_quadrants():
    assert view_bucket(View(0, 10)) == "front"
    assert view_bucket(View(44, 10)) == "front"
    assert view_bucket(View(316, 10)) == "front"
    assert view_bucket(View(46, 10)) == "side"
    assert view_bucket(View(270, 10)) == "side"
    assert view_bucket(View(180, 10)) == "back"
    assert view_bucket(View(180, OVERHEAD_ELEVATION_DEG + 0.1)) == "overhead"
    assert pytest.approx(41.81, abs=0.01) == OVERHEAD_ELEVATION_DEG
    assert view_prompt("a cat", View(180, 0)) == "backside view of a cat"
    assert view_prompt("a cat", View(0, 60)) == "overhead view of a cat"


def test_test_orbits():
    views = turntable_views(8, elevation=15)
    assert [v.azimuth for v in views] == [45.0 * k for k in range(8)]
    spiral = spiral_views(10, elevations=(60, -5))
    assert spiral[0].elevation == 60 and spiral[-1].elevation == pytest.approx(-5)
