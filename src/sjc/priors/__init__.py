"""The 2D priors: which exist, which take a prompt, and `build_prior`, the one way to make one.

Built in: 'toy' (the exact toy-world denoiser), 'toy-learned' (the shipped toy UNet), 'toy-image' (the toy
world's exact prior given a picture instead of a prompt), 'sd' (Stable Diffusion through diffusers), 'pixel'
(unconditional diffusers UNet2DModels) and 'zero123' (Zero-1-to-3: novel views of a reference picture). Any
other denoiser plugs in as 'python:PACKAGE.MODULE:FUNCTION' or an `sjc.priors` entry point: a function
(prompt, device) -> prior, e.g. a `DenoiserPrior`. Importing this package imports no torch (the command line's
help stays fast).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..core.errors import ConfigError
from .settings import PixelConfig, SDConfig, ToyConfig, Zero123Config

if TYPE_CHECKING:
    import torch

    from ..core.denoisers import Prior

BUILT_IN = ("toy", "toy-learned", "toy-image", "sd", "pixel", "zero123")
TOY_PRIORS = ("toy", "toy-learned")  # the toy world's priors of a prompt: ground truth, quality figures, --toy
IMAGE_PRIORS = ("toy-image", "zero123")  # conditioned on the reference picture (--image) instead of a prompt
UNCONDITIONAL = ("pixel",)
NETWORK_PRIORS = ("sd", "pixel", "zero123")  # diffusers checkpoints: the [sd] extra, weights, GPU work
BIG_UNETS = ("sd", "zero123")  # full-size UNets: minutes a step on a CPU (--allow-sd-on-cpu)
__all__ = [
    "BIG_UNETS",
    "BUILT_IN",
    "IMAGE_PRIORS",
    "NETWORK_PRIORS",
    "TOY_PRIORS",
    "DenoiserPrior",
    "build_prior",
    "check_prior",
    "is_plugin",
]


def is_plugin(name: str) -> bool:
    return name not in BUILT_IN


def check_prior(name: str, prompt: str, image: bool = False) -> None:
    """ConfigError for a prior name that is not one, a prompt the prior cannot take (or needs), or a missing
    reference picture (`image`: one is given) for a prior conditioned on one."""
    if is_plugin(name) and not name.startswith("python:"):
        from importlib.metadata import entry_points

        if name not in {ep.name for ep in entry_points(group="sjc.priors")}:
            raise ConfigError(
                f"unknown prior {name!r}; use one of {', '.join(BUILT_IN)}, or python:PACKAGE.MODULE:FUNCTION"
            )
    if name in IMAGE_PRIORS:
        if not image:
            raise ConfigError(f"the {name} prior draws the object of a picture: give one with --image PICTURE.png")
        if prompt.strip():
            alternative = "--prior toy" if name == "toy-image" else "--prior sd"
            raise ConfigError(
                f"the {name} prior takes a picture, not a prompt (got {prompt!r}); drop the prompt, or use "
                f"{alternative} with both"
            )
        return
    if name in UNCONDITIONAL and prompt.strip():
        raise ConfigError(
            f"the {name} prior is unconditional and takes no prompt (got {prompt!r}); drop the prompt, "
            "or use --prior toy or --prior sd for text prompts"
        )
    if not is_plugin(name) and name not in UNCONDITIONAL and not prompt.strip():
        raise ConfigError(f'give a prompt for the {name} prior, e.g. "a red and blue cube"')


def build_prior(
    name: str,
    prompt: str = "",
    *,
    device: torch.device | str = "cpu",
    toy: ToyConfig = ToyConfig(),
    sd: SDConfig = SDConfig(),
    pixel: PixelConfig = PixelConfig(),
    zero123: Zero123Config = Zero123Config(),
    guidance_scale: float | None = None,
    picture: tuple[torch.Tensor, Any] | None = None,
) -> Prior:
    """The prior `name`, bound to `prompt`, on `device`. `guidance_scale` None keeps the prior's own
    default (the paper's 100 for Stable Diffusion, none for the learned toy prior). `picture` (an RGB image
    [3, S, S] in [-1, 1] and the `View` it was seen from) conditions the priors of `IMAGE_PRIORS`."""
    import torch

    check_prior(name, prompt, image=picture is not None)
    device = torch.device(device)
    guidance = {} if guidance_scale is None else {"guidance_scale": guidance_scale}
    match name:
        case "toy":
            from .toy import ToyPrior

            return ToyPrior(
                prompt,
                n_images=toy.n_images,
                image_size=toy.image_size,
                seed=toy.data_seed,
                view_conditioning=toy.view_conditioning,
                cache_dir=toy.cache_dir,
                device=device,
            )
        case "toy-learned":
            from .learned import LearnedToyPrior

            return LearnedToyPrior.from_file(
                prompt, toy.weights, device=device, view_conditioning=toy.view_conditioning, **guidance
            )
        case "toy-image":
            from .toy_image import ToyImagePrior

            rgb, view = picture
            return ToyImagePrior(
                rgb, view, n_images=toy.n_images, seed=toy.data_seed, cache_dir=toy.cache_dir, device=device
            )
        case "sd":
            from .sd import StableDiffusionPrior

            return StableDiffusionPrior.from_pretrained(
                prompt,
                sd.model,
                device=device,
                dtype=sd.dtype,
                negative_prompt=sd.negative_prompt,
                resolution=sd.resolution,
                compile=sd.compile,
                **guidance,
            )
        case "pixel":
            from .pixel import PixelPrior

            p = pixel
            return PixelPrior.from_pretrained(
                p.model,
                device=device,
                dtype=p.dtype,
                resolution=p.resolution,
                data_range=p.data_range,
                compile=p.compile,
            )
        case "zero123":
            from .zero123 import Zero123Prior

            rgb, view = picture
            return Zero123Prior.from_pretrained(
                rgb,
                view,
                zero123.model,
                device=device,
                dtype=zero123.dtype,
                resolution=zero123.resolution,
                compile=zero123.compile,
                **guidance,
            )
        case _:
            from .custom import build_plugin

            return build_plugin(name, prompt, device)


def __getattr__(name: str) -> Any:
    if name == "DenoiserPrior":  # imported on first use: it needs torch
        from .custom import DenoiserPrior

        return DenoiserPrior
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
