"""The closed occupancy behind the 'closed 3D IoU': hand-made grids show what the training cameras cannot see."""

import math

import numpy as np
import pytest
import torch

from sjc.core.cameras import sample_training_view
from sjc.outputs.metrics import fill_interior, iou, true_rotations
from sjc.outputs.visibility import closed_occupancy, hidden_space, lowest_training_elevation, training_camera_positions

N = 32


def _coords(n=N):
    c = -1 + (torch.arange(n, dtype=torch.float64) + 0.5) * 2 / n
    zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
    return xx, yy, zz


def _box(half: float, n=N):
    xx, yy, zz = _coords(n)
    return (xx.abs() < half) & (yy.abs() < half) & (zz.abs() < half)


def test_the_camera_set_spans_the_training_cap():
    cams = training_camera_positions()
    assert np.allclose(np.linalg.norm(cams, axis=1), 1.5)
    elevations = np.degrees(np.arcsin(cams[:, 1] / 1.5))
    gen = torch.Generator().manual_seed(0)
    drawn = [sample_training_view(gen).elevation for _ in range(4000)]
    # The lowest ring is the lowest a training camera can go, and the top camera is there too.
    assert elevations.min() == pytest.approx(lowest_training_elevation()) == pytest.approx(-6.38, abs=0.01)
    assert min(drawn) >= elevations.min() - 1e-9 and elevations.max() == pytest.approx(90.0)
    assert len(cams) == 8 * 36 + 1


def test_a_closed_solid_only_gains_the_sliver_under_its_floor():
    cube = _box(0.4)
    hidden = hidden_space(cube)
    assert hidden.any()
    _, yy, _ = _coords()
    # Every hidden voxel lies under the cube's floor, within the shadow of the lowest camera's slope.
    assert (yy[hidden] < -0.4).all()
    slope = math.tan(math.radians(-lowest_training_elevation()) + math.atan2(1.5 * math.sin(math.radians(6.38)), 1.5))
    assert (yy[hidden] > -0.4 - 0.4 * slope - 2 / N).all()
    assert hidden.sum() < 0.05 * cube.sum()


def test_an_open_bottomed_shell_closes_to_the_solid():
    xx, yy, zz = _coords()
    cube = _box(0.4)
    inner = (xx.abs() < 0.3) & (zz.abs() < 0.3) & (yy < 0.3)  # hollowed out, open at the bottom
    shell = cube & ~inner
    assert fill_interior(shell).sum() == shell.sum()  # a flood fill sees an opening...
    assert torch.equal(closed_occupancy(shell), closed_occupancy(cube))  # ...which no camera can look into
    assert iou(fill_interior(shell), cube) < 0.5 and iou(closed_occupancy(shell), closed_occupancy(cube)) == 1.0


def test_a_hollow_solid_closes_as_the_flood_fill_does():
    hollow = _box(0.4) & ~_box(0.3)
    closed = closed_occupancy(hollow)
    assert torch.equal(closed, closed_occupancy(_box(0.4)))
    assert (fill_interior(hollow) <= closed).all()


def test_an_open_topped_shell_is_not_closed_the_cameras_see_inside():
    xx, yy, zz = _coords()
    cube = _box(0.4)
    cup = cube & ~((xx.abs() < 0.3) & (zz.abs() < 0.3) & (yy > -0.3))
    closed = closed_occupancy(cup)
    inside = (xx.abs() < 0.3) & (zz.abs() < 0.3) & (yy > -0.1)
    assert not (closed & inside).any()  # the overhead cameras see the upper part of the cup's inside
    assert iou(closed, closed_occupancy(cube)) < 0.8


def test_open_space_is_seen_and_paths_through_face_gaps_count():
    empty = torch.zeros(N, N, N, dtype=torch.bool)
    assert not hidden_space(empty).any()
    # A closed shell with one voxel removed from its side: the hole lets cameras look in.
    hollow = _box(0.4) & ~_box(0.3)
    xx, yy, zz = _coords()
    k = N // 2
    leaky = hollow.clone()
    leaky[k, k, (xx[0, 0] > 0.3).nonzero()[:, 0]] = False  # a tunnel through the +x wall at the centre
    assert hidden_space(leaky).sum() < hidden_space(hollow).sum()


def test_every_suite_shape_is_its_own_closure_but_for_the_floor_sliver():
    for shape in ("sphere", "cube", "cylinder", "cone", "torus"):
        truth = true_rotations(shape, N, [0.0])[0]
        closed = closed_occupancy(truth)
        _, yy, _ = _coords()
        added = closed & ~truth
        assert (yy[added] < -0.1).all(), shape  # only under the object
        assert added.sum() <= 0.1 * truth.sum(), shape  # the cone: 68 voxels under 748


