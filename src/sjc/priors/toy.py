"""The embedded toy world: primitives with exact signed distances, a prompt grammar, an analytic
ray caster, a seeded multiview dataset cached on disk, and `ToyPrior`, whose denoiser is the exact
posterior mean D(x; sigma) of the Gaussian-smoothed empirical distribution of the renders (per view
bucket). World frame: +y up, front = +z; images in [-1, 1]; everything fits in [-1, 1]^3.
"""

from __future__ import annotations

import math
import os
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from ..core.cameras import Camera, View, batch_rays, camera_from_view, sample_training_view, view_bucket
from ..core.denoisers import ConditionalDenoiser, EmpiricalDenoiser, PointMassDenoiser
from ..core.errors import ConfigError, UserError
from ..core.methods import Branches
from .settings import EMPTY_SCENE, SUITE_PROMPTS

FORMAT_VERSION = 1  # bump when renders change, so stale caches are not reused
BACKGROUND = 1.0  # white, in [-1, 1] units
AMBIENT = 0.35
LIGHT = torch.tensor([0.5, 1.0, 0.75]) / math.sqrt(0.5**2 + 1.0**2 + 0.75**2)  # above, front, right
FAR_DEPTH = 10.0  # depth of background pixels, as in sjc.render
ALL_VIEWS = "all"  # the single condition key when view conditioning is off
SIGMA_RANGE = (0.1, 1.5)  # the 3D loop's range for the toy renders in [-1, 1] (both toy priors)

# Away from 0 and 1 so that a sigmoid-activated field can reach every shaded value.
COLOURS = {
    "red": (0.9, 0.15, 0.1),
    "green": (0.15, 0.75, 0.2),
    "blue": (0.15, 0.3, 0.9),
    "yellow": (0.95, 0.85, 0.15),
    "orange": (0.95, 0.5, 0.1),
    "purple": (0.6, 0.2, 0.8),
}


# --- primitives: exact signed distances on points [N, 3] ------------------------------------
# Written on the x, y, z columns: reductions over a last dimension of size 3 are slow on CPU.
def _radial(p: Tensor) -> Tensor:
    return torch.hypot(p[:, 0], p[:, 2])


def _box_2d_or_3d(*q: Tensor) -> Tensor:
    """Signed distance from per-axis excesses q_k = |p_k| - half_k (a box, or a 2D profile box)."""
    outside = sum(qk.clamp_min(0).square() for qk in q).sqrt()
    inside = q[0]
    for qk in q[1:]:
        inside = torch.maximum(inside, qk)
    return outside + inside.clamp_max(0)


def sdf_sphere(p: Tensor) -> Tensor:
    x, y, z = p.unbind(-1)
    return (x.square() + y.square() + z.square()).sqrt() - 0.5


def sdf_cube(p: Tensor) -> Tensor:
    return _box_2d_or_3d(*(p.abs() - 0.4).unbind(-1))


def sdf_cylinder(p: Tensor) -> Tensor:
    return _box_2d_or_3d(_radial(p) - 0.4, p[:, 1].abs() - 0.4)


def _segment_distance(r: Tensor, y: Tensor, a: tuple[float, float], b: tuple[float, float]) -> Tensor:
    """Distance from 2D points (r, y) to the segment a-b."""
    ar, ay = r - a[0], y - a[1]
    br, by = b[0] - a[0], b[1] - a[1]
    h = ((ar * br + ay * by) / (br * br + by * by)).clamp(0, 1)
    return torch.hypot(ar - h * br, ay - h * by)


def sdf_cone(p: Tensor) -> Tensor:
    # A solid of revolution: the distance is the 2D distance in the (radius, y) meridian plane to
    # its profile, the triangle (0, 0.45), (+-0.45, -0.45); for radius >= 0 only the right half's
    # base and slant edges can be nearest.
    r, y = _radial(p), p[:, 1]
    base = _segment_distance(r, y, (0.0, -0.45), (0.45, -0.45))
    slant = _segment_distance(r, y, (0.45, -0.45), (0.0, 0.45))
    d = torch.minimum(base, slant)
    inside = (y > -0.45) & (2 * r + y < 0.45)
    return torch.where(inside, -d, d)


