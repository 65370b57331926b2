"""The Zero-1-to-3 prior, on a tiny random Zero-1-to-3 saved to disk and read back offline as users' weights are."""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import tiny_zero123  # sets HF_HUB_OFFLINE before diffusers is imported
from sjc.core.cameras import View, eye_position
from sjc.priors.loading import WeightsNotFoundError
from sjc.priors.zero123 import (
    RADIUS_UNITS,
    Zero123Prior,
    elevation_of,
    load_components,
    polar_angle,
    relative_pose,
)

REFERENCE = View(azimuth=0.0, elevation=0.0, fov=49.1, radius=4.0)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny_zero123.build_tiny_zero123(tmp_path_factory.mktemp("tiny-zero123") / "model")


@pytest.fixture(scope="module")
def parts(model_dir):
    return load_components(str(model_dir), "cpu", torch.float32)


def _picture(size=64, seed=0):
    """A white picture with a coloured disc in the middle, [3, S, S] in [-1, 1]."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, size), torch.linspace(-1, 1, size), indexing="ij")
    disc = (xx**2 + yy**2 < 0.35).float()
    colour = torch.rand(3, 1, 1, generator=g) * 2 - 1
    return disc * colour + (1 - disc) * torch.ones(3, 1, 1)


def _prior(parts, picture=None, **kwargs):
    picture = _picture() if picture is None else picture
    return Zero123Prior(parts, picture, REFERENCE, resolution=64, **kwargs)


# --- the camera vector ---------------------------------------------------------------------------
def _zero123_spherical(eye_sjc):
    """Polar angle (from +z), azimuth (atan2(y, x)) and radius of an sjc eye, in Zero-1-to-3's z-up world the way its
    own code computes them from a camera position. sjc's world is y-up with azimuth 0 on +z and 90 on +x; the cyclic
    relabelling (x, y, z) -> (z, x, y) keeps the handedness and puts sjc's up on +z."""
    x, y, z = eye_sjc[2], eye_sjc[0], eye_sjc[1]
    xy = x**2 + y**2
    return math.atan2(math.sqrt(xy), z), math.atan2(y, x), math.sqrt(xy + z**2)


def _pose_from_positions(view, reference):
    """Zero-1-to-3's camera vector computed from the two camera positions, as its 3D reconstruction code does."""
    theta_t, az_t, r_t = _zero123_spherical(eye_position(view).tolist())
    theta_c, az_c, r_c = _zero123_spherical(eye_position(reference).tolist())
    d_az = (az_t - az_c) % (2 * math.pi)
    return [theta_t - theta_c, math.sin(d_az), math.cos(d_az), (r_t - r_c) * RADIUS_UNITS]


@pytest.mark.parametrize(
    ("view", "reference", "expected"),
    [
        # The reference itself: no change.
        (View(0, 0, radius=4), View(0, 0, radius=4), [0.0, 0.0, 1.0, 0.0]),
        # 90 degrees round to the left (+x side), level: sin 1, cos 0.
        (View(90, 0, radius=4), View(0, 0, radius=4), [0.0, 1.0, 0.0, 0.0]),
        # From 30 degrees above: the polar angle falls by 30 degrees (seen from higher up).
        (View(0, 30, radius=4), View(0, 0, radius=4), [-math.pi / 6, 0.0, 1.0, 0.0]),
        # Wrap-around: 350 from 10 is -20, i.e. 340 degrees on.
        (
            View(350, -10, radius=4),
            View(10, 20, radius=4),
            [math.pi / 6, -math.sin(math.pi / 9), math.cos(math.pi / 9), 0],
        ),
        # Half a turn round, and 1 sjc unit further away: 0.5 in Zero-1-to-3's units.
        (View(200, 0, radius=5), View(20, 0, radius=4), [0.0, 0.0, -1.0, 0.5]),
    ],
)
def test_the_camera_vector_equals_a_hand_computation(view, reference, expected):
    got = relative_pose(view, reference)
    assert got.dtype == torch.float32 and got.shape == (4,)
    assert torch.allclose(got, torch.tensor(expected, dtype=torch.float32), atol=1e-6), got


def test_the_camera_vector_equals_zero123s_own_computation_from_camera_positions():
    g = np.random.default_rng(0)
    for _ in range(50):
        view = View(g.uniform(0, 360), g.uniform(-30, 80), radius=g.uniform(3, 5))
        reference = View(g.uniform(0, 360), g.uniform(-20, 60), radius=g.uniform(3, 5))
        assert torch.allclose(
            relative_pose(view, reference), torch.tensor(_pose_from_positions(view, reference)), atol=1e-5
        )


