"""Quality against toy-world ground truth: 3D IoU of occupancy grids at the best rotation about the
vertical axis (the prior pins the azimuth only up to its view buckets), silhouette IoU and PSNR of
renders from held-out cameras. Grids are [n, n, n] indexed [z, y, x] over [-1, 1]^3, as in
VoxelField. Rotations: +angle turns the object about +y so a point's azimuth grows by angle.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from ..core.cameras import View, camera_from_view
from ..core.render import render
from ..core.voxel import VoxelField
from ..priors import toy as toyworld
from .visibility import closed_occupancy, constrained_iou, hidden_centres

ANGLES = tuple(range(0, 360, 5))
THRESHOLDS = (0.1, 0.3, 0.5, 0.7, 0.9)


def iou(a: Tensor, b: Tensor) -> float:
    """Intersection over union of two boolean tensors (1.0 when both are empty)."""
    union = (a | b).sum().item()
    return 1.0 if union == 0 else (a & b).sum().item() / union


def silhouette_iou(pred_mask: Tensor, true_mask: Tensor) -> float:
    return iou(pred_mask.bool(), true_mask.bool())


def psnr(pred: Tensor, target: Tensor, data_range: float = 2.0) -> float:
    """Peak signal-to-noise ratio in dB; data_range 2 for images in [-1, 1]."""
    mse = (pred.double() - target.double()).square().mean().item()
    return math.inf if mse == 0 else 10 * math.log10(data_range**2 / mse)


def fill_interior(occ: Tensor) -> Tensor:
    """Fill empty space enclosed by occupied voxels: the prior never sees inside an object, so a
    hollow shell and a solid are the same answer."""
    return torch.from_numpy(ndimage.binary_fill_holes(occ.cpu().numpy())).to(occ.device)


def _rotated_points(n: int, angle_deg: float, device=None) -> Tensor:
    """Voxel-centre coordinates [1, n, n, n, 3] (x, y, z) turned by -angle: where each output
    voxel of a +angle rotation reads the input."""
    c = -1 + (torch.arange(n, dtype=torch.float64, device=device) + 0.5) * 2 / n
    zz, yy, xx = torch.meshgrid(c, c, c, indexing="ij")
    cos, sin = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    # R(theta) about +y maps (x, z) to (x cos + z sin, -x sin + z cos); its inverse reads the source.
    return torch.stack([cos * xx - sin * zz, yy, sin * xx + cos * zz], dim=-1)[None]


def rotate_about_vertical(grid: Tensor, angle_deg: float) -> Tensor:
    """Turn an occupancy grid [n, n, n] (z, y, x) by `angle_deg` about the +y axis through the
    centre (front +z goes towards +x for +90): trilinear resampling, then threshold at 0.5."""
    n = grid.shape[-1]
    # World coordinates equal grid_sample's normalised ones: voxel centres, align_corners=False.
    pts = _rotated_points(n, angle_deg, grid.device).float()
    out = F.grid_sample(grid.float()[None, None], pts, mode="bilinear", padding_mode="zeros", align_corners=False)
    return out[0, 0] > 0.5


def rotation_ious(pred_occ: Tensor, true_occ: Tensor, angles: Iterable[float] = ANGLES) -> list[float]:
    """IoU of `pred_occ` with `true_occ` turned by each angle."""
    return [iou(pred_occ, rotate_about_vertical(true_occ, a)) for a in angles]


def true_rotations(shape: str, resolution: int, angles: Iterable[float] = ANGLES) -> list[Tensor]:
    """Occupancy grids of a primitive turned by each angle, exact at the voxel centres (no
    resampling of an already voxelised grid). A shape symmetric about +y is evaluated once and
    the same grid object repeated."""
    n, angles = resolution, list(angles)
    if shape in toyworld.SYMMETRIC_SHAPES:
        return [toyworld.occupancy(shape, _rotated_points(n, 0.0).view(-1, 3)).view(n, n, n)] * len(angles)
    return [toyworld.occupancy(shape, _rotated_points(n, a).view(-1, 3)).view(n, n, n) for a in angles]


# The true shape is voxelised this many times finer than the grid to find what it hides from the cameras.
HIDDEN_SUPERSAMPLE = 4


@functools.lru_cache(maxsize=64)
def true_hidden(shape: str, resolution: int, angle: float = 0.0) -> Tensor:
    """The voxels of a [n, n, n] grid that the true primitive, turned by `angle`, hides from every training camera
    position (`visibility.hidden_centres` with the shape voxelised `HIDDEN_SUPERSAMPLE` times finer as the
    occluder, so a face that lies a hair off a layer of voxel centres still hides what is behind it). Cached: the
    same for every field of that shape and size."""
    fine = true_rotations(shape, resolution * HIDDEN_SUPERSAMPLE, (angle,))[0]
    return hidden_centres(fine, resolution) & ~true_rotations(shape, resolution, (angle,))[0]


def _truth_angle(shape: str, angle: float) -> float:
    """The turn at which `true_rotations` built the truth: 0 for shapes symmetric about +y."""
    return 0.0 if shape in toyworld.SYMMETRIC_SHAPES else float(angle)


def _ious(pred_occ: Tensor, rotated: list[Tensor]) -> list[float]:
    """IoU with each grid; a grid object repeated in the list is scored once."""
    seen: dict[int, float] = {}
    for r in rotated:
        if id(r) not in seen:
            seen[id(r)] = iou(pred_occ, r)
    return [seen[id(r)] for r in rotated]


def shape_scores(pred_occ: Tensor, resolution: int | None = None, angles: Iterable[float] = ANGLES) -> dict[str, float]:
    """Best-rotation IoU of an occupancy grid against every toy-world primitive."""
    n = pred_occ.shape[-1]
    if resolution is not None and resolution != n:
        raise ValueError(f"pred_occ is {n}^3 but resolution={resolution}; pass the grid's own resolution")
    angles = list(angles)
    return {s: max(_ious(pred_occ, true_rotations(s, n, angles))) for s in toyworld.KNOWN_SHAPES}


def mesh_occupancy(mesh, resolution: int, oversample: int = 2) -> Tensor:
    """Occupancy [n, n, n] ([z, y, x] voxel centres over [-1, 1]^3) of the solid a closed
    trimesh mesh encloses: voxelised at `oversample` times the resolution and filled, so the
    surface voxels' overhang stays below a grid voxel."""
    solid = mesh.voxelized(2.0 / (resolution * oversample)).fill()
    c = -1 + (np.arange(resolution) + 0.5) * 2.0 / resolution
    zz, yy, xx = np.meshgrid(c, c, c, indexing="ij")
    inside = solid.is_filled(np.stack([xx, yy, zz], axis=-1).reshape(-1, 3))
    return torch.from_numpy(np.asarray(inside, dtype=bool)).view(resolution, resolution, resolution)