def sdf_torus(p: Tensor) -> Tensor:
    return torch.hypot(_radial(p) - 0.4, p[:, 1]) - 0.15


SDFS = {"sphere": sdf_sphere, "cube": sdf_cube, "cylinder": sdf_cylinder, "cone": sdf_cone, "torus": sdf_torus}
# Radius of a sphere around the origin holding each shape (cube corner 0.4 sqrt(3), cylinder rim
# 0.4 sqrt(2), cone base rim 0.45 sqrt(2)): rays start marching where they enter it.
BOUNDS = {"sphere": 0.5, "cube": 0.6929, "cylinder": 0.5657, "cone": 0.6364, "torus": 0.55}
KNOWN_SHAPES = tuple(SDFS)
SYMMETRIC_SHAPES = frozenset({"sphere", "cylinder", "cone", "torus"})  # unchanged by turns about +y
KNOWN_COLOURS = tuple(COLOURS)


# --- scenes and the prompt grammar ----------------------------------------------------------
class PromptError(UserError, ValueError):
    """A prompt outside the toy-world grammar."""


def _grammar_help() -> str:
    return (
        f"expected '[a|an] <colour> [and <colour>] <shape>', e.g. 'a red and blue cube'; "
        f"shapes: {', '.join(KNOWN_SHAPES)}; colours: {', '.join(KNOWN_COLOURS)}"
    )


@dataclass(frozen=True)
class Scene:
    """One primitive at the origin; `front_colour` on z > 0, `back_colour` on z <= 0."""

    shape: str
    front_colour: str
    back_colour: str

    def __post_init__(self) -> None:
        if self.shape not in SDFS or not {self.front_colour, self.back_colour} <= set(COLOURS):
            raise PromptError(
                f"unknown scene {self.shape!r}, {self.front_colour!r}, {self.back_colour!r}: {_grammar_help()}"
            )

    @property
    def prompt(self) -> str:
        """Canonical text, e.g. 'a red cube', 'an orange and blue torus'."""
        front, back = self.front_colour, self.back_colour
        colours = front if front == back else f"{front} and {back}"
        article = "an" if colours[0] in "aeiou" else "a"
        return f"{article} {colours} {self.shape}"


def parse_prompt(prompt: str) -> Scene:
    """'a red cube' or 'a red and blue cube' (front, then back colour); case and article optional."""
    words = str(prompt).lower().replace(".", " ").split()
    if words and words[0] in ("a", "an"):
        words = words[1:]
    if len(words) == 2:
        words = [words[0], "and", words[0], words[1]]
    if len(words) != 4 or words[1] != "and" or words[3] not in SDFS or not set(words[::2]) <= set(COLOURS):
        raise PromptError(f"cannot parse prompt {prompt!r}: {_grammar_help()}")
    return Scene(shape=words[3], front_colour=words[0], back_colour=words[2])


def sdf(scene_or_shape: Scene | str, pts: Tensor) -> Tensor:
    """Signed distance [N] to the primitive at world points [N, 3] (negative inside)."""
    shape = scene_or_shape.shape if isinstance(scene_or_shape, Scene) else scene_or_shape
    if shape not in SDFS:
        raise PromptError(f"unknown shape {shape!r}: {_grammar_help()}")
    return SDFS[shape](pts)


def occupancy(scene_or_shape: Scene | str, pts: Tensor) -> Tensor:
    """True [N] where the world points [N, 3] are inside the primitive."""
    return sdf(scene_or_shape, pts) <= 0


def normals(shape: str, pts: Tensor, h: float = 1e-3) -> Tensor:
    """Unit SDF gradients [N, 3] by central differences (the surface normal on the surface)."""
    offsets = torch.cat([torch.eye(3), -torch.eye(3)]).to(pts) * h  # [6, 3]
    d = SDFS[shape]((pts[None] + offsets[:, None]).reshape(-1, 3)).view(6, -1)
    grad = (d[:3] - d[3:]).T
    return grad / grad.norm(dim=-1, keepdim=True).clamp_min(1e-12)


