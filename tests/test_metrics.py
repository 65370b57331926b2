"""Tests of the metrics on analytic cases and on voxel fields built from the ground truth."""

from __future__ import annotations

import math

import pytest
import torch

from sjc.core.cameras import View, camera_from_view
from sjc.core.render import render
from sjc.core.voxel import VoxelField
from sjc.outputs import metrics
from sjc.priors import toy as tw


def _blob(n: int = 24) -> torch.Tensor:
    """An asymmetric occupancy: a box centred on +x (x in [0.3, 0.8]) and low in y."""
    c = -1 + (torch.arange(n) + 0.5) * 2 / n
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    return (x > 0.3) & (x < 0.8) & (y.abs() < 0.3) & (z.abs() < 0.2) | (x.abs() < 0.1) & (z.abs() < 0.1) & (y > 0)


def test_iou_analytic():
    a = torch.zeros(4, 4, 4, dtype=torch.bool)
    a[:2] = True
    assert metrics.iou(a, a) == 1.0 and metrics.iou(a, ~a) == 0.0
    b = torch.zeros_like(a)
    b[1:3] = True
    assert metrics.iou(a, b) == pytest.approx(1 / 3)
    assert metrics.iou(torch.zeros_like(a), torch.zeros_like(a)) == 1.0


def test_cube_vs_sphere_iou():
    # Intersection = sphere minus six caps of height 0.1; the cube's corners stick out.
    sphere, cube = 4 / 3 * math.pi * 0.125, 0.512
    inter = sphere - 6 * math.pi * 0.1**2 * (3 * 0.5 - 0.1) / 3
    expected = inter / (sphere + cube - inter)
    got = metrics.iou(tw.true_occupancy_grid("cube", 100), tw.true_occupancy_grid("sphere", 100))
    assert got == pytest.approx(expected, abs=0.01) and got == pytest.approx(0.73, abs=0.01)


def test_rotation_direction():
    # +90 deg takes +x to -z (a point's azimuth grows: azimuth 90 is +x, 180 is -z).
    grid = _blob()
    turned = metrics.rotate_about_vertical(grid, 90)
    n = grid.shape[0]
    c = -1 + (torch.arange(n) + 0.5) * 2 / n
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    assert (z[turned] < 0).float().mean() > 0.8 and x[turned].abs().max() < 0.35
    assert turned.sum() == grid.sum()  # quarter turns of a centred grid are exact
    assert torch.equal(metrics.rotate_about_vertical(turned, -90), grid)
    assert torch.equal(metrics.rotate_about_vertical(grid, 0), grid)


@pytest.mark.parametrize("angle", [90, 40, 215])
def test_best_rotation_recovers_the_angle(angle):
    grid = _blob(32)
    pred = metrics.rotate_about_vertical(grid, angle)
    scores = metrics.rotation_ious(pred, grid)
    best, found = max(scores), metrics.ANGLES[scores.index(max(scores))]
    assert found == angle
    assert best == pytest.approx(1.0) if angle % 90 == 0 else best > 0.85
    assert metrics.iou(pred, grid) < 0.5


def test_fill_interior():
    solid = tw.true_occupancy_grid("sphere", 32)
    hollow = solid.clone()
    hollow[12:20, 12:20, 12:20] = False
    assert metrics.iou(metrics.fill_interior(hollow), solid) == 1.0
    torus = tw.true_occupancy_grid("torus", 32)  # its hole is open to the outside: left empty
    assert torch.equal(metrics.fill_interior(torus), torus)


def test_psnr_known_values():
    a = torch.zeros(3, 8, 8)
    assert metrics.psnr(a, a) == math.inf
    assert metrics.psnr(a + 0.2, a) == pytest.approx(10 * math.log10(4 / 0.04))
    assert metrics.psnr(a + 2.0, a) == pytest.approx(0.0)
    assert metrics.psnr(a + 0.1, a, data_range=1.0) == pytest.approx(20.0)


def test_silhouette_iou():
    m = torch.zeros(4, 4, dtype=torch.bool)
    m[:2] = True
    assert metrics.silhouette_iou(m, m) == 1.0 and metrics.silhouette_iou(m, ~m) == 0.0


def test_shape_scores_pick_the_right_shape():
    for shape in ("cube", "torus", "cone"):
        occ = metrics.true_rotations(shape, 24, [30])[0]
        scores = metrics.shape_scores(occ, 24, angles=range(0, 90, 10))
        assert set(scores) == set(tw.KNOWN_SHAPES) and scores[shape] == 1.0
        assert metrics.shape_accuracy(scores, shape)
    with pytest.raises(ValueError, match="resolution"):
        metrics.shape_scores(occ, 32)


