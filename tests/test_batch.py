"""`sjc batch`: job files, options, summaries (no Ray), and the Ray cases of ray_batch_cases.py, each run in a
network namespace that holds only loopback (Ray would bind to the machine's addresses otherwise)."""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from sjc.app.batch.jobs import (
    BatchOptions,
    Job,
    JobFileError,
    ResolvedJob,
    load_jobs,
    parse_options,
    read_job_file,
    resolve_jobs,
    tyro_message,
)
from sjc.app.batch.report import aggregate, summary_markdown, summary_row, write_reports
from sjc.app.batch.runner import MISSING_RAY, check_resources, continue_config, describe, run_seconds
from sjc.app.commands import cli
from sjc.app.runs.generate import generate
from sjc.app.settings.config import slug, to_json
from sjc.core.errors import UserError

TESTS = Path(__file__).parent


# --- job files ---------------------------------------------------------------------------------------------
def test_a_text_file_is_one_prompt_a_line(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("# the cubes\na red cube\n\n  a blue cube  \n")
    jobs = read_job_file(path)
    assert [j.prompt for j in jobs] == ["a red cube", "a blue cube"]
    assert jobs[1].where == f"{path}:4" and jobs[0].seed is None


def test_toml_and_json_runs_carry_seeds_names_and_overrides(tmp_path):
    toml = tmp_path / "jobs.toml"
    toml.write_text(
        '[[runs]]\nprompt = "a red cube"\nseed = 3\nname = "first"\n'
        'overrides = {"train.steps" = 50, "toy.view_conditioning" = false, "field.skip-empty" = true, '
        '"scoring.sigma-max" = 1.2}\n\n'
        '[[runs]]\nprompt = "a green cone"\noverrides = ["--optim.lr", "0.05"]\n'
    )
    first, second = read_job_file(toml)
    assert (first.prompt, first.seed, first.name) == ("a red cube", 3, "first")
    assert first.overrides == (
        "--train.steps", "50", "--toy.no-view-conditioning", "--field.skip-empty", "--scoring.sigma-max", "1.2"
    )  # fmt: skip
    assert second.overrides == ("--optim.lr", "0.05") and second.where == f"{toml}, run 2"
    as_list, as_table = tmp_path / "list.json", tmp_path / "table.json"
    as_list.write_text(json.dumps([{"prompt": "a red cube", "seed": 1}, "a blue cube"]))
    as_table.write_text(json.dumps({"runs": [{"prompt": "a red cube", "overrides": {"optim.lr": 0.05}}]}))
    assert [(j.prompt, j.seed) for j in read_job_file(as_list)] == [("a red cube", 1), ("a blue cube", None)]
    assert read_job_file(as_table)[0].overrides == ("--optim.lr", "0.05")


def test_the_suite_and_seeds_expand_into_jobs(tmp_path):
    suite = load_jobs(parse_options(["--suite", "--seeds", "0,1"]))
    assert len(suite) == 20 and [(j.prompt, j.seed) for j in suite[:3]] == [
        ("a red and blue cube", 0), ("a red and blue cube", 1), ("a green cube", 0)
    ]  # fmt: skip
    path = tmp_path / "jobs.json"
    path.write_text(json.dumps([{"prompt": "a red cube", "seed": 7}, "a blue cube"]))
    jobs = load_jobs(BatchOptions(jobs=str(path), seeds=(0, 1, 2)))
    assert [(j.prompt, j.seed) for j in jobs] == [("a red cube", 7)] + [("a blue cube", s) for s in (0, 1, 2)]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("missing.txt", None, "cannot read the job file"),
        ("empty.txt", "# nothing\n\n", "holds no jobs"),
        ("bad.toml", "[[runs]\nprompt =", "is not valid TOML"),
        ("bad.json", "[{", "is not valid JSON"),
        ("keys.toml", '[[runs]]\nprompt = "a red cube"\nsteps = 5\n', "run 1: unknown key 'steps'"),
        ("top.toml", 'prompt = "a red cube"\n', "unknown key 'prompt'; the runs go in 'runs'"),
        ("seed.json", '[{"prompt": "a red cube", "seed": "one"}]', "seed must be an integer"),
        ("name.json", '[{"prompt": "a red cube", "name": "../up"}]', "name must be a folder name"),
        ("over.json", '[{"prompt": "a red cube", "overrides": 3}]', "overrides must be a table"),
        ("runs.json", '{"runs": 3}', "must hold a list of runs"),
    ],
)
def test_bad_job_files_are_one_line_user_errors(tmp_path, capsys, name, text, message):
    path = tmp_path / name
    if text is not None:
        path.write_text(text)
    with pytest.raises(JobFileError, match="."):
        load_jobs(BatchOptions(jobs=str(path)))
    assert cli.main(["batch", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give a job file first"),
        (["jobs.txt", "--suite"], "not both"),
        (["--suite", "--resume", "runs/x"], "--resume cannot be given to sjc batch"),
        (["--suite", "--threads", "2"], "each run's threads are its --cpus-per-run"),
        (["--suite", "--cpus-per-run", "0"], "--cpus-per-run must be at least 1"),
        (["--suite", "--seeds", "0,x"], "--seeds takes comma-separated integers"),
        (["--suite", "--retries", "-1"], "--retries must not be negative"),
    ],
)
def test_option_mistakes_exit_2(capsys, args, message):
    assert cli.main(["batch", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_mistake_in_the_shared_generate_options_is_the_commands(capsys, tmp_path):
    assert cli.main(["batch", "--suite", "--no-such-flag", "3", "--out", str(tmp_path)]) == 2
    assert "Unrecognized options: --no-such-flag, 3" in capsys.readouterr().err
    assert cli.main(["batch", "--suite", "--preset", "huge", "--out", str(tmp_path)]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err


def test_jobs_resolve_to_run_folders_and_bad_jobs_carry_the_generate_message(tmp_path, capsys):
    options = parse_options(
        ["--suite", "--preset", "tiny", "--steps", "20", "--out", str(tmp_path), "--cpus-per-run", "2"]
    )
    jobs = [
        Job("a red cube"),
        Job("a red cube"),
        Job("a red cube", seed=4),
        Job("a pink cube"),
        Job("a red cube", name="mine"),
    ]
    jobs.append(Job("a red cube", overrides=("--optim.lr", "-1")))
    resolved = resolve_jobs(jobs, options)
    assert [r.name for r in resolved] == [
        "a-red-cube-seed0", "a-red-cube-seed0-2", "a-red-cube-seed4", "a-pink-cube-seed0", "mine", "a-red-cube-seed0-3"
    ]  # fmt: skip
    cfg = resolved[0].config
    assert cfg.out == str(tmp_path / "a-red-cube-seed0") and cfg.threads == 2 and cfg.train.steps == 20
    assert cfg.device == "cpu" and resolved[0].gpus == 0  # the toy prior needs no GPU
    relative = parse_options(["--suite", "--out", "runs/b", "--toy.cache-dir", "cache"])
    cfg = resolve_jobs([Job("a red cube")], relative)[0].config  # a worker's folder is not the driver's
    assert cfg.out == str(Path.cwd() / "runs/b/a-red-cube-seed0") and cfg.toy.cache_dir == str(Path.cwd() / "cache")
    assert cli.main(["generate", "a pink cube", "--preset", "tiny", "--out", str(tmp_path / "g")]) == 2
    assert resolved[3].error == capsys.readouterr().err.strip().removeprefix("sjc generate: error: ")
    assert resolved[5].error == "--optim.lr must not be negative, got -1.0" and resolved[5].seed == 0
    sd = resolve_jobs([Job("a cat")], parse_options(["--suite", "--prior", "sd", "--out", str(tmp_path)]))[0]
    assert sd.gpus == 1.0 and sd.config.device == "auto"


def test_tyro_messages_lose_their_box():
    boxed = (
        "╭─ Unrecognized options ─────╮\n│ Unrecognized options: --x, 3 │\n│ ──────────── │\n"
        "│ For full helptext, run sjc generate --help │\n╰──────╯\n"
    )
    assert tyro_message(boxed) == "Unrecognized options: --x, 3"


def test_without_ray_the_command_asks_for_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    jobs = tmp_path / "jobs.txt"
    jobs.write_text("a red cube\n")
    assert cli.main(["batch", str(jobs), "--preset", "tiny", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err.strip() == f"sjc batch: error: {MISSING_RAY}"


def test_help_imports_neither_torch_nor_ray():
    code = (
        "import sys\nfrom sjc.app.commands import cli\ncli.main(['batch', '--help'])\n"
        "print('HEAVY' if {'torch', 'ray'} & set(sys.modules) else 'LIGHT')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().endswith("LIGHT") and "--cpus-per-run" in out.stdout


def test_runs_asking_for_more_than_any_node_has_are_refused_before_they_wait_forever(tmp_path):
    class FakeRay:
        @staticmethod
        def nodes():
            return [{"Alive": True, "Resources": {"CPU": 2.0}}, {"Alive": False, "Resources": {"CPU": 8.0, "GPU": 1}}]

    cpu_job = resolve_jobs([Job("a red cube")], parse_options(["--suite", "--out", str(tmp_path)]))
    check_resources(FakeRay, cpu_job, 2)
    with pytest.raises(UserError, match=r"--cpus-per-run 3 is more than any Ray node has \(2 CPUs\)"):
        check_resources(FakeRay, cpu_job, 3)
    gpu_job = resolve_jobs([Job("a red cube")], parse_options(["--suite", "--device", "cuda", "--out", str(tmp_path)]))
    with pytest.raises(UserError, match="no Ray node has any; pass --gpus-per-run 0"):
        check_resources(FakeRay, gpu_job, 1)


def test_finished_runs_are_skipped_and_a_folder_with_other_settings_fails_its_job(tmp_path, capsys):
    """No Ray is needed when nothing is left to run: the folders of an earlier invocation say what is done."""
    jobs, out = tmp_path / "jobs.txt", tmp_path / "out"
    jobs.write_text("a red cube\n")
    args = ["batch", str(jobs), "--preset", "tiny", "--steps", "20", "--out", str(out)]
    job = resolve_jobs(load_jobs(parse_options(args[1:])), parse_options(args[1:]))[0]
    job.run_dir.mkdir(parents=True)
    (job.run_dir / "config.json").write_text(to_json(job.config))
    (job.run_dir / "result.json").write_text(json.dumps(_record(20, 3.0, 0.5, 0.6, 12.0, True)))
    assert cli.main(args) == 0
    assert "skipped  1 run(s) finished before" in capsys.readouterr().out
    assert "| a red cube | 0 | done | 20 | 3.0 | 0.500 |" in (out / "summary.md").read_text()
    assert cli.main([*args, "--optim.lr", "0.05"]) == 1
    err = capsys.readouterr().err
    assert f"a-red-cube-seed0: {job.run_dir} holds a run with other settings: --optim.lr is 0.1" in err


# --- summaries ---------------------------------------------------------------------------------------------
def _record(steps, seconds, iou, sil, psnr, shape):
    metrics = {"iou_3d": iou, "iou_3d_closed": iou + 0.02, "silhouette_iou": sil, "psnr": psnr, "shape_accuracy": shape}
    return {"status": "done", "steps": steps, "seconds": seconds, "attempts": 1, "metrics": metrics}


def test_summaries_have_mean_and_worst_rows_and_a_gallery_with_relative_links(tmp_path):
    rows = [
        summary_row("a-red-cube-seed0", "a red cube", 0, "done", _record(100, 10.0, 0.8, 0.9, 16.0, True)),
        summary_row("a-<b>-seed1", "a <b> & cube", 1, "done", _record(100, 20.0, 0.6, 0.7, 14.0, False)),
        summary_row("a-pink-cube-seed0", "a pink cube", 0, "failed", message="cannot parse prompt 'a pink cube'"),
    ]
    mean, worst = aggregate(rows)
    assert mean["iou_3d"] == pytest.approx(0.7) and worst["iou_3d"] == 0.6 and worst["seconds"] == 20.0
    assert mean["shape_match"] == "1/2" and worst["shape_match"] is False
    (tmp_path / "a-red-cube-seed0").mkdir()
    (tmp_path / "a-red-cube-seed0" / "views.png").write_bytes(b"png")
    files = write_reports(tmp_path, rows)
    table = list(csv.DictReader(io.StringIO(files["csv"].read_text())))
    assert [r["name"] for r in table] == ["a-red-cube-seed0", "a-<b>-seed1", "a-pink-cube-seed0", "mean", "worst"]
    assert table[0]["iou_3d"] == "0.800" and table[3]["psnr"] == "15.00" and table[4]["shape_match"] == "NO"
    md = files["md"].read_text()
    assert "| **mean** (finished runs) |  | 2 done | 100 | 15.0 | 0.700 | 0.720 | 0.800 | 15.00 | 1/2 |" in md
    assert "- a-pink-cube-seed0 (failed): cannot parse prompt 'a pink cube'" in md
    page = files["html"].read_text()
    assert 'src="a-red-cube-seed0/turntable.gif"' in page and 'href="a-red-cube-seed0/views.png"' in page
    assert "a &lt;b&gt; &amp; cube" in page and 'src="a-%3Cb%3E-seed1/turntable.gif"' in page
    assert str(tmp_path) not in page and "http" not in page
    assert aggregate(rows[2:]) is None


def test_prompts_and_messages_cannot_break_the_summary_table():
    nasty = "a cube | with a pipe\nand a line <script>x</script> [link](http://evil) ![i](http://evil/i.png)"
    rows = [
        summary_row("x-seed0", nasty, 0, "done", _record(10, 1.0, 0.5, 0.5, None, True)),
        summary_row("y-seed0", "a red cube", 0, "failed", message="boom | <b>bold</b>\nsecond line"),
    ]
    md = summary_markdown(rows)
    lines = md.splitlines()
    table = [line for line in lines if line.startswith("|")]
    assert len(table) == 2 + 2 + 2  # head, rule, two runs, mean and worst: no row split by a pipe or a newline
    assert len({line.replace("\\|", "").count("|") for line in table}) == 1  # every row has the head's cells
    assert "<script>" not in md and "<b>" not in md and "](http" not in md.replace("\\](http", "")
    assert "- y-seed0 (failed): boom \\| &lt;b&gt;bold&lt;/b&gt; second line" in md
    record = _record(10, 1.0, 0.5, 0.5, None, True)
    line = describe(ResolvedJob(Job("a red cube"), "x-seed0", Path("x")), record)
    assert line == "done     x-seed0: 10 steps in 1.0 s, 3D IoU 0.500, silhouette IoU 0.500"  # no PSNR: none measured


@pytest.mark.parametrize(
    ("runs", "message"),
    [
        ('[{"prompt": "a red cube", "name": ".stop"}]', "the name '.stop' is taken by sjc batch's own files"),
        ('[{"prompt": "a red cube", "name": "summary.md"}]', "the name 'summary.md' is taken"),
        ('[{"prompt": "a red cube", "name": "index.html"}]', "the name 'index.html' is taken"),
        (
            '[{"prompt": "a red cube", "name": "x"}, {"prompt": "a blue cube", "name": "x"}]',
            "run 2: the name 'x' is already the name of",
        ),
    ],
)
def test_reserved_and_repeated_run_names_are_refused_before_anything_runs(tmp_path, capsys, runs, message):
    path = tmp_path / "jobs.json"
    path.write_text(runs)
    assert cli.main(["batch", str(path), "--preset", "tiny", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def test_long_prompts_name_short_distinct_folders_and_named_runs_keep_their_names(tmp_path):
    long_a = "a highly detailed photograph of " + "a very ornate carved wooden chair " * 8 + "in a museum"
    long_b = long_a.replace("museum", "garden")
    path = tmp_path / "jobs.json"
    runs = [{"prompt": "a red cube"}, {"prompt": "a red cube", "name": "a-red-cube-seed0"}]
    path.write_text(json.dumps(runs + [{"prompt": long_a}, {"prompt": long_b}]))
    options = parse_options([str(path), "--prior", "sd", "--out", str(tmp_path / "out")])
    names = [job.name for job in resolve_jobs(load_jobs(options), options)]
    assert names[:2] == ["a-red-cube-seed0-2", "a-red-cube-seed0"]  # the given name wins, wherever it stands
    assert len(set(names)) == 4 and all(len(n) <= 70 for n in names)
    assert names[2][:40] == names[3][:40] and names[2] != names[3]
    assert names[2] == f"{slug(long_a)}-seed0" and len(slug(long_a)) == 60


def test_a_run_whose_steps_were_raised_resumes_with_the_same_command_again(tmp_path):
    """--steps 4, then --steps 6 stopped part-way, then --steps 6 again: the run keeps its schedule length."""
    jobs, out = tmp_path / "jobs.txt", tmp_path / "out"
    jobs.write_text("a red cube\n")

    def resolved(steps):
        options = parse_options([str(jobs), "--preset", "tiny", "--steps", str(steps), "--out", str(out)])
        return resolve_jobs(load_jobs(options), options)[0]

    generate(resolved(4).config, progress=False)  # the first invocation's run, as its Ray task makes it
    for steps in (6, 6):
        job = resolved(steps)
        continue_config(job)
        assert job.error is None, job.error
        assert job.config.train.steps == 6 and job.config.train.schedule_steps == 4
        (job.run_dir / "config.json").write_text(to_json(dataclasses.replace(job.config, resume=None)) + "\n")


def test_run_seconds_count_every_attempt_up_to_the_next_one_after_a_crash():
    attempts = [
        {"event": "start", "time": 100.0},  # crashed: counted up to the retry's start
        {"event": "start", "time": 130.0},
        {"event": "stopped", "time": 150.0},
        {"event": "start", "time": 1000.0},
        {"event": "done", "time": 1010.0},
    ]
    assert run_seconds(attempts) == 30.0 + 20.0 + 10.0


# --- on Ray --------------------------------------------------------------------------------------------------
RAY_CASES = [
    "test_a_killed_worker_is_resumed_and_a_second_invocation_skips_everything",
    "test_ctrl_c_stops_every_run_at_a_checkpoint_and_the_same_command_resumes",
    "test_a_bad_job_fails_alone_with_its_message",
    "test_a_cluster_runs_the_batch_and_the_run_of_a_lost_node_resumes_on_the_other",
    "test_a_killed_raylet_is_started_again_and_its_runs_continue",
]


def _loopback_namespace_or_skip() -> None:
    pytest.importorskip("ray", reason="the [batch] extra (ray) is not installed")
    if not (shutil.which("unshare") and shutil.which("ip")):
        pytest.skip("needs unshare and ip to run Ray in a loopback-only network namespace")
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"unshare -n is not permitted here ({probe.stderr.strip()}); Ray must not bind to this network")


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


@pytest.mark.slow
@pytest.mark.parametrize("case", RAY_CASES)
def test_ray_batch_in_a_loopback_namespace(case):
    """Runs ray_batch_cases.py::CASE in `unshare -n` (only loopback, up), then checks no Ray process is left."""
    _loopback_namespace_or_skip()
    ray_tmp = tempfile.mkdtemp(prefix="sjcray")  # short: Ray's socket paths live under it
    env = {**os.environ, "SJC_RAY_NETNS": "1", "SJC_RAY_TMP": ray_tmp}
    pytest_cmd = f"{sys.executable} -m pytest -x -q -s -p no:cacheprovider {TESTS / 'ray_batch_cases.py'}::{case}"
    cmd = ["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {pytest_cmd}"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env, cwd=TESTS.parent)
        assert proc.returncode == 0, proc.stdout[-8000:] + proc.stderr[-3000:]
        left = _processes_mentioning(ray_tmp)
        assert not left, f"Ray processes left running: {left}"
    finally:
        for pid in _processes_mentioning(ray_tmp):  # only what this test started: its own session folder
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def test_job_files_take_pictures_relative_to_themselves_and_a_finished_image_run_is_recognised(tmp_path):
    from test_image3d import write_picture

    folder = tmp_path / "jobs"
    write_picture(folder / "pictures" / "cone.png", "a purple cone", elevation=10.0, size=64)
    (folder / "jobs.toml").write_text(
        '[[runs]]\nimage = "pictures/cone.png"\n\n'
        '[[runs]]\nprompt = "a purple cone"\nimage = "pictures/cone.png"\n\n'
        '[[runs]]\nimage = "pictures/missing.png"\n\n'
        "[[runs]]\nimage = 3\n"
    )
    with pytest.raises(JobFileError, match=r"run 4: image must be the path of a picture, got 3"):
        load_jobs(parse_options([str(folder / "jobs.toml")]))
    (folder / "jobs.toml").write_text((folder / "jobs.toml").read_text().rsplit("[[runs]]", 1)[0])
    args = [str(folder / "jobs.toml"), "--prior", "toy-image", "--preset", "tiny", "--steps", "4"]
    options = parse_options([*args, "--image.estimate-elevation", "--out", str(tmp_path / "out")])
    first, second, third = resolve_jobs(load_jobs(options), options)
    assert first.name == "image-cone-seed0" and first.config.image.path == str(folder / "pictures" / "cone.png")
    assert second.error.startswith("the toy-image prior takes a picture, not a prompt")
    assert third.error.startswith("no picture at") and third.name == "image-missing-seed0"
    generate(first.config, progress=False)  # the run, as its Ray task makes it; its elevation is estimated
    saved = json.loads((first.run_dir / "config.json").read_text())["image"]
    assert saved["view"][::2] == [0.0, 60.0] and abs(saved["view"][1] - 10.0) <= 1 and not saved["estimate_elevation"]
    again = resolve_jobs(load_jobs(options), options)[0]  # the same command again: the same run, no conflict
    continue_config(again)
    assert again.error is None and list(again.config.image.view) == saved["view"]
