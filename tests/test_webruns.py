"""The web page's logic without a server: form to config, runs in a thread, the gallery, and its paths."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
import zipfile

import pytest

from sjc.app.checkpoint import list_checkpoints
from sjc.app.cli import main
from sjc.app.presets import preset
from sjc.app.web import progress_html
from sjc.app.webruns import (
    Form,
    Job,
    RunNotFound,
    form_config,
    list_runs,
    open_run,
    preset_values,
    resume_config,
    zip_run,
)
from sjc.core.errors import ConfigError
from sjc.priors.toy import PromptError

PRIORS = ["toy", "toy-learned"]


def test_a_form_is_its_preset_with_the_forms_values_over_it(tmp_path):
    cfg = form_config(Form("  a red   cube ", preset="tiny", steps=40, seed=7, scoring="naive"), tmp_path, PRIORS)
    tiny = preset("toy", "tiny")
    assert cfg.prompt == "a red cube" and cfg.train.steps == 40 and cfg.train.seed == 7
    assert cfg.scoring.method == "naive" and cfg.field == tiny.field and cfg.toy == tiny.toy
    assert cfg.out == str(tmp_path / "a-red-cube-s7")
    changed = form_config(Form("a red cube", resolution=24, emptiness_weight=0.0, threads=2), tmp_path, PRIORS)
    assert changed.field.resolution == 24 and changed.losses.emptiness_weight == 0.0 and changed.threads == 2
    assert preset_values("toy", "tiny")["steps"] == tiny.train.steps


@pytest.mark.parametrize(
    "form, message",
    [
        (Form("a red banana"), "cannot parse prompt 'a red banana'"),
        (Form(""), "type a prompt first"),
        (Form("a red cube", steps=0), "--train.steps must be positive, got 0"),
        (Form("a red cube", steps=2.5), "steps must be a whole number, got 2.5"),
        (Form("a red cube", resolution=1), "--field.resolution must be at least 2, got 1"),
        (Form("a red cube", threads=0), "threads must be at least 1, got 0"),
        (Form("a red cube", prior="sd"), "prior 'sd' is not available on this server"),
        (Form("a red cube", preset="huge"), "unknown preset 'huge'"),
        (Form("a red cube", scoring="magic"), "unknown scoring 'magic'"),
    ],
)
def test_bad_forms_get_one_line_messages_and_write_nothing(tmp_path, form, message):
    with pytest.raises((ConfigError, PromptError)) as err:
        form_config(form, tmp_path, PRIORS)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_run_folders_never_collide_and_never_leave_the_runs_folder(tmp_path):
    first = form_config(Form("a red cube"), tmp_path, PRIORS)
    second = form_config(Form("a red cube"), tmp_path, PRIORS)
    assert (first.out, second.out) == (str(tmp_path / "a-red-cube-s0"), str(tmp_path / "a-red-cube-s0-2"))
    assert os.listdir(first.out) == [] and os.listdir(second.out) == []  # made empty, for generate to fill
    with pytest.raises(PromptError):  # not a toy prompt; and even its slug would stay inside
        form_config(Form("../../etc/passwd"), tmp_path, PRIORS)


def test_a_job_runs_stops_with_a_checkpoint_and_resumes(tmp_path):
    cfg = form_config(Form("a blue cone", preset="tiny", steps=2000), tmp_path, PRIORS)
    job = Job(cfg).start()
    while job.snapshot().step < 30:
        assert job.thread.is_alive(), job.message
        time.sleep(0.05)
    job.stop()
    assert job.wait(60)
    snap = job.snapshot()
    assert job.state == "stopped" and snap.message.startswith(f"stopped at step {snap.step}")
    assert list_checkpoints(job.run_dir)[-1][0] == snap.step and snap.preview.shape[-1] == 3
    assert [h[0] for h in snap.history] == list(range(1, snap.step + 1))
    info = open_run(tmp_path, job.run_dir.name)
    assert info.resumable and info.step == snap.step and "resumable" in info.status
    again = Job(resume_config(info.path)).start()
    assert again.wait(120) and again.state == "finished", again.message
    info = open_run(tmp_path, job.run_dir.name)
    assert info.finished and set(info.files) >= {"glb", "obj", "mp4", "views"} and info.metrics["iou_3d"] > 0
    assert again.snapshot().history[0][0] == snap.step + 1  # continued, not restarted


def test_a_failing_job_reports_its_message(tmp_path):
    cfg = form_config(Form("a red and blue cube", prior="toy-learned", preset="tiny"), tmp_path, PRIORS)
    job = Job(dataclasses.replace(cfg, prompt="a red and blue and green cube")).start()
    assert job.wait(60) and job.state == "failed" and "cannot parse prompt" in job.message
    assert not job.run_dir.exists()  # nothing left behind


def make_run(runs, name, steps=10, done=True):
    run = runs / name
    (run / "checkpoints").mkdir(parents=True)
    cfg = json.loads(json.dumps({"prompt": "a red cube", "train": {"steps": steps}}))
    (run / "config.json").write_text(json.dumps(cfg))
    (run / "checkpoints" / f"step_{steps if done else 3:07d}.safetensors").write_bytes(b"x")
    if done:
        (run / "turntable.mp4").write_bytes(b"mp4")
        (run / "views.png").write_bytes(b"png")
        (run / "metrics.json").write_text(json.dumps({"iou_3d": 0.5}))
    return run


def test_the_gallery_lists_runs_and_opens_only_folders_inside(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "done-s0")
    make_run(runs, "half-s0", done=False)
    (runs / ".web").mkdir()
    (runs / "not-a-run").mkdir()
    (tmp_path / "outside").mkdir()
    make_run(tmp_path, "elsewhere")
    (runs / "link").symlink_to(tmp_path / "elsewhere")
    listed = {i.name: i for i in list_runs(runs)}
    assert set(listed) >= {"done-s0", "half-s0"} and ".web" not in listed and "not-a-run" not in listed
    assert listed["done-s0"].finished and not listed["half-s0"].finished and listed["half-s0"].step == 3
    for bad in ("..", "../elsewhere", "/etc", "link", ".web", "done-s0/..", "", "half-s0/config.json"):
        with pytest.raises(RunNotFound):
            open_run(runs, bad)
    assert open_run(runs, "done-s0").metrics == {"iou_3d": 0.5}


def test_a_run_zips_whole_into_the_pages_own_folder(tmp_path):
    runs = tmp_path / "runs"
    info = open_run(runs, make_run(runs, "done-s0").name)
    path = zip_run(runs, info)
    assert path.parent == runs / ".web" / "zips"
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == sorted(
            f"done-s0/{p.relative_to(info.path)}" for p in info.path.rglob("*") if p.is_file()
        )


def test_progress_shows_step_rate_and_time_left():
    text = progress_html(50, 200, 25.0, 6.0, "running")
    assert 'data-step="50"' in text and "width:25.0%" in text
    assert "step 50/200 · 25.0 steps/s · 0:06 left" in text


def test_serve_refuses_bad_flags_and_explains_a_missing_extra(capsys, monkeypatch):
    assert main(["serve", "--concurrency", "0"]) == 2
    assert "--concurrency must be at least 1" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "gradio", None)  # as if the [web] extra were not installed
    assert main(["serve", "--runs", "/nonexistent/never"]) == 2
    assert "pip install 'sjc[web]'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    assert "0.0.0.0" in capsys.readouterr().out
