"""The pixel prior, on tiny random UNet2DModel checkpoints (DDPM and score-SDE VE) saved to disk and read
back offline through the user-facing path, checked against diffusers' own schedulers and closed forms."""

import json
import math
import os
import subprocess
import sys
from types import SimpleNamespace

import imageio.v3 as iio
import pytest
import torch

import tiny_pixel  # sets HF_HUB_OFFLINE before diffusers is imported
from sjc.app.commands import cli
from sjc.core.denoisers import GaussianDenoiser
from sjc.core.errors import ConfigError
from sjc.priors import check_prior
from sjc.priors.loading import WeightsNotFoundError, hub_cache_dir
from sjc.priors.pixel import (
    PixelPrior,
    PixelPriorError,
    ScoreDenoiser,
    UnitRangeDenoiser,
    _check_network,
    ve_sigmas,
)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-pixel")
    return {
        "epsilon": tiny_pixel.build_tiny_ddpm(root / "ddpm-eps"),
        "v_prediction": tiny_pixel.build_tiny_ddpm(root / "ddpm-v", prediction_type="v_prediction", root_layout=True),
        "ve": tiny_pixel.build_tiny_ve(root / "ve"),
    }


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_ddpm_denoiser_equals_the_diffusers_x0_prediction(folders, kind):
    from diffusers import DDPMScheduler, UNet2DModel

    prior = PixelPrior.from_pretrained(str(folders[kind]))  # both layouts: unet/ + scheduler/, and root files
    sub = "scheduler" if kind == "epsilon" else None
    scheduler = DDPMScheduler.from_pretrained(folders[kind], subfolder=sub)
    unet = UNet2DModel.from_pretrained(folders[kind], subfolder="unet" if kind == "epsilon" else None)
    assert (prior.kind, prior.data_range, prior.image_size) == ("ddpm", "signed", tiny_pixel.SIZE)
    gen = torch.Generator().manual_seed(0)
    for t in (3, 250, 990):
        sigma = float(prior.sigmas[t])
        z = torch.randn(2, 3, 16, 16, generator=gen) * math.sqrt(1 + sigma**2)
        x_t = z * scheduler.alphas_cumprod[t].sqrt()  # the VP sample of the VE point z
        with torch.no_grad():
            expected = scheduler.step(unet(x_t, t).sample, t, x_t).pred_original_sample
        got = prior.denoise(z, torch.full((2,), sigma))
        assert (got - expected).abs().max() / expected.abs().max() <= 1e-4, t
        assert (got - z).abs().max() > 1e-2 * z.abs().max()  # the network does change the input


def test_ve_denoiser_is_tweedie_through_the_score_sde_scheduler(folders):
    """The scheduler's predictor step moves x by (sigma_i^2 - sigma_{i-1}^2) * score; scaled up to the whole
    sigma_i^2 it lands on E[y | x] = x + sigma_i^2 * score. Checked in the network's [0, 1] units."""
    from diffusers import ScoreSdeVeScheduler, UNet2DModel

    prior = PixelPrior.from_pretrained(str(folders["ve"]))
    scheduler = ScoreSdeVeScheduler.from_pretrained(folders["ve"])
    unet = UNet2DModel.from_pretrained(folders["ve"])
    n = scheduler.config.num_train_timesteps
    scheduler.set_timesteps(n)
    scheduler.set_sigmas(n)
    gen = torch.Generator().manual_seed(1)
    for i in (0, 600, 1500):
        sigma = scheduler.discrete_sigmas[i]
        u = torch.rand(2, 3, 16, 16, generator=gen) + sigma * torch.randn(2, 3, 16, 16, generator=gen)
        with torch.no_grad():
            score = unet(u, sigma.expand(2)).sample
        mean = scheduler.step_pred(score, min(1.0, (i + 0.5) / (n - 1)), u, generator=gen).prev_sample_mean
        previous = scheduler.discrete_sigmas[i - 1] if i > 0 else torch.tensor(0.0)
        expected = u + sigma**2 / (sigma**2 - previous**2) * (mean - u)
        got = (prior.denoise(2 * u - 1, torch.full((2,), 2 * float(sigma))) + 1) / 2  # [-1, 1] -> [0, 1]
        assert (got - expected).abs().max() / expected.abs().max() <= 1e-4, i
        assert (got - u).abs().max() > 1e-3


def test_sigma_grids_and_ranges(folders):
    from diffusers import DDPMScheduler

    ddpm = PixelPrior.from_pretrained(str(folders["epsilon"]))
    a = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear").alphas_cumprod.double()
    assert ddpm.sigmas.shape == (1000,) and torch.allclose(ddpm.sigmas.double(), ((1 - a) / a).sqrt(), rtol=1e-6)
    # The DDPM linear schedule (betas 1e-4 .. 0.02) spans sigma 0.0100 .. 157 on [-1, 1] images.
    assert ddpm.sigma_min == pytest.approx(0.0100, rel=1e-3) and ddpm.sigma_max == pytest.approx(157.4, rel=1e-3)
    ve = PixelPrior.from_pretrained(str(folders["ve"]))
    schedule = tiny_pixel.VE_SCHEDULE
    geometric = torch.logspace(math.log10(0.01), math.log10(348.0), 2000, dtype=torch.float64)
    assert torch.allclose(ve_sigmas(schedule), geometric, rtol=1e-9)
    # Trained on [0, 1] images: on the project's [-1, 1] images every noise level doubles.
    assert ve.data_range == "unit" and torch.allclose(ve.sigmas.double(), 2 * geometric, rtol=1e-6)
    assert (ve.sigma_min, ve.sigma_max) == (pytest.approx(0.02), pytest.approx(696.0))
    signed = PixelPrior.from_pretrained(str(folders["ve"]), data_range="signed")
    assert signed.sigma_max == pytest.approx(348.0)
    with pytest.raises(PixelPriorError, match="multiple of 2"):
        PixelPrior.from_pretrained(str(folders["ve"]), resolution=15)
    assert PixelPrior.from_pretrained(str(folders["ve"]), resolution=32).image_size == 32


