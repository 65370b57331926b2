"""Settings of the SJC core: the field, the training cameras, the score estimate, the losses and the optimiser.

Frozen dataclasses whose field docstrings become `sjc generate --help` (under --field., --camera., ...).
Defaults are the paper's (official code) values unless a comment says otherwise; `sjc.app.presets` holds
what each prior's presets change. Imports no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

PAPER_GUIDANCE_SCALE = 100.0  # the paper's classifier-free guidance scale for SJC


@dataclass(frozen=True)
class FieldConfig:
    resolution: int = 100
    """Voxels along each side of the grid over the box [-1, 1]^3."""
    step_ratio: float = 0.5
    """Distance between samples along a ray, in voxels."""
    density_shift: float = -1.0
    """Density = softplus(raw * exp(d_scale) + shift); the shift sets the initial fog."""
    background: Literal["texture", "fixed"] = "texture"
    """'texture': a small learned texture over the sphere of directions; 'fixed': a constant colour."""
    background_value: float = 1.0
    """Colour of a fixed background, in the prior's data space (1.0 is white for pixel priors)."""
    background_size: int = 4
    """Side of the learned background texture, in texels."""
    min_transmittance: float = 1e-8
    """Samples behind the point where a ray's transmittance drops below this are not evaluated (1e-8 keeps
    renders and gradients within 1e-4 of evaluating every sample; 1e-4 moved depths by ~1e-3)."""
    skip_empty: bool = True
    """Empty-space skipping in training renders: leave out samples in cells the occupancy grid marks
    empty. They get no gradient until the next refresh, so the grid is conservative (below); on the toy
    suite no 3D IoU moved by more than 0.001 and runs took 20% less time (docs/CONVENTIONS.md)."""
    occupancy_every: int = 16
    """With skip_empty: steps between refreshes of the occupancy grid from the density."""
    occupancy_threshold: float = 1e-4
    """With skip_empty: a cell is marked when one of its corner voxels has an alpha (one voxel-length
    step) above this; low, so faint density still counts."""
    occupancy_dilation: int = 2
    """With skip_empty: marked cells grow by this many cells each way, where the surface may grow."""


@dataclass(frozen=True)
class CameraConfig:
    radius: float = 1.5
    """Distance from the cameras to the origin."""
    fov_min: float = 40.0
    """Smallest horizontal field of view of training cameras, degrees."""
    fov_max: float = 70.0
    """Largest horizontal field of view of training cameras, degrees."""
    test_fov: float = 60.0
    """Field of view of validation, turntable and evaluation cameras, degrees."""
    max_polar_param: float = 100.0
    """Training directions are area-uniform from the top down to polar = arccos(1 - 2v/pi), v this (deg)."""


@dataclass(frozen=True)
class ScoringConfig:
    sigma_schedule: Literal["auto", "log-uniform", "grid", "annealed"] = "auto"
    """How sigma is drawn each step: log-uniform in [sigma_min, sigma_max]; uniform over the prior's
    discrete sigma grid minus its extremes; annealed geometrically from sigma_max to sigma_min; or 'auto':
    'grid' for a prior with a discrete grid (the paper's choice), else 'log-uniform'."""
    sigma_min: float | None = None
    """Smallest sigma; None takes the prior's own range."""
    sigma_max: float | None = None
    """Largest sigma; None takes the prior's own range."""
    drop_lowest: int = 10
    """With the 'grid' schedule: how many of the smallest grid sigmas are never drawn."""
    drop_highest: int = 30
    """With the 'grid' schedule: how many of the largest grid sigmas are never drawn."""
    method: Literal["paas", "naive"] = "paas"
    """'paas' scores a perturbed render (Perturb-and-Average Scoring); 'naive' scores the clean render y as
    (D(y; sigma) - y) / sigma, the baseline the paper shows fails on learned priors (out of distribution)."""
    variance_reduced: bool = True
    """PAAS with (D(y + sigma n) - y) / sigma (paper Eq. 16) instead of (D - (y + sigma n)) / sigma (Eq. 15)."""
    n_noise: int = 1
    """Noise draws averaged per step (k in the paper)."""
    guidance_scale: float = PAPER_GUIDANCE_SCALE
    """Classifier-free guidance scale for text-conditioned priors."""


@dataclass(frozen=True)
class LossConfig:
    emptiness_weight: float = 1e4
    """Weight of the emptiness loss mean(log(1 + scale * w)) over the compositing weights w."""
    emptiness_scale: float = 10.0
    """Scale s inside the emptiness loss."""
    emptiness_multiplier: float = 20.0
    """The emptiness weight is multiplied by this from `emptiness_switch` of the steps on."""
    emptiness_switch: float = 0.5
    """Fraction of the steps after which the emptiness multiplier applies."""
    center_depth_weight: float = 0.0
    """Weight of the loss that keeps the image centre nearer than its border (0 turns it off)."""


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 0.05
    """Adamax learning rate of the voxel grid."""
    background_lr: float = 1e-4
    """Adamax learning rate of the background texture."""


@dataclass(frozen=True)
class FitSettings:
    """What the loop reads: the core sections of a run's configuration (`GenerateConfig` holds the same)."""

    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    camera: CameraConfig = dataclasses.field(default_factory=CameraConfig)
    scoring: ScoringConfig = dataclasses.field(default_factory=ScoringConfig)
    losses: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
