"""The score-distillation methods of core.methods against closed forms on analytic denoisers, their wiring
into the fit loop, the canvas and the command line, and that paas stays what it was."""

import dataclasses
import math

import pytest
import torch

from sjc.app.commands import cli
from sjc.app.settings.presets import canvas_preset, preset
from sjc.core import chaining, methods
from sjc.core.canvas import optimise_canvas
from sjc.core.denoisers import GaussianDenoiser, PointMassDenoiser
from sjc.core.errors import ConfigError
from sjc.core.fit import build_field, fit
from sjc.core.methods import Branches, Scorer

SHAPE = (2, 3, 5, 5)


def _bound(denoiser):
    return lambda x, sigma: denoiser(x, torch.full((x.shape[0],), sigma, dtype=x.dtype), None)


def _images(seed: int, n: int = 3):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=gen, dtype=torch.float64) for _ in range(n)]


def _noise(seed: int, shape=SHAPE) -> torch.Tensor:
    return torch.randn((1, *shape), generator=torch.Generator().manual_seed(seed), dtype=torch.float64)[0]


# --- timesteps and weights ------------------------------------------------------------------
def test_sd_schedule_and_dreamfusion_weight():
    sig = methods.sd_sigmas()
    assert len(sig) == 1000 and bool((sig[1:] > sig[:-1]).all())
    assert sig[0].item() == pytest.approx(math.sqrt(0.00085 / (1 - 0.00085)))
    abar = 1 / (1 + sig**2)
    assert methods.vp_weight(float(sig[500])) == pytest.approx(1 - float(abar[500]))
    ts = methods.Timesteps(None, 0.1, 1.5)
    assert ts.sigma(0.0) == 0.1 and ts.sigma(1.0) == 1.5  # clipped to the prior's range
    assert ts.sigma(0.3) == pytest.approx(float(sig[round(0.3 * 999)]))
    assert ts.t(ts.sigma(0.3)) == pytest.approx(0.3, abs=2e-3)
    gen = torch.Generator().manual_seed(0)
    draws = [methods.Timesteps(None, 0.0, math.inf).uniform(gen) for _ in range(500)]
    assert min(draws) >= float(sig[round(0.02 * 999)]) and max(draws) <= float(sig[round(0.98 * 999)])
    assert ts.annealed(0, 10) == ts.sigma(0.98) and ts.annealed(9, 10) == ts.sigma(0.25)  # SDI's 980 -> 250
    # ISM's warm-up: t ~ U[0.02, hi], hi from 0.98 at step 0 to 0.5 at 30% of the run, then held.
    wide = methods.Timesteps(None, 0.0, math.inf)
    t_of = lambda sigmas: [wide.t(x) for x in sigmas]  # noqa: E731
    early = t_of(wide.warmed_up(0, 1000, gen) for _ in range(400))
    late = t_of(wide.warmed_up(step, 1000, gen) for step in range(300, 1000, 2) for _ in range(2))
    assert min(early) >= 0.02 - 2e-3 and max(early) > 0.9 and max(late) <= 0.5 + 2e-3 and max(late) > 0.45
    mid = t_of(wide.warmed_up(150, 1000, gen) for _ in range(400))  # halfway through the warm-up: hi = 0.74
    assert 0.7 < max(mid) <= 0.74 + 2e-3


# --- SDS --------------------------------------------------------------------------------------
def test_sds_is_the_dreamfusion_eps_form_negated():
    y, mean, _ = _images(0)
    d_g = GaussianDenoiser(mean, 0.7)
    sigma = 0.8
    g = methods.sds_grad(_bound(d_g), y, sigma, generator=torch.Generator().manual_seed(5))
    # DreamFusion in VP form: x_t = sqrt(abar) y + sqrt(1 - abar) n, loss gradient w(t) (eps_hat(x_t) - n).
    n = _noise(5)
    abar = 1 / (1 + sigma**2)
    x_t = abar**0.5 * y + (1 - abar) ** 0.5 * n
    z = x_t / abar**0.5  # the VE input of the same network
    eps_hat = (z - d_g(z, torch.full((2,), sigma), None)) / sigma
    grad = (1 - abar) * (eps_hat - n)
    assert torch.allclose(g, -grad, atol=1e-12)