def test_score_adapter_and_range_change_give_the_exact_gaussian_denoiser():
    # Data u ~ N(m, s^2) on [0, 1] has score -(u - m) / (s^2 + sigma^2); seen on [-1, 1] it is N(2m - 1, (2s)^2).
    m, s = 0.6, 0.2
    score = lambda u, sigma: -(u - m) / (s**2 + sigma.view(-1, 1, 1, 1) ** 2)
    den = UnitRangeDenoiser(ScoreDenoiser(score, ve_sigmas({})))
    x = torch.randn(3, 3, 4, 4, dtype=torch.float64) * 2
    sigma = torch.tensor([0.05, 0.7, 30.0], dtype=torch.float64)
    assert torch.allclose(den(x, sigma), GaussianDenoiser(2 * m - 1, 2 * s)(x, sigma), atol=1e-12)


def test_prompts_class_conditional_networks_and_bad_folders_are_refused(tmp_path):
    check_prior("pixel", "")
    with pytest.raises(ConfigError, match="unconditional"):
        check_prior("pixel", "a bedroom")
    with pytest.raises(PixelPriorError, match="class-conditional"):
        _check_network("m", SimpleNamespace(num_class_embeds=10, class_embed_type=None), "ddpm")
    with pytest.raises(PixelPriorError, match="fourier"):
        _check_network("m", SimpleNamespace(num_class_embeds=None, time_embedding_type="positional"), "score-sde-ve")
    (tmp_path / "unet").mkdir()
    with pytest.raises(WeightsNotFoundError, match=r"holds neither config\.json and scheduler_config\.json"):
        PixelPrior.from_pretrained(str(tmp_path))


@pytest.mark.parametrize("command", [["generate"], ["canvas"], ["sample"]])
def test_a_prompt_for_the_pixel_prior_exits_2(command, capsys):
    assert cli.main([*command, "a bedroom", "--prior", "pixel"]) == 2
    err = capsys.readouterr().err
    assert "unconditional" in err and "Traceback" not in err


def test_a_missing_model_folder_exits_2_with_one_message_and_no_traceback(tmp_path, capsys):
    missing = tmp_path / "no-such-model"
    args = ["canvas", "--prior", "pixel", "--pixel.model", str(missing), "--out", str(tmp_path / "canvas")]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "sjc", *args], capture_output=True, text=True, env=env)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert len(lines) == 1 and str(missing) in lines[0] and "--pixel.model" in lines[0], done.stderr
    # The same message from generate, which writes nothing either.
    assert cli.main(["generate", *args[1:-1], str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err.strip().endswith(lines[0].split("error: ", 1)[1])
    assert not (tmp_path / "canvas").exists() and not (tmp_path / "run").exists()


def test_a_model_id_missing_from_the_offline_cache_names_the_cache_and_the_fix(tmp_path, capsys):
    args = ["sample", "--prior", "pixel", "--pixel.model", "someone/missing-ddpm", "--out", str(tmp_path / "s")]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert "Pixel-space model 'someone/missing-ddpm' not found" in err and hub_cache_dir() in err
    assert "HF_HUB_OFFLINE" in err and "hf download someone/missing-ddpm" in err


@pytest.mark.parametrize("kind", ["epsilon", "ve"])
def test_canvas_and_sample_run_end_to_end_with_the_tiny_preset(folders, kind, tmp_path, capsys):
    common = ["--prior", "pixel", "--preset", "tiny", "--pixel.model", str(folders[kind])]
    assert cli.main(["canvas", *common, "--out", str(tmp_path / "canvas")]) == 0
    summary = json.loads((tmp_path / "canvas" / "summary.json").read_text())
    assert summary["config"]["steps"] == 4 and summary["quality"] is None
    assert iio.imread(tmp_path / "canvas" / "final.png").shape == (96, 2 * 96 + 2, 3)  # 2 seeds, 32 px x3
    assert cli.main(["sample", *common, "--sampler", "euler", "--out", str(tmp_path / "sample")]) == 0
    sigmas = json.loads((tmp_path / "sample" / "summary.json").read_text())["sigmas"]
    prior = PixelPrior.from_pretrained(str(folders[kind]))
    grid = set(prior.sigmas.double().tolist())
    assert sigmas[-1] == 0 and all(min(abs(s - g) for g in grid) < 1e-9 for s in sigmas[:-1])  # on the grid
    assert sigmas[0] == pytest.approx(prior.sigma_max, rel=1e-6)
    rows = (tmp_path / "sample" / "log.csv").read_text().splitlines()
    assert rows[0] == "step,sigma,sigma_next,step_size" and len(rows) == len(sigmas)  # header + one per step
    assert (tmp_path / "sample" / "trajectory.mp4").stat().st_size > 0 and "output folder" in capsys.readouterr().out


def test_unconditional_generate_runs_end_to_end(folders, tmp_path):
    out = tmp_path / "room"
    args = ["generate", "--prior", "pixel", "--pixel.model", str(folders["epsilon"]), "--preset", "tiny"]
    assert cli.main([*args, "--steps", "3", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["prior"] == "pixel" and saved["prompt"] == "" and saved["pixel"]["resolution"] == 32
    assert len((out / "log.jsonl").read_text().splitlines()) == 3
    assert iio.imread(out / "turntable.gif").shape[1:3] == (32, 64)  # RGB frame and its depth strip
