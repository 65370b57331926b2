"""Reference pictures for image-to-3D: a PNG or JPEG read into the prior's pixel space with the object's mask.

RGBA pictures bring their mask in the alpha channel. RGB pictures on a plain background get it from the background
colour: every pixel within `tolerance` (0-255 on every channel; 40 keeps JPEG ringing round the object out
of the mask) of that colour (by default the median colour of the picture's border) is
background. The picture is composited on the prior's background colour and resized to its image size. Imports no
torch until a picture is read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ...core.errors import UserError


class PictureError(UserError, ValueError):
    """A reference picture that cannot be used (missing, not an image, no object in it)."""


@dataclass
class Picture:
    """A reference picture as the fit uses it: `rgb` [3, S, S] in [-1, 1] on the prior's background, `mask`
    [S, S] in [0, 1] (1 on the object)."""

    rgb: object  # torch.Tensor
    mask: object  # torch.Tensor
    mask_source: str  # 'alpha' or 'background colour (r, g, b)'


def read_picture(
    path: str | Path,
    size: int,
    background: float = 1.0,
    background_colour: tuple[int, int, int] | None = None,
    tolerance: int = 40,
) -> Picture:
    """`path` read, masked and resized to `size` x `size` (see the module docstring). `background` is the prior's
    background value in [-1, 1]; `background_colour` (0-255 RGB) overrides the border's colour for RGB pictures."""
    import torch
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise PictureError(f"no picture at {path}; give --image a PNG or JPEG file")
    try:
        with Image.open(path) as raw:
            raw.load()
            image = raw.convert("RGBA") if "A" in raw.getbands() else raw.convert("RGB")
    except (UnidentifiedImageError, OSError) as err:
        raise PictureError(f"{path} is not a picture sjc can read ({err}); give --image a PNG or JPEG file") from None
    if min(image.size) < 8:
        raise PictureError(f"{path} is {image.size[0]}x{image.size[1]} pixels; a reference picture needs at least 8x8")
    pixels = np.asarray(image, dtype=np.float64) / 255.0
    if image.mode == "RGBA":
        rgb, alpha, source = pixels[..., :3], pixels[..., 3], "alpha"
    else:
        rgb = pixels
        colour = background_colour if background_colour is not None else _border_colour(rgb)
        far = np.abs(rgb * 255.0 - np.asarray(colour, dtype=np.float64)).max(axis=-1) > tolerance
        alpha, source = far.astype(np.float64), f"background colour {tuple(int(c) for c in colour)}"
    coverage = float(alpha.mean())
    if coverage < 1e-3:
        raise PictureError(f"{path} holds no object: its mask ({source}) is empty; pass --image.background-colour")
    if coverage > 0.999:
        raise PictureError(f"{path} is all object: its mask ({source}) covers every pixel; give a plain background")
    back = (background + 1) / 2
    composite = rgb * alpha[..., None] + back * (1 - alpha[..., None])
    rgb_t = torch.from_numpy(composite).permute(2, 0, 1)[None].float()
    mask_t = torch.from_numpy(alpha)[None, None].float()
    rgb_t = torch.nn.functional.interpolate(rgb_t, size=(size, size), mode="area")[0] * 2 - 1
    mask_t = torch.nn.functional.interpolate(mask_t, size=(size, size), mode="area")[0, 0]
    return Picture(rgb_t.clamp(-1, 1), mask_t.clamp(0, 1), source)


def check_picture(image) -> None:
    """PictureError (one line) when the picture of `image` (`config.ImageConfig`) cannot be used, read as a run would
    read it, before anything is built or written."""
    read_picture(image.path, 8, background_colour=image.background_colour, tolerance=image.tolerance)


def _border_colour(rgb: np.ndarray) -> tuple[int, int, int]:
    """The median colour of the picture's outermost pixels, 0-255."""
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]])
    return tuple(int(round(c)) for c in np.median(border, axis=0) * 255.0)


def picture_size(prior) -> int:
    """The side, in pixels, a reference picture is read at for `prior`: its decoded image's (8x the latents of
    Stable Diffusion), else its data space's."""
    return prior.image_size * int(getattr(prior, "vae_factor", 1))


def picture_to_data(prior, rgb, name: str = "this prior"):
    """A picture [3, S, S] in [-1, 1] (S = `picture_size(prior)`) in the prior's data space [C, s, s]: its
    `encode` where it has one (Stable Diffusion's VAE latents), else the picture itself for an RGB prior.
    PictureError for a prior of other channels without `encode`."""
    import torch

    encode = getattr(prior, "encode", None)
    if encode is not None:
        device = getattr(prior, "device", "cpu")
        with torch.no_grad():
            return encode(rgb[None].to(device)).float()[0]
    if prior.channels == 3:
        return rgb
    raise PictureError(
        f"{name} renders {prior.channels}-channel images and has no encode() from pixels, so it cannot use a "
        "reference picture; drop --image, or give the prior an encode(rgb) method (docs/python-api.md)"
    )


def make_reference(prior, picture: Picture, view, image_cfg, name: str = "this prior"):
    """The fit's `core.fit.Reference` of `picture` seen from `view`, with the weights of `image_cfg`
    (`config.ImageConfig`)."""
    import torch

    from ...core.fit import Reference

    data = picture_to_data(prior, picture.rgb, name)
    size = prior.image_size
    mask = picture.mask
    if mask.shape[-1] != size:
        mask = torch.nn.functional.interpolate(mask[None, None], size=(size, size), mode="area")[0, 0]
    return Reference(
        data.cpu(),
        mask.cpu(),
        view,
        rgb_weight=image_cfg.rgb_weight,
        mask_weight=image_cfg.mask_weight,
        depth_smoothness_weight=image_cfg.depth_smoothness_weight,
        every=image_cfg.every,
        warmup=image_cfg.warmup,
    )