def test_sds_equals_paas_times_the_weight_on_the_same_noise():
    y, mean, _ = _images(1)
    d_g = GaussianDenoiser(mean[:1], 0.5)  # one mean broadcast over the k draws
    for sigma, k in ((0.3, 1), (2.0, 3)):
        sds = methods.sds_grad(_bound(d_g), y, sigma, n_noise=k, generator=torch.Generator().manual_seed(2))
        paas = chaining.paas_grad(d_g, y, sigma, n_noise=k, generator=torch.Generator().manual_seed(2))
        assert torch.equal(sds, methods.vp_weight(sigma) * paas)


# --- CSD and NFSD -----------------------------------------------------------------------------
def test_csd_is_zero_where_conditional_and_unconditional_agree():
    y, mean, _ = _images(2)
    d = _bound(GaussianDenoiser(mean, 0.6))
    g = methods.csd_grad(d, d, y, 0.5, 40.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(g, torch.zeros_like(g))


def test_csd_formula_with_a_negative_prompt():
    y, a, b = _images(3)
    c = _images(4, 1)[0]
    sigma, s, s_neg = 0.7, 40.0, 2.0
    d_c, d_u = _bound(GaussianDenoiser(a, 0.5)), _bound(GaussianDenoiser(b, 0.9))
    d_neg = _bound(PointMassDenoiser(c))
    g = methods.csd_grad(
        d_c, d_u, y, sigma, s, d_neg=d_neg, negative_scale=s_neg, generator=torch.Generator().manual_seed(7)
    )
    z = y + sigma * _noise(7)
    u = d_u(z, sigma)
    expected = methods.vp_weight(sigma) * (s * (d_c(z, sigma) - u) - s_neg * (c - u)) / sigma
    assert torch.allclose(g, expected, atol=1e-12)


def test_nfsd_switches_its_domain_term_at_the_split():
    y, a, b = _images(5)
    c = _images(6, 1)[0]
    d_c, d_u, d_neg = (_bound(PointMassDenoiser(t)) for t in (a, b, c))
    s, split = 7.5, 0.4
    low = methods.nfsd_grad(d_c, d_u, d_neg, y, 0.3, s, split, generator=torch.Generator().manual_seed(1))
    z = y + 0.3 * _noise(1)
    assert torch.allclose(low, (s * (a - b) + (b - z)) / 0.3, atol=1e-12)
    high = methods.nfsd_grad(d_c, d_u, d_neg, y, 0.9, s, split, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(high, (s * (a - b) + (b - c)) / 0.9, atol=1e-12)  # noise-free: no z left
    # In eps form: -(delta_D + s delta_C), delta_C = eps_c - eps_u, delta_D = eps_u - eps_neg.
    eps = {k: (z - t) / 0.9 for k, t in (("c", a), ("u", b), ("neg", c))}
    assert torch.allclose(high, -((eps["u"] - eps["neg"]) + s * (eps["c"] - eps["u"])), atol=1e-12)


def test_nfsd_split_is_t_200_of_1000():
    prior = _AnalyticPrior(*_images(7, 3))
    scorer = Scorer("nfsd", prior, guidance_scale=7.5, sigma_range=(0.01, 10.0))
    assert scorer.sigma_split == pytest.approx(float(methods.sd_sigmas()[round(0.2 * 999)]))


# --- inversion methods ------------------------------------------------------------------------
def test_ddim_inversion_of_a_point_mass_is_exact():
    y, a, _ = _images(8)
    levels = methods.inversion_levels(0.05, 1.3, 4)
    assert levels[0] == pytest.approx(0.05) and levels[-1] == pytest.approx(1.3) and len(levels) == 5
    z = methods.ddim_invert(_bound(PointMassDenoiser(a)), y, levels)
    # The probability-flow ODE dz/dsigma = (z - a) / sigma from (0.05, y): z = a + (sigma / 0.05) (y - a).
    assert torch.allclose(z, a + (1.3 / 0.05) * (y - a), atol=1e-10)


def test_ddim_inversion_of_a_gaussian_converges_to_the_flow():
    y, m, _ = _images(9)
    s, s0, s1 = 0.6, 0.05, 1.2
    exact = m + (y - m) * math.sqrt((s**2 + s1**2) / (s**2 + s0**2))
    d = _bound(GaussianDenoiser(m, s))
    errors = [(methods.ddim_invert(d, y, methods.inversion_levels(s0, s1, k)) - exact).norm().item() for k in (4, 64)]
    assert errors[1] < errors[0] / 8 and errors[1] < 0.02 * exact.norm().item()


def test_sdi_and_ism_with_point_masses():
    y, a, b = _images(10)
    d_c, d_u = _bound(PointMassDenoiser(a)), _bound(PointMassDenoiser(b))
    s, sigma = 7.5, 0.9
    d_g = lambda x, sig: d_u(x, sig) + s * (d_c(x, sig) - d_u(x, sig))  # noqa: E731
    w = methods.vp_weight(sigma)
    sdi = methods.sdi_grad(d_g, d_c, y, sigma, 0.05, 3)
    assert torch.allclose(sdi, w * (b + s * (a - b) - y) / sigma, atol=1e-10)
    # ISM: z_s from D_u, x0_s = D_u(z_s) = b, so g = w (D_g(z_t) - b) / sigma = s (a - b) with ISM's w = sigma.
    ism = methods.ism_grad(d_g, d_u, y, sigma, 0.6, 0.05, 3)
    assert methods.ism_weight(sigma) == sigma
    assert torch.allclose(ism, s * (a - b), atol=1e-10)


def test_sdi_scorer_inverts_under_the_reversed_guidance():
    # Gaussian branches (the inversion is not exact for them, so the inverting denoiser shows in g): the Scorer's
    # sdi equals sdi_grad with D_inv = D_u - s (D_c - D_u), and differs from inverting with D_c alone.
    _, m_c, m_u = _images(15)
    den = {"c": GaussianDenoiser(m_c[:1], 0.7), "u": GaussianDenoiser(m_u[:1], 0.4)}

    class GaussianBranches:
        sigmas, sigma_min, sigma_max, image_size, channels = None, 0.1, 1.5, 5, 3

        def condition(self, view=None):
            return "c"

        def denoise(self, x, sigma, cond):
            return den[cond](x, sigma)

        def branches(self, view=None, negative_prompt=None):
            return Branches(self.denoise, "c", "u", "u")

    s, sigma, y = 7.5, 0.8, _images(16)[0][:1]
    d_c, d_u = _bound(den["c"]), _bound(den["u"])
    guided = lambda k: lambda x, sig: d_u(x, sig) + k * (d_c(x, sig) - d_u(x, sig))  # noqa: E731
    scorer = Scorer("sdi", GaussianBranches(), guidance_scale=s, sigma_range=(0.1, 1.5), inversion_steps=3)
    got = scorer(y, sigma, None)
    assert torch.allclose(got, methods.sdi_grad(guided(s), guided(-s), y, sigma, 0.1, 3), atol=1e-12)
    assert not torch.allclose(got, methods.sdi_grad(guided(s), d_c, y, sigma, 0.1, 3), atol=1e-3)


def test_ism_takes_one_ddim_step_from_the_inverted_level():
    y, m, _ = _images(11)
    d_u = _bound(GaussianDenoiser(m, 0.5))
    seen = []
    d_g = lambda x, sig: seen.append(x) or d_u(x, sig)  # noqa: E731
    g = methods.ism_grad(d_g, d_u, y, 1.0, 0.5, 0.05, 2)
    z_s = methods.ddim_invert(d_u, y, methods.inversion_levels(0.05, 0.5, 2))
    x0 = d_u(z_s, 0.5)
    z_t = x0 + 1.0 * (z_s - x0) / 0.5
    assert torch.allclose(seen[0], z_t, atol=1e-12)
    assert torch.allclose(g, methods.ism_weight(1.0) * (d_u(z_t, 1.0) - x0) / 1.0, atol=1e-12)


# --- VSD ----------------------------------------------------------------------------------------
def test_vsd_formula_and_zero_when_the_copy_matches():
    y, a, b = _images(12)
    d_g, d_phi = _bound(PointMassDenoiser(a)), _bound(PointMassDenoiser(b))
    g = methods.vsd_grad(d_g, d_phi, y, 0.5, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(g, methods.vp_weight(0.5) * (a - b) / 0.5, atol=1e-12)
    same = methods.vsd_grad(d_g, d_g, y, 0.5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(same, torch.zeros_like(same))


def test_vsd_copy_of_the_learned_prior_starts_equal_and_learns():
    from sjc.priors import build_prior

    prior = build_prior("toy-learned", "a green cube")
    copy = prior.online_copy(1e-3)
    b = prior.branches(None)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert torch.allclose(copy.denoise(x, 0.7, None), b.bind("cond")(x, 0.7), atol=1e-5)
    before = [p.detach().clone() for p in copy.model.parameters()]
    copy.train_step(x[:1], None, torch.Generator().manual_seed(1))
    assert any(not torch.equal(p, q) for p, q in zip(before, copy.model.parameters(), strict=True))
    assert all(p.requires_grad is False for p in prior.model.parameters())  # the prior itself is untouched


# --- priors -----------------------------------------------------------------------------------
class _AnalyticPrior:
    """A prior with point-mass branches: the prompt at `a`, the unconditional at `b`, the negative at `c`."""

    channels, image_size, sigmas, sigma_min, sigma_max, prompt = 3, 5, None, 0.1, 1.5, "p"
    feature_activation = "sigmoid"

    def __init__(self, a, b, c):
        self.targets = {"c": a[:1].float(), "u": b[:1].float(), "neg": c[:1].float()}

    def condition(self, view=None):
        return "c"

    def denoise(self, x, sigma, cond):
        return self.targets[cond].expand_as(x).clone()

    def branches(self, view=None, negative_prompt=None):
        return Branches(self.denoise, "c", "u", "neg")


def test_scorer_refuses_priors_without_what_the_method_needs():
    class Plain:
        sigmas, sigma_min, sigma_max = None, 0.1, 1.5

        def condition(self, view=None):
            return None

        def denoise(self, x, sigma, cond):
            return torch.zeros_like(x)

    for method in ("csd", "nfsd", "ism", "vsd"):
        with pytest.raises(ConfigError, match=method):
            Scorer(method, Plain(), guidance_scale=7.5, sigma_range=(0.1, 1.5))
    with pytest.raises(ConfigError, match="toy-learned"):
        Scorer("vsd", _AnalyticPrior(*_images(0)), guidance_scale=7.5, sigma_range=(0.1, 1.5))
    y = torch.zeros(1, 3, 5, 5)  # sds and sdi fall back to the prior's own denoiser
    assert torch.equal(Scorer("sds", Plain(), guidance_scale=7.5, sigma_range=(0.1, 1.5))(y, 0.5, None), y)


def test_exact_toy_branches_unconditional_and_negative():
    from sjc.priors.settings import SUITE_PROMPTS
    from sjc.priors.toy import ToyPrior, make_dataset

    prior = ToyPrior("a green cube", view_conditioning=False)
    b = prior.branches(None)
    other = make_dataset(SUITE_PROMPTS[2]).images[:2]  # a yellow sphere: in the unconditional set, not the prompt's
    sig = torch.full((2,), 1e-3)
    assert torch.allclose(prior._denoise_branch(other, sig, b.uncond), other, atol=1e-5)
    assert not torch.allclose(prior._denoise_branch(other, sig, b.cond), other, atol=1e-2)
    assert torch.equal(prior._denoise_branch(other, sig, b.negative), torch.ones_like(other))  # the empty scene
    big = prior._denoise_branch(torch.zeros(1, 3, 32, 32), torch.full((1,), 1e4), b.uncond)
    every = torch.cat([make_dataset(p).images for p in SUITE_PROMPTS]).mean(0, keepdim=True)
    assert torch.allclose(big, every, atol=1e-4)  # the mean of all ten suite prompts' renders
    with pytest.raises(Exception, match="cannot parse"):
        prior.branches(None, "a dog")


# --- the loop, the canvas and the command line ---------------------------------------------------
def _tiny_fit(scoring, steps=6):
    from sjc.priors.toy import ToyPrior

    cfg = preset("toy", "tiny")
    prior = ToyPrior("a red cube", n_images=200, image_size=16)
    settings = dataclasses.replace(cfg.fit_settings(), scoring=scoring)
    field = build_field(prior, settings.field, seed=0)
    fit(field, prior, settings, steps=steps, seed=0, progress=False)
    return field


def test_paas_flag_changes_nothing():
    default = _tiny_fit(preset("toy", "tiny").scoring)
    explicit = _tiny_fit(preset("toy", "tiny", "paas").scoring)
    assert torch.equal(default.grid, explicit.grid)
    assert cli.parse_generate(["a red cube"]) == cli.parse_generate(["a red cube", "--scoring.method", "paas"])
    learned = ["a green cube", "--prior", "toy-learned"]
    assert cli.parse_generate(learned) == cli.parse_generate([*learned, "--scoring.method=paas"])


def test_every_method_runs_in_the_loop():
    base = preset("toy", "tiny").scoring
    prior = _AnalyticPrior(*_images(13))
    for method in ("sds", "csd", "nfsd", "sdi", "ism"):
        scoring = dataclasses.replace(base, method=method, sigma_schedule="auto", guidance_scale=7.5)
        field = build_field(prior, seed=0, settings=preset("toy", "tiny").field)
        fit(field, prior, dataclasses.replace(preset("toy", "tiny").fit_settings(), scoring=scoring), steps=2,
            progress=False)  # fmt: skip
        assert torch.isfinite(field.grid).all()


def test_method_presets_and_flags_over_them():
    cfg = cli.parse_generate(["a red cube", "--scoring.method", "sds"])
    assert (cfg.scoring.guidance_scale, cfg.scoring.sigma_schedule) == (100.0, "timestep")
    cfg = cli.parse_generate(["a red cube", "--scoring.method", "nfsd", "--scoring.guidance-scale", "3"])
    assert (cfg.scoring.method, cfg.scoring.guidance_scale) == ("nfsd", 3.0)
    assert cli.parse_generate(["a red cube", "--scoring.method", "sdi"]).scoring.sigma_schedule == "timestep-annealed"
    assert canvas_preset("toy", "default", "csd").guidance_scale == 40.0
    assert cli.parse_2d("canvas", ["a red cube", "--scoring", "ism"]).guidance_scale == 7.5


@pytest.mark.parametrize(
    "argv, message",
    [
        (["generate", "a red cube", "--scoring.method", "vsd"], "vsd needs the learned toy prior"),
        (["generate", "a red cube", "--scoring.method", "magic"], "unknown scoring method 'magic'"),
        (["canvas", "a red cube", "--scoring", "vsd"], "vsd needs the learned toy prior"),
        (["generate", "a red cube", "--scoring.inversion-steps", "0"], "inversion-steps must be at least 1"),
    ],
)
def test_one_line_errors(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_canvas_with_a_method_moves_towards_the_prompt():
    a, b, c = _images(14, 3)
    prior = _AnalyticPrior(a, b, c)
    scorer = Scorer("csd", prior, guidance_scale=1.0, sigma_range=(0.1, 1.5))
    x0 = torch.zeros(1, 3, 5, 5)
    x, records = optimise_canvas(prior.denoise, x0, [1.0] * 5, "c", scoring="csd", lr=0.5, scorer=scorer)
    step = records[0].step_size * methods.vp_weight(1.0)
    target = prior.targets["c"] - prior.targets["u"]
    assert torch.allclose(x, x0 + 5 * step * target, atol=1e-5)
    with pytest.raises(ValueError, match="needs its scorer"):
        optimise_canvas(prior.denoise, x0, [1.0], "c", scoring="sds")
