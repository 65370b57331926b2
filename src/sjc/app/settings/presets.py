"""Named presets: per prior, the settings each command starts from before flags override them ('default',
'tiny' for smoke tests, 'paper' for the paper's settings). A preset states only what differs from the
dataclass defaults (the paper's values). `sjc canvas` and `sjc sample` take each prior's data and model
settings from its `sjc generate` preset. Imports no torch."""

from __future__ import annotations

import dataclasses
from typing import Any

from ...core.errors import ConfigError
from ...core.settings import (
    METHODS,
    PAPER_GUIDANCE,
    PAPER_SCHEDULES,
    CameraConfig,
    FieldConfig,
    LossConfig,
    OptimConfig,
    ScoringConfig,
)
from ...outputs.settings import ExportConfig
from ...priors import TOY_PRIORS, is_plugin
from ...priors.settings import LEARNED_GUIDANCE_SCALE, PixelConfig, SDConfig, Zero123Config
from .config import GenerateConfig, ImageConfig, TrainConfig
from .config2d import CanvasConfig, Config2D, SampleConfig


def _toy_default() -> GenerateConfig:
    # A 32^3 grid seen at 32x32, grown coarse-to-fine: 16^3 for the first 1600 of 2000 steps, then upsampled
    # to 32^3 for the last 400; training fields of view 50-70 degrees. Coarse-to-fine (then 2000 of 2500 steps)
    # raised the toy suite's mean 3D IoU (seeds 0-2) from 0.790 to 0.850: a voxel twice as wide moves the surface
    # twice as far per (slow, Adamax) step, and a 16^3 step costs about half a 32^3 one. The fields of view took
    # it to 0.868 in 2000 steps: the exact prior's renders span 40-70 degrees, and an object too small at a field
    # of view f looks like the true one at a wider f / s, so only renders near 70 degrees told it to grow; drawn
    # from 50-70 every render does so more often (docs/quality.md, "The field of view"). The emptiness mean runs
    # over ~10x fewer samples per image than the paper's 64x64 renders of a 100^3 grid, so its weight is lower
    # (300) and not multiplied late in the run: on the toy prior's hard silhouettes the paper's x20 only erodes
    # edges. Adamax at 0.1 (twice the paper's rate): see docs/CONVENTIONS.md. Sigma is log-uniform over the
    # prior's range (the 'auto' schedule of a prior without a grid).
    return GenerateConfig(
        field=FieldConfig(
            resolution=32, background="fixed", background_value=1.0, coarse_scale=0.5, upsample_at=(0.8,)
        ),
        camera=CameraConfig(fov_min=50.0),
        losses=LossConfig(emptiness_weight=300.0, emptiness_multiplier=1.0),
        optim=OptimConfig(lr=0.1),
        train=TrainConfig(steps=2000, checkpoint_every=500, validate_every=250),
    )


def _one_grid(field: FieldConfig, resolution: int) -> FieldConfig:
    """`field` at `resolution` without coarse-to-fine."""
    return dataclasses.replace(field, resolution=resolution, coarse_scale=None, upsample_at=())


def _toy_tiny() -> GenerateConfig:
    # Seconds on a CPU: a 16^3 grid seen at 16x16, for smoke tests and trying out flags; one grid all run.
    base = _toy_default()
    return dataclasses.replace(
        base,
        field=_one_grid(base.field, 16),
        toy=dataclasses.replace(base.toy, n_images=1000, image_size=16),
        train=TrainConfig(steps=300, checkpoint_every=100, validate_every=100, log_every=10),
        export=ExportConfig(turntable_frames=8, turntable_size=48),
    )


def _toy_paper() -> GenerateConfig:
    base = _toy_default()
    return dataclasses.replace(
        base,
        field=_one_grid(base.field, 100),  # the paper's: one 100^3 grid all run
        camera=CameraConfig(),  # and its cameras (fields of view 40-70)
        toy=dataclasses.replace(base.toy, image_size=64),
        losses=LossConfig(),
        train=TrainConfig(),
    )


