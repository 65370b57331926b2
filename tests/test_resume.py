"""Long runs that never lose work: interruption, resume, checkpoint fall-back, non-finite values, a full disk."""

import dataclasses
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from oracle import OraclePrior, two_colour_sphere
from sjc.app.commands import cli
from sjc.app.runs.checkpoint import list_checkpoints
from sjc.app.runs.generate import load_run, run_fit
from sjc.app.runs.interrupt import Interrupted, StopRequest, catch_signals
from sjc.app.settings.config import to_json
from sjc.app.settings.presets import preset
from sjc.core import fit as trainer
from sjc.core.fit import NonFiniteError, build_field, make_generators

PROMPT = "a red and blue cube"
STEPS = 150


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("toy-cache"))


def _args(out, cache_dir, *extra):
    """`sjc generate` of a short tiny-preset run, checkpointed every 50 steps, on one thread."""
    return [
        *("generate", PROMPT, "--preset", "tiny", "--steps", str(STEPS), "--train.checkpoint-every", "50"),
        *("--train.keep-checkpoints", "3", "--train.log-every", "10"),
        *("--threads", "1", "--toy.cache-dir", cache_dir, "--out", str(out), *extra),
    ]


def _final(run_dir):
    """(step, every tensor) of the newest checkpoint: field, Adamax state and random generators."""
    step, path = list_checkpoints(run_dir)[-1]
    return step, load_file(path)


def _assert_same_state(a, b):
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


@pytest.fixture
def no_exports(monkeypatch):
    """The training loop of `sjc generate` without the turntable, mesh and metrics it writes after."""
    monkeypatch.setattr("sjc.app.runs.generate.write_outputs", lambda *args: {})
    monkeypatch.setattr("sjc.app.runs.generate.evaluate", lambda *args: None)


@pytest.fixture(scope="module")
def reference(tmp_path_factory, cache_dir):
    """An uninterrupted run (it also fills the toy-data cache the other runs read)."""
    out = tmp_path_factory.mktemp("reference") / "run"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sjc.app.runs.generate.write_outputs", lambda *args: {})
        mp.setattr("sjc.app.runs.generate.evaluate", lambda *args: None)
        assert cli.main(_args(out, cache_dir)) == 0
    return (*_final(out), _log(out))


def _log(run_dir):
    """log.jsonl without its wall-clock times."""
    records = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in records]


