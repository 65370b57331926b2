"""Settings of the SJC core: the field, the training cameras, the score estimate, the losses and the optimiser.

Frozen dataclasses whose field docstrings become `sjc generate --help` (under --field., --camera., ...).
Defaults are the paper's (official code) values unless a comment says otherwise; `sjc.app.settings.presets` holds
what each prior's presets change. Imports no torch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

PAPER_GUIDANCE_SCALE = 100.0  # the paper's classifier-free guidance scale for SJC

# The score estimates of `core.chaining` (paas, naive) and `core.methods` (the others; docs/methods.md).
METHODS = ("paas", "naive", "sds", "csd", "nfsd", "sdi", "ism", "vsd")
GUIDED = ("csd", "nfsd", "ism", "vsd")  # need a prior's separate conditional and unconditional branches
# Each method's paper: its classifier-free guidance scale and sigma schedule ('auto' of --scoring.sigma-schedule).
# paas and naive keep the prior's preset (SJC: 100 for Stable Diffusion, none for the toy priors).
PAPER_GUIDANCE = {"sds": 100.0, "csd": 40.0, "nfsd": 7.5, "sdi": 7.5, "ism": 7.5, "vsd": 7.5}
VSD_LR = 1e-4  # ProlificDreamer's LoRA learning rate, used for vsd's online copy of the network
PAPER_SCHEDULES = {
    "sds": "timestep",
    "csd": "timestep",
    "nfsd": "timestep",
    "sdi": "timestep-annealed",
    "ism": "timestep-warmup",
    "vsd": "timestep",
}


@dataclass(frozen=True)
class FieldConfig:
    resolution: int = 100
    """Voxels along each side of the grid over the box [-1, 1]^3."""
    step_ratio: float = 0.5
    """Distance between samples along a ray, in voxels."""
    density_shift: float = -1.0
    """Density = softplus(raw * exp(d_scale) + shift); the shift sets the initial fog."""
    init_blob: float = 0.0
    """Initial raw density added at the centre of the box, falling linearly to 0 at `init_blob_radius` (a fog
    ball the object grows out of, as several text-to-3D pipelines start from; 0: none, every voxel starts at
    the shift alone)."""
    init_blob_radius: float = 0.5
    """Radius of the initial density ball, in world units (the box is [-1, 1]^3)."""
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
    coarse_scale: float | None = None
    """Coarse-to-fine: the grid starts at this fraction of `resolution` (e.g. 0.5: 16^3 for a 32^3 field) and is
    resampled (trilinearly, the optimiser state with it) at each fraction of the run in `upsample_at`, up to
    `resolution`; None keeps one resolution all run."""
    upsample_at: tuple[float, ...] = ()
    """Coarse-to-fine: fractions of the run (0 to 1, increasing) at which the grid grows; the resolutions in
    between are geometric, e.g. 16 -> 23 -> 32 for two fractions and a coarse scale of 0.5."""

    @property
    def coarse_resolution(self) -> int:
        """The grid's resolution at step 0: `coarse_scale` of `resolution`, rounded, at least 2 (the resolution
        itself without coarse-to-fine)."""
        if self.coarse_scale is None or not self.upsample_at:
            return self.resolution
        return max(2, round(self.resolution * self.coarse_scale))

    def resolution_at(self, step: int, n_steps: int) -> int:
        """The grid's resolution during 0-based `step` of a run whose schedules span `n_steps` steps."""
        coarse = self.coarse_resolution
        if coarse == self.resolution:
            return self.resolution
        done = sum(step >= round(f * n_steps) for f in self.upsample_at)
        if done == len(self.upsample_at):
            return self.resolution
        return round(coarse * (self.resolution / coarse) ** (done / len(self.upsample_at)))


@dataclass(frozen=True)
class CameraConfig:
    radius: float = 1.5
    """Distance from the cameras to the origin."""
    fov_min: float = 40.0
    """Smallest horizontal field of view of training cameras, degrees."""
    fov_max: float = 70.0
    """Largest horizontal field of view of training cameras, degrees."""
    fov_ends: bool = False
    """Draw each training field of view from the two ends of [fov_min, fov_max] only (half each) instead of
    uniformly between them: an experiment for priors that do not know the field of view (the toy priors), which
    accept an object of the wrong size seen at another one. On the toy torus it made the object smaller, not
    larger (docs/quality.md)."""
    test_fov: float = 60.0
    """Field of view of validation, turntable and evaluation cameras, degrees."""
    max_polar_param: float = 100.0
    """Training directions are area-uniform from the top down to polar = arccos(1 - 2v/pi), v this (deg)."""


