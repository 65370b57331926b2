"""The web page's logic without a server: form to config, runs in a thread, the gallery, and its paths."""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest

from sjc.app.commands.cli import main
from sjc.app.runs.checkpoint import list_checkpoints
from sjc.app.settings.config import markdown_text, to_json
from sjc.app.settings.presets import preset
from sjc.app.settings.saved import resume_config as check_resume
from sjc.app.settings.saved import resume_defaults
from sjc.app.web.jobs import (
    Form,
    Job,
    Limits,
    RunNotFound,
    form_config,
    list_runs,
    metrics_table,
    open_run,
    preset_values,
    resume_config,
    zip_run,
)
from sjc.app.web.page import Page, progress_html, prune_cache
from sjc.core.errors import ConfigError
from sjc.priors.toy import PromptError

PRIORS = ["toy", "toy-learned"]


def test_a_form_is_its_preset_with_the_forms_values_over_it(tmp_path):
    cfg = form_config(Form("  a red   cube ", preset="tiny", steps=40, seed=7, scoring="naive"), tmp_path, PRIORS)
    tiny = preset("toy", "tiny")
    assert cfg.prompt == "a red cube" and cfg.train.steps == 40 and cfg.train.seed == 7
    assert cfg.scoring.method == "naive" and cfg.field == tiny.field and cfg.toy == tiny.toy
    assert cfg.out == str(tmp_path / "a-red-cube-seed7")
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
    assert (first.out, second.out) == (str(tmp_path / "a-red-cube-seed0"), str(tmp_path / "a-red-cube-seed0-2"))
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
    make_run(runs, "done-seed0")
    make_run(runs, "half-seed0", done=False)
    (runs / ".web").mkdir()
    (runs / "not-a-run").mkdir()
    (tmp_path / "outside").mkdir()
    make_run(tmp_path, "elsewhere")
    (runs / "link").symlink_to(tmp_path / "elsewhere")
    listed = {i.name: i for i in list_runs(runs)}
    assert set(listed) >= {"done-seed0", "half-seed0"} and ".web" not in listed and "not-a-run" not in listed
    assert listed["done-seed0"].finished and not listed["half-seed0"].finished and listed["half-seed0"].step == 3
    for bad in ("..", "../elsewhere", "/etc", "link", ".web", "done-seed0/..", "", "half-seed0/config.json"):
        with pytest.raises(RunNotFound):
            open_run(runs, bad)
    assert open_run(runs, "done-seed0").metrics == {"iou_3d": 0.5}


def test_a_run_zips_whole_into_the_pages_own_folder(tmp_path):
    runs = tmp_path / "runs"
    info = open_run(runs, make_run(runs, "done-seed0").name)
    path = zip_run(runs, info)
    assert path.parent == runs / ".web" / "zips"
    with zipfile.ZipFile(path) as archive:
        assert sorted(archive.namelist()) == sorted(
            f"done-seed0/{p.relative_to(info.path)}" for p in info.path.rglob("*") if p.is_file()
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


# --- careless and hostile use ------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "form, message",
    [
        (Form(None), "type a prompt first"),  # a null prompt through the API
        (Form(["a red cube"]), "prompt must be text, got list"),
        (Form("a red cube", resolution=5000), "grid size 5000 is above this server's limit of 64"),
        (Form("a red cube", steps=10**7), "10000000 steps is above this server's limit of 20000"),
        (Form("a red cube", threads=100000), "threads must be between 1 and"),
        (Form("a red cube", steps="many"), "steps must be a number, got 'many'"),
        (Form("a red cube", steps=float("inf")), "steps must be a whole number"),
        (Form("a red cube", emptiness_weight="x"), "emptiness weight must be a number"),
        (Form("a red cube", prior="pixel", model="/home"), "model '/home' is not offered on this server"),
    ],
)
def test_the_servers_limits_and_types_are_checked_before_anything_runs(tmp_path, form, message):
    priors = [*PRIORS, "pixel"]
    with pytest.raises((ConfigError, PromptError)) as err:
        form_config(form, tmp_path, priors, Limits(max_grid=64, max_steps=20_000))
    assert message in str(err.value) and "\n" not in str(err.value)
    assert list(tmp_path.iterdir()) == []


def test_an_offered_model_is_loaded_by_its_name_and_resumes_are_held_to_the_limits(tmp_path):
    limits = Limits(models={"tiny-ddpm": "/models/ddpm"})
    cfg = form_config(Form("", prior="pixel", preset="tiny", model="tiny-ddpm"), tmp_path, ["pixel"], limits)
    assert cfg.pixel.model == "/models/ddpm"
    run = tmp_path / "big"
    assert main(["generate", "a red cube", "--preset", "tiny", "--train.steps", "3", "--out", str(run)]) == 0
    saved = json.loads((run / "config.json").read_text())
    saved["train"]["steps"] = 2  # a stopped run of `sjc generate` with a grid this server would not take
    saved["field"]["resolution"] = 80
    (run / "config.json").write_text(json.dumps(saved))
    with pytest.raises(ConfigError, match="grid size 80 is above this server's limit of 64"):
        resume_config(run, None, Limits())
    with pytest.raises(ConfigError, match="threads must be between 1 and 2"):
        resume_config(run, 100000, Limits(max_grid=100, max_threads=2))


