"""The Stable Diffusion prior, on a tiny random SD saved to disk and read back offline as users' weights are."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import imageio.v3 as iio
import pytest
import torch

import tiny_sd  # sets HF_HUB_OFFLINE before diffusers is imported
from sjc.app.commands import cli
from sjc.app.runs.generate import load_run
from sjc.app.settings.presets import preset
from sjc.core.cameras import View
from sjc.core.fit import FitLoop, SigmaSchedule, build_field, make_generators, make_optimizer, sjc_step
from sjc.priors.loading import WeightsNotFoundError, hub_cache_dir, resolve_dtype
from sjc.priors.sd import StableDiffusionPrior, load_components


@pytest.fixture(scope="module")
def sd_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny-sd")
    return {kind: tiny_sd.build_tiny_sd(root / kind, prediction_type=kind) for kind in ("epsilon", "v_prediction")}


@pytest.fixture(scope="module")
def parts(sd_folders):
    return {kind: load_components(str(folder), "cpu", torch.float32) for kind, folder in sd_folders.items()}


def _prior(parts, kind="epsilon", prompt="a hamburger", **kwargs):
    return StableDiffusionPrior(parts[kind], prompt, resolution=64, **kwargs)


def _reference_x0(folder, part, z, t, prompt, negative, scale):
    """x0 through diffusers' own scheduler, from a guided noise estimate of the UNet at timestep t."""
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler.from_pretrained(folder, subfolder="scheduler")
    tok, enc = part.tokenizer, part.text_encoder
    ids = tok([prompt, negative], padding="max_length", max_length=tok.model_max_length, return_tensors="pt")
    with torch.no_grad():
        text = enc(ids.input_ids)[0]
        x_t = z * scheduler.alphas_cumprod[t].sqrt()  # VP sample of the VE point z
        B = z.shape[0]
        emb = torch.cat([text[:1].expand(B, -1, -1), text[1:].expand(B, -1, -1)])
        out = part.unet(torch.cat([x_t, x_t]), torch.full((2 * B,), t), encoder_hidden_states=emb).sample
        guided = out[B:] + scale * (out[:B] - out[B:])
        return scheduler.step(guided, t, x_t).pred_original_sample


@pytest.mark.parametrize("kind", ["epsilon", "v_prediction"])
def test_denoiser_equals_the_diffusers_x0_of_the_guided_noise_estimate(sd_folders, parts, kind):
    prior = _prior(parts, kind, guidance_scale=7.5)
    assert prior.discrete.prediction_type == kind  # read from the checkpoint's scheduler config
    gen = torch.Generator().manual_seed(0)
    cond = prior.condition(View(0.0, 10.0))  # seen from the front: "front view of a hamburger"
    for t in (15, 300, 900):
        sigma = float(prior.sigmas[t])
        z = torch.randn(2, 4, 8, 8, generator=gen) * math.sqrt(1 + sigma**2)
        got = prior.denoise(z, torch.full((2,), sigma), cond)
        expected = _reference_x0(sd_folders[kind], parts[kind], z, t, "front view of a hamburger", "", 7.5)
        assert (got - expected).abs().max() / expected.abs().max() <= 1e-4, t
        assert (got - z).abs().max() > 1e-3 * z.abs().max()  # the network does change the input


def test_sigma_grid_comes_from_the_checkpoint_schedule(parts):
    prior = _prior(parts)
    a = parts["epsilon"].alphas_cumprod.double()
    assert prior.sigmas.shape == (1000,) and torch.allclose(prior.sigmas.double(), ((1 - a) / a).sqrt(), rtol=1e-6)
    assert prior.sigma_min == pytest.approx(0.0292, rel=1e-2) and prior.sigma_max == pytest.approx(14.6, rel=1e-2)
    # The paper's grid draws (10 lowest and 30 highest values dropped) span sigma 0.098 .. 12.2.
    ordered = prior.sigmas.sort().values
    assert float(ordered[10]) == pytest.approx(0.098, rel=2e-2) and float(ordered[-31]) == pytest.approx(12.2, rel=1e-2)


