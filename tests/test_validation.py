"""Bad settings stop `sjc generate` at the boundary: exit status 2 and one message naming the value, never a
traceback; random settings either start a run or get that message (a property test)."""

import contextlib
import io
import itertools
import os
from unittest import mock

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from sjc.app.commands import cli
from sjc.core import fit as trainer

PROMPT = "a red and blue cube"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("toy-cache"))


def _generate(out, cache_dir, *flags):
    return ["generate", PROMPT, "--preset", "tiny", "--toy.cache-dir", cache_dir, "--out", str(out), *flags]


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--steps", "0"], "--train.steps must be positive, got 0"),
        (["--steps", "-5"], "--train.steps must be positive, got -5"),
        (["--field.resolution", "1"], "--field.resolution must be at least 2, got 1"),
        (["--optim.lr", "-0.1"], "--optim.lr must not be negative, got -0.1"),
        (["--optim.background-lr", "-1e-4"], "--optim.background-lr must not be negative, got -0.0001"),
        (["--optim.lr", "nan"], "--optim.lr must be a finite number, got nan"),
        (["--losses.emptiness-weight", "-1"], "--losses.emptiness-weight must not be negative, got -1.0"),
        (["--losses.center-depth-weight", "-2"], "--losses.center-depth-weight must not be negative, got -2.0"),
        (
            ["--scoring.sigma-min", "2", "--scoring.sigma-max", "1"],
            "--scoring.sigma-min (2.0) must be below --scoring.sigma-max (1.0)",
        ),
        (["--prior", "sd", "--sd.resolution", "100"], "--sd.resolution must be a positive multiple of 8 (the VAE"),
        (["--seed", "-1"], "--train.seed must be in [0, 9007199254740992), got -1"),
        (["--threads", "0"], "--threads must be at least 1, got 0"),
        (["--camera.fov-max", "180"], "--camera.fov-max must be in (0, 180), got 180.0"),
        (["--train.keep-checkpoints", "0"], "--train.keep-checkpoints must be at least 1, got 0"),
        (["--device", "meta"], "unknown device 'meta'"),
    ],
)
def test_an_out_of_range_value_exits_2_naming_it(flags, message, tmp_path, cache_dir, capsys):
    assert cli.main(_generate(tmp_path / "run", cache_dir, *flags)) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_a_sigma_range_reversed_against_the_priors_is_refused_before_writing(tmp_path, cache_dir, capsys):
    # The toy prior's range is [0.1, 1.5]: a sigma-min of 3 alone reverses it.
    assert cli.main(_generate(tmp_path / "run", cache_dir, "--scoring.sigma-min", "3")) == 2
    err = capsys.readouterr().err
    assert "the sigma range [3.0, 1.5]" in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("flags", "named"), [(["--no-such-flag", "3"], "--no-such-flag"), (["--steps", "abc"], "abc")])
