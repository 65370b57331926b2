"""`sjc generate --config FILE`: a run reproduced or varied from its folder, and settings files checked key by key."""

import json

import pytest
from safetensors.torch import load_file

from sjc.app.commands import cli
from sjc.app.settings.parse import parse_generate
from sjc.app.settings.presets import preset


def _tiny(out, *extra):
    return ["generate", "a red and blue cube", "--preset", "tiny", "--steps", "12", "--out", str(out), *extra]


def test_a_runs_own_config_reproduces_it_and_flags_after_it_vary_it(tmp_path, capsys):
    first = tmp_path / "cube"
    assert cli.main(_tiny(first, "--train.checkpoint-every", "12")) == 0
    again = tmp_path / "again"
    assert cli.main(["generate", "--config", str(first / "config.json"), "--out", str(again)]) == 0
    a = load_file(str(first / "checkpoints" / "step_0000012.safetensors"))
    b = load_file(str(again / "checkpoints" / "step_0000012.safetensors"))
    assert a.keys() == b.keys() and all(bool((a[k] == b[k]).all()) for k in a)
    saved = json.loads((again / "config.json").read_text())
    assert saved["config"] == str(first / "config.json") and saved["out"] == str(again)
    varied = parse_generate(["--config", str(first / "config.json"), "--seed", "1", "--out", str(tmp_path / "s1")])
    original = parse_generate(["--config", str(first / "config.json")])
    assert varied.train.seed == 1 and varied.field == original.field and varied.train.steps == 12
    # Without --out the saved folder is the run's own, which holds a run: refused as any taken folder is.
    assert cli.main(["generate", "--config", str(first / "config.json")]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_a_toml_file_holds_only_what_differs_from_its_priors_preset(tmp_path, capsys):
    path = tmp_path / "cube.toml"
    path.write_text('prompt = "a green cube"\npreset = "tiny"\n[train]\nsteps = 7\n[losses]\nemptiness_weight = 50\n')
    cfg = parse_generate(["--config", str(path), "--optim.lr", "0.2"])
    tiny = preset("toy", "tiny")
    assert cfg.prompt == "a green cube" and cfg.train.steps == 7 and cfg.losses.emptiness_weight == 50
    assert cfg.field == tiny.field and cfg.toy == tiny.toy and cfg.optim.lr == 0.2
    assert cli.main(["generate", "--config", str(path), "--dry-run"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["train"]["steps"] == 7 and printed["config"] == str(path)


@pytest.mark.parametrize(
    ("name", "text", "argv", "message"),
    [
        ("a.toml", "[train]\nstepz = 3\n", [], "unknown key 'train.stepz'; did you mean 'train.steps'?"),
        ("a.json", '{"train": {"steps": "many"}}', [], "'train.steps' must be a whole number, got 'many'"),
        ("a.json", '{"field": 32}', [], "'field' is a section of settings (a table), got 32"),
        ("a.json", '{"scoring": {"method": "magic"}}', [], "'scoring.method' must be one of 'paas'"),
        ("a.json", '{"train": {"steps": 3', [], "is not valid JSON"),
        ("a.toml", "prior = 'toy'\n", ["--prior", "sd"], "holds settings for the toy prior, not sd"),
        ("a.toml", "preset = 'tiny'\n", ["--preset", "paper"], "--preset and --config both choose"),
        ("a.toml", "", ["--resume", "runs/x"], "--resume continues a run with its own settings"),
        ("a.json", "[1, 2]", [], "holds a list, not a table of settings"),
    ],
)
def test_a_bad_settings_file_gets_one_line_naming_the_key_and_exit_2(tmp_path, capsys, name, text, argv, message):
    path = tmp_path / name
    path.write_text(text)
    assert cli.main(["generate", "a red cube", "--config", str(path), *argv, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "r").exists()


def test_a_missing_settings_file_is_named(tmp_path, capsys):
    assert cli.main(["generate", "--config", str(tmp_path / "nope.toml")]) == 2
    assert f"no settings file at {tmp_path / 'nope.toml'}" in capsys.readouterr().err