def _sd_paper() -> GenerateConfig:
    # The official code's defaults are this module's defaults: a 100^3 grid with raw 4-channel latent
    # features and a learned 4x4 background, 64x64 latents (512 px), Adamax 0.05 (background 1e-4),
    # sigma uniform over the grid minus its 10 lowest and 30 highest values, Eq. 16, emptiness 1e4
    # (scale 10) x20 from step 5000 of 10000, guidance 100, no centre-depth loss. Turntables render
    # 64x64 latents, which the VAE decodes to 512x512 frames.
    return GenerateConfig(
        field=FieldConfig(resolution=100, background="texture"),
        export=ExportConfig(turntable_size=64),
    )


def _network_tiny(base: GenerateConfig, turntable_size: int, **model) -> GenerateConfig:
    """A network prior's smoke test: `base` on a 16^3 grid for 20 steps, its model settings replaced by `model`."""
    return dataclasses.replace(
        base,
        field=dataclasses.replace(base.field, resolution=16),
        train=TrainConfig(steps=20, checkpoint_every=10, validate_every=10, log_every=1),
        export=ExportConfig(turntable_frames=8, turntable_size=turntable_size),
        **model,
    )


def _sd_tiny() -> GenerateConfig:
    # Seconds on a CPU with a tiny test model: a 16^3 grid seen as 8x8 latents (64 px images).
    return _network_tiny(_sd_paper(), 8, sd=SDConfig(resolution=64))


def _sd_refined() -> GenerateConfig:
    # The paper's settings with the lever that won on the toy suite (docs/quality.md), which is not specific to
    # the toy world: coarse-to-fine, the grid at half its resolution (50^3) for the first two thirds of the run,
    # then upsampled trilinearly to 100^3 with the optimiser's state. Measured on the toy world only: no Stable
    # Diffusion weights can be used where sjc is developed.
    base = _sd_paper()
    return dataclasses.replace(base, field=dataclasses.replace(base.field, coarse_scale=0.5, upsample_at=(2 / 3,)))


def _pixel_paper() -> GenerateConfig:
    # The SD settings carried over to an RGB field: 100^3 grid, learned background, sigma uniform over the
    # checkpoint's grid minus its extremes, Eq. 16, emptiness 1e4 x20 from half of 10000 steps. Unconditional,
    # so no guidance. Renders at the checkpoint's own resolution (256 px for the public models).
    return GenerateConfig(field=FieldConfig(resolution=100, background="texture"))


def _pixel_tiny() -> GenerateConfig:
    # Seconds on a CPU with a tiny test model: a 16^3 grid seen at 32x32.
    return _network_tiny(_pixel_paper(), 32, pixel=PixelConfig(resolution=32))


# Zero-1-to-3's own 3D reconstruction (its repository's 3drec, SJC's code with the view-conditioned model; the
# command in its README): 32x32 latents of 256 px pictures, horizontal FoV 49.1 deg (its training renders'), camera
# radius 2 of its units, guidance 100, Adamax 0.05, 10000 steps, a 100^3 grid over a box of side 1 of its units,
# sigma uniform over the grid minus the 30 highest and 10 lowest values, no emptiness loss, the reference view's
# loss at 1e4 and depth smoothness. Its world is half the size of sjc's (objects in a unit cube; sjc's box is [-1,
# 1]^3), so the radius here is 4 (`priors.zero123.RADIUS_UNITS`). Where sjc differs: the reference colour loss
# is taken on the latents (as for --prior sd; 3drec decodes the render to pixels), on the object's pixels with a
# mask loss beside it (weights 1e4 and 1e3: threestudio's zero123 recipe has colour 10x its mask), and its depth
# smoothness is on the reference view only (1e3, 3drec's 1e4 x 0.1 there); 3drec's near-view consistency loss and
# its radius jitter (1.8-2.2) are not reproduced. Not measured with real weights (none can be read where sjc is
# developed; docs/zero123.md).
ZERO123_RADIUS, ZERO123_FOV = 4.0, 49.1
ZERO123_SAMPLE_GUIDANCE = 3.0  # `sjc sample`'s: the scale of Zero-1-to-3's own novel-view pipeline


def _zero123_paper() -> GenerateConfig:
    return GenerateConfig(
        field=FieldConfig(resolution=100, background="texture"),
        camera=CameraConfig(radius=ZERO123_RADIUS, fov_min=ZERO123_FOV, fov_max=ZERO123_FOV, test_fov=ZERO123_FOV),
        losses=LossConfig(emptiness_weight=0.0),
        image=ImageConfig(rgb_weight=1e4, mask_weight=1e3, depth_smoothness_weight=1e3),
        export=ExportConfig(turntable_size=32),
    )


