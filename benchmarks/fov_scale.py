"""What the exact toy prior tells an object of the wrong size, by the training camera's field of view.

The exact prior's renders (its data set) are taken at fields of view from 40 to 70 degrees and do not say which:
a render of an object at scale s (the true object seen from radius 1.5 / s, which gives the same picture) at a
field of view f looks like the true object at about f / s, a render the data set holds whenever f / s is within
40-70. Then the denoiser returns an image of an object the size of the render's, and the score does not push the
object towards its true size. This prints, for objects a little too small or too large and for training fields of
view in bins of 5 degrees, the object's area in the denoiser's output at sigma 0.1 over its area in the render
(above 1: the score says grow, below 1: shrink, 1: nothing). docs/quality.md ("the field of view") reads it.

    python benchmarks/fov_scale.py                       # a yellow sphere and an orange torus, 200 views a cell
    python benchmarks/fov_scale.py --prompts "a green cube" --views 100
"""

from __future__ import annotations

import argparse

import torch

from sjc.core.cameras import View, camera_from_view, sample_training_view, view_bucket
from sjc.priors.toy import BACKGROUND, ToyPrior, render_scene

SCALES = (0.85, 0.9, 0.95, 1.0, 1.05, 1.1)
FOV_BINS = ((40, 45), (45, 50), (50, 55), (55, 60), (60, 65), (65, 70))


def object_area(image: torch.Tensor, tolerance: float = 0.25) -> torch.Tensor:
    """Pixels [B] of images [B, 3, S, S] that differ from the background by more than `tolerance` in a channel."""
    return ((image - BACKGROUND).abs() > tolerance).any(dim=1).flatten(1).sum(1).double()


def growth_table(prompt: str, views: int, sigma: float = 0.1, seed: int = 0) -> list[list[float]]:
    """Mean area ratio (denoised over rendered) per scale (rows) and field-of-view bin (columns)."""
    prior = ToyPrior(prompt)
    gen = torch.Generator().manual_seed(seed)
    rows = []
    for s in SCALES:
        row = []
        for lo, hi in FOV_BINS:
            ratios = []
            for _ in range(views):
                v = sample_training_view(gen, fov_range=(lo, hi))
                far = View(v.azimuth, v.elevation, v.fov, v.radius / s)  # the object at scale s, seen from 1.5
                image, _, _ = render_scene(prior.scene, camera_from_view(far, prior.image_size))
                x = image[None] + sigma * torch.randn(image[None].shape, generator=gen)
                out = prior.denoise(x, torch.tensor([sigma]), view_bucket(v))
                ratios.append((object_area(out) / object_area(image[None]).clamp_min(1)).item())
            row.append(sum(ratios) / len(ratios))
        rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", nargs="+", default=["a yellow sphere", "an orange torus"])
    parser.add_argument("--views", type=int, default=200, help="views per cell")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for prompt in args.prompts:
        table = growth_table(prompt, args.views)
        print(f"\n{prompt}: object area denoised (sigma 0.1) / rendered, {args.views} views a cell")
        print("| scale | " + " | ".join(f"fov {lo}-{hi}" for lo, hi in FOV_BINS) + " |")
        print("|---|" + "---|" * len(FOV_BINS))
        for s, row in zip(SCALES, table, strict=True):
            print(f"| {s:.2f} | " + " | ".join(f"{r:.3f}" for r in row) + " |")
        edges = ", ".join(f"scale {s:.2f} above {70 * s:.0f}" for s in SCALES if s < 1)
        print(f"a too-small object at fov f has no data image at f / s when f is {edges} degrees")


if __name__ == "__main__":
    main()
