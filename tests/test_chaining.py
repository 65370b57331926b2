import math

import pytest
import torch

from sjc.core import chaining
from sjc.core.denoisers import GaussianDenoiser, PointMassDenoiser


def test_eq16_with_a_point_mass_is_exactly_target_minus_render_over_sigma():
    target, y = torch.randn(1, 3, 6, 6), torch.randn(1, 3, 6, 6)
    for k in (1, 4):
        g = chaining.paas_grad(
            PointMassDenoiser(target), y, 0.37, n_noise=k, generator=torch.Generator().manual_seed(0)
        )
        assert torch.allclose(g, (target - y) / 0.37, atol=1e-6)


def test_eq15_averages_to_eq16_plus_the_noise_term():
    target, y = torch.randn(1, 2, 4, 4), torch.randn(1, 2, 4, 4)
    gen = torch.Generator().manual_seed(1)
    g15 = chaining.paas_grad(PointMassDenoiser(target), y, 0.5, n_noise=20000, variance_reduced=False, generator=gen)
    # (D - y - sigma n) / sigma: the noise term averages out.
    assert torch.allclose(g15, (target - y) / 0.5, atol=0.05)


def test_paas_with_a_gaussian_prior_matches_the_expected_score():
    # For N(0, s^2) data, E_n[(D(y + sigma n) - y) / sigma] = -sigma * y / (s^2 + sigma^2).
    y = torch.full((1, 1, 8, 8), 0.8)
    sigma, s = 0.6, 0.5
    g = chaining.paas_grad(GaussianDenoiser(0.0, s), y, sigma, n_noise=4000, generator=torch.Generator().manual_seed(2))
    expected = -sigma * y / (s**2 + sigma**2)
    assert torch.allclose(g, expected, atol=0.04)  # per pixel: 6 standard errors
    assert g.mean().item() == pytest.approx(expected.mean().item(), abs=0.005)


def test_surrogate_gradient_with_respect_to_the_render_is_minus_g():
    y = torch.randn(1, 4, 5, 5, requires_grad=True)
    g = torch.randn(1, 4, 5, 5)
    chaining.chain_surrogate(y, g).backward()
    assert torch.equal(y.grad, -g)


def test_emptiness_schedule_multiplies_at_the_stated_step():
    w = [chaining.emptiness_weight_at(s, 100, 1e4, 20.0, 0.5) for s in (0, 49, 50, 99)]
    assert w == [1e4, 1e4, 2e5, 2e5]


def test_emptiness_loss_formula_and_its_preference_for_empty_space():
    weights = torch.tensor([[0.0, 0.5], [0.25, 0.0]])
    expected = (math.log(1 + 5) + math.log(1 + 2.5)) / 4
    assert chaining.emptiness_loss(weights, 10.0).item() == pytest.approx(expected)
    assert chaining.emptiness_loss(torch.zeros(3, 3), 10.0) == 0


def test_center_depth_loss_prefers_a_near_centre_and_is_never_nan():
    near_centre = torch.full((64, 64), 10.0)
    near_centre[7:-7, 7:-7] = 1.0
    far_centre = torch.full((64, 64), 1.0)
    far_centre[7:-7, 7:-7] = 10.0
    assert chaining.center_depth_loss(near_centre) < chaining.center_depth_loss(far_centre)
    flat = torch.full((64, 64), 3.0, requires_grad=True)
    loss = chaining.center_depth_loss(flat)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(flat.grad).all()
    # Its gradient pulls the centre nearer and pushes the border away.
    assert flat.grad[32, 32] > 0 and flat.grad[0, 0] < 0


def test_sigma_samplers_respect_their_ranges():
    gen = torch.Generator().manual_seed(3)
    grid = torch.linspace(0.01, 10, 100)
    drawn = {chaining.sigma_from_grid(grid, 10, 30, gen) for _ in range(2000)}
    assert min(drawn) == pytest.approx(float(grid[10])) and max(drawn) == pytest.approx(float(grid[69]))
    with pytest.raises(ValueError, match="leaves none"):
        chaining.sigma_from_grid(grid, 60, 40, gen)
    logs = [math.log(chaining.sigma_log_uniform(0.1, 1.5, gen)) for _ in range(4000)]
    assert min(logs) >= math.log(0.1) and max(logs) <= math.log(1.5)
    assert sum(logs) / len(logs) == pytest.approx((math.log(0.1) + math.log(1.5)) / 2, abs=0.03)
    assert chaining.sigma_annealed(0, 11, 0.1, 10) == pytest.approx(10)
    assert chaining.sigma_annealed(5, 11, 0.1, 10) == pytest.approx(1)
    assert chaining.sigma_annealed(10, 11, 0.1, 10) == pytest.approx(0.1)