def shaded_colour(scene: Scene, pts: Tensor) -> Tensor:
    """Lambertian colour [N, 3] in [0, 1] at points on (or near) the surface. The light is fixed in
    the world, so the colour does not depend on the view and a voxel field can hold it exactly."""
    lambert = (normals(scene.shape, pts) @ LIGHT.to(pts)).clamp_min(0)
    front, back = pts.new_tensor(COLOURS[scene.front_colour]), pts.new_tensor(COLOURS[scene.back_colour])
    base = torch.where(pts[:, 2:3] > 0, front, back)
    return base * (AMBIENT + (1 - AMBIENT) * lambert)[:, None]


# --- analytic ray casting -------------------------------------------------------------------
def trace(shape: str, origins: Tensor, dirs: Tensor, eps: float = 1e-4, max_steps: int = 128) -> Tensor:
    """Sphere tracing: distance [R] to the first hit along unit rays, inf where they miss.
    Only the rays still marching are kept (index_select on sorted indices: fast gathers)."""
    b = (origins * dirs).sum(-1)
    disc = b * b - (origins.square().sum(-1) - (BOUNDS[shape] + 1e-2) ** 2)
    root = disc.clamp_min(0).sqrt()
    t_hit = torch.full_like(b, math.inf)
    idx = torch.nonzero((disc > 0) & (root - b > 0))[:, 0]  # rays that enter the bounding sphere
    o, d = origins.index_select(0, idx), dirs.index_select(0, idx)
    t, t_exit = (-b - root).clamp_min(0).index_select(0, idx), (root - b).index_select(0, idx)
    for step in range(max_steps + 1):
        dist = SDFS[shape](torch.addcmul(o, t[:, None], d))
        # After the last step, accept near misses: rays grazing the surface converge slowly.
        done = torch.nonzero(dist < (eps if step < max_steps else 1e-3))[:, 0]
        t_hit.index_copy_(0, idx.index_select(0, done), t.index_select(0, done))
        t = t + dist
        keep = torch.nonzero((dist >= eps) & (t < t_exit))[:, 0]
        if keep.numel() == 0 or step == max_steps:
            break
        idx, o, d, t, t_exit = (a.index_select(0, keep) for a in (idx, o, d, t, t_exit))
    return t_hit


def _shade_rays(scene: Scene, origins: Tensor, dirs: Tensor, background: float) -> tuple[Tensor, Tensor, Tensor]:
    """Colour [R, 3] in [-1, 1], hit mask [R] and depth [R] of rays, in chunks to bound memory."""
    colour = torch.full_like(dirs, background)
    t_all = torch.empty_like(dirs[:, 0])
    chunk = 1 << 18
    for s in range(0, dirs.shape[0], chunk):
        o, d = origins[s : s + chunk], dirs[s : s + chunk]
        t = trace(scene.shape, o, d)
        hit = torch.isfinite(t)
        pts = o[hit] + t[hit, None] * d[hit]
        colour[s : s + chunk][hit] = shaded_colour(scene, pts) * 2 - 1
        t_all[s : s + chunk] = t
    mask = torch.isfinite(t_all)
    return colour, mask, torch.where(mask, t_all, torch.full_like(t_all, FAR_DEPTH))


def render_scene(scene: Scene, camera: Camera, background: float = BACKGROUND) -> tuple[Tensor, Tensor, Tensor]:
    """Ground-truth render: image [3, H, W] in [-1, 1], mask [H, W] bool, depth [H, W] (distance
    along the ray; FAR_DEPTH on the background)."""
    origins, dirs = camera.rays(dtype=torch.float32)
    colour, mask, depth = _shade_rays(scene, origins, dirs, background)
    H, W = camera.height, camera.width
    return colour.T.reshape(3, H, W).contiguous(), mask.view(H, W), depth.view(H, W)