def shape_accuracy(scores: dict[str, float], shape: str) -> bool:
    """True when `shape` is the best-scoring primitive."""
    return max(scores, key=scores.get) == shape


def _colour_errors(field: VoxelField, scene: toyworld.Scene, angles: list[float]) -> list[float]:
    """Mean squared error, for each angle, between the field's colours just inside the true surface
    turned by that angle and the true shaded colours there: breaks ties between angles that the
    geometry cannot tell apart (every primitive but the cube is symmetric about +y)."""
    n = field.resolution
    pts = _rotated_points(n, 0.0).view(-1, 3)
    d = toyworld.sdf(scene, pts)
    shell = pts[(d <= 0) & (d > -1.5 * 2 / n)]
    true_rgb = toyworld.shaded_colour(scene, shell).double() * 2 - 1
    x, y, z = shell.unbind(-1)
    errors = []
    for a in angles:
        cos, sin = math.cos(math.radians(a)), math.sin(math.radians(a))
        turned = torch.stack([cos * x + sin * z, y, -sin * x + cos * z], dim=-1)
        _, feats = field.query(turned.to(field.aabb))
        errors.append((feats.double().cpu() - true_rgb).square().mean().item())
    return errors


@torch.no_grad()
def _occupancy_metrics(field: VoxelField, scene: toyworld.Scene, threshold: float, tie_tolerance: float) -> dict:
    alpha = field.voxel_alpha().cpu()
    n = alpha.shape[-1]
    rotations = {s: true_rotations(s, n) for s in toyworld.KNOWN_SHAPES}
    rotated = rotations[scene.shape]
    sweep = {th: max(_ious(fill_interior(alpha > th), rotated)) for th in sorted(set(THRESHOLDS) | {threshold})}
    occ = fill_interior(alpha > threshold)
    scores = _ious(occ, rotated)
    best = max(scores)
    near_best = [a for a, s in zip(ANGLES, scores, strict=True) if s >= best - tie_tolerance]
    errors = _colour_errors(field, scene, near_best)
    angle = near_best[int(np.argmin(errors))]
    shapes = {s: max(_ious(occ, r)) for s, r in rotations.items()}
    truth = rotated[ANGLES.index(angle)]
    hidden = true_hidden(scene.shape, n, _truth_angle(scene.shape, angle))
    closed = closed_occupancy(alpha > threshold)  # the same voxels as the filled occupancy's closure
    return {
        "iou_3d": best,
        "iou_3d_closed": iou(closed, closed_occupancy(truth)),
        "iou_3d_constrained": constrained_iou(occ, truth, hidden, closed=closed),
        "angle": float(angle),
        "iou_3d_at_angle": scores[ANGLES.index(angle)],
        "iou_sweep": sweep,
        "shape_scores": shapes,
        "shape_accuracy": shape_accuracy(shapes, scene.shape),
    }