def test_guidance_scale_one_is_the_conditional_branch(parts):
    prior = _prior(parts, guidance_scale=1.0)
    z, sigma = torch.randn(3, 4, 8, 8), torch.full((3,), float(prior.sigmas[500]))
    cond = prior.condition(None)  # no view: the prompt as given
    conditional = prior.discrete(z, sigma, cond[0].expand(3, -1, -1))
    unconditional = prior.discrete(z, sigma, cond[1].expand(3, -1, -1))
    assert torch.allclose(prior.denoise(z, sigma, cond), conditional, atol=1e-5)
    assert not torch.allclose(conditional, unconditional, atol=1e-3)  # the text does matter
    guided = _prior(parts, guidance_scale=100.0).denoise(z, sigma, cond)
    assert torch.allclose(guided, unconditional + 100 * (conditional - unconditional), rtol=1e-4, atol=1e-3)


def test_the_negative_prompt_replaces_the_empty_prompt(parts):
    plain, negative = _prior(parts), _prior(parts, negative_prompt="blurry")
    cond_plain, cond_neg = plain.condition(None), negative.condition(None)
    assert torch.equal(cond_plain[0], cond_neg[0])
    assert torch.equal(cond_plain[1], plain.embed("")) and torch.equal(cond_neg[1], negative.embed("blurry"))
    z, sigma = torch.randn(1, 4, 8, 8), torch.full((1,), float(plain.sigmas[400]))
    d_c = negative.discrete(z, sigma, cond_neg[0])
    d_neg = negative.discrete(z, sigma, negative.embed("blurry"))
    assert torch.allclose(negative.denoise(z, sigma, cond_neg), d_neg + 100 * (d_c - d_neg), rtol=1e-4, atol=1e-3)
    assert not torch.allclose(negative.denoise(z, sigma, cond_neg), plain.denoise(z, sigma, cond_plain), atol=1e-2)


