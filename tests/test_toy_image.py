"""The toy world's image-conditioned exact prior, and the weighted exact denoiser under it."""

from __future__ import annotations

import pytest
import torch

from sjc.core.cameras import View, camera_from_view
from sjc.core.denoisers import EmpiricalDenoiser
from sjc.priors.settings import SUITE_PROMPTS
from sjc.priors.toy import ToyPrior, parse_prompt, render_scene
from sjc.priors.toy_image import ToyImagePrior, object_posterior


@pytest.mark.parametrize("sigma", [0.05, 0.3, 2.0])
@pytest.mark.parametrize("screen", [False, True])
def test_weighted_empirical_denoiser_is_the_weighted_posterior_mean(sigma, screen):
    gen = torch.Generator().manual_seed(3)
    images = torch.rand(700, 3, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1
    log_w = torch.randn(700, generator=gen, dtype=torch.float64) * 3
    x = images[[5, 300]] + sigma * torch.randn(2, 3, 4, 4, generator=gen, dtype=torch.float64)
    den = EmpiricalDenoiser(images, log_weights=log_w, screen_from=1 if screen else 10**9)
    got = den(x, torch.full((2,), sigma, dtype=torch.float64))
    flat, ys = x.reshape(2, -1), images.reshape(700, -1)
    logits = log_w[None] - torch.cdist(flat, ys).square() / (2 * sigma**2)
    expected = (torch.softmax(logits, dim=1) @ ys).reshape_as(x)
    assert torch.allclose(got, expected, rtol=0, atol=1e-10)
    uniform = EmpiricalDenoiser(images, log_weights=torch.full((700,), -2.0, dtype=torch.float64))
    assert torch.allclose(uniform(x, torch.full((2,), sigma)), EmpiricalDenoiser(images)(x, torch.full((2,), sigma)))


@pytest.mark.parametrize("view", [View(0.0, 0.0, 60.0, 1.5), View(30.0, 30.0, 60.0, 1.5)], ids=["front", "oblique"])
def test_a_picture_of_each_suite_object_picks_that_object(view):
    # No two suite objects share a front or an oblique picture at 32 px: every posterior is sharp.
    for prompt in SUITE_PROMPTS:
        picture, _, _ = render_scene(parse_prompt(prompt), camera_from_view(view, 32))
        posterior = object_posterior(picture, view)
        assert posterior[prompt] > 0.99, (prompt, posterior)
        assert abs(sum(posterior.values()) - 1) < 1e-9


def test_a_sharp_posterior_gives_exactly_the_objects_own_denoiser(tmp_path):
    view = View(0.0, 0.0, 60.0, 1.5)
    picture, _, _ = render_scene(parse_prompt("an orange torus"), camera_from_view(view, 32))
    prior = ToyImagePrior(picture, view, n_images=300, cache_dir=tmp_path)
    exact = ToyPrior("an orange torus", n_images=300, cache_dir=tmp_path)
    assert prior.best == "an orange torus" and prior.prompt == ""
    gen = torch.Generator().manual_seed(0)
    for scored in (View(180.0, 10.0, 60.0, 1.5), View(90.0, 45.0, 50.0, 1.5)):
        x = torch.rand(2, 3, 32, 32, generator=gen) * 2 - 1
        sigma = torch.tensor([0.2, 1.0])
        assert prior.condition(scored) == exact.condition(scored)
        got = prior.denoise(x, sigma, prior.condition(scored))
        assert torch.equal(got, exact.denoise(x, sigma, exact.condition(scored)))


def test_an_ambiguous_picture_mixes_the_objects_it_could_be(tmp_path):
    # Halfway between two objects' renders, with a broad picture noise, both keep about half the weight.
    view = View(0.0, 0.0, 60.0, 1.5)
    a, _, _ = render_scene(parse_prompt("a yellow sphere"), camera_from_view(view, 32))
    b, _, _ = render_scene(parse_prompt("a blue cylinder"), camera_from_view(view, 32))
    prior = ToyImagePrior((a + b) / 2, view, n_images=300, cache_dir=tmp_path, picture_noise=5.0)
    assert 0.3 < prior.posterior["a yellow sphere"] < 0.7 and 0.3 < prior.posterior["a blue cylinder"] < 0.7
