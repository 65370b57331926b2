import dataclasses
import json
import subprocess
import sys

import pytest

from sjc.app.commands import cli
from sjc.app.settings.config import GenerateConfig, from_dict, to_dict, validate
from sjc.app.settings.presets import preset


def _run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "sjc", *args], capture_output=True, text=True, timeout=120, **kw)


@pytest.mark.parametrize("args", [["--help"], ["generate", "--help"], ["train-prior", "--help"], ["sample", "--help"]])
def test_help_does_not_import_torch(args):
    code = (
        "import sys\nfrom sjc.app.commands import cli\n"
        f"try:\n    cli.main({args!r})\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().endswith("NO-TORCH"), out.stdout[-500:]


def test_generate_help_documents_fields():
    out = _run("generate", "--help")
    assert out.returncode == 0
    assert "--field.resolution" in out.stdout and "Voxels along each side" in out.stdout
    assert "PROMPT" in out.stdout


def test_dry_run_prints_the_resolved_config_with_overrides():
    out = _run("generate", "a red cube", "--preset", "tiny", "--train.steps", "7", "--train.seed", "5", "--dry-run")
    assert out.returncode == 0, out.stderr
    cfg = json.loads(out.stdout)
    assert cfg["prompt"] == "a red cube" and cfg["preset"] == "tiny"
    assert cfg["train"]["steps"] == 7 and cfg["train"]["seed"] == 5
    assert cfg["field"]["resolution"] == preset("toy", "tiny").field.resolution
    short = json.loads(_run("generate", "a red cube", "--steps", "9", "--seed", "2", "--dry-run").stdout)
    assert short["train"]["steps"] == 9 and short["train"]["seed"] == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "a red cube", "--train.steps", "0"], "--train.steps must be positive"),
        (["generate", "a red cube", "--field.resolution", "1"], "--field.resolution must be at least 2"),
        (["generate", "a red cube", "--optim.lr", "-1"], "--optim.lr must not be negative"),
        (
            ["generate", "a red cube", "--scoring.sigma-min", "2", "--scoring.sigma-max", "1"],
            "must be below --scoring.sigma-max",
        ),
        (["generate", "a red cube", "--preset", "huge"], "unknown preset 'huge'"),
        (["generate"], "give a prompt"),
        (["frobnicate"], "unknown command 'frobnicate'"),
    ],
)
def test_user_mistakes_exit_2_with_one_message(args, message, capsys):
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_unknown_flag_exits_2_without_traceback():
    out = _run("generate", "a red cube", "--no-such-flag", "3")
    assert out.returncode == 2
    assert "Traceback" not in out.stderr


def test_config_round_trips_through_json():
    cfg = preset("toy", "tiny")
    assert from_dict(GenerateConfig, json.loads(json.dumps(to_dict(cfg)))) == cfg
    with pytest.raises(ValueError, match="unknown configuration key 'bogus'"):
        from_dict(GenerateConfig, {**to_dict(cfg), "bogus": 1})
    for name in ("default", "tiny", "paper"):
        validate(dataclasses.replace(preset("toy", name), prompt="a red cube"))
    validate(GenerateConfig(prompt="a red cube"))  # the dataclass defaults alone make a valid run


def test_an_unavailable_device_is_a_user_error(capsys, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    assert cli.main(["generate", "a red cube", "--preset", "tiny", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "not available" in capsys.readouterr().err
    assert cli.main(["generate", "a red cube", "--preset", "tiny", "--device", "gpu7", "--out", str(tmp_path)]) == 2
    assert "unknown device" in capsys.readouterr().err


def test_the_package_and_the_prior_registry_import_no_torch():
    code = (
        "import sys\nimport sjc, sjc.priors, sjc.app.settings.presets\n"
        "sjc.priors.check_prior('toy', 'a red cube')\nassert sjc.__version__\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "NO-TORCH", out.stderr[-500:]


@pytest.mark.parametrize(("given", "expected"), [(None, "PASSIVE"), ("ACTIVE", "ACTIVE")])
def test_openmp_threads_sleep_at_barriers_unless_the_user_says_otherwise(given, expected):
    import os

    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    if given:
        env["OMP_WAIT_POLICY"] = given
    code = "import os, sjc\nprint(os.environ['OMP_WAIT_POLICY'])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, env=env)
    assert out.stdout.strip() == expected, out.stderr[-500:]