def _design_prefix(view) -> str:
    """DESIGN.md: overhead above ~42 deg elevation, else front/side/back/side by azimuth quadrant."""
    if view.elevation > math.degrees(math.asin(2 / 3)):
        return "overhead view of"
    quadrant = int(((view.azimuth + 45) % 360) // 90)
    return ("front view of", "side view of", "backside view of", "side view of")[quadrant]


def test_sampled_cameras_condition_on_the_design_view_prompts_embedded_once_each(parts):
    prior = _prior(parts)
    cfg = preset("sd", "tiny")
    cfg = dataclasses.replace(cfg, prompt="a hamburger", field=dataclasses.replace(cfg.field, resolution=8))
    seen, texts, calls = [], [], []
    condition, embed, encoder = prior.condition, prior.embed, prior.parts.text_encoder
    prior.condition = lambda view: seen.append(view) or condition(view)
    prior.embed = lambda text: texts.append(text) or embed(text)
    prior.parts = dataclasses.replace(prior.parts, text_encoder=lambda ids: calls.append(1) or encoder(ids))
    gens = make_generators(0, torch.device("cpu"))
    field = build_field(prior, cfg.field, torch.device("cpu"), generator=gens["init"])
    loop = FitLoop.create(
        field, prior, cfg.fit_settings(), steps=24, optimizer=make_optimizer(field, cfg.optim), generators=gens
    )
    for step in range(24):
        sjc_step(field, loop, step)
    views = {f"{b} view of a hamburger" for b in ("front", "side", "backside", "overhead")}
    assert len(seen) == 24 and texts[0::2] == [f"{_design_prefix(v)} a hamburger" for v in seen]
    assert set(texts[0::2]) == views and set(texts[1::2]) == {""}  # each step: the view prompt, then the negative
    assert len(calls) == 5  # four view prompts and the empty prompt, each embedded once
    assert set(prior._embeddings) == views | {""}


def test_decode_and_encode_apply_the_vae_scaling_factor_only_there(parts):
    prior, vae = _prior(parts), parts["epsilon"].vae
    assert prior.scaling_factor == pytest.approx(0.18215) and prior.vae_factor == 8 and prior.image_size == 8
    latents = torch.randn(2, 4, 8, 8)
    rgb = prior.decode(latents)
    with torch.no_grad():
        assert torch.allclose(rgb, vae.decode(latents / 0.18215).sample.clamp(-1, 1), atol=1e-6)
        images = torch.rand(2, 3, 64, 64) * 2 - 1
        assert torch.allclose(prior.encode(images), vae.encode(images).latent_dist.mean * 0.18215, atol=1e-6)
    assert rgb.shape == (2, 3, 64, 64) and rgb.abs().max() <= 1


def test_the_paper_preset_reproduces_the_official_defaults(parts):
    cfg = preset("sd", "paper")
    assert (cfg.field.resolution, cfg.field.background, cfg.field.density_shift) == (100, "texture", -1.0)
    assert (cfg.optim.lr, cfg.optim.background_lr, cfg.train.steps) == (0.05, 1e-4, 10000)
    s = cfg.scoring
    assert (s.drop_lowest, s.drop_highest, s.variance_reduced, s.n_noise) == (10, 30, True, 1)
    assert s.guidance_scale == 100.0 and cfg.sd.negative_prompt == ""
    losses = cfg.losses
    assert (losses.emptiness_weight, losses.emptiness_scale, losses.emptiness_multiplier) == (1e4, 10.0, 20.0)
    assert (losses.emptiness_switch, losses.center_depth_weight) == (0.5, 0.0)
    prior = StableDiffusionPrior(parts["epsilon"], "a hamburger", resolution=cfg.sd.resolution)
    assert prior.image_size == 64  # 512 px / 8
    assert SigmaSchedule(s, prior, cfg.train.steps).kind == "grid"  # 'auto' draws from the network's grid
    assert preset("sd", "default") == dataclasses.replace(cfg, preset="default")
    for prior in ("toy", "sd"):
        assert {preset(prior, name).preset for name in ("default", "tiny", "paper")} == {"default", "tiny", "paper"}


def test_dtype_is_half_on_cuda_and_full_on_cpu_unless_asked():
    assert resolve_dtype("auto", torch.device("cpu")) == torch.float32
    assert resolve_dtype("auto", torch.device("cuda")) == torch.float16
    assert resolve_dtype("bfloat16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8", torch.device("cpu"))


def test_generate_with_sd_runs_end_to_end_and_writes_decoded_pictures(sd_folders, tmp_path, capsys):
    out = tmp_path / "burger"
    args = ["generate", "a hamburger", "--prior", "sd", "--sd.model", str(sd_folders["epsilon"]), "--allow-sd-on-cpu"]
    assert cli.main([*args, "--preset", "tiny", "--steps", "3", "--out", str(out)]) == 0
    saved = json.loads((out / "config.json").read_text())
    assert saved["prior"] == "sd" and saved["sd"]["model"] == str(sd_folders["epsilon"])
    assert len((out / "log.jsonl").read_text().splitlines()) == 3
    cfg, field, step = load_run(out)
    latent_prior = SimpleNamespace(channels=4, feature_activation="none")
    initial = build_field(latent_prior, cfg.field, "cpu", generator=make_generators(cfg.train.seed, "cpu")["init"])
    assert step == 3 and field.channels == 4 and not torch.allclose(field.grid, initial.grid)
    # 8x8 latents decode to 64x64 RGB: turntable frames are the picture plus its depth strip.
    frames = iio.imread(out / "turntable.gif")
    assert frames.shape == (8, 64, 128, 3) and frames.std() > 0
    assert (out / "turntable.mp4").stat().st_size > 0
    assert iio.imread(out / "views.png").shape[:2] == (2 * 64 + 4, 4 * 64 + 3 * 4)
    assert "run folder" in capsys.readouterr().out


def test_a_missing_model_folder_exits_2_with_one_message_and_no_traceback(tmp_path):
    missing = tmp_path / "no-such-model"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    args = ["generate", "a hamburger", "--prior", "sd", "--sd.model", str(missing), "--out", str(tmp_path / "run")]
    args.append("--allow-sd-on-cpu")
    done = subprocess.run([sys.executable, "-m", "sjc", *args], capture_output=True, text=True, env=env)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0] and "--sd.model" in lines[0], done.stderr
    assert not (tmp_path / "run").exists()


