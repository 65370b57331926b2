"""The 2D canvas and the Karras/Heun sampler: closed forms on analytic denoisers, then `sjc canvas` and
`sjc sample` end to end on the toy prior (prompt accuracy) and on a tiny random Stable Diffusion."""

import csv
import json
import math
import subprocess
import sys

import imageio.v3 as iio
import pytest
import torch

from sjc.app.commands import cli
from sjc.core.canvas import canvas_sigmas, karras_sigmas, optimise_canvas, sample_ode, snap_to_grid
from sjc.core.chaining import paas_grad
from sjc.core.denoisers import EmpiricalDenoiser, GaussianDenoiser, PointMassDenoiser
from sjc.priors.discrete import sigmas_from_alphas_cumprod


# --- the sampler --------------------------------------------------------------------------
def test_heun_on_the_exact_gaussian_denoiser_draws_from_the_gaussian():
    mean, std = 0.3, 0.5
    sigmas = karras_sigmas(100, 0.002, 80.0)
    noise = torch.randn(4000, 1, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x = sample_ode(GaussianDenoiser(mean, std), sigmas[0] * noise, sigmas)
    n = x.numel()  # iid pixels: 64000 draws
    assert abs(float(x.mean()) - mean) < 4 * std / math.sqrt(n)
    assert abs(float(x.var()) - std**2) < 4 * std**2 * math.sqrt(2 / n)


def test_heun_is_second_order_and_euler_first_order_on_the_exact_gaussian_flow():
    # The probability-flow ODE of N(m, s^2) moves x(sigma) = m + sqrt(s^2 + sigma^2) / sqrt(s^2 + sigma_0^2) (x_0 - m).
    mean, std = 0.3, 0.5
    noise = torch.randn(64, 1, 2, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    errors = {}
    for method in ("heun", "euler"):
        for steps in (20, 40):
            sigmas = karras_sigmas(steps, 0.002, 80.0)
            x0 = sigmas[0] * noise
            exact = mean + std / math.sqrt(std**2 + 80.0**2) * (x0 - mean)
            x = sample_ode(GaussianDenoiser(mean, std), x0, sigmas, method=method)
            errors[method, steps] = float((x - exact).abs().max())
    assert errors["heun", 20] / errors["heun", 40] > 3.5  # about 4x per halving of the step
    assert 1.5 < errors["euler", 20] / errors["euler", 40] < 2.5  # about 2x
    assert errors["heun", 40] < errors["euler", 40] / 5


@pytest.mark.parametrize("method", ["heun", "euler"])
def test_the_sampler_lands_exactly_on_a_point_mass(method):
    # D = y0: every step x' = y0 + (sigma' / sigma)(x - y0) is exact, and the last one (sigma' = 0) hits y0.
    y0 = torch.randn(1, 3, 5, 5, dtype=torch.float64)
    sigmas = karras_sigmas(7, 0.01, 50.0)
    x0 = sigmas[0] * torch.randn(4, 3, 5, 5, dtype=torch.float64)
    x = sample_ode(PointMassDenoiser(y0), x0, sigmas, method=method)
    assert torch.allclose(x, y0.expand(4, -1, -1, -1), atol=1e-12)


def test_karras_sigmas_and_snapping_to_a_network_grid():
    sigmas = karras_sigmas(10, 0.02, 80.0, rho=7.0)
    assert sigmas.shape == (11,) and sigmas[-1] == 0
    assert sigmas[0] == pytest.approx(80.0) and sigmas[-2] == pytest.approx(0.02)
    steps = sigmas[:-1] ** (1 / 7)
    assert torch.allclose(steps[:-1] - steps[1:], (steps[0] - steps[1]).expand(9))  # even in sigma^(1/rho)
    betas = torch.linspace(1e-4, 0.02, 1000, dtype=torch.float64)
    grid = sigmas_from_alphas_cumprod(torch.cumprod(1 - betas, 0))
    snapped = snap_to_grid(karras_sigmas(40, float(grid[0]), float(grid[-1])), grid)
    assert snapped[-1] == 0 and bool((snapped[:-2] > snapped[1:-1]).all())  # strictly descending, no repeats
    assert all(bool((grid == s).any()) for s in snapped[:-1]) and snapped[0] == grid[-1] and snapped[-2] == grid[0]


# --- the canvas ---------------------------------------------------------------------------
def test_canvas_schedules():
    annealed = canvas_sigmas("annealed", 5, 0.1, 1.6)
    assert annealed == pytest.approx([1.6, 0.8, 0.4, 0.2, 0.1])
    drawn = canvas_sigmas("random", 200, 0.1, 1.6, torch.Generator().manual_seed(3))
    assert min(drawn) >= 0.1 and max(drawn) <= 1.6 and len(set(drawn)) == 200
    assert drawn == canvas_sigmas("random", 200, 0.1, 1.6, torch.Generator().manual_seed(3))
    with pytest.raises(ValueError, match="unknown sigma schedule 'linear'"):
        canvas_sigmas("linear", 5, 0.1, 1.6)


@pytest.mark.parametrize("scoring", ["naive", "paas"])
def test_canvas_on_a_point_mass_follows_the_closed_form(scoring):
    # D = target whatever it sees, so naive and Eq. 16 PAAS both give x_k = target + (1 - lr)^k (x_0 - target).
    target, x0 = torch.randn(1, 3, 4, 4, dtype=torch.float64), torch.randn(1, 3, 4, 4, dtype=torch.float64)
    sigmas, lr = canvas_sigmas("annealed", 12, 0.1, 2.0), 0.25
    x, records = optimise_canvas(PointMassDenoiser(target), x0, sigmas, scoring=scoring, lr=lr)
    assert torch.allclose(x, target + (1 - lr) ** 12 * (x0 - target), atol=1e-12)
    assert [r.sigma for r in records] == sigmas and [r.step_size for r in records] == pytest.approx(
        [lr * s for s in sigmas]
    )
    assert records[1].update_rms == pytest.approx(lr * (1 - lr) * float((x0 - target).square().mean().sqrt()))


@pytest.mark.parametrize("scoring", ["naive", "paas"])
def test_each_canvas_of_a_batch_gets_its_own_update(scoring):
    # With a point mass every score estimate is (T - x) / sigma, whatever the noise: each canvas of a batch
    # moves lr of the way to T from where it is, not from where the batch is on average.
    target = torch.zeros(1, 3, 4, 4)
    x = torch.stack([torch.full((3, 4, 4), 1.0), torch.full((3, 4, 4), -3.0)])
    out, _ = optimise_canvas(PointMassDenoiser(target), x, [0.7], scoring=scoring, lr=0.5, n_noise=3)
    assert torch.allclose(out, x / 2, atol=1e-6)


def test_paas_draws_its_own_noise_for_each_image_of_a_batch():
    gauss, sigma, k = GaussianDenoiser(0.2, 0.5), 0.8, 3
    y = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    g = paas_grad(gauss, y, sigma, n_noise=k, generator=torch.Generator().manual_seed(1))
    noise = torch.randn(k, 2, 3, 4, 4, generator=torch.Generator().manual_seed(1))  # draw j of image b: [j, b]
    for b in range(2):
        z = y[b] + sigma * noise[:, b]
        expected = ((gauss(z, torch.full((k,), sigma)) - y[b]) / sigma).mean(0)
        assert torch.allclose(g[b], expected, atol=1e-6)
    assert not torch.allclose(g[0], g[1])


def test_sample_uses_the_prior_s_own_sigma_range():
    from sjc.app.commands.run2d import sample_sigmas
    from sjc.app.settings.config2d import SampleConfig
    from sjc.priors import DenoiserPrior

    prior = DenoiserPrior(GaussianDenoiser(0.0, 0.5), channels=3, image_size=4, sigma_min=0.05, sigma_max=5.0)
    sigmas = sample_sigmas(SampleConfig(prior="python:m:f", steps=10), prior)
    assert sigmas[0] == pytest.approx(5.0) and sigmas[-2] == pytest.approx(0.05) and sigmas[-1] == 0
    flagged = sample_sigmas(SampleConfig(prior="python:m:f", steps=10, sigma_min=0.1, sigma_max=2.0), prior)
    assert flagged[0] == pytest.approx(2.0) and flagged[-2] == pytest.approx(0.1)


def test_naive_ascent_on_a_gaussian_finds_its_mode_not_a_sample():
    x, _ = optimise_canvas(GaussianDenoiser(0.3, 0.5), torch.randn(1, 3, 8, 8), [0.5] * 200, scoring="naive", lr=0.5)
    assert torch.allclose(x, torch.full_like(x, 0.3), atol=1e-6)


def test_with_an_exact_empirical_prior_naive_collapses_the_seeds_and_paas_keeps_them_apart():
    # The naive flow is deterministic and forgets its start at high sigma, so every seed ends on the same
    # image; PAAS's perturbations pick different images. Both land on the data.
    images = torch.rand(40, 3, 6, 6, generator=torch.Generator().manual_seed(0)) * 2 - 1
    prior = EmpiricalDenoiser(images)
    sigmas = canvas_sigmas("annealed", 120, 0.05, 30.0)
    for scoring, distinct in (("naive", 1), ("paas", 4)):
        found = set()
        for seed in range(6):
            x0 = 0.5 * torch.randn(1, 3, 6, 6, generator=torch.Generator().manual_seed(seed))
            gen = torch.Generator().manual_seed(100 + seed)
            x, _ = optimise_canvas(prior, x0, sigmas, scoring=scoring, lr=0.2, generator=gen)
            d = (images - x).flatten(1).norm(dim=1)
            assert float(d.min()) < 1e-3
            found.add(int(d.argmin()))
        assert (len(found) == 1) if scoring == "naive" else (len(found) >= distinct), (scoring, found)


# --- the commands -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def toy_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("toy-cache"))


def _toy_args(toy_cache, out):
    return ["--preset", "tiny", "--toy.n-images", "300", "--toy.cache-dir", toy_cache, "--out", str(out)]


def test_toy_sample_lands_on_renders_of_the_prompt(toy_cache, tmp_path, capsys):
    assert cli.main(["sample", "a red cube", "--samples", "16", *_toy_args(toy_cache, tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    q = summary["quality"]
    assert q["prompt_accuracy"] >= 0.9 and max(q["nearest_rmse"]) < 0.01 and q["distinct_nearest"] >= 8
    assert summary["sigmas"][0] == pytest.approx(80.0) and summary["sigmas"][-2] == pytest.approx(0.002)
    assert "prompt accuracy" in capsys.readouterr().out
    assert iio.imread(tmp_path / "samples.png").shape == (2 * 96 + 2, 8 * 96 + 7 * 2, 3)  # 16 px tiles x6


def test_toy_paas_canvas_lands_on_renders_of_the_prompt_and_logs_every_step(toy_cache, tmp_path):
    args = ["canvas", "a red cube", "--scoring", "paas", "--schedule", "annealed", "--seeds", "16"]
    assert cli.main([*args, *_toy_args(toy_cache, tmp_path)]) == 0
    q = json.loads((tmp_path / "summary.json").read_text())["quality"]
    assert q["prompt_accuracy"] >= 0.9 and q["mean_nearest_rmse"] < 0.01 and q["distinct_nearest"] >= 8
    with open(tmp_path / "log.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 16 * 60 and set(rows[0]) == {"seed", "step", "sigma", "step_size", "update_rms"}
    first = [r for r in rows if r["seed"] == "0"]
    # The toy canvas anneals from the sampler's 80 down to the toy prior's 0.1, with lr 0.2.
    assert float(first[0]["sigma"]) == pytest.approx(80.0) and float(first[-1]["sigma"]) == pytest.approx(0.1)
    assert float(first[0]["step_size"]) == pytest.approx(0.2 * 80.0)
    assert iio.imread(tmp_path / "trajectory.gif").shape[0] == 8  # the tiny preset's frames, from start to end
    assert (tmp_path / "trajectory.mp4").stat().st_size > 0


def test_2d_user_mistakes_exit_2_and_results_are_not_overwritten(toy_cache, tmp_path, capsys):
    assert cli.main(["canvas", "--prior", "toy"]) == 2
    assert "give a prompt for the toy prior" in capsys.readouterr().err
    assert cli.main(["canvas", "a red cube", "--lr", "1.5"]) == 2
    assert "--lr must lie in (0, 1]" in capsys.readouterr().err
    assert cli.main(["sample", "a red cube", "--preset", "huge"]) == 2
    assert "unknown preset 'huge'" in capsys.readouterr().err
    assert cli.main(["sample", "a plaid cube", "--out", str(tmp_path / "x")]) == 2
    assert "cannot parse prompt" in capsys.readouterr().err
    args = ["sample", "a red cube", "--samples", "1", "--steps", "2", *_toy_args(toy_cache, tmp_path)]
    assert cli.main(args) == 0 and cli.main(args) == 2
    assert "already holds results" in capsys.readouterr().err
    assert cli.main([*args, "--overwrite"]) == 0


@pytest.mark.parametrize("command", ["canvas", "sample"])
def test_2d_help_does_not_import_torch(command):
    code = (
        "import sys\nfrom sjc.app.commands import cli\n"
        f"try:\n    cli.main([{command!r}, '--help'])\nexcept SystemExit:\n    pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'NO-TORCH')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip().endswith("NO-TORCH"), out.stdout[-500:]
    assert ("--scoring" if command == "canvas" else "--sampler") in out.stdout


def test_canvas_and_sample_with_a_tiny_stable_diffusion(tmp_path):
    import tiny_sd

    folder = tiny_sd.build_tiny_sd(tmp_path / "sd")
    common = ["a hamburger", "--prior", "sd", "--preset", "tiny", "--sd.model", str(folder)]
    assert cli.main(["canvas", *common, "--out", str(tmp_path / "canvas")]) == 0
    latents = (tmp_path / "canvas" / "final.safetensors").stat().st_size
    decoded = iio.imread(tmp_path / "canvas" / "final.png")
    assert latents > 0 and decoded.shape[:2] == (128, 2 * 128 + 2)  # 8x8 latents decoded to 64 px, shown x2
    assert cli.main(["sample", *common, "--out", str(tmp_path / "sample")]) == 0
    summary = json.loads((tmp_path / "sample" / "summary.json").read_text())
    assert summary["config"]["guidance_scale"] == 7.5 and summary["sigmas"][0] == pytest.approx(14.6, rel=1e-2)