# --- the constrained 3D IoU: what the true shape hides is not counted ------------------------------------------
def _cone_truth(n):
    from sjc.priors import toy

    xx, yy, zz = _coords(n)
    return toy.occupancy("cone", torch.stack([xx, yy, zz], -1).view(-1, 3)).view(n, n, n)


def test_the_true_shapes_hidden_space_is_found_from_the_shape_not_its_voxels():
    from sjc.outputs.metrics import true_hidden

    n = 64
    # The cone's base (y = -0.45) lies 0.003 above a layer of voxel centres (-0.453): that layer is outside the
    # truth, and the voxelised truth hides almost nothing under it. The shape itself hides a flat cone there: at
    # depth d under the base, everything within 0.45 - d / slope of the axis, slope that of a ray from the lowest
    # camera (height 1.5 sin(-6.38 deg)) over the base's near rim.
    hidden = true_hidden("cone", n)
    truth = _cone_truth(n)
    assert not (hidden & truth).any()
    xx, yy, zz = _coords(n)
    r = (xx.square() + zz.square()).sqrt()
    cam_y, cam_r = 1.5 * math.sin(math.radians(lowest_training_elevation())), 1.5 * math.cos(math.radians(6.38))
    slope = (cam_y + 0.45) / (cam_r - 0.45)
    depth = -0.45 - yy
    inside = (depth > 0) & (r < 0.45 - depth / slope - 2 * 2 / n)  # two voxels inside the analytic boundary
    outside = (depth < 0) | (r > 0.45 - depth / slope + 2 * 2 / n)
    assert hidden[inside].all() and not hidden[outside].any()
    assert hidden.sum() > 1.5 * (hidden_space(truth)).sum()  # the voxel grid's own shadow is far smaller


def test_the_constrained_iou_does_not_count_what_the_truth_hides_and_counts_what_it_shows():
    from sjc.outputs.metrics import true_hidden
    from sjc.outputs.visibility import constrained_iou

    n = 32
    truth, hidden = _cone_truth(n), true_hidden("cone", n)
    assert constrained_iou(truth, truth, hidden) == 1.0
    # A skirt under the base, inside what the cone hides, costs nothing; the 3D IoU counts all of it.
    skirt = truth | hidden
    assert constrained_iou(skirt, truth, hidden) == 1.0 and iou(skirt, truth) < 0.95
    # Anything a camera sees in the true scene counts: a voxel layer over the tip, or a ring round the base.
    xx, yy, zz = _coords(n)
    over = truth | ((xx.abs() < 0.1) & (zz.abs() < 0.1) & (yy > 0.45) & (yy < 0.55))
    added = (over & ~truth).sum().item()
    assert constrained_iou(over, truth, hidden) == pytest.approx(truth.sum().item() / (truth.sum().item() + added))
    # Hollowed from below, open underneath: no camera looks in, so the inside counts as the solid's.
    hollow = truth & ~((yy < -0.15) & (xx.square() + zz.square() < 0.2**2))
    assert fill_interior(hollow).sum() == hollow.sum()
    assert iou(fill_interior(hollow), truth) < 0.9 and constrained_iou(hollow, truth, hidden) == 1.0
    # Hollowed through its side: the cameras see in, and what they see missing is a miss.
    holed = truth & ~((yy > -0.15) & (yy < 0.1) & (xx > 0) & (xx.square() + zz.square() < 0.3**2))
    assert constrained_iou(holed, truth, hidden) == pytest.approx(iou(holed, truth))
    assert iou(holed, truth) < 0.95
    # It is never below the 3D IoU of the same occupancy.
    gen = torch.Generator().manual_seed(0)
    for _ in range(3):
        noisy = truth ^ (torch.rand(n, n, n, generator=gen) < 0.01)
        assert constrained_iou(fill_interior(noisy), truth, hidden) >= iou(fill_interior(noisy), truth)


def test_an_open_topped_cup_is_not_forgiven_by_the_constrained_iou():
    from sjc.outputs.visibility import constrained_iou, hidden_centres

    xx, yy, zz = _coords()
    cube = _box(0.4)
    cup = cube & ~((xx.abs() < 0.3) & (zz.abs() < 0.3) & (yy > -0.3))  # open at the top: cameras see inside
    hidden = hidden_centres(cup, N) & ~cup  # the cup hides only the sliver under its floor
    assert not hidden[(yy > -0.4)].any()
    # A solid where the truth is a cup fills what the cameras see inside it.
    assert constrained_iou(cube, cup, hidden) == pytest.approx(cup.sum().item() / cube.sum().item(), abs=1e-9)