def render_scene_views(
    scene: Scene, views: Sequence[View], size: int, background: float = BACKGROUND
) -> tuple[Tensor, Tensor, Tensor]:
    """Render many views at once: images [N, 3, S, S], masks [N, S, S], depths [N, S, S]."""
    N = len(views)
    origins, dirs = batch_rays([camera_from_view(v, size) for v in views])
    colour, mask, depth = _shade_rays(scene, origins.reshape(-1, 3), dirs.reshape(-1, 3), background)
    images = colour.view(N, size, size, 3).permute(0, 3, 1, 2).contiguous()
    return images, mask.view(N, size, size), depth.view(N, size, size)


# --- the multiview dataset ------------------------------------------------------------------
@dataclass
class ToyDataset:
    scene: Scene
    images: Tensor  # [N, 3, S, S] float32 in [-1, 1]
    views: list[View]
    buckets: list[str]  # view_bucket of each view


def default_cache_dir() -> Path:
    """$SJC_CACHE/toyworld if SJC_CACHE is set, else ~/.cache/sjc/toyworld."""
    root = os.environ.get("SJC_CACHE")
    return Path(root) / "toyworld" if root else Path.home() / ".cache" / "sjc" / "toyworld"


def make_dataset(
    scene: Scene | str,
    n: int = 5000,
    size: int = 32,
    seed: int = 0,
    cache_dir: str | Path | None = None,
    cache: bool = True,
) -> ToyDataset:
    """`n` renders from the training-camera distribution, seeded; cached as safetensors."""
    scene = parse_prompt(scene) if isinstance(scene, str) else scene
    name = f"{scene.prompt.replace(' ', '_')}_n{n}_s{size}_seed{seed}_v{FORMAT_VERSION}.safetensors"
    path = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / name
    if cache and path.exists():
        data = load_file(path)
        views = [View(*row) for row in data["views"].tolist()]
        return ToyDataset(scene, data["images"], views, [view_bucket(v) for v in views])
    generator = torch.Generator().manual_seed(seed)
    views = [sample_training_view(generator) for _ in range(n)]
    images = torch.cat([render_scene_views(scene, views[s : s + 500], size)[0] for s in range(0, n, 500)])
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        table = torch.tensor([[v.azimuth, v.elevation, v.fov, v.radius] for v in views], dtype=torch.float64)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")  # write, then rename: never a torn file
        save_file({"images": images, "views": table}, str(tmp), metadata={"prompt": scene.prompt})
        os.replace(tmp, path)
    return ToyDataset(scene, images, views, [view_bucket(v) for v in views])


