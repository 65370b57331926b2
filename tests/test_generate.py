"""`sjc generate` with the toy prior, end to end."""

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
import trimesh

from sjc.app.commands import cli
from sjc.app.runs.generate import generate, load_run
from sjc.app.settings.presets import preset
from sjc.outputs.metrics import mesh_occupancy, shape_scores
from sjc.priors.toy import COLOURS


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("toy-cache"))


def _config(name, prompt, out, cache_dir, **changes):
    cfg = preset("toy", name)
    return dataclasses.replace(
        cfg, prompt=prompt, out=str(out), toy=dataclasses.replace(cfg.toy, cache_dir=cache_dir), **changes
    )


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("runs") / "cube"
    return generate(_config("tiny", "a red and blue cube", out, cache_dir), progress=False)


def test_tiny_generate_writes_a_complete_run_folder(tiny_run):
    run_dir = tiny_run.run_dir
    for name in ("config.json", "log.jsonl", "turntable.mp4", "turntable.gif", "views.png", "mesh.glb", "metrics.json"):
        assert (run_dir / name).stat().st_size > 0, name
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir())[-1] == "step_0000300.safetensors"
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["prompt"] == "a red and blue cube" and saved["train"]["seed"] == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["iou_3d"] == pytest.approx(tiny_run.metrics["iou_3d"])


def test_tiny_generate_reaches_a_measured_quality(tiny_run):
    # A 16^3 grid cannot tell a cube from a sphere, but it does recover a solid of the right size.
    assert tiny_run.metrics["iou_3d"] >= 0.5
    assert tiny_run.metrics["silhouette_iou"] >= 0.45


def test_run_folder_reloads(tiny_run):
    cfg, field, step = load_run(tiny_run.run_dir)
    assert step == 300 and torch.equal(field.grid, tiny_run.field.grid)


def test_an_occupied_run_folder_is_refused_unless_overwrite(tiny_run, cache_dir, capsys):
    args = ["generate", "a red cube", "--preset", "tiny", "--out", str(tiny_run.run_dir)]
    assert cli.main(args) == 2
    assert "already holds a run" in capsys.readouterr().err
    before = (tiny_run.run_dir / "config.json").read_text()
    assert json.loads(before)["prompt"] == "a red and blue cube"  # nothing was touched


def test_a_prompt_outside_the_grammar_exits_2_with_one_line(tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "sjc",
            "generate",
            "a fluffy dragon",
            "--preset",
            "tiny",
            "--out",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in out.stderr
    for word in ("cube", "torus", "red", "purple"):
        assert word in lines[0]
    assert not (tmp_path / "r").exists()


@pytest.mark.slow
def test_default_preset_makes_a_measurably_good_two_colour_cube(tmp_path, cache_dir):
    result = generate(_config("default", "a red and blue cube", tmp_path / "cube", cache_dir), progress=False)
    m = result.metrics
    assert m["iou_3d"] >= 0.75, m
    assert m["silhouette_iou"] >= 0.85, m
    assert m["shape_accuracy"], m["shape_scores"]
    mesh = trimesh.load(result.files["mesh"], force="mesh")
    scores = shape_scores(mesh_occupancy(mesh, 48))
    assert scores["cube"] >= 0.7, scores
    assert max(scores, key=scores.get) == "cube", scores
    # The prompt's colours on the right sides: red on the front (+z), blue behind.
    front, back = _sides_in_colour(mesh, "red", "blue")
    assert front >= 0.9 and back >= 0.9, (front, back)
    # `sjc export` reads the same run folder back and gives the same answer.
    assert cli.main(["export", str(result.run_dir), "--mesh", str(tmp_path / "cube.ply")]) == 0
    front, back = _sides_in_colour(trimesh.load(tmp_path / "cube.ply", force="mesh"), "red", "blue")
    assert front >= 0.9 and back >= 0.9, (front, back)


def _sides_in_colour(mesh: trimesh.Trimesh, front: str, back: str) -> tuple[float, float]:
    """Fractions of the front vertices (z > 0.1) whose colour is nearer in hue to `front` than to
    `back`, and of the back vertices (z < -0.1) nearer to `back` (brightness, i.e. shading, ignored)."""
    rgb = np.asarray(mesh.visual.vertex_colors)[:, :3] / 255.0
    rgb = rgb / np.linalg.norm(rgb, axis=1, keepdims=True).clip(1e-6)
    palette = np.array([COLOURS[front], COLOURS[back]])
    palette /= np.linalg.norm(palette, axis=1, keepdims=True)
    is_front_colour = (rgb @ palette.T).argmax(axis=1) == 0
    z = mesh.vertices[:, 2]
    return float(is_front_colour[z > 0.1].mean()), float((~is_front_colour[z < -0.1]).mean())