@dataclass(frozen=True)
class ScoringConfig:
    sigma_schedule: Literal[
        "auto",
        "log-uniform",
        "grid",
        "annealed",
        "annealed-random",
        "timestep",
        "timestep-annealed",
        "timestep-warmup",
    ] = "auto"
    """How sigma is drawn each step: log-uniform in [sigma_min, sigma_max]; uniform over the prior's
    discrete sigma grid minus its extremes; annealed geometrically from sigma_max to sigma_min; 'annealed-random':
    log-uniform in [sigma_min, hi] with hi annealed geometrically from sigma_max to the range's geometric middle
    (a random draw under an annealed ceiling); 'timestep':
    DreamFusion's t ~ U[0.02, 0.98] mapped to sigma = sqrt((1 - abar(t)) / abar(t)) through the prior's own
    grid, or Stable Diffusion's linear-beta schedule for a prior without one, clipped to [sigma_min,
    sigma_max]; 'timestep-annealed' (SDI's): t falling linearly from 0.98 to 0.25 over the run, mapped alike;
    'timestep-warmup' (ISM's): t ~ U[0.02, hi] with hi falling from 0.98 to 0.5 over the first 30% of the run; or
    'auto': the method's own schedule (paas and naive: 'grid' for a prior with a discrete grid, the paper's
    choice, else 'log-uniform'; the other methods: docs/methods.md)."""
    sigma_min: float | None = None
    """Smallest sigma; None takes the prior's own range."""
    sigma_max: float | None = None
    """Largest sigma; None takes the prior's own range."""
    drop_lowest: int = 10
    """With the 'grid' schedule: how many of the smallest grid sigmas are never drawn."""
    drop_highest: int = 30
    """With the 'grid' schedule: how many of the largest grid sigmas are never drawn."""
    method: Literal["paas", "naive", "sds", "csd", "nfsd", "sdi", "ism", "vsd"] = "paas"
    """The score estimate g chained into the field (docs/methods.md; z = y + sigma n, D_g = D_u + s (D_c - D_u),
    w = sigma^2 / (1 + sigma^2)). 'paas' (SJC, the default): (D(z) - y) / sigma averaged over n-noise draws;
    'naive': (D(y) - y) / sigma on the clean render, the baseline the paper shows fails on learned priors;
    'sds' (DreamFusion): w (D_g(z) - y) / sigma, preset guidance 100, t ~ U[0.02, 0.98]; 'csd' (classifier score
    distillation): s w (D_c(z) - D_u(z)) / sigma, guidance 40, t ~ U[0.02, 0.98]; 'nfsd' (noise-free score
    distillation): s (D_c - D_u) / sigma plus (D_u - D_neg) / sigma above t = 200/1000, else (D_u(z) - z) / sigma,
    guidance 7.5, t ~ U[0.02, 0.98]; 'sdi' (score distillation via inversion): w (D_g(z) - y) / sigma with z the
    DDIM inversion of y under the reversed guidance D_u - s (D_c - D_u), guidance 7.5, t falling from 0.98 to 0.25;
    'ism' (interval score matching): D_g(z_t) - D_u(z_s) (its weight sqrt((1 - abar) / abar) = sigma) with z_s the
    DDIM inversion of y to t - 0.08 and z_t one DDIM step on, guidance 7.5, t ~ U[0.02, hi] with hi from 0.98 to
    0.5 over the first 30% of the run; 'vsd' (ProlificDreamer, --prior toy-learned only): w (D_g(z) - D_phi(z)) /
    sigma with D_phi a copy of the network trained online on the renders (Adam, lr 1e-4), guidance 7.5,
    t ~ U[0.02, 0.98]. Choosing a method on the command line applies its preset (guidance scale and schedule);
    flags still override it."""
    variance_reduced: bool = True
    """PAAS with (D(y + sigma n) - y) / sigma (paper Eq. 16) instead of (D - (y + sigma n)) / sigma (Eq. 15)."""
    n_noise: int = 1
    """Noise draws averaged per step (k in the paper)."""
    guidance_scale: float = PAPER_GUIDANCE_SCALE
    """Classifier-free guidance scale for text-conditioned priors (the method presets: paas and sds 100, csd 40,
    nfsd, sdi, ism and vsd 7.5; the toy-learned preset of paas: none). The exact toy prior's paas needs none;
    the other methods guide it with its exact unconditional denoiser (all ten suite prompts' renders)."""
    negative_prompt: str | None = None
    """Negative prompt of nfsd (and of csd with --scoring.negative-scale): None takes the prior's own (the toy
    priors: the empty scene for 'toy', the unconditional branch for 'toy-learned'; sd: --sd.negative-prompt).
    For the toy priors any toy prompt (the learned one: one of its classes), or 'empty scene' for 'toy'."""
    negative_scale: float = 0.0
    """csd only: weight of the negative-prompt term, g -= negative_scale w (D_neg(z) - D_u(z)) / sigma (0: off)."""
    inversion_steps: int = 4
    """sdi and ism: DDIM (probability-flow Euler) steps inverting the render from the smallest sigma of the
    range up to the step's noise level."""
    vsd_lr: float = VSD_LR
    """vsd: Adam learning rate of the online copy of the network (one update on the render per step)."""


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
    opacity_weight: float = 0.0
    """Weight of the opacity regulariser: the mean binary entropy of each pixel's opacity, which pushes every
    ray to be either empty or opaque (0 turns it off)."""
    tv_weight: float = 0.0
    """Weight of a total-variation term on the raw density: the mean squared difference of neighbouring voxels
    (0 turns it off)."""


@dataclass(frozen=True)
class OptimConfig:
    optimizer: Literal["adamax", "adam"] = "adamax"
    """'adamax' (the paper's): steps scaled by the running maximum of each gradient's size; 'adam': by its running
    root mean square, which rare large PAAS gradients (small sigma) hold down far less (docs/quality.md)."""
    betas: tuple[float, float] = (0.9, 0.999)
    """Decay rates of the optimiser's running mean of the gradient and of its size (maximum or mean square)."""
    lr: float = 0.05
    """Learning rate of the voxel grid."""
    background_lr: float = 1e-4
    """Learning rate of the background texture."""
    lr_decay: float = 1.0
    """Learning-rate decay: every rate falls exponentially to this fraction of itself by the end of the run
    (1 keeps them constant)."""


@dataclass(frozen=True)
class FitSettings:
    """What the loop reads: the core sections of a run's configuration (`GenerateConfig` holds the same)."""

    field: FieldConfig = dataclasses.field(default_factory=FieldConfig)
    camera: CameraConfig = dataclasses.field(default_factory=CameraConfig)
    scoring: ScoringConfig = dataclasses.field(default_factory=ScoringConfig)
    losses: LossConfig = dataclasses.field(default_factory=LossConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
