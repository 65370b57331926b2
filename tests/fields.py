"""Analytic voxel fields for the export tests (spheres and cubes with known colours) and fake run folders."""

from __future__ import annotations

from pathlib import Path

import torch

from sjc.app.runs.checkpoint import checkpoint_path, save_checkpoint
from sjc.app.settings.config import GenerateConfig, to_json
from sjc.core.voxel import VoxelField

RADIUS = 0.5
RAW_IN, RAW_OUT = 80.0, -8.0  # alpha ~1 inside, ~0 outside at 32^3: the 0.5 crossing sits mid-edge
RED, BLUE = (4.0, -4.0, -4.0), (-4.0, -4.0, 4.0)  # logits: sigmoid*2-1 gives +-0.96


def _paint(field: VoxelField, inside: torch.Tensor, front: torch.Tensor, red, blue) -> VoxelField:
    """Density RAW_IN where `inside` ([z, y, x] bool), features `red` where `front`, else `blue`."""
    with torch.no_grad():
        field.grid[0, 0] = torch.where(inside, RAW_IN, RAW_OUT)
        colours = torch.where(front[..., None], torch.tensor(red), torch.tensor(blue))
        field.grid[0, 1:4] = colours.permute(3, 0, 1, 2)
    return field


def sphere_field(n: int = 32, channels: int = 3, raw_in: float = RAW_IN, radius: float = RADIUS) -> VoxelField:
    """Dense sphere; RGB fields (3 channels, sigmoid) red in front (z > 0), blue behind; other fields
    keep random features."""
    field = VoxelField(n, channels, feature_activation="sigmoid" if channels == 3 else "none", background="fixed")
    c = field.voxel_centres()
    inside = c.norm(dim=-1) < radius
    if channels == 3:
        _paint(field, inside, c[..., 2] > 0, RED, BLUE)
    with torch.no_grad():
        field.grid[0, 0] = torch.where(inside, raw_in, RAW_OUT)
    return field


def latent_two_tone(n: int = 32, channels: int = 3, centres_z: tuple[float, ...] = (0.0,), radius: float = RADIUS):
    """A field of raw (latent-like) features whose first three channels are RGB in [-1, 1]: red on the
    front half (z > 0), blue behind, over spheres centred on the z axis at `centres_z`."""
    field = VoxelField(n, channels, feature_activation="none", background="fixed", background_value=1.0)
    c = field.voxel_centres()
    inside = torch.zeros(c.shape[:3], dtype=torch.bool)
    for z in centres_z:
        inside |= (c - torch.tensor([0.0, 0.0, z])).norm(dim=-1) < radius
    return _paint(field, inside, c[..., 2] > 0, (1.0, -1.0, -1.0), (-1.0, -1.0, 1.0))


def cube_field(n: int = 32, half: float = 0.4) -> VoxelField:
    """RGB cube of half-side `half`, red in front, blue behind: sharp edges that alias when small."""
    field = VoxelField(n, 3, feature_activation="sigmoid", background="fixed")
    c = field.voxel_centres()
    return _paint(field, (c.abs() < half).all(dim=-1), c[..., 2] > 0, RED, BLUE)


def save_run(run_dir: Path, cfg: GenerateConfig, fields: dict[int, VoxelField]) -> Path:
    """A run folder as `sjc generate` leaves it: config.json and one checkpoint per step."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(to_json(cfg) + "\n")
    for step, field in fields.items():
        save_checkpoint(checkpoint_path(run_dir, step), field, None, {}, step, to_json(cfg))
    return run_dir


def density_test_field(state: str, lookup: str = "auto", seed: int = 7, dtype=torch.float32) -> VoxelField:
    """A 12^3, 4-channel field whose density is random, half empty, opaque inside a sphere, or initial."""
    gen = torch.Generator().manual_seed(seed)
    field = VoxelField(12, 4, background="texture", generator=gen)
    field.lookup = lookup
    xyz = field.voxel_centres()
    with torch.no_grad():
        if state == "random":
            field.grid[:, 0] = 2 * torch.randn(field.grid[:, 0].shape, generator=gen)
        elif state == "empty regions":
            field.grid[:, 0] = torch.where(xyz[..., 0] > 0.2, 3.0, -30.0)
        elif state == "opaque":
            field.grid[:, 0] = torch.where(xyz.norm(dim=-1) < 0.5, 40.0, -30.0)
    return field.to(dtype)