# --- the prior ------------------------------------------------------------------------------
class ToyPrior:
    """Exact denoiser of the toy-world renders of one prompt, per view bucket (or all views)."""

    channels = 3
    feature_activation = "sigmoid"
    background = BACKGROUND
    sigma_min, sigma_max = SIGMA_RANGE
    sigmas = None  # continuous in sigma: no discrete grid of a trained network

    def __init__(
        self,
        prompt: str,
        n_images: int = 5000,
        image_size: int = 32,
        seed: int = 0,
        view_conditioning: bool = True,
        cache_dir: str | Path | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.scene = parse_prompt(prompt)
        self.prompt = self.scene.prompt
        self.image_size = image_size
        self.view_conditioning = view_conditioning
        self.dataset = make_dataset(self.scene, n_images, image_size, seed, cache_dir)
        self.data_args, self.device = (n_images, image_size, seed, cache_dir), device
        self.denoiser = self._bucketed([self.dataset])
        self._others: dict[str, ConditionalDenoiser | PointMassDenoiser] = {}

    def _bucketed(self, datasets: Sequence[ToyDataset]) -> ConditionalDenoiser:
        """The exact denoiser of the renders of `datasets` together, per view bucket (or all views)."""
        images = torch.cat([d.images for d in datasets])
        buckets = [b for d in datasets for b in d.buckets]
        if self.view_conditioning:
            groups = {b: images[[i for i, bi in enumerate(buckets) if bi == b]] for b in sorted(set(buckets))}
        else:
            groups = {ALL_VIEWS: images}
        return ConditionalDenoiser({k: EmpiricalDenoiser(v).to(self.device) for k, v in groups.items()})

    def _other(self, name: str) -> ConditionalDenoiser | PointMassDenoiser:
        """The unconditional denoiser ('uncond': the renders of every suite prompt), the empty scene's (the
        background alone, a point mass) or another prompt's, built once on first use."""
        if name not in self._others:
            if name == "uncond":
                datasets = [
                    self.dataset if p == self.prompt else make_dataset(p, *self.data_args) for p in SUITE_PROMPTS
                ]
                self._others[name] = self._bucketed(datasets)
            elif name == EMPTY_SCENE:
                size = self.image_size
                self._others[name] = PointMassDenoiser(torch.full((1, 3, size, size), BACKGROUND, device=self.device))
            else:
                self._others[name] = self._bucketed([make_dataset(name, *self.data_args)])
        return self._others[name]

    def branches(self, view: View | None = None, negative_prompt: str | None = None) -> Branches:
        """For the guided methods (`core.methods`): the exact denoisers of the prompt, of the toy world's
        unconditional distribution (the renders of all ten suite prompts, bucketed as the prompt's) and of a
        negative prompt: 'empty scene' (the default, the background alone) or any toy prompt's renders."""
        negative = EMPTY_SCENE if negative_prompt in (None, "", EMPTY_SCENE) else parse_prompt(negative_prompt).prompt
        key = self.condition(view)
        return Branches(self._denoise_branch, ("cond", key), ("uncond", key), (negative, key))

    def _denoise_branch(self, x: Tensor, sigma: Tensor, cond: tuple[str, Hashable]) -> Tensor:
        name, key = cond
        return self.denoise(x, sigma, key) if name == "cond" else self._other(name)(x, sigma, key)

    def condition(self, view: View | None = None) -> Hashable:
        """The view bucket of `view`; with view conditioning off, or no view, all renders alike."""
        if not self.view_conditioning:
            return ALL_VIEWS
        if view is None:
            raise ConfigError("this toy prior conditions on the view; build it with view_conditioning=False for 2D")
        return view_bucket(view)

    def denoise(self, x: Tensor, sigma: Tensor, cond: Hashable) -> Tensor:
        """Posterior mean E[y | x] [B, 3, S, S] of the renders in bucket `cond`, noise level sigma [B]."""
        if tuple(x.shape[1:]) != (3, self.image_size, self.image_size):
            raise ValueError(
                f"ToyPrior expects images [B, 3, {self.image_size}, {self.image_size}], got {tuple(x.shape)}"
            )
        return self.denoiser(x, sigma, cond)

    def decode(self, x: Tensor) -> Tensor:
        """Identity: the prior works in RGB pixel space."""
        return x


# --- ground truth ---------------------------------------------------------------------------
def true_occupancy_grid(shape: Scene | str, resolution: int, supersample: int = 1) -> Tensor:
    """Occupancy [n, n, n] bool indexed [z, y, x] at voxel centres over [-1, 1]^3; with
    `supersample` s > 1, a voxel is occupied when at least half its s^3 sub-samples are."""
    n, s = resolution, supersample
    c = -1 + (torch.arange(n * s, dtype=torch.float64) + 0.5) * 2 / (n * s)
    zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
    occ = occupancy(shape, torch.stack([xx, yy, zz], dim=-1).view(-1, 3)).view(n * s, n * s, n * s)
    if s == 1:
        return occ
    frac = occ.view(n, s, n, s, n, s).float().mean(dim=(1, 3, 5))
    return frac >= 0.5


def held_out_views(n: int = 8) -> list[View]:
    """Deterministic test views: azimuths evenly spaced from 20 deg (off the training draws'
    round numbers), elevations alternating 15 and 35 deg, FoV 60, radius 1.5."""
    return [View((20.0 + 360.0 * k / n) % 360.0, 15.0 if k % 2 == 0 else 35.0, 60.0, 1.5) for k in range(n)]