def _wait_for_log_step(log, step, proc, timeout=180):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the run ended before it could be interrupted"
        lines = log.read_text().splitlines() if log.exists() else []
        try:
            if lines and json.loads(lines[-1])["step"] >= step:
                return
        except ValueError:  # a line being written
            pass
        time.sleep(0.02)
    raise AssertionError(f"no log line of step {step} within {timeout} s")


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, cache_dir, reference):
    """A `sjc generate` subprocess sent SIGINT once it is past its step-50 checkpoint."""
    out = tmp_path_factory.mktemp("sigint") / "run"
    err_path = out.parent / "stderr.txt"
    with open(err_path, "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "sjc", *_args(out, cache_dir)], stdout=err, stderr=err)
        try:
            _wait_for_log_step(out / "log.jsonl", 60, proc)
            proc.send_signal(signal.SIGINT)
            code = proc.wait(timeout=120)
        finally:
            if proc.poll() is None:
                proc.kill()
    return out, code, err_path.read_text()


def test_sigint_checkpoints_the_step_and_the_resumed_run_matches_an_uninterrupted_one(interrupted, reference, tmp_path):
    out, code, err = interrupted
    assert code == 130 and "Traceback" not in err
    found = re.search(r"interrupted at step (\d+); resume with: sjc generate --resume (\S+)", err)
    assert found and found.group(2) == str(out), err[-500:]
    step = int(found.group(1))
    assert 60 <= step < STEPS and list_checkpoints(out)[-1][0] == step
    run = tmp_path / "run"
    shutil.copytree(out, run)
    # Export settings may change on resume: they do not touch the field.
    assert cli.main(["generate", "--resume", str(run), "--export.turntable-frames", "2"]) == 0
    ref_step, ref, ref_log = reference
    final_step, final = _final(run)
    assert final_step == ref_step == STEPS
    _assert_same_state(final, ref)
    assert _log(run) == ref_log  # the same sigmas and losses, no step logged twice
    assert [r["step"] for r in ref_log] == list(range(10, STEPS + 1, 10))
    assert (run / "turntable.mp4").stat().st_size > 0


def test_a_truncated_latest_checkpoint_falls_back_to_the_previous_one(
    interrupted, reference, tmp_path, no_exports, capsys
):
    run = tmp_path / "run"
    shutil.copytree(interrupted[0], run)
    latest = list_checkpoints(run)[-1][1]
    data = latest.read_bytes()
    latest.write_bytes(data[: len(data) // 2])
    assert cli.main(["generate", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"cannot read checkpoint {latest}" in err and f"resuming {run} from step 50" in err
    _assert_same_state(_final(run)[1], reference[1])
    assert _log(run) == reference[2]  # the steps after 50 were logged again, once
    assert latest.with_name(latest.name + ".unusable").exists()  # set aside, not deleted


def test_raising_the_step_count_keeps_the_schedule_of_the_steps_taken(tmp_path, cache_dir, no_exports):
    # With the late emptiness multiplier the schedule matters: the resumed run is the run of its saved config.
    def run(out, *extra):  # the later of two --steps flags wins
        assert cli.main(_args(out, cache_dir, "--losses.emptiness-multiplier", "20", "--steps", "20", *extra)) == 0
        return _final(out)[1]

    resumed = tmp_path / "resumed"
    run(resumed)
    assert cli.main(["generate", "--resume", str(resumed), "--steps", "30"]) == 0
    saved = json.loads((resumed / "config.json").read_text())["train"]
    assert (saved["steps"], saved["schedule_steps"]) == (30, 20)
    _assert_same_state(_final(resumed)[1], run(tmp_path / "fresh", "--steps", "30", "--train.schedule-steps", "20"))
    stretched = run(tmp_path / "stretched", "--steps", "30")  # switching at step 15 instead of 10
    assert not torch.equal(_final(resumed)[1]["field.grid"], stretched["field.grid"])


@pytest.fixture
def saved_run(tmp_path, cache_dir):
    """A run folder holding only the config of a tiny run (nothing trained)."""
    cfg = cli.parse_generate(_args(tmp_path / "run", cache_dir)[1:])
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.json").write_text(to_json(cfg))
    return tmp_path / "run"


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--field.resolution", "9"], "--field.resolution is {field[resolution]} in this run and cannot become 9"),
        (["--seed", "7"], "--train.seed is {train[seed]} in this run and cannot become 7"),
        (["--optim.lr", "0.0123"], "--optim.lr is {optim[lr]} in this run and cannot become 0.0123"),
        (["a red cube"], "the prompt is 'a red and blue cube' in this run and cannot become 'a red cube'"),
        (["--steps", "100"], "--train.steps can only be raised on --resume: this run has {train[steps]}, got 100"),
        (["--overwrite"], "--resume continues a run and --overwrite replaces it"),
    ],
)
def test_resume_refuses_flags_that_change_the_result(saved_run, flags, message, capsys):
    saved = json.loads((saved_run / "config.json").read_text())
    assert cli.main(["generate", "--resume", str(saved_run), *flags]) == 2
    err = capsys.readouterr().err
    assert message.format(**saved) in err and "Traceback" not in err


def test_resume_may_raise_steps_and_change_logging(saved_run, capsys):
    flags = ["--steps", "400", "--train.log-every", "5", "--threads", "2", "--dry-run"]
    assert cli.main(["generate", "--resume", str(saved_run), *flags]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["train"]["steps"] == 400 and cfg["train"]["schedule_steps"] == STEPS and cfg["out"] == str(saved_run)
    assert cfg["prompt"] == PROMPT and cfg["train"]["log_every"] == 5


def test_resume_without_a_run_or_a_usable_checkpoint_names_the_problem(saved_run, tmp_path, capsys):
    assert cli.main(["generate", "--resume", str(tmp_path / "nothing")]) == 2
    assert "holds no run to resume" in capsys.readouterr().err
    bad = saved_run / "checkpoints" / "step_0000050.safetensors"
    bad.parent.mkdir()
    bad.write_bytes(b"not a checkpoint")
    assert cli.main(["generate", "--resume", str(saved_run)]) == 2
    err = capsys.readouterr().err
    assert f"no usable checkpoint: cannot read checkpoint {bad}" in err and "Traceback" not in err


def test_nan_in_the_density_stops_the_run_at_its_step_and_keeps_the_last_good_checkpoint(
    tmp_path, cache_dir, monkeypatch, capsys
):
    k = 4  # steps count from 1; checkpoint step_k holds the state after k steps
    real_step = trainer.sjc_step

    def poisoned(field, loop, step):
        if step + 1 == k:
            with torch.no_grad():
                field.grid[0, 0] = float("nan")
        return real_step(field, loop, step)

    monkeypatch.setattr("sjc.core.fit.sjc_step", poisoned)
    out = tmp_path / "run"
    assert cli.main(_args(out, cache_dir, "--steps", "10", "--train.checkpoint-every", "1")) == 1
    err = capsys.readouterr().err
    # Which check sees it first (a loss, the gradient or the parameter) depends on how the renderer treats NaN.
    found = re.search(rf"the (\w+ loss|gradient of grid|parameter grid) became nan at step {k}; ", err)
    assert found and "last checkpoint is intact" in err, err[-300:]
    assert "Traceback" not in err
    assert [s for s, _ in list_checkpoints(out)] == [k - 3, k - 2, k - 1]
    _, field, step = load_run(out)
    assert step == k - 1 and torch.isfinite(field.grid).all()


def test_a_full_disk_keeps_the_previous_checkpoint(tmp_path, cache_dir, monkeypatch, capsys):
    import sjc.app.runs.checkpoint

    real_save = sjc.app.runs.checkpoint.save_file

    def full_disk(tensors, filename, metadata=None):
        if "step_0000004" in filename:
            with open(filename, "wb") as f:
                f.write(b"torn")  # what a full disk leaves behind
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), filename)
        return real_save(tensors, filename, metadata=metadata)

    monkeypatch.setattr("sjc.app.runs.checkpoint.save_file", full_disk)
    out = tmp_path / "run"
    assert cli.main(_args(out, cache_dir, "--steps", "6", "--train.checkpoint-every", "2")) == 2
    err = capsys.readouterr().err
    assert "cannot write checkpoint" in err and "step_0000004" in err and "no space left on the device" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step_0000002.safetensors"]
    assert load_run(out)[2] == 2


# --- the loop itself, with an oracle prior on a small grid --------------------------------------------
def _oracle_setup(steps=3, **train):
    cfg = preset("toy", "default")
    cfg = dataclasses.replace(
        cfg,
        prompt="oracle",
        field=dataclasses.replace(cfg.field, resolution=8, coarse_scale=None, upsample_at=()),
        train=dataclasses.replace(cfg.train, steps=steps, validate_every=0, **train),
    )
    prior = OraclePrior(two_colour_sphere(8), 8)
    gens = make_generators(0, torch.device("cpu"))
    return cfg, prior, gens, build_field(prior, cfg.field, torch.device("cpu"), generator=gens["init"])


def test_a_non_finite_gradient_is_named_at_its_step():
    cfg, prior, gens, field = _oracle_setup()
    field.grid.register_hook(lambda grad: grad * float("nan"))
    before = field.grid.detach().clone()
    with pytest.raises(NonFiniteError, match="the gradient of grid became nan at step 1"):
        run_fit(field, prior, cfg, None, gens=gens, progress=False)
    assert torch.equal(field.grid, before)


def test_an_overflowing_update_is_caught_in_the_parameters_and_never_saved(tmp_path):
    cfg, prior, gens, field = _oracle_setup(checkpoint_every=1)

    class Overflowing(torch.optim.Optimizer):  # finite losses and gradients; values x 1e30 a step: inf at step 2
        def __init__(self, params):
            super().__init__(params, {})

        @torch.no_grad()
        def step(self, closure=None):
            for group in self.param_groups:
                for p in group["params"]:
                    p.mul_(1e30)

    overflowing = Overflowing(field.parameters())
    with pytest.raises(NonFiniteError, match="the parameter grid became -?inf at step 2"):
        run_fit(field, prior, cfg, tmp_path, optimizer=overflowing, gens=gens, progress=False)
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]  # step 1 was still finite


def test_a_stop_request_checkpoints_the_current_step_and_says_how_to_resume(tmp_path):
    cfg, prior, gens, field = _oracle_setup(steps=5)
    stop = StopRequest()
    stop.signum = signal.SIGTERM
    with pytest.raises(Interrupted) as info:
        run_fit(field, prior, cfg, tmp_path, gens=gens, progress=False, stop=stop)
    assert str(info.value) == f"interrupted at step 1; resume with: sjc generate --resume {tmp_path}"
    assert info.value.exit_code == 128 + signal.SIGTERM
    assert [s for s, _ in list_checkpoints(tmp_path)] == [1]


def test_the_first_signal_asks_to_stop_and_the_second_quits_at_once():
    before = signal.getsignal(signal.SIGINT)
    with catch_signals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # the handler runs between bytecodes of the main thread
        assert stop.requested and stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)
    assert signal.getsignal(signal.SIGINT) is before