def test_an_unknown_flag_or_unparsable_value_exits_2_naming_it(flags, named, tmp_path, cache_dir, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(_generate(tmp_path / "run", cache_dir, *flags))
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert named in err and "Traceback" not in err


def test_a_folder_holding_another_run_is_refused_unless_overwrite_or_resume(tmp_path, cache_dir, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("{}")
    assert cli.main(_generate(run, cache_dir)) == 2
    assert f"{run} already holds a run" in capsys.readouterr().err
    assert (run / "config.json").read_text() == "{}"


# --- the property: random settings start a run or exit 2 with a message -----------------------------------
class Started(Exception):
    """Raised after the first optimisation step: the run got going."""


def _first_step_then_stop(real_step):
    def step(*args, **kwargs):
        real_step(*args, **kwargs)
        raise Started

    return step


def _floats(typical, wide):
    """Half the draws from a typical range, the rest anywhere in `wide` or an edge case (not a number too)."""
    edge = st.sampled_from(["nan", "inf", "-inf", "0", "-0.0", "1e-12", "abc", ""])
    return st.one_of(st.floats(*typical).map(repr), st.one_of(st.floats(*wide, allow_nan=False).map(repr), edge))


def _ints(typical, wide):
    edge = st.sampled_from(["0", "-1", "2.5", "x"])
    return st.one_of(st.integers(*typical).map(str), st.one_of(st.integers(*wide).map(str), edge))


# Ranges stay small where a valid value costs memory or time (grid, image size, renders).
FLAGS = {
    "--steps": _ints((1, 10**6), (-3, 10**12)),
    "--seed": _ints((0, 10**6), (-3, 2**70)),
    "--field.resolution": _ints((2, 20), (-3, 20)),
    "--field.step-ratio": _floats((0.05, 2), (-1, 4)),
    "--field.density-shift": _floats((-5, 5), (-60, 60)),
    "--field.min-transmittance": _floats((0, 0.5), (-1, 2)),
    "--field.background": st.sampled_from(["texture", "fixed", "plaid"]),
    "--field.background-size": _ints((1, 8), (-2, 8)),
    "--camera.radius": _floats((1, 4), (-2, 6)),
    "--camera.fov-min": _floats((20, 60), (-10, 200)),
    "--camera.fov-max": _floats((40, 120), (-10, 200)),
    "--camera.test-fov": _floats((20, 120), (-10, 200)),
    "--camera.max-polar-param": _floats((10, 180), (-10, 400)),
    "--scoring.sigma-schedule": st.sampled_from(["log-uniform", "grid", "annealed", "cosine"]),
    "--scoring.sigma-min": st.one_of(_floats((0.05, 0.5), (-1, 4)), st.just("None")),
    "--scoring.sigma-max": st.one_of(_floats((0.5, 3), (-1, 4)), st.just("None")),
    "--scoring.n-noise": _ints((1, 3), (-2, 3)),
    "--losses.emptiness-weight": _floats((0, 1e4), (-10, 1e5)),
    "--losses.emptiness-scale": _floats((0, 20), (-20, 50)),
    "--losses.emptiness-multiplier": _floats((0, 30), (-5, 50)),
    "--losses.emptiness-switch": _floats((0, 1), (-1, 2)),
    "--losses.center-depth-weight": _floats((0, 10), (-5, 50)),
    "--optim.lr": _floats((0, 1), (-1, 1e40)),
    "--optim.background-lr": _floats((0, 0.01), (-1, 10)),
    "--train.checkpoint-every": _ints((1, 1000), (-2, 10**6)),
    "--train.keep-checkpoints": _ints((1, 5), (-2, 5)),
    "--train.validate-every": _ints((0, 1000), (-2, 10**6)),
    "--train.log-every": _ints((1, 100), (-2, 10**6)),
    "--toy.n-images": st.sampled_from(["-1", "0", "5", "100", "1000"]),
    "--toy.image-size": st.sampled_from(["-1", "0", "3", "8", "16"]),
    "--threads": _ints((1, 2), (-2, 2)),
    "--device": st.sampled_from(["cpu", "auto", "cuda", "cuda:3", "meta", "gpu7", "cpu:0"]),
    "--export.turntable-frames": _ints((1, 100), (-2, 100)),
    "--export.mesh-threshold": _floats((0.05, 0.95), (-1, 2)),
}


_counter = itertools.count()  # one run folder per example


@settings(  # SJC_EXAMPLES=500 searches longer (about 90 s)
    max_examples=int(os.environ.get("SJC_EXAMPLES", 60)),
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(
    st.sets(st.sampled_from(sorted(FLAGS)), max_size=4).flatmap(
        lambda keys: st.fixed_dictionaries({k: FLAGS[k] for k in sorted(keys)})
    )
)
def test_random_settings_start_a_run_or_exit_2_with_a_message(tmp_path, cache_dir, flags):
    out = tmp_path / f"run{next(_counter)}"
    args = _generate(out, cache_dir, *itertools.chain.from_iterable(flags.items()))
    err = io.StringIO()
    try:
        with (
            mock.patch.object(trainer, "sjc_step", _first_step_then_stop(trainer.sjc_step)),
            contextlib.redirect_stderr(err),
            contextlib.redirect_stdout(io.StringIO()),
        ):
            code = cli.main(args)
    except Started:
        event("started")
        return
    except SystemExit as exit_:  # the flag parser's own message (unknown flag, unparsable value)
        code = exit_.code
    finally:
        torch.set_num_threads(1)  # --threads changes the whole test process
    message = err.getvalue()
    event(f"exit {code}")
    assert "Traceback" not in message
    if code == 1:  # the run started and stopped on a non-finite value at its first step, with a message
        assert "became" in message and "at step 1" in message, message
    else:
        assert code == 2 and message.strip(), (flags, message)
