"""Image-to-3D foundations: the reference picture read with its mask, and the reference losses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from sjc.app.runs.picture import PictureError, read_picture
from sjc.core.cameras import View, camera_from_view
from sjc.core.chaining import reference_mask_loss, reference_rgb_loss
from sjc.core.render import render
from sjc.core.voxel import VoxelField
from sjc.priors.toy import parse_prompt, render_scene


def test_reference_losses_have_their_closed_form_gradients():
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(1, 3, 5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    target = torch.randn(3, 5, 6, generator=gen, dtype=torch.float64)
    mask = (torch.rand(5, 6, generator=gen) > 0.5).double()
    (g,) = torch.autograd.grad(reference_rgb_loss(image, target, mask), image)
    assert torch.allclose(g[0], 2 * (image[0] - target) * mask / (3 * mask.sum()))
    (g,) = torch.autograd.grad(reference_rgb_loss(image, target), image)
    assert torch.allclose(g[0], 2 * (image[0] - target) / image.numel())
    opacity = torch.rand(5, 6, generator=gen, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(reference_mask_loss(opacity, mask), opacity)
    assert torch.allclose(g, 2 * (opacity - mask) / 30)
    assert torch.autograd.gradcheck(lambda o: reference_mask_loss(o, mask), (opacity,))


def _disc(size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    return (xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (size / 4) ** 2


def test_an_rgba_picture_brings_its_mask_in_the_alpha_channel(tmp_path):
    disc = _disc()
    pixels = np.zeros((64, 64, 4), np.uint8)
    pixels[..., 0] = 255  # red, with a random colour where alpha is 0: it must not show
    pixels[..., 1] = np.random.default_rng(0).integers(0, 255, (64, 64)) * ~disc
    pixels[..., 3] = disc * 255
    Image.fromarray(pixels, "RGBA").save(tmp_path / "ref.png")
    pic = read_picture(tmp_path / "ref.png", 16, background=1.0)
    assert pic.rgb.shape == (3, 16, 16) and pic.mask.shape == (16, 16) and pic.mask_source == "alpha"
    assert pic.mask[8, 8] == 1 and pic.mask[0, 0] == 0
    assert torch.allclose(pic.rgb[:, 8, 8], torch.tensor([1.0, -1.0, -1.0]))  # the red disc
    assert torch.allclose(pic.rgb[:, 0, 0], torch.ones(3))  # the prior's white background, not the hidden colour
    assert abs(pic.mask.mean().item() - disc.mean()) < 0.01


def test_an_rgb_picture_gets_its_mask_from_the_background_colour(tmp_path):
    disc = _disc()
    pixels = np.full((64, 64, 3), 240, np.uint8)  # light grey background
    pixels[disc] = (20, 40, 200)
    Image.fromarray(pixels, "RGB").save(tmp_path / "ref.jpg", quality=95)
    pic = read_picture(tmp_path / "ref.jpg", 32)
    assert pic.mask_source == "background colour (240, 240, 240)"
    assert abs(pic.mask.mean().item() - disc.mean()) < 0.02 and pic.mask[16, 16] > 0.99
    assert torch.allclose(pic.rgb[:, 0, 0], torch.ones(3))  # composited on the prior's background
    chosen = read_picture(tmp_path / "ref.jpg", 32, background_colour=(20, 40, 200))  # the disc as background
    assert chosen.mask[16, 16] < 0.01 and chosen.mask[0, 0] > 0.99


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (None, "no picture at"),
        (lambda p: p.write_text("not a picture"), "is not a picture sjc can read"),
        (lambda p: Image.new("RGB", (32, 32), (255, 255, 255)).save(p, format="PNG"), "holds no object"),
        (lambda p: Image.new("RGBA", (32, 32), (9, 9, 9, 255)).save(p, format="PNG"), "is all object"),
        (lambda p: Image.new("RGB", (4, 4)).save(p, format="PNG"), "needs at least 8x8"),
    ],
)
def test_bad_pictures_are_one_line_user_errors(tmp_path, make, message):
    path = tmp_path / "ref.png"
    if make is not None:
        make(path)
    with pytest.raises(PictureError, match=message) as err:
        read_picture(path, 32)
    assert "\n" not in str(err.value)


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    return 10 * math.log10(4.0 / (a - b).square().mean().item())  # values in [-1, 1]: peak-to-peak 2


def test_a_field_fitted_to_a_reference_alone_reproduces_it_there_and_leaves_other_views_free(tmp_path):
    scene, size = parse_prompt("a red and blue cube"), 32
    front, back = View(0.0, 0.0, 60.0, 1.5), View(180.0, 0.0, 60.0, 1.5)
    image, mask, _ = render_scene(scene, camera_from_view(front, size))
    rgba = np.concatenate([(image.permute(1, 2, 0).numpy() + 1) * 127.5, mask.numpy()[..., None] * 255.0], axis=-1)
    Image.fromarray(rgba.round().astype(np.uint8), "RGBA").save(tmp_path / "front.png")
    pic = read_picture(tmp_path / "front.png", size)
    torch.manual_seed(0)
    field = VoxelField(16, 3, feature_activation="sigmoid", background="fixed", background_value=1.0)
    optimizer = torch.optim.Adam(field.parameters(), lr=0.1)
    camera = camera_from_view(front, size)
    for _ in range(300):
        out = render(field, camera)
        loss = reference_rgb_loss(out.image, pic.rgb, pic.mask) + reference_mask_loss(out.opacity, pic.mask)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        at_front = _psnr(render(field, camera).image[0], image)
        truth_back, _, _ = render_scene(scene, camera_from_view(back, size))
        at_back = _psnr(render(field, camera_from_view(back, size)).image[0], truth_back)
    assert at_front > 22.0, at_front  # the reference view is reproduced
    assert at_back < at_front - 6.0, (at_front, at_back)  # the unseen side is not: a prior must fill it