def _zero123_tiny() -> GenerateConfig:
    # Seconds on a CPU with a tiny test model: a 16^3 grid seen as 8x8 latents (64 px pictures).
    return _network_tiny(_zero123_paper(), 8, zero123=Zero123Config(resolution=64))


def _toy_learned_default() -> GenerateConfig:
    # The exact toy prior's preset with the learned network (same grid, renders and losses), except sigma:
    # annealed from 10 down to 0.1. The network never saw an empty or foggy image; at the exact prior's random
    # sigmas in 0.1-1.5 it keeps the initial fog's "no object here" and the field empties (3D IoU 0 on both
    # cube prompts), while large sigmas first give the prompt's mean image, a centred blob the smaller ones
    # refine. See docs/learned-prior.md.
    # One 32^3 grid for 2000 steps: coarse-to-fine (16^3 for 2000 of 3000 steps, measured then) lowered the
    # learned prior's suite mean from 0.683 to 0.647 (its spheres and tori shrank; docs/quality.md).
    base = _toy_default()
    scoring = dataclasses.replace(
        base.scoring, sigma_schedule="annealed", sigma_max=10.0, guidance_scale=LEARNED_GUIDANCE_SCALE
    )
    # The paper's cameras (fields of view 40-70): 50-70, the exact prior's default, raised the learned suite's mean
    # from 0.683 to 0.723 at seed 0 (docs/quality.md), not yet measured over three seeds.
    train = dataclasses.replace(base.train, steps=2000)
    return dataclasses.replace(
        base, field=_one_grid(base.field, 32), camera=CameraConfig(), scoring=scoring, train=train
    )


def _toy_learned_tiny() -> GenerateConfig:
    # Seconds on a CPU: a 16^3 grid (one grid all run), still seen at the network's 32x32.
    base = _toy_learned_default()
    return dataclasses.replace(
        base,
        field=_one_grid(base.field, 16),
        train=TrainConfig(steps=100, checkpoint_every=50, validate_every=50, log_every=10),
        export=ExportConfig(turntable_frames=8, turntable_size=48),
    )


PRESETS: dict[str, dict[str, Any]] = {
    "toy": {"default": _toy_default, "tiny": _toy_tiny, "paper": _toy_paper},
    "toy-image": {"default": _toy_default, "tiny": _toy_tiny, "paper": _toy_paper},  # the exact prior's
    "toy-learned": {"default": _toy_learned_default, "tiny": _toy_learned_tiny, "paper": _toy_learned_default},
    # For Stable Diffusion the paper's settings are the defaults.
    "sd": {"default": _sd_paper, "tiny": _sd_tiny, "paper": _sd_paper, "refined": _sd_refined},
    "pixel": {"default": _pixel_paper, "tiny": _pixel_tiny, "paper": _pixel_paper},
    # For Zero-1-to-3 its authors' 3D reconstruction settings are the defaults.
    "zero123": {"default": _zero123_paper, "tiny": _zero123_tiny, "paper": _zero123_paper},
}


def _table(prior: str) -> dict[str, Any]:
    if prior in PRESETS:
        return PRESETS[prior]
    if is_plugin(prior):
        # A denoiser of unknown kind: the toy presets' sizes (seconds a step on a CPU), or the paper's settings.
        return {"default": _toy_default, "tiny": _toy_tiny, "paper": GenerateConfig}
    raise ConfigError(f"unknown prior {prior!r}; known priors: {', '.join(PRESETS)}")


def preset(prior: str, name: str, method: str = "paas") -> GenerateConfig:
    """The named `sjc generate` preset of `prior`, with `method`'s own guidance scale and sigma schedule
    (`method_preset`); ConfigError listing the known names otherwise."""
    table = _table(prior)
    if name not in table:
        raise ConfigError(f"unknown preset {name!r} for prior {prior!r}; known presets: {', '.join(table)}")
    cfg = dataclasses.replace(table[name](), prior=prior, preset=name)
    return dataclasses.replace(cfg, scoring=method_preset(cfg.scoring, method))


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ConfigError(f"unknown scoring method {method!r}; known methods: {', '.join(METHODS)}")


