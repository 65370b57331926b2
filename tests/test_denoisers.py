import pytest
import torch

from sjc.core.denoisers import (
    ClassifierFreeGuidance,
    ConditionalDenoiser,
    EmpiricalDenoiser,
    GaussianDenoiser,
    PointMassDenoiser,
    score,
)


def test_point_mass_returns_its_target():
    target = torch.randn(1, 3, 4, 4)
    x = torch.randn(5, 3, 4, 4)
    assert torch.equal(PointMassDenoiser(target)(x, torch.rand(5)), target.expand(5, -1, -1, -1))


def test_gaussian_matches_its_closed_form_posterior_mean():
    mean, std = 0.3, 0.7
    x, sigma = torch.randn(4, 2, 3, 3, dtype=torch.float64), torch.tensor([0.1, 0.5, 1.0, 4.0], dtype=torch.float64)
    d = GaussianDenoiser(mean, std)(x, sigma)
    for b in range(4):
        w = std**2 / (std**2 + sigma[b] ** 2)
        assert torch.allclose(d[b], mean + w * (x[b] - mean))


def test_gaussian_is_the_empirical_limit_of_many_samples():
    # The empirical denoiser of many Gaussian samples approaches the Gaussian's posterior mean.
    gen = torch.Generator().manual_seed(0)
    data = 0.2 + 0.5 * torch.randn(40000, 1, 1, 1, generator=gen, dtype=torch.float64)
    x = torch.tensor([-0.5, 0.0, 0.9], dtype=torch.float64).view(3, 1, 1, 1)
    sigma = torch.full((3,), 0.6, dtype=torch.float64)
    approx = EmpiricalDenoiser(data, chunk=7000)(x, sigma)
    exact = GaussianDenoiser(0.2, 0.5)(x, sigma)
    assert torch.allclose(approx, exact, atol=0.02)


def _brute_force(images, x, sigma):
    y = images.reshape(len(images), -1).double()
    out = []
    for b in range(x.shape[0]):
        d2 = ((x[b].reshape(1, -1).double() - y) ** 2).sum(1)
        w = torch.softmax(-d2 / (2 * float(sigma[b]) ** 2), 0)
        out.append((w[:, None] * y).sum(0))
    return torch.stack(out).reshape(x.shape)


@pytest.mark.parametrize("sigma", [0.02, 0.3, 3.0])
def test_empirical_denoiser_is_exact_in_any_chunking(sigma):
    gen = torch.Generator().manual_seed(1)
    images = torch.rand(37, 3, 5, 5, generator=gen) * 2 - 1
    x = images[:4] + sigma * torch.randn(4, 3, 5, 5, generator=gen)
    sig = torch.full((4,), sigma)
    expected = _brute_force(images, x, sig)
    for chunk in (1, 8, 100):
        got = EmpiricalDenoiser(images, chunk=chunk)(x, sig)
        assert torch.isfinite(got).all()
        assert torch.allclose(got.double(), expected, atol=1e-5)


@pytest.mark.parametrize("sigma", [0.01, 0.1, 0.5, 1.5, 20.0])
def test_screened_empirical_denoiser_equals_the_full_sum(sigma):
    # Clusters of near-duplicates (the hard case for float32 distances) in 768 dimensions: the screened sum
    # equals the full float64 one to rounding, for a batch whose samples sit near different clusters.
    gen = torch.Generator().manual_seed(2)
    centres = torch.rand(60, 3, 16, 16, generator=gen, dtype=torch.float64) * 2 - 1
    images = centres.repeat(80, 1, 1, 1) + 1e-3 * torch.randn(4800, 3, 16, 16, generator=gen, dtype=torch.float64)
    x = images[[0, 61, 4799]] + sigma * torch.randn(3, 3, 16, 16, generator=gen, dtype=torch.float64)
    sig = torch.full((3,), sigma, dtype=torch.float64)
    screened = EmpiricalDenoiser(images, screen_from=1)
    full = EmpiricalDenoiser(images, screen_from=10**9)
    assert screened.screen and not full.screen
    got, expected = screened(x, sig), full(x, sig)
    assert torch.allclose(got, expected, rtol=0, atol=1e-12)
    keep = screened._screened(x.reshape(3, -1), 1 / (2 * sig[:, None] ** 2))
    if sigma <= 0.1:  # the posterior sits on the samples' own clusters: only those are summed in float64
        assert keep is not None and set((keep % 60).tolist()) == {0, 1, 59}
    if sigma >= 20.0:  # everything counts: the full sum is used
        assert keep is None


def test_empirical_denoiser_at_tiny_sigma_returns_the_nearest_image():
    images = torch.tensor([0.0, 1.0, 5.0]).view(3, 1, 1, 1)
    x = torch.tensor([0.9, 4.0]).view(2, 1, 1, 1)
    out = EmpiricalDenoiser(images)(x, torch.tensor([1e-3, 1e-3]))
    assert out.flatten().tolist() == [1.0, 5.0]


def test_score_is_tweedie():
    den = GaussianDenoiser(0.0, 1.0)
    x, sigma = torch.randn(3, 1, 2, 2), torch.tensor([0.5, 1.0, 2.0])
    s = score(den, x, sigma)
    # N(0, 1 + sigma^2) has score -x / (1 + sigma^2).
    assert torch.allclose(s, -x / (1 + sigma.view(-1, 1, 1, 1) ** 2), atol=1e-6)


def test_conditional_denoiser_routes_and_names_unknown_conditions():
    a, b = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
    den = ConditionalDenoiser({"front": PointMassDenoiser(a), "back": PointMassDenoiser(b)})
    x = torch.randn(1, 1, 2, 2)
    assert torch.equal(den(x, torch.ones(1), "back"), b)
    with pytest.raises(KeyError, match="front, back"):
        den(x, torch.ones(1), "side")


class _Labelled:
    """D(x) = x * 0.5 + label, for a list of labels per batch item."""

    def __call__(self, x, sigma, cond):
        labels = torch.tensor(cond, dtype=x.dtype).view(-1, 1, 1, 1)
        return 0.5 * x + labels


def test_cfg_scale_one_is_the_conditional_branch_and_linear_in_scale():
    x, sigma = torch.randn(2, 1, 3, 3), torch.ones(2)
    cond = (2.0, -1.0)
    d1 = ClassifierFreeGuidance(_Labelled(), 1.0)(x, sigma, cond)
    assert torch.allclose(d1, 0.5 * x + 2.0)
    d0 = ClassifierFreeGuidance(_Labelled(), 0.0)(x, sigma, cond)
    assert torch.allclose(d0, 0.5 * x - 1.0)
    for scale in (3.0, 7.5, 100.0):
        ds = ClassifierFreeGuidance(_Labelled(), scale)(x, sigma, cond)
        assert torch.allclose(ds, d0 + scale * (d1 - d0), atol=1e-4)