# --- evaluate_field on fields built from the truth ------------------------------------------
def _true_field(scene: tw.Scene, n: int = 32, angle: float = 0.0) -> VoxelField:
    """A VoxelField holding the scene turned by `angle` about +y: occupancy and shaded colours."""
    field = VoxelField(n, 3, feature_activation="sigmoid", background="fixed", background_value=1.0)
    q = field.voxel_centres().view(-1, 3).double()
    cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    x, y, z = q.unbind(-1)
    src = torch.stack([cos * x - sin * z, y, sin * x + cos * z], dim=-1)  # where each voxel reads the truth
    occ = tw.occupancy(scene, src).view(n, n, n)
    rgb = tw.shaded_colour(scene, src).clamp(0.01, 0.99).float()
    with torch.no_grad():
        field.grid[0, 0] = torch.where(occ, 50.0, -50.0)  # softplus(-51): empty
        field.grid[0, 1:] = torch.logit(rgb).T.reshape(3, n, n, n)
    return field


def test_evaluate_field_on_the_truth():
    scene = tw.parse_prompt("a red and blue sphere")
    out = metrics.evaluate_field(_true_field(scene), scene, views=tw.held_out_views(4), image_size=48)
    assert out["iou_3d"] > 0.9 and out["silhouette_iou"] > 0.9 and out["psnr"] > 20
    assert out["angle"] == 0.0 and out["shape_accuracy"] and out["shape_scores"]["sphere"] > 0.9
    assert set(out["iou_sweep"]) >= set(metrics.THRESHOLDS)


@pytest.mark.parametrize(
    "prompt, resolution, angle", [("a green and purple sphere", 32, 90.0), ("a red and blue cube", 48, 30.0)]
)
def test_evaluate_field_finds_the_turn(prompt, resolution, angle):
    # The field holds the object turned by `angle`: the sphere's geometry cannot tell, its colours can;
    # the cube's geometry leaves a quarter-turn ambiguity, its colours break it. (The cube needs a
    # finer grid: at 32^3 its voxelised faces sit 0.4 voxel inside the true ones.)
    scene = tw.parse_prompt(prompt)
    views = tw.held_out_views(4)
    field = _true_field(scene, resolution, angle)
    out = metrics.evaluate_field(field, scene, views=views, image_size=48)
    assert out["angle"] == angle and out["iou_3d"] > 0.9
    assert out["silhouette_iou"] > 0.9 and out["psnr"] > 18
    # The other sign of the turn, or none, would score far worse.
    v = views[0]
    image, _, _ = tw.render_scene(scene, camera_from_view(v, 48))
    for azimuth in (v.azimuth - angle, v.azimuth):
        wrong = render(field, camera_from_view(View(azimuth, v.elevation), 48)).image[0]
        assert metrics.psnr(wrong, image) < out["psnr_per_view"][0] - 3


@pytest.mark.parametrize("shape", tw.KNOWN_SHAPES)
def test_symmetric_shapes_are_unchanged_by_turns(shape):
    grid = tw.true_occupancy_grid(shape, 24)
    assert torch.equal(metrics.true_rotations(shape, 24, [0])[0], grid)
    # Evaluate the shape turned by 37 deg directly: only the cube changes.
    c = -1 + (torch.arange(24, dtype=torch.float64) + 0.5) / 12
    z, y, x = torch.meshgrid(c, c, c, indexing="ij")
    cos, sin = math.cos(math.radians(37)), math.sin(math.radians(37))
    turned = tw.occupancy(shape, torch.stack([cos * x - sin * z, y, sin * x + cos * z], -1).view(-1, 3)).view(
        grid.shape
    )
    assert (metrics.iou(turned, grid) > 0.97) == (shape in tw.SYMMETRIC_SHAPES)
    assert metrics.iou(metrics.true_rotations(shape, 24, [37])[0], turned) > 0.97
    assert torch.equal(metrics.rotate_about_vertical(grid, 90), grid)  # all five have quarter-turn symmetry


def test_mesh_occupancy_of_an_analytic_cube_mesh_matches_the_cube():
    import trimesh

    from sjc.outputs.metrics import mesh_occupancy, shape_scores

    occ = mesh_occupancy(trimesh.creation.box((0.8, 0.8, 0.8)), 48)
    scores = shape_scores(occ)
    assert scores["cube"] > 0.97
    assert max(scores, key=scores.get) == "cube"
    shifted = mesh_occupancy(trimesh.creation.box((0.8, 0.8, 0.8)).apply_translation((0.4, 0, 0)), 48)
    assert shape_scores(shifted)["cube"] < 0.5


def test_the_prompt_classifier_learns_shape_and_colour_from_true_renders(tmp_path):
    from sjc.outputs.metrics import train_prompt_classifier

    # Same colour, different shape; same shape, different colour; a two-colour one.
    prompts = ["a red cube", "a red sphere", "a blue cube", "a green and red torus"]
    clf = train_prompt_classifier(prompts, n=300, seed=0, epochs=8, cache_dir=tmp_path)
    for prompt in prompts:  # renders from another seed: views the classifier never saw
        predicted = clf.predict(tw.make_dataset(prompt, 60, 32, seed=1, cache_dir=tmp_path).images)
        assert sum(q == prompt for q in predicted) >= 54, (prompt, predicted)