def test_malformed_run_folders_are_skipped_and_links_are_neither_listed_nor_opened(tmp_path, capsys):
    runs = tmp_path / "runs"
    make_run(runs, "good-seed0")
    (make_run(runs, "list-config") / "config.json").write_text("[1, 2]")
    (make_run(runs, "odd-metrics") / "metrics.json").write_text(json.dumps({"psnr": None, "shape_accuracy": True}))
    (make_run(runs, "broken-json") / "config.json").write_text("{")
    make_run(tmp_path, "outside")
    (runs / "linked").symlink_to(tmp_path / "outside")
    names = {i.name for i in list_runs(runs)}
    assert names == {"good-seed0", "odd-metrics"}
    assert "skipping the run folder" in capsys.readouterr().err
    with pytest.raises(RunNotFound):
        open_run(runs, "linked")
    with pytest.raises(RunNotFound, match="cannot be read") as err:
        open_run(runs, "list-config")
    assert str(runs) not in str(err.value)
    assert metrics_table(open_run(runs, "odd-metrics").metrics) == (
        "| measure | value |\n|---|---|\n| PSNR | n/a |\n| shape | matched |"
    )
    assert metrics_table({"iou_3d": "bad"}) == ""


def test_prompts_show_as_text_not_as_markdown_or_html():
    shown = markdown_text("a cube ![x](http://evil/i.png) [click](http://evil) <b>hi</b> | col\nnext")
    assert "](" not in shown.replace("\\](", "").replace("\\(", "")
    assert "<b>" not in shown and "\n" not in shown and "\\|" in shown
    assert shown == "a cube \\!\\[x\\](http://evil/i.png) \\[click\\](http://evil) &lt;b&gt;hi&lt;/b&gt; \\| col next"


def test_zips_leave_out_files_in_writing_and_two_at_once_never_share_a_file(tmp_path):
    runs = tmp_path / "runs"
    run = make_run(runs, "done-seed0")
    (run / "checkpoints" / "step_0000020.safetensors.tmp").write_bytes(b"half")
    (run / ".lock").write_text("{}")
    info = open_run(runs, "done-seed0")
    results, errors = [], []

    def one():
        try:
            results.append(zip_run(runs, info))
        except Exception as err:  # noqa: BLE001 - collected for the assertion
            errors.append(err)

    threads = [threading.Thread(target=one) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(set(results)) == 1
    with zipfile.ZipFile(results[0]) as archive:
        names = archive.namelist()
    assert not any(n.endswith((".tmp", ".lock")) for n in names) and "done-seed0/config.json" in names
    assert [p.name for p in (runs / ".web" / "zips").iterdir()] == ["done-seed0.zip"]


def test_raising_the_steps_twice_keeps_the_runs_schedule(tmp_path):
    # The batch asks with its own flags (no schedule length): the run's own length must win every time.
    run = tmp_path / "run"
    assert main(["generate", "a red cube", "--preset", "tiny", "--train.steps", "4", "--out", str(run)]) == 0
    asked = dataclasses.replace(preset("toy", "tiny"), prompt="a red cube", out=str(run), resume=str(run))
    for steps in (6, 6, 8):
        saved = resume_defaults(run)
        cfg = check_resume(saved, dataclasses.replace(asked, train=dataclasses.replace(asked.train, steps=steps)))
        assert cfg.train.schedule_steps == 4
        (run / "config.json").write_text(to_json(cfg) + "\n")


def test_a_gallery_click_opens_the_run_it_shows_even_when_the_gallery_is_old(tmp_path):
    pytest.importorskip("gradio")
    runs = tmp_path / "runs"
    make_run(runs, "first-seed0")
    page = Page(runs)
    shown = page.gallery()  # what a visitor's page drew
    time.sleep(0.05)
    make_run(runs, "newer-seed0")  # a run appears before they click: positions move, names do not
    opened = page.open_selected({"image": {"path": shown[0][0]}, "caption": shown[0][1]})
    assert opened["selected"] == "first-seed0"
    assert page.open_selected({"caption": None})["status"].startswith("**error:** that gallery entry names no run")
    assert page.open_selected({"caption": "../secret · x"})["status"].startswith("**error:** no run named")


def test_messages_to_visitors_name_no_server_path(tmp_path):
    pytest.importorskip("gradio")
    page = Page(tmp_path / "runs")
    text = page._error(f"cannot read {page.runs / 'x' / 'config.json'} under {Path.home() / '.cache'}")["status"]
    assert str(tmp_path) not in text and str(Path.home()) not in text
    assert text == "**error:** cannot read runs/x/config.json under \\~/.cache"  # ~ escaped: Markdown


def test_a_model_that_cannot_be_loaded_is_reported_without_its_paths(tmp_path, capsys):
    pytest.importorskip("diffusers")
    limits = Limits(models={"mine": str(tmp_path / "models" / "missing")})
    cfg = form_config(Form("", prior="pixel", preset="tiny", model="mine"), tmp_path / "runs", ["pixel"], limits)
    job = Job(cfg).start()
    assert job.wait(120) and job.state == "failed"
    assert job.message == "the model could not be loaded on this server; its log says why"
    assert str(tmp_path / "models") in capsys.readouterr().err  # the operator's log has the details


def test_gradios_cache_is_pruned_of_old_files(tmp_path):
    cache = tmp_path / "cache"
    (cache / "a").mkdir(parents=True)
    old, new = cache / "a" / "old.glb", cache / "new.mp4"
    old.write_bytes(b"x")
    new.write_bytes(b"y")
    os.utime(old, (time.time() - 2 * 86400, time.time() - 2 * 86400))
    assert prune_cache(cache, 86400) == 1
    assert not old.exists() and not (cache / "a").exists() and new.exists()
