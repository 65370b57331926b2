"""Image-to-3D end to end: `sjc generate --image` with the toy, toy-image, Stable Diffusion and plug-in priors; the
reference view reproduced, the elevation estimated, a resumed image run bit-identical, bad input refused."""

from __future__ import annotations

import dataclasses
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from sjc.app.commands import cli
from sjc.app.runs.checkpoint import list_checkpoints
from sjc.app.runs.generate import generate
from sjc.app.settings.presets import preset
from sjc.core.cameras import View, camera_from_view
from sjc.core.fit import Reference, build_field, fit
from sjc.core.render import render
from sjc.priors import build_prior
from sjc.priors.toy import parse_prompt, render_scene
from sjc.priors.toy_image import estimate_elevation


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("toy-cache"))


def write_picture(path: Path, prompt: str, elevation: float = 0.0, size: int = 96, rgba: bool = True) -> Path:
    """The true render of `prompt` from azimuth 0 at `elevation` (60 degrees, radius 1.5): RGBA with the mask as
    alpha, or RGB on the white background."""
    image, mask, _ = render_scene(parse_prompt(prompt), camera_from_view(View(0.0, elevation), size))
    rgb = ((image.permute(1, 2, 0).numpy() + 1) / 2 * 255).round().clip(0, 255).astype("uint8")
    pixels = np.dstack([rgb, (mask.numpy() * 255).astype("uint8")]) if rgba else rgb
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def _generate(*args: str, cache_dir: str) -> int:
    return cli.main(["generate", *args, "--preset", "tiny", "--toy.cache-dir", cache_dir])


def test_toy_image_takes_the_object_and_its_elevation_from_a_picture_alone(tmp_path, cache_dir, capsys):
    picture = write_picture(tmp_path / "cone.jpg", "a yellow and blue cone", elevation=20.0, rgba=False)
    out = tmp_path / "run"
    flags = ["--prior", "toy-image", "--image.estimate-elevation", "--out", str(out)]
    assert _generate("--image", str(picture), *flags, cache_dir=cache_dir) == 0
    printed = capsys.readouterr()
    assert "the picture shows: a yellow and blue cone" in printed.out
    assert "elevation estimated at 20 degrees" in printed.err
    info = json.loads((out / "reference.json").read_text())
    assert info["object"] == "a yellow and blue cone" and info["posterior"]["a yellow and blue cone"] > 0.99
    assert info["mask"].startswith("background colour") and info["view"]["elevation"] == 20.0
    # The saved config holds the view it ran with, so it reproduces the run with nothing estimated again.
    saved = json.loads((out / "config.json").read_text())
    assert saved["image"]["view"] == [0.0, 20.0, 60.0, 1.5] and not saved["image"]["estimate_elevation"]
    assert (out / "reference-picture.jpg").read_bytes() == picture.read_bytes()
    metrics = json.loads((out / "metrics.json").read_text())
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {"sjc", "reference_rgb", "reference_mask"} <= set(log[-1])
    # Measured at the tiny preset (16^3, 300 steps): 3D IoU 0.65 against the true cone.
    assert metrics["object"] == "a yellow and blue cone"
    assert metrics["iou_3d"] > 0.5 and metrics["silhouette_iou"] > 0.65


def test_the_elevation_estimate_recovers_known_elevations():
    for prompt, elevation in (("an orange torus", 23.0), ("a blue cylinder", -4.0), ("a purple cone", 47.0)):
        image = render_scene(parse_prompt(prompt), camera_from_view(View(0.0, elevation), 32))[0]
        found, posterior = estimate_elevation(image, View(0.0, 0.0), supersample=1)
        assert found == elevation and posterior[prompt] > 0.99
        # The toy prior's: its own object only.
        only, _ = estimate_elevation(image, View(0.0, 0.0), prompts=(prompt,), supersample=1)
        assert only == elevation


def test_a_reference_fitted_with_the_prior_is_reproduced_at_its_view_and_the_prior_shapes_the_rest(cache_dir):
    cfg = preset("toy", "tiny")
    prior = build_prior("toy", "a red and green cylinder", toy=dataclasses.replace(cfg.toy, cache_dir=cache_dir))
    view, back = View(0.0, 10.0), View(180.0, 10.0)
    truth = parse_prompt("a red and green cylinder")
    image, mask, _ = render_scene(truth, camera_from_view(view, prior.image_size))
    back_mask = render_scene(truth, camera_from_view(back, prior.image_size))[1]
    figures = {}
    for name, reference in (("prior", None), ("both", Reference(image, mask.float(), view))):
        field, seen = build_field(prior, cfg.field), []
        record = seen.append
        fit(
            field,
            prior,
            cfg.fit_settings(),
            steps=300,
            reference=reference,
            progress=False,
            callback=lambda s, record=record: record(s.losses),
        )
        assert all(({"reference_rgb", "reference_mask"} <= set(losses)) == (reference is not None) for losses in seen)
        with torch.no_grad():
            there = render(field, camera_from_view(view, prior.image_size)).image[0]
            behind = render(field, camera_from_view(back, prior.image_size)).opacity > 0.5
        psnr = 10 * math.log10(4 / float((there - image).square().mean()))
        figures[name] = psnr, float((behind & back_mask).sum() / (behind | back_mask).sum())
    # Measured (16^3, 300 steps): the reference view 14.2 dB with the prior alone, 24.5 dB with the picture too;
    # the unseen back's silhouette IoU 0.77 and 0.86: the prior draws the cylinder's back, the picture helps it.
    assert figures["both"][0] > figures["prior"][0] + 6 and figures["both"][1] > 0.75