def test_elevation_and_polar_angle_convert_both_ways():
    assert polar_angle(90.0) == 0.0 and polar_angle(0.0) == 90.0 and polar_angle(-30.0) == 120.0  # from the top
    for elevation in (-30.0, 0.0, 12.5, 89.0):
        assert elevation_of(polar_angle(elevation)) == elevation
    # The polar angle is what Zero-1-to-3's own spherical coordinates give for an sjc camera at that elevation.
    theta, _, _ = _zero123_spherical(eye_position(View(40.0, 25.0)).tolist())
    assert math.isclose(math.degrees(theta), polar_angle(25.0), abs_tol=1e-9)


# --- the denoiser against the diffusers modules ---------------------------------------------------
def _reference_x0(model_dir, parts, picture, view, z, t, scale):
    """x0 through diffusers' own scheduler from the noise estimate of the UNet at timestep t, conditioned the way
    Zero-1-to-3's pipeline does it, computed here from the modules without the adapter."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_pretrained(model_dir, subfolder="scheduler")
    size = parts.image_encoder.config.image_size
    with torch.no_grad():
        pic = picture[None]
        clip_in = torch.nn.functional.interpolate(pic, size=(size, size), mode="bicubic", align_corners=True)
        mean = torch.tensor([0.48145466, 0.4578275, 0.40821073]).reshape(1, 3, 1, 1)
        std = torch.tensor([0.26862954, 0.26130258, 0.27577711]).reshape(1, 3, 1, 1)
        embedding = parts.image_encoder(((clip_in + 1) / 2 - mean) / std).image_embeds[:, None]
        az = math.radians(view.azimuth - REFERENCE.azimuth)
        pose = torch.tensor([[[math.radians(REFERENCE.elevation - view.elevation), math.sin(az), math.cos(az), 0.0]]])
        context = parts.projection(torch.cat([embedding, pose], dim=-1))
        latent = parts.vae.encode(pic).latent_dist.mode()
        B = z.shape[0]
        x_t = z * scheduler.alphas_cumprod[t].sqrt()
        inputs = torch.cat([torch.cat([x_t, latent.expand(B, -1, -1, -1)], 1), torch.cat([x_t, 0 * x_t], 1)])
        contexts = torch.cat([context.expand(B, -1, -1), torch.zeros_like(context).expand(B, -1, -1)])
        out = parts.unet(inputs, torch.full((2 * B,), t), encoder_hidden_states=contexts).sample
        guided = out[B:] + scale * (out[:B] - out[B:])
        return scheduler.step(guided, t, x_t).pred_original_sample


@pytest.mark.parametrize("scale", [1.0, 3.0, 100.0])
def test_denoiser_equals_the_diffusers_x0_for_a_given_pose_picture_and_noise(model_dir, parts, scale):
    picture = _picture()
    prior = _prior(parts, picture, guidance_scale=scale)
    view = View(azimuth=70.0, elevation=25.0, fov=49.1, radius=4.0)
    cond = prior.condition(view)
    gen = torch.Generator().manual_seed(1)
    for t in (15, 300, 900):
        sigma = float(prior.sigmas[t])
        z = torch.randn(2, 4, 8, 8, generator=gen) * math.sqrt(1 + sigma**2)
        got = prior.denoise(z, torch.full((2,), sigma), cond)
        expected = _reference_x0(model_dir, parts, picture, view, z, t, scale)
        assert (got - expected).abs().max() / expected.abs().max() <= 1e-4, (scale, t)
        assert (got - z).abs().max() > 1e-3 * z.abs().max()


def test_the_view_and_the_picture_both_change_the_denoised_image(parts):
    prior = _prior(parts, guidance_scale=3.0)
    other = _prior(parts, _picture(seed=5), guidance_scale=3.0)
    sigma = float(prior.sigmas[500])
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2)) * math.sqrt(1 + sigma**2)
    s = torch.full((1,), sigma)
    front = prior.denoise(z, s, prior.condition(View(0, 0, radius=4)))
    side = prior.denoise(z, s, prior.condition(View(90, 0, radius=4)))
    assert (front - side).abs().max() > 1e-3
    assert (front - other.denoise(z, s, other.condition(View(0, 0, radius=4)))).abs().max() > 1e-3
    # With no view the reference's own camera is meant.
    assert torch.equal(prior.denoise(z, s, prior.condition(None)), front)


def test_the_reference_is_encoded_once(parts, monkeypatch):
    calls = {"clip": 0, "vae": 0}
    clip_forward, vae_encode = parts.image_encoder.forward, parts.vae.encode

    def clip(*a, **k):
        calls["clip"] += 1
        return clip_forward(*a, **k)

    def vae(*a, **k):
        calls["vae"] += 1
        return vae_encode(*a, **k)

    monkeypatch.setattr(parts.image_encoder, "forward", clip)
    monkeypatch.setattr(parts.vae, "encode", vae)
    prior = _prior(parts)
    assert calls == {"clip": 1, "vae": 1}
    for az in (0.0, 45.0, 200.0):
        prior.denoise(torch.zeros(1, 4, 8, 8), torch.full((1,), 1.0), prior.condition(View(az, 10.0, radius=4)))
    assert calls == {"clip": 1, "vae": 1}


def test_the_unconditional_branch_is_zeros_and_the_latent_is_unscaled(parts):
    prior = _prior(parts)
    cond, uncond = prior.condition(View(30, 10, radius=4))
    assert cond.context.abs().sum() != 0 and uncond.context.abs().sum() == 0 and uncond.latent.abs().sum() == 0
    with torch.no_grad():
        mode = parts.vae.encode(_picture()[None]).latent_dist.mode()
    assert torch.allclose(cond.latent, mode, atol=1e-6)  # not multiplied by the VAE's scaling factor
    # The field's data space (and the reference loss's) is the scaled latent: encode applies the factor.
    assert torch.allclose(prior.encode(_picture()[None]), mode * parts.vae.config.scaling_factor, atol=1e-5)


def test_a_projection_saved_as_a_bin_file_reads_the_same(tmp_path, parts):
    folder = tiny_zero123.build_tiny_zero123(tmp_path / "bin", projection_format="bin")
    other = load_components(str(folder), "cpu", torch.float32)
    assert torch.equal(other.projection.weight, parts.projection.weight)
    assert torch.equal(other.projection.bias, parts.projection.bias)


# --- missing and wrong weights ---------------------------------------------------------------------
def test_a_folder_without_cc_projection_exits_2_saying_what_is_missing(model_dir, tmp_path):
    import shutil

    broken = tmp_path / "no-projection"
    shutil.copytree(model_dir, broken)
    shutil.rmtree(broken / "cc_projection")
    picture = tmp_path / "ref.png"
    import imageio.v3 as iio

    iio.imwrite(picture, ((_picture().permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy())
    args = [
        "generate",
        "--prior",
        "zero123",
        "--image",
        str(picture),
        "--zero123.model",
        str(broken),
        "--allow-sd-on-cpu",
    ]
    args += ["--out", str(tmp_path / "run")]
    done = subprocess.run([sys.executable, "-m", "sjc", *args], capture_output=True, text=True, env=os.environ)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "cc_projection/config.json" in lines[0] and "--zero123.model" in lines[0] and str(broken) in lines[0]
    assert "kxic/zero123-xl" in lines[0]  # how to get a complete one
    assert not (tmp_path / "run").exists()


def test_a_missing_model_exits_2_naming_the_cache_and_the_download(tmp_path):
    picture = tmp_path / "ref.png"
    import imageio.v3 as iio

    iio.imwrite(picture, ((_picture().permute(1, 2, 0) + 1) * 127.5).round().to(torch.uint8).numpy())
    args = ["generate", "--prior", "zero123", "--image", str(picture), "--zero123.model", "someone/missing-zero123"]
    args.append("--allow-sd-on-cpu")
    args += ["--out", str(tmp_path / "run")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "sjc", *args], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "hf download someone/missing-zero123" in lines[0], done.stderr
    assert not (tmp_path / "run").exists()


def test_a_stable_diffusion_unet_is_not_taken_for_zero123(tmp_path, model_dir):
    import shutil

    import tiny_sd

    sd = tiny_sd.build_tiny_sd(tmp_path / "sd")
    mixed = tmp_path / "mixed"
    shutil.copytree(model_dir, mixed)
    shutil.rmtree(mixed / "unet")
    shutil.copytree(sd / "unet", mixed / "unet")
    with pytest.raises(WeightsNotFoundError, match="takes 4 input channels.*--prior sd"):
        load_components(str(mixed), "cpu", torch.float32)


# --- the commands ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def picture_file(tmp_path_factory):
    import imageio.v3 as iio

    rgba = np.zeros((64, 64, 4), np.uint8)
    yy, xx = np.mgrid[:64, :64]
    rgba[(xx - 32) ** 2 + (yy - 32) ** 2 < 200] = [200, 30, 30, 255]
    path = tmp_path_factory.mktemp("picture") / "ball.png"
    iio.imwrite(path, rgba)
    return path


def test_a_tiny_image_to_3d_run_end_to_end_then_resumed_rendered_and_exported(model_dir, picture_file, tmp_path):
    import json

    import imageio.v3 as iio

    from sjc.app.commands import cli
    from sjc.app.runs.generate import load_run

    out = tmp_path / "ball"
    args = ["generate", "--prior", "zero123", "--image", str(picture_file), "--zero123.model", str(model_dir)]
    args.append("--allow-sd-on-cpu")
    assert cli.main([*args, "--preset", "tiny", "--steps", "20", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["prior"] == "zero123" and cfg["prompt"] == "" and cfg["image"]["view"] == [0.0, 0.0, 49.1, 4.0]
    assert cfg["camera"]["radius"] == 4.0 and cfg["image"]["rgb_weight"] == 1e4  # the preset's, from 3drec
    assert json.loads((out / "reference.json").read_text())["mask"] == "alpha"
    assert (out / "reference-picture.png").is_file()
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert len(log) == 20 and all(math.isfinite(r["sjc"]) for r in log)
    # The field learns the picture at its camera: the latent colour loss falls to under a fifth.
    assert log[-1]["reference_rgb"] < 0.2 * log[0]["reference_rgb"], (log[0], log[-1])
    # 8x8 latents decode to 64x64 RGB frames.
    assert iio.imread(out / "turntable.gif").shape == (8, 64, 128, 3)
    # Resumed from its own copy of the picture (the original moved away), to 25 steps.
    moved = tmp_path / "elsewhere.png"
    moved.write_bytes(picture_file.read_bytes())
    assert cli.main(["generate", "--resume", str(out), "--steps", "25"]) == 0
    _, field, step = load_run(out)
    assert step == 25 and field.channels == 4
    # sjc render and sjc export read the VAE of the run's model alone.
    assert cli.main(["render", str(out), "--frames", "2", "--size", "8", "--video", str(tmp_path / "t.mp4")]) == 0
    assert (tmp_path / "t.mp4").stat().st_size > 0
    assert cli.main(["export", str(out), "--format", "npz", "--resolution", "8"]) == 0


def test_sample_and_canvas_draw_a_novel_view_of_the_picture(model_dir, picture_file, tmp_path, capsys):
    import json

    from sjc.app.commands import cli

    common = ["--prior", "zero123", "--image", str(picture_file), "--zero123.model", str(model_dir), "--preset", "tiny"]
    assert cli.main(["sample", *common, "--view", "90", "10", "--out", str(tmp_path / "s")]) == 0
    summary = json.loads((tmp_path / "s" / "summary.json").read_text())
    assert summary["view"] == {"azimuth": 90.0, "elevation": 10.0, "fov": 49.1, "radius": 4.0}
    assert summary["reference_view"]["azimuth"] == 0.0 and summary["config"]["guidance_scale"] == 3.0
    assert (tmp_path / "s" / "samples.png").is_file()
    assert cli.main(["canvas", *common, "--view", "180", "0", "--scoring", "sds", "--out", str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "summary.json").read_text())["view"]["azimuth"] == 180.0
    # The default folder names the view, so two views of one picture do not collide.
    from sjc.app.commands.run2d import default_out
    from sjc.app.settings.parse import parse_2d

    cfg = parse_2d("sample", ["--prior", "zero123", "--image", str(picture_file), "--view", "90", "10"])
    assert default_out(cfg).name == "image-ball-view90-10-heun"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["sample", "--prior", "zero123"], "give one with --image"),
        (["sample", "a red cube", "--view", "90", "0"], "--view draws novel views of a picture with --prior zero123"),
        (["generate", "--prior", "zero123"], "give one with --image"),
        (["generate", "a chair", "--prior", "zero123", "--image", "x.png"], "drop the prompt, or use --prior sd"),
        (["generate", "--prior", "zero123", "--image", "x.png", "--zero123.resolution", "100"], "multiple of 8"),
    ],
)
def test_misuse_gets_one_line_and_exit_2(argv, message, capsys):
    from sjc.app.commands import cli

    assert cli.main([*argv, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_the_page_offers_zero123_beside_sd_and_loads_an_offered_model(picture_file, tmp_path):
    from sjc.app.web.jobs import Form, Limits, available_priors, form_config
    from sjc.core.errors import ConfigError

    assert "zero123" in available_priors(allow_sd_on_cpu=True)
    limits = Limits(models={"zero123-xl": "/models/zero123-xl"})
    form = Form("", prior="zero123", preset="tiny", model="zero123-xl", image=str(picture_file), image_view="30, 10")
    cfg = form_config(form, tmp_path, ["zero123"], limits)
    assert cfg.zero123.model == "/models/zero123-xl" and cfg.image.path == str(picture_file)
    assert cfg.image.view[:2] == (30.0, 10.0) and cfg.out == str(tmp_path / "image-ball-seed0")
    with pytest.raises(ConfigError, match="upload one first"):
        form_config(Form("", prior="zero123", preset="tiny"), tmp_path, ["zero123"], limits)


def test_a_batch_of_zero123_jobs_counts_as_gpu_work(picture_file):
    from sjc.app.batch.jobs import needs_gpu
    from sjc.app.settings.parse import parse_generate

    cfg = parse_generate(["--prior", "zero123", "--image", str(picture_file), "--preset", "tiny"])
    assert needs_gpu(cfg) and not needs_gpu(parse_generate(["a red cube", "--preset", "tiny"]))
