"""TensorBoard event files of a run, read back with TensorBoard's own reader and held against log.jsonl and the
validation PNGs; a resumed run continues the same curves without duplicate steps."""

import io
import json

import numpy as np
import pytest

pytest.importorskip("tensorboard")
import imageio.v3 as iio  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

from sjc.app.commands import cli  # noqa: E402
from sjc.app.runs import tensorboard as tb  # noqa: E402


def _events(run):
    acc = EventAccumulator(str(run / tb.FOLDER), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _args(out, *extra):
    return [
        "generate", "a red and blue cube", "--preset", "tiny", "--out", str(out), "--train.log-every", "10",
        "--train.validate-every", "50", "--train.checkpoint-every", "50", *extra,
    ]  # fmt: skip


def test_the_curves_images_and_settings_of_a_run_match_its_log_and_pictures(tmp_path):
    run = tmp_path / "cube"
    assert cli.main(_args(run, "--steps", "100")) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    acc = _events(run)
    tags = acc.Tags()["scalars"]
    for key in ("sjc", "emptiness"):
        curve = acc.Scalars(f"loss/{key}")
        assert [e.step for e in curve] == [r["step"] for r in log]
        assert np.allclose([e.value for e in curve], [r[key] for r in log], rtol=1e-6)
    assert [e.value for e in acc.Scalars("sigma")] == pytest.approx([r["sigma"] for r in log], rel=1e-6)
    assert [e.value for e in acc.Scalars("grad_norm")] == pytest.approx([r["grad_norm"] for r in log], rel=1e-6)
    assert "learning_rate/0" in tags and "steps_per_second" in tags
    assert all(e.value > 0 for e in acc.Scalars("steps_per_second"))
    # The validation renders are the PNGs of validation/, pixel for pixel.
    images = acc.Images("validation")
    assert [e.step for e in images] == [50, 100]
    for event in images:
        shown = iio.imread(io.BytesIO(event.encoded_image_string))[..., :3]
        saved = iio.imread(run / "validation" / f"step_{event.step:07d}.png")[..., :3]
        assert np.array_equal(shown, saved)
    # The toy-world quality figures at the end, and the settings as hyper-parameters.
    metrics = json.loads((run / "metrics.json").read_text())
    assert acc.Scalars("quality/iou_3d")[-1].value == pytest.approx(metrics["iou_3d"], rel=1e-6)
    plugin = acc.PluginTagToContent("hparams")
    assert "_hparams_/session_start_info" in plugin
    from tensorboard.plugins.hparams import plugin_data_pb2

    start = plugin_data_pb2.HParamsPluginData.FromString(plugin["_hparams_/session_start_info"]).session_start_info
    assert start.hparams["prompt"].string_value == "a red and blue cube"
    assert start.hparams["train.steps"].number_value == 100


def test_a_resumed_run_continues_the_same_curves_without_duplicate_steps(tmp_path, monkeypatch):
    import sjc.core.fit as trainer

    run = tmp_path / "cube"
    crash_at = 73  # a crash (no checkpoint of its own): logged up to 70, checkpointed at 50, so 60 and 70 run again
    real_step = trainer.sjc_step

    def crashing(field, loop, step):
        if step + 1 == crash_at:
            raise RuntimeError("the machine went away")
        return real_step(field, loop, step)

    monkeypatch.setattr("sjc.core.fit.sjc_step", crashing)
    with pytest.raises(RuntimeError, match="went away"):
        cli.main(_args(run, "--steps", "100"))
    assert [e.step for e in _events(run).Scalars("loss/sjc")] == [10, 20, 30, 40, 50, 60, 70]
    monkeypatch.setattr("sjc.core.fit.sjc_step", real_step)
    assert cli.main(["generate", "--resume", str(run)]) == 0
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    curve = _events(run).Scalars("loss/sjc")
    steps = [e.step for e in curve]
    assert steps == [r["step"] for r in log] == list(range(10, 101, 10))  # 60 and 70 once each: the new values
    assert np.allclose([e.value for e in curve], [r["sjc"] for r in log], rtol=1e-6)


def test_tensorboard_off_writes_nothing_and_on_without_the_package_is_refused(tmp_path, capsys, monkeypatch):
    run = tmp_path / "plain"
    assert cli.main(_args(run, "--steps", "10", "--log.tensorboard", "off")) == 0
    assert not (run / tb.FOLDER).exists()
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    assert cli.main(_args(tmp_path / "x", "--steps", "10", "--log.tensorboard", "on")) == 2
    assert "pip install 'sjc[logs]'" in capsys.readouterr().err
    assert cli.main(_args(tmp_path / "y", "--steps", "10")) == 0  # auto: none without the package
    assert not (tmp_path / "y" / tb.FOLDER).exists()