def _config(tmp_path, cache_dir, name, picture):
    cfg = preset("toy", "tiny")
    return dataclasses.replace(
        cfg,
        prompt="an orange torus",
        out=str(tmp_path / name),
        toy=dataclasses.replace(cfg.toy, cache_dir=cache_dir, n_images=300),
        image=dataclasses.replace(cfg.image, path=str(picture), view=(0.0, 0.0), every=2, warmup=0.1),
        train=dataclasses.replace(cfg.train, steps=60, checkpoint_every=10, keep_checkpoints=10, validate_every=0),
    )


def test_a_stopped_image_run_resumes_from_its_own_copy_of_the_picture_bit_identical(tmp_path, cache_dir, monkeypatch):
    monkeypatch.setattr("sjc.app.runs.generate.write_outputs", lambda *args: {})
    monkeypatch.setattr("sjc.app.runs.generate.evaluate", lambda *args: None)
    picture = write_picture(tmp_path / "pictures" / "torus.png", "an orange torus")
    whole = generate(_config(tmp_path, cache_dir, "whole", picture), progress=False)
    stop_at_20 = lambda s: s.step == 20  # noqa: E731
    stopped = generate(_config(tmp_path, cache_dir, "stopped", picture), callback=stop_at_20, progress=False)
    assert stopped.stopped
    picture.unlink()  # the resume reads the run's own copy
    assert cli.main(["generate", "--resume", str(stopped.run_dir)]) == 0
    a = load_file(list_checkpoints(whole.run_dir)[-1][1])
    b = load_file(list_checkpoints(stopped.run_dir)[-1][1])
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _plugin(tmp_path: Path, monkeypatch, channels: int) -> str:
    """A plug-in prior: the exact denoiser of one fixed image (its data: a grey disc on white)."""
    (tmp_path / f"disc{channels}.py").write_text(
        "import torch\n"
        "from sjc.priors import DenoiserPrior\n"
        "def make(prompt, device):\n"
        "    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 16), torch.linspace(-1, 1, 16), indexing='ij')\n"
        f"    image = torch.where(xx**2 + yy**2 < 0.4, 0.0, 1.0).expand({channels}, 16, 16)\n"
        "    return DenoiserPrior(lambda x, s, c: image.expand_as(x).to(x), channels="
        f"{channels}, image_size=16, sigma_min=0.1, sigma_max=1.0)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, f"disc{channels}", raising=False)
    return f"python:disc{channels}:make"


def test_a_plugin_prior_takes_a_picture_and_one_of_other_channels_is_refused(tmp_path, monkeypatch, cache_dir, capsys):
    picture = write_picture(tmp_path / "sphere.png", "a yellow sphere")
    out = tmp_path / "plugin"
    prior = _plugin(tmp_path, monkeypatch, 3)
    assert (
        _generate("--image", str(picture), "--prior", prior, "--steps", "20", "--out", str(out), cache_dir=cache_dir)
        == 0
    )
    assert (out / "reference.json").exists() and (out / "turntable.gif").exists()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert log[-1]["reference_mask"] < log[0]["reference_mask"]
    prior = _plugin(tmp_path, monkeypatch, 1)
    capsys.readouterr()
    assert (
        _generate("--image", str(picture), "--prior", prior, "--out", str(tmp_path / "grey"), cache_dir=cache_dir) == 2
    )
    err = capsys.readouterr().err
    assert "renders 1-channel images and has no encode()" in err and "Traceback" not in err
    assert not (tmp_path / "grey").exists()


def test_stable_diffusion_takes_a_picture_as_vae_latents(tmp_path, cache_dir):
    pytest.importorskip("diffusers")
    import tiny_sd

    model = tiny_sd.build_tiny_sd(tmp_path / "tiny-sd")
    picture = write_picture(tmp_path / "cube.png", "a red and blue cube", size=64)
    out = tmp_path / "sd"
    args = ["a cube", "--prior", "sd", "--sd.model", str(model), "--image", str(picture), "--steps", "4"]
    args.append("--allow-sd-on-cpu")
    assert _generate(*args, "--out", str(out), cache_dir=cache_dir) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and all(math.isfinite(r["reference_rgb"]) and r["reference_mask"] > 0 for r in log)
    assert json.loads((out / "reference.json").read_text())["mask"] == "alpha"


def test_the_learned_toy_prior_takes_a_picture_with_its_prompt(tmp_path, cache_dir):
    picture = write_picture(tmp_path / "cylinder.png", "a blue cylinder", size=64)
    out = tmp_path / "learned"
    args = ["a blue cylinder", "--prior", "toy-learned", "--image", str(picture), "--steps", "6"]
    assert _generate(*args, "--out", str(out), cache_dir=cache_dir) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert {"sjc", "reference_rgb", "reference_mask"} <= set(log[-1])
    metrics = json.loads((out / "metrics.json").read_text())  # measured against the prompt's object
    assert "object" not in metrics and {"iou_3d", "iou_3d_closed", "silhouette_iou"} <= set(metrics)


def test_an_unconditional_pixel_prior_takes_a_picture_without_a_prompt(tmp_path, cache_dir):
    pytest.importorskip("diffusers")
    import tiny_pixel

    model = tiny_pixel.build_tiny_ddpm(tmp_path / "tiny-ddpm")
    picture = write_picture(tmp_path / "sphere.png", "a yellow sphere", size=64)
    out = tmp_path / "pixel"
    args = ["--prior", "pixel", "--pixel.model", str(model), "--image", str(picture), "--steps", "4"]
    assert _generate(*args, "--out", str(out), cache_dir=cache_dir) == 0
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 4 and all(r["reference_mask"] > 0 for r in log)


def _bad(tmp_path: Path, kind: str) -> Path:
    path = tmp_path / f"{kind}.png"
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "text":
        path.write_text("not a picture")
    elif kind == "transparent":
        Image.fromarray(np.zeros((32, 32, 4), "uint8")).save(path)
    elif kind == "plain":
        Image.fromarray(np.full((32, 32, 3), 200, "uint8")).save(path)
    return path


@pytest.mark.parametrize(
    ("kind", "flags", "message"),
    [
        ("missing", (), "no picture at"),
        ("empty", (), "is not a picture sjc can read"),
        ("text", (), "is not a picture sjc can read"),
        ("transparent", (), "holds no object"),
        ("plain", (), "holds no object"),
        ("good", ("--image.view", "0", "0", "60", "0.9"), "outside the object's unit sphere"),
        ("good", ("--image.view", "0", "95"), "elevation must be in [-90, 90]"),
        ("good", ("--image.view", "10"), "--image.view takes azimuth elevation"),
        ("good", ("--prior", "toy-learned", "--image.estimate-elevation"), "needs a prior with the truth"),
        ("none", ("--prior", "toy-image"), "give one with --image"),
    ],
)
def test_bad_pictures_and_views_exit_2_with_one_line_and_write_nothing(
    tmp_path, cache_dir, capsys, kind, flags, message
):
    good = kind == "good"
    picture = write_picture(tmp_path / "good.png", "a green cube", size=32) if good else _bad(tmp_path, kind)
    image = [] if kind == "none" else ["--image", str(picture)]
    prompt = [] if "toy-image" in flags else ["a green cube"]
    out = tmp_path / "out"
    assert _generate(*prompt, *image, *flags, "--out", str(out), cache_dir=cache_dir) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("command", ["canvas", "sample"])
def test_the_2d_commands_say_the_image_prior_is_for_generate(command, capsys):
    assert cli.main([command, "--prior", "toy-image", "--preset", "tiny"]) == 2
    assert "only sjc generate takes (--image)" in capsys.readouterr().err


def test_depth_smoothness_has_its_closed_form_and_joins_the_reference_losses(cache_dir):
    from sjc.core.chaining import depth_smoothness

    y, x = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    mask = torch.zeros(8, 8)
    mask[2:6, 1:7] = 1
    assert float(depth_smoothness(torch.full((8, 8), 3.0), mask)) == 0.0
    assert float(depth_smoothness(0.5 * x + 2.0, mask)) == pytest.approx(0.25)  # slope 0.5 across, none down
    bumped = 0.5 * x + 2.0
    bumped[0, 0] = 100.0  # off the object: not counted
    assert float(depth_smoothness(bumped, mask)) == pytest.approx(0.25)
    depth = torch.rand(8, 8, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda d: depth_smoothness(d, mask.double()), (depth,))

    cfg = preset("toy", "tiny")
    prior = build_prior("toy", "a green cube", toy=dataclasses.replace(cfg.toy, cache_dir=cache_dir))
    image, mask, _ = render_scene(parse_prompt("a green cube"), camera_from_view(View(0.0, 0.0), prior.image_size))
    reference = Reference(image, mask.float(), View(0.0, 0.0), depth_smoothness_weight=10.0)
    losses = reference.losses(build_field(prior, cfg.field), render)
    assert set(losses) == {"reference_rgb", "reference_mask", "reference_depth_smoothness"}
    with pytest.raises(Exception, match="weights >= 0"):
        Reference(image, mask.float(), View(0.0, 0.0), depth_smoothness_weight=-1.0)
