"""DiscreteDenoiser: an alphas_cumprod network as D(x; sigma), checked against closed forms and diffusers."""

import math

import pytest
import torch

import tiny_sd  # noqa: F401 (sets HF_HUB_OFFLINE before diffusers is imported)
from sjc.core.chaining import sigma_from_grid
from sjc.priors.discrete import DiscreteDenoiser, sigmas_from_alphas_cumprod


def _sd_alphas_cumprod(T: int = 1000) -> torch.Tensor:
    """SD 1.x / 2.x schedule: betas linear in sqrt from 0.00085 to 0.012."""
    betas = torch.linspace(0.00085**0.5, 0.012**0.5, T, dtype=torch.float64) ** 2
    return torch.cumprod(1 - betas, 0)


def _point_mass_network(y0: torch.Tensor, alphas_cumprod: torch.Tensor, prediction_type: str):
    """The exact eps / v / x0 network of data concentrated on the image y0."""

    def network(x_t, t, cond):
        a = alphas_cumprod[t].to(x_t).view(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * y0) / (1 - a).sqrt()
        if prediction_type == "epsilon":
            return eps
        if prediction_type == "v_prediction":
            return a.sqrt() * eps - (1 - a).sqrt() * y0
        return y0.expand_as(x_t)

    return network


def test_the_sigma_grid_is_sqrt_one_minus_a_over_a_and_ascends():
    a = _sd_alphas_cumprod()
    sigmas = sigmas_from_alphas_cumprod(a)
    assert torch.allclose(sigmas, ((1 - a) / a).sqrt())
    assert bool((sigmas[1:] > sigmas[:-1]).all())
    # The SD schedule spans sigma 0.029 .. 14.6; the paper draws from it without its 10 lowest and
    # 30 highest values, i.e. from about 0.098 to 12.2.
    assert sigmas[0] == pytest.approx(0.0292, rel=1e-2) and sigmas[-1] == pytest.approx(14.61, rel=1e-2)
    assert sigmas[10] == pytest.approx(0.098, rel=2e-2) and sigmas[-31] == pytest.approx(12.2, rel=1e-2)
    draws = [sigma_from_grid(sigmas, 10, 30, torch.Generator().manual_seed(k)) for k in range(200)]
    assert min(draws) >= float(sigmas[10]) and max(draws) <= float(sigmas[-31])


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_the_exact_network_of_one_image_denoises_to_that_image(prediction_type):
    # For data = {y0}, E[y | x] = y0 at every noise level: a closed form independent of any library.
    a = _sd_alphas_cumprod()
    gen = torch.Generator().manual_seed(0)
    y0 = torch.randn(1, 4, 6, 6, generator=gen, dtype=torch.float64)
    den = DiscreteDenoiser(_point_mass_network(y0, a, prediction_type), a, prediction_type)
    sigma = den.sigmas[[0, 300, 999]]
    x = y0 + sigma.view(-1, 1, 1, 1) * torch.randn(3, 4, 6, 6, generator=gen, dtype=torch.float64)
    assert torch.allclose(den(x, sigma), y0.expand(3, -1, -1, -1), atol=1e-9, rtol=1e-9)


def test_sigma_is_snapped_and_the_network_sees_x_over_sqrt_one_plus_sigma_squared():
    a = _sd_alphas_cumprod()
    seen = {}

    def network(x_in, t, cond):
        seen.update(x_in=x_in, t=t, cond=cond)
        return torch.ones_like(x_in)

    den = DiscreteDenoiser(network, a)
    grid = den.sigmas
    off_grid = torch.tensor([float(grid[123]) * 1.001, float(grid[700]) * 0.999])
    x = torch.randn(2, 4, 3, 3, dtype=torch.float64)
    out = den(x, off_grid, cond="text")
    assert seen["t"].tolist() == [123, 700] and seen["cond"] == "text"
    snapped = grid[[123, 700]].view(-1, 1, 1, 1)
    assert torch.allclose(seen["x_in"], x / (1 + snapped**2).sqrt())
    assert torch.allclose(out, x - snapped)  # eps = 1: D = x - sigma_snapped * eps
    # A scalar sigma applies to the whole batch.
    den(x, torch.tensor(float(grid[5])))
    assert seen["t"].tolist() == [5, 5]
    assert den.sigma_min == pytest.approx(float(grid[0])) and den.sigma_max == pytest.approx(float(grid[-1]))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_denoised_equals_the_diffusers_scheduler_x0_prediction(prediction_type):
    from diffusers import DDPMScheduler

    scheduler = DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type=prediction_type,
    )
    conv = torch.nn.Conv2d(4, 4, 3, padding=1)

    def network(x_in, t, cond):  # any function of (x_t, t) will do: the conversion is what is checked
        with torch.no_grad():
            return conv(x_in) + torch.sin(t.float() / 100).view(-1, 1, 1, 1)

    den = DiscreteDenoiser(network, scheduler.alphas_cumprod, prediction_type)
    gen = torch.Generator().manual_seed(1)
    for t in (0, 40, 400, 960):
        sigma = float(den.sigmas[t])
        z = torch.randn(2, 4, 8, 8, generator=gen) * math.sqrt(1 + sigma**2)
        x_t = z * scheduler.alphas_cumprod[t].sqrt()
        expected = scheduler.step(network(x_t, torch.tensor([t, t]), None), t, x_t).pred_original_sample
        got = den(z, torch.tensor([sigma, sigma]))
        assert (got - expected).abs().max() / expected.abs().max() <= 1e-5, t


def test_bad_schedules_and_prediction_types_are_named():
    a = _sd_alphas_cumprod()
    with pytest.raises(ValueError, match="prediction_type 'x0'"):
        DiscreteDenoiser(lambda x, t, c: x, a, "x0")
    with pytest.raises(ValueError, match="decrease"):
        DiscreteDenoiser(lambda x, t, c: x, a.flip(0))
