"""The Python API: docs/python-api.md's example runs verbatim, and its plug-in prior works from the command line."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

DOC = Path(__file__).parent.parent / "docs" / "python-api.md"


def _blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), flags=re.S)


@pytest.fixture()
def plugin_dir(tmp_path, monkeypatch):
    """The doc's gmm_prior.py written to a folder on the Python path; the working directory is that folder."""
    module = _blocks("python")[0]
    assert module.startswith("# gmm_prior.py\n")
    (tmp_path / "gmm_prior.py").write_text(module)
    (tmp_path / "not_a_prior.py").write_text("def make(prompt, device):\n    return 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    yield tmp_path
    for name in ("gmm_prior", "not_a_prior"):
        sys.modules.pop(name, None)


def test_the_documented_example_runs_verbatim_and_gives_the_documented_figures(plugin_dir):
    namespace: dict = {"__name__": "example"}
    exec(compile(_blocks("python")[1], str(DOC), "exec"), namespace)
    # The canvas seeks a mode: closer to a disc than the mixture's own spread (0.1 in [-1, 1] units).
    assert max(namespace["canvas_rms"]) < 0.05
    # Samples are draws from the mixture: their distance to the nearest mean is its standard deviation.
    assert all(0.085 < r < 0.115 for r in namespace["sample_rms"])
    # Every orthographic view of the fitted field is the disc: the field is a ball.
    assert namespace["iou"] >= 0.9 and namespace["result"].step == 300
    assert len(namespace["losses"]) == 300
    assert {"mp4", "gif", "views", "mesh"} <= set(namespace["files"])
    assert all(Path(p).stat().st_size > 0 for p in namespace["files"].values())
    printed = _blocks("text")[0]  # the doc shows what the example printed
    assert f"silhouette IoU {namespace['iou']:.3f}" in printed


def test_a_callback_can_stop_the_fit(plugin_dir):
    import torch
    from gmm_prior import make_prior

    import sjc

    prior = make_prior()
    settings = sjc.FitSettings(field=sjc.FieldConfig(resolution=8, background="fixed"))
    field = sjc.build_field(prior, settings.field)
    seen = []
    result = sjc.fit(field, prior, settings, steps=50, callback=lambda s: seen.append(s.step) or s.step == 3)
    assert result.stopped and result.step == 3 and seen == [1, 2, 3]
    assert seen and torch.isfinite(field.grid).all()


def _sjc(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    return subprocess.run([sys.executable, "-m", "sjc", *args], capture_output=True, text=True, env=env, cwd=cwd)


@pytest.mark.parametrize("command", ["sample", "canvas", "generate"])
def test_the_plugin_prior_runs_from_the_command_line(plugin_dir, command):
    done = _sjc(command, "--prior", "python:gmm_prior:make_prior", "--preset", "tiny", "--out", "out", cwd=plugin_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    out = plugin_dir / "out"
    if command == "generate":
        saved = json.loads((out / "config.json").read_text())
        assert saved["prior"] == "python:gmm_prior:make_prior" and (out / "turntable.gif").exists()
        assert "metrics" not in done.stdout  # no ground truth for a plug-in
    else:
        summary = json.loads((out / "summary.json").read_text())
        assert summary["config"]["prior"] == "python:gmm_prior:make_prior" and (out / "trajectory.gif").exists()
    if command == "sample":  # the prior's own sigma range: 0.01 to 40 in [0, 1] units, 0.02 to 80 in sjc's
        assert summary["sigmas"][0] == pytest.approx(80.0) and summary["sigmas"][-2] == pytest.approx(0.02)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("python:no_such_module:make", "cannot import 'no_such_module'"),
        ("python:gmm_prior:nothing", "has no function 'nothing'"),
        ("python:gmm_prior", "write python:PACKAGE.MODULE:FUNCTION"),
        ("python:gmm_prior:disc", "the factory raised TypeError"),  # disc(prompt, device) fails inside
        ("python:not_a_prior:make", "returned int, which lacks channels"),
        ("no-such-prior", "unknown prior 'no-such-prior'"),
    ],
)
def test_a_bad_plugin_is_one_line_and_exit_2(plugin_dir, spec, message):
    done = _sjc("sample", "--prior", spec, "--preset", "tiny", "--out", "out", cwd=plugin_dir)
    assert done.returncode == 2 and message in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_generate_takes_a_python_prior_and_cameras_and_a_stopped_run_resumes(plugin_dir):
    import dataclasses

    from gmm_prior import make_prior

    import sjc
    from sjc.core.fit import PerspectiveCameras

    calls = []

    def cameras(generator, size):  # the paper's cameras, counted
        calls.append(size)
        return PerspectiveCameras()(generator, size)

    cfg = dataclasses.replace(sjc.preset("python:gmm_prior:make_prior", "tiny"), out=str(plugin_dir / "run"))
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=12, checkpoint_every=100))
    first = sjc.generate(cfg, prior=make_prior(), cameras=cameras, callback=lambda s: s.step == 5, progress=False)
    assert first.stopped and first.files == {} and len(calls) == 5
    assert sorted(p.name for p in (plugin_dir / "run" / "checkpoints").iterdir()) == ["step_0000005.safetensors"]
    resumed = dataclasses.replace(cfg, resume=cfg.out)
    done = sjc.generate(resumed, prior=make_prior(), cameras=cameras, progress=False)
    assert not done.stopped and len(calls) == 12 and {"mp4", "views"} <= set(done.files)
    _, field, step = sjc.load_run(plugin_dir / "run")
    assert step == 12 and sjc.load_run(plugin_dir / "run")[1].grid.equal(done.field.grid)


def test_an_entry_point_names_a_plugin_prior(plugin_dir):
    info = plugin_dir / "gmm_prior-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: gmm-prior\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[sjc.priors]\ngmm = gmm_prior:make_prior\n")
    done = _sjc("sample", "--prior", "gmm", "--preset", "tiny", "--out", "out", cwd=plugin_dir)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads((plugin_dir / "out" / "summary.json").read_text())["config"]["prior"] == "gmm"