def test_a_model_id_missing_from_the_offline_cache_names_the_cache_and_the_fix(tmp_path, capsys):
    args = [
        "generate",
        "a hamburger",
        "--prior",
        "sd",
        "--sd.model",
        "someone/missing-sd",
        "--out",
        str(tmp_path / "r"),
        "--allow-sd-on-cpu",
    ]
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert (
        "'someone/missing-sd'" in err and f"Hugging Face cache at {hub_cache_dir()}" in err and "HF_HUB_OFFLINE" in err
    )
    assert "hf download someone/missing-sd" in err and "Traceback" not in err
    # The README's filtered download (the weights the prior reads, about 4 GB), not the whole repository.
    assert '--include "*/diffusion_pytorch_model.safetensors"' in err and "about 4 GB" in err


def test_stable_diffusion_on_a_cpu_is_refused_unless_allowed(sd_folders, tmp_path, capsys):
    args = ["generate", "a hamburger", "--prior", "sd", "--sd.model", str(sd_folders["epsilon"]), "--device", "cpu"]
    assert cli.main([*args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "--allow-sd-on-cpu" in err and "minutes a step on a CPU" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()
    args += ["--preset", "tiny", "--steps", "1", "--allow-sd-on-cpu", "--out", str(tmp_path / "ok")]
    assert cli.main(args) == 0
    assert "running on cpu, prior float32, field float32" in capsys.readouterr().err


def test_an_incomplete_folder_and_a_missing_extra_are_explained(sd_folders, tmp_path, monkeypatch):
    (tmp_path / "unet").mkdir()
    with pytest.raises(WeightsNotFoundError, match=r"lacks .*vae/config\.json"):
        load_components(str(tmp_path), "cpu", torch.float32)
    monkeypatch.setitem(sys.modules, "diffusers", None)  # as if the [sd] extra were not installed
    with pytest.raises(WeightsNotFoundError, match=r"pip install 'sjc\[sd\]'") as info:
        load_components(str(sd_folders["epsilon"]), "cpu", torch.float32)
    assert str(Path(sd_folders["epsilon"])) in str(info.value)


@pytest.mark.gpu
@pytest.mark.skipif(
    not (torch.cuda.is_available() and os.environ.get("SJC_SD_MODEL")),
    reason="needs CUDA and SJC_SD_MODEL (a Stable Diffusion model id in the HF cache, or a diffusers folder)",
)
def test_real_stable_diffusion_for_200_steps_on_gpu(tmp_path):
    out = tmp_path / "rose"
    args = ["generate", "a DSLR photo of a rose", "--prior", "sd", "--sd.model", os.environ["SJC_SD_MODEL"]]
    assert cli.main([*args, "--preset", "paper", "--steps", "200", "--out", str(out)]) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert records[-1]["step"] == 200 and all(math.isfinite(r["sjc"]) for r in records)
    frames = iio.imread(out / "turntable.gif")
    assert frames.shape[1] == 512 and frames.std() > 0  # 64x64 latents decoded to 512x512


def test_branches_give_the_guided_methods_the_unguided_branches(parts):
    from sjc.core import methods

    prior = _prior(parts, guidance_scale=100.0, negative_prompt="blurry")
    b = prior.branches(None, "ugly")
    z, s = torch.randn(2, 4, 8, 8), float(prior.sigmas[600])
    sigma = torch.full((2,), s)
    d_c = prior.discrete(z, sigma, prior.embed("a hamburger").expand(2, -1, -1))
    d_u = prior.discrete(z, sigma, prior.embed("blurry").expand(2, -1, -1))
    assert torch.allclose(b.bind("cond")(z, s), d_c, atol=1e-5)
    assert torch.allclose(b.bind("uncond")(z, s), d_u, atol=1e-5)  # the unconditional branch of guidance
    assert torch.equal(b.negative, prior.embed("ugly")) and torch.equal(prior.branches(None).negative, b.uncond)
    assert torch.allclose(b.guided(100.0)(z, s), prior.denoise(z, sigma, prior.condition(None)), rtol=1e-4, atol=1e-3)
    y = torch.randn(1, 4, 8, 8)
    for method in ("sds", "csd", "nfsd", "sdi", "ism"):
        scorer = methods.Scorer(method, prior, guidance_scale=7.5, sigma_range=(prior.sigma_min, prior.sigma_max))
        assert torch.isfinite(scorer(y, s, None, torch.Generator().manual_seed(0))).all()
    # Its own grid sets t: the NFSD split is the grid's t = 200 of 1000.
    assert scorer.sigma_split == pytest.approx(float(torch.sort(prior.sigmas.double()).values[round(0.2 * 999)]))


def test_the_refined_preset_grows_the_grid_with_the_tiny_model(sd_folders, tmp_path):
    cfg = preset("sd", "refined")
    assert cfg.field.resolution == 100 and cfg.field.coarse_resolution == 50 and cfg.field.upsample_at == (2 / 3,)
    assert dataclasses.replace(cfg, field=preset("sd", "paper").field, preset="paper") == preset("sd", "paper")
    out = tmp_path / "refined"
    args = ["generate", "a hamburger", "--prior", "sd", "--sd.model", str(sd_folders["epsilon"]), "--preset", "refined"]
    args.append("--allow-sd-on-cpu")
    small = ["--field.resolution", "12", "--sd.resolution", "64", "--steps", "6", "--train.checkpoint-every", "2"]
    exports = ["--export.turntable-frames", "2", "--export.turntable-size", "8"]
    assert cli.main([*args, *small, *exports, "--out", str(out)]) == 0
    # 6^3 for the first 4 steps (two thirds of 6), 12^3 for the last 2; checkpoints hold each step's grid.
    assert [load_run(out, step)[1].resolution for step in (2, 4, 6)] == [6, 6, 12]
    assert (out / "mesh.glb").exists() or (out / "views.png").exists()


def test_a_compiled_unet_gives_the_same_denoiser_and_a_failed_compile_falls_back(parts, monkeypatch):
    import warnings

    from sjc.priors import loading

    monkeypatch.setattr(loading, "COMPILE_BACKEND", "eager")  # dynamo's tracing, no code generation (fast)
    plain = _prior(parts, guidance_scale=7.5)
    traced = _prior(parts, guidance_scale=7.5, compile="default")
    assert isinstance(traced.unet, loading.CompiledNetwork) and traced.unet.dtype == plain.unet.dtype
    cond = plain.condition(View(30.0, 10.0))
    z, sigma = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3)), torch.full((2,), 2.0)
    expected = plain.denoise(z, sigma, cond)
    assert torch.allclose(traced.denoise(z, sigma, cond), expected, atol=1e-5)
    assert traced.unet.failure is None

    def no_compiler(module, **options):
        def broken(*args, **kwargs):
            raise RuntimeError("no C++ compiler found")

        return broken

    monkeypatch.setattr(torch, "compile", no_compiler)
    fallback = _prior(parts, guidance_scale=7.5, compile="reduce-overhead")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = fallback.denoise(z, sigma, cond)
        second = fallback.denoise(z, sigma, cond)
    assert torch.equal(first, expected) and torch.equal(second, expected)
    assert [str(w.message) for w in caught] == [
        "torch.compile of the network failed (RuntimeError: no C++ compiler found); it runs uncompiled"
    ]
