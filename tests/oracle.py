"""An oracle prior for end-to-end tests: the denoiser returns the true render of a known
field from the very camera being trained, so SJC reduces to fitting those renders."""

from __future__ import annotations

import torch

from sjc.core.cameras import View, camera_from_view
from sjc.core.denoisers import PointMassDenoiser
from sjc.core.render import render
from sjc.core.voxel import VoxelField

RED, BLUE = torch.tensor([1.0, -0.8, -0.8]), torch.tensor([-0.8, -0.8, 1.0])


def two_colour_sphere(resolution: int = 32, radius: float = 0.5) -> VoxelField:
    """A voxel field holding an opaque sphere, red in front (z > 0) and blue behind."""
    field = VoxelField(resolution, 3, feature_activation="sigmoid", background="fixed", background_value=1.0)
    xyz = field.voxel_centres()
    inside = xyz.norm(dim=-1) < radius
    colour = torch.where((xyz[..., 2:] > 0), RED, BLUE)  # [n, n, n, 3]
    with torch.no_grad():
        field.grid[0, 0] = torch.where(inside, 40.0, -40.0)
        field.grid[0, 1:] = torch.logit((colour.permute(3, 0, 1, 2) + 1) / 2, eps=1e-3)
    return field


class OraclePrior:
    prompt = ""
    channels = 3
    feature_activation = "sigmoid"
    sigma_min, sigma_max, sigmas = 0.1, 1.0, None

    def __init__(self, target: VoxelField, image_size: int = 32) -> None:
        self.target, self.image_size = target, image_size

    @torch.no_grad()
    def condition(self, view: View) -> torch.Tensor:
        return render(self.target, camera_from_view(view, self.image_size)).image

    def denoise(self, x, sigma, cond):
        return PointMassDenoiser(cond)(x, sigma)

    def decode(self, x):
        return x