def method_preset(scoring: ScoringConfig, method: str) -> ScoringConfig:
    """`scoring` with `method` and that method's paper settings: its guidance scale and its sigma schedule
    ('auto' resolves to it). paas and naive keep the prior's preset unchanged (SJC's own settings)."""
    check_method(method)
    if method in ("paas", "naive"):
        return dataclasses.replace(scoring, method=method) if method != scoring.method else scoring
    return dataclasses.replace(
        scoring, method=method, guidance_scale=PAPER_GUIDANCE[method], sigma_schedule=PAPER_SCHEDULES[method]
    )


# --- sjc canvas and sjc sample ------------------------------------------------------------------
# (default, tiny) steps per prior. Annealed from sigma 80 at lr 0.2, the toy canvas ends 1e-5 RMS from a render
# after 100 steps (32 px), and 0.002 after 60 (tiny, 16 px; 30 leave 0.02); network priors need more.
_CANVAS_STEPS = {"toy": (100, 60), "toy-learned": (100, 20), "pixel": (500, 4), "sd": (500, 4), "zero123": (500, 4)}
_SAMPLE_STEPS = {"toy": (40, 12), "toy-learned": (40, 8), "pixel": (40, 4), "sd": (40, 4), "zero123": (40, 4)}
# The toy priors' own range (0.1 to 1.5) is the 3D loop's; their exact or trained denoisers hold far beyond it.
# Sampling and the canvas start from sigma 80, as EDM does for images in [-1, 1]: annealed over 0.1-1.5 a canvas
# never forgets its noisy start and lands on the render nearest to it (a frame-filling close-up); from 80, PAAS
# lands on 16 different renders of 16 seeds (benchmarks/canvas.py).
_TOY_SIGMA_MAX, _TOY_SAMPLE_SIGMA_MIN = 80.0, 0.002


def _preset_2d(cls: type, steps: dict[str, tuple[int, int]], prior: str, name: str, **changes) -> Config2D:
    base = preset(prior, name)  # the prior's data and model settings; ConfigError for unknown names
    # The canvas and sampler draw images of any view, so the toy prior pools all its renders.
    toy = dataclasses.replace(base.toy, view_conditioning=False)
    default, tiny = steps.get(prior, steps["toy"])
    if prior in TOY_PRIORS:
        changes["sigma_max"] = _TOY_SIGMA_MAX
    own = base.scoring.guidance_scale != ScoringConfig().guidance_scale  # a prior's own scale (toy-learned: none)
    if own and "guidance_scale" not in changes:
        changes["guidance_scale"] = base.scoring.guidance_scale
    steps_ = tiny if name == "tiny" else default
    return cls(
        prior=prior, preset=name, toy=toy, sd=base.sd, pixel=base.pixel, zero123=base.zero123, steps=steps_, **changes
    )


def canvas_preset(prior: str, name: str, method: str = "paas") -> CanvasConfig:
    """The named preset of `sjc canvas` for `prior`, with `method`'s guidance scale (the canvas keeps its own
    sigma schedule for every method)."""
    changes: dict = {"seeds": 2, "frames": 8} if name == "tiny" else {}
    check_method(method)
    cfg = _preset_2d(CanvasConfig, _CANVAS_STEPS, prior, name, **changes)
    if method in ("paas", "naive"):
        return dataclasses.replace(cfg, scoring=method) if method != cfg.scoring else cfg
    return dataclasses.replace(cfg, scoring=method, guidance_scale=PAPER_GUIDANCE[method])


def sample_preset(prior: str, name: str) -> SampleConfig:
    """The named preset of `sjc sample` for `prior`."""
    changes: dict = {"samples": 4} if name == "tiny" else {}
    if prior in TOY_PRIORS:
        changes["sigma_min"] = _TOY_SAMPLE_SIGMA_MIN
    if prior == "zero123":  # its diffusers pipeline's novel-view sampling scale, not the 3D reconstruction's 100
        changes["guidance_scale"] = ZERO123_SAMPLE_GUIDANCE
    return _preset_2d(SampleConfig, _SAMPLE_STEPS, prior, name, **changes)