@torch.no_grad()
def evaluate_field(
    field: VoxelField,
    scene: toyworld.Scene | str,
    views: Sequence[View] | None = None,
    threshold: float = 0.5,
    image_size: int = 64,
    tie_tolerance: float = 0.02,
) -> dict:
    """All metrics of a VoxelField against the scene's ground truth.

    iou_3d: best-rotation IoU of the filled occupancy (voxel alpha > threshold). iou_3d_closed: the IoU at
    `angle` of the occupancy and the truth each closed over the space no training camera can see
    (`visibility.closed_occupancy`; docs/CONVENTIONS.md). iou_3d_constrained: the IoU at `angle` over what the
    training cameras constrain (`visibility.constrained_iou`: what the true shape hides is not counted). angle:
    the rotation used for the image metrics, chosen among angles within `tie_tolerance` of the best IoU by the
    colour match on the true surface. silhouette_iou / psnr: means over held-out
    views of the field rendered at azimuth + angle against the truth at azimuth.
    """
    scene = toyworld.parse_prompt(scene) if isinstance(scene, str) else scene
    out = _occupancy_metrics(field, scene, threshold, tie_tolerance)
    views = toyworld.held_out_views() if views is None else views
    sil, snr = [], []
    for v in views:
        image, mask, _ = toyworld.render_scene(scene, camera_from_view(v, image_size))
        turned = View((v.azimuth + out["angle"]) % 360.0, v.elevation, v.fov, v.radius)
        r = render(field, camera_from_view(turned, image_size))
        sil.append(silhouette_iou(r.opacity.cpu() > 0.5, mask))
        snr.append(psnr(r.image[0].cpu().clamp(-1, 1), image))
    out["silhouette_iou"] = sum(sil) / len(sil)
    out["psnr"] = sum(snr) / len(snr)
    out["silhouette_iou_per_view"], out["psnr_per_view"] = sil, snr
    return out


# --- 2D images (canvas and sampler results) -------------------------------------------------
def contrast_prompts(scene: toyworld.Scene) -> list[str]:
    """The prompt and its near misses: its colours on every other shape, its shape in every single
    colour, and (two-tone) its colours swapped. An image nearest to one of these got a word wrong."""
    front, back = scene.front_colour, scene.back_colour
    scenes = [scene] + [toyworld.Scene(s, front, back) for s in toyworld.KNOWN_SHAPES if s != scene.shape]
    scenes += [toyworld.Scene(scene.shape, c, c) for c in toyworld.KNOWN_COLOURS]
    scenes.append(toyworld.Scene(scene.shape, back, front))
    return list(dict.fromkeys(s.prompt for s in scenes))  # unique, the prompt first


def nearest_reference(images: Tensor, references: Tensor, chunk: int = 2048) -> tuple[Tensor, Tensor]:
    """Root mean square difference [N] (float64) from each image [N, ...] to its nearest reference
    [M, ...], and that reference's index [N]."""
    x = images.reshape(len(images), -1).double()
    best = torch.full((len(x),), torch.inf, dtype=torch.float64)
    index = torch.zeros(len(x), dtype=torch.long)
    for start in range(0, len(references), chunk):
        ys = references[start : start + chunk].reshape(-1, x.shape[1]).double()
        d2 = (x.square().sum(1, keepdim=True) - 2 * x @ ys.T + ys.square().sum(1)).clamp_min(0)
        value, arg = d2.min(dim=1)
        better = value < best
        best, index = torch.where(better, value, best), torch.where(better, arg + start, index)
    return (best / x.shape[1]).sqrt(), index


def nearest_image_quality(images: Tensor, prompt: str, n: int, size: int, seed: int = 0, cache_dir=None) -> dict:
    """For images [N, 3, size, size] in [-1, 1]: the RMS distance of each to the nearest render of `prompt`'s
    toy data set, which prompt (of `contrast_prompts`) owns its nearest render, and the fraction owned by
    `prompt` (prompt accuracy). Every data set has the same `n` renders, so no prompt is favoured. Also the
    index of each image's nearest render of `prompt` and how many distinct ones there are (diversity)."""
    scene = toyworld.parse_prompt(prompt)
    prompts = contrast_prompts(scene)
    found = [nearest_reference(images, toyworld.make_dataset(p, n, size, seed, cache_dir).images) for p in prompts]
    dists = torch.stack([d for d, _ in found])  # [P, N]
    owner = dists.argmin(dim=0)
    return {
        "prompt": scene.prompt,
        "prompt_accuracy": float((owner == 0).double().mean()),
        "mean_nearest_rmse": float(dists[0].mean()),
        "distinct_nearest": len(set(found[0][1].tolist())),
        "nearest_rmse": dists[0].tolist(),
        "nearest_index": found[0][1].tolist(),
        "nearest_prompt": [prompts[k] for k in owner.tolist()],
        "contrast_prompts": prompts,
    }


# --- a prompt classifier trained on true renders ---------------------------------------------
class PromptClassifier(torch.nn.Module):
    """A small CNN that tells which of `prompts` an RGB image [B, 3, S, S] in [-1, 1] shows. Trained on
    true toy renders (with a little pixel noise, so slightly imperfect images are judged by content)."""

    def __init__(self, prompts: Sequence[str], width: int = 32) -> None:
        super().__init__()
        self.prompts = [toyworld.parse_prompt(p).prompt for p in prompts]
        w = width
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, w, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(w, 2 * w, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(2 * w, 2 * w, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
            torch.nn.Conv2d(2 * w, 2 * w, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveMaxPool2d(1),
            torch.nn.Flatten(), torch.nn.Linear(2 * w, len(self.prompts)),
        )  # fmt: skip

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    @torch.no_grad()
    def predict(self, images: Tensor, batch: int = 256) -> list[str]:
        """The prompt each image [B, 3, S, S] shows, by the largest logit."""
        self.eval()
        idx = torch.cat([self(images[s : s + batch].float()).argmax(1) for s in range(0, len(images), batch)])
        return [self.prompts[k] for k in idx.tolist()]


def train_prompt_classifier(
    prompts: Sequence[str],
    n: int = 2000,
    size: int = 32,
    seed: int = 0,
    epochs: int = 4,
    noise: float = 0.05,
    cache_dir=None,
) -> PromptClassifier:
    """Fit a PromptClassifier on the toy data sets of `prompts` (`n` renders each, seeded as
    `make_dataset`), in mini-batches of 128 with Adam; deterministic for a given seed."""
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = PromptClassifier(prompts)
    images = torch.cat([toyworld.make_dataset(p, n, size, seed, cache_dir).images for p in model.prompts])
    labels = torch.arange(len(model.prompts)).repeat_interleave(n)
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    model.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(images), generator=gen).split(128):
            x = images[idx] + noise * torch.randn(images[idx].shape, generator=gen)
            loss = F.cross_entropy(model(x), labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return model.eval()
