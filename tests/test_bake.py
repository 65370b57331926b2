"""Tests of sjc.outputs.bake: vertex colours of latent fields from decoded views, with visibility from depth."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fields import latent_two_tone
from sjc.core.cameras import View, camera_from_view
from sjc.outputs import bake
from sjc.outputs import mesh as meshes


def identity(x: torch.Tensor) -> torch.Tensor:
    return x


def vae_like(x: torch.Tensor) -> torch.Tensor:
    """A stand-in VAE decoder: 4 latent channels -> 3 colour channels, twice the resolution."""
    return F.interpolate(x[:, :3], scale_factor=2, mode="nearest")


def _share(colours: np.ndarray, channel: int) -> float:
    """Fraction of vertices whose colour is clearly `channel` (0 red, 2 blue)."""
    others = [c for c in range(3) if c != channel]
    return float(((colours[:, channel] > 180) & (colours[:, others] < 90).all(axis=1)).mean())


def test_projection_matches_the_camera_rays() -> None:
    camera = camera_from_view(View(30.0, 20.0), 12, 16)
    origins, dirs = camera.rays(dtype=torch.float64)
    points = origins + 0.8 * dirs  # a point on each pixel's ray
    grid, distance, front = bake.project(camera, points)
    ii, jj = torch.meshgrid(torch.arange(12.0), torch.arange(16.0), indexing="ij")
    expected = torch.stack([(2 * jj.flatten() + 1) / 16 - 1, (2 * ii.flatten() + 1) / 12 - 1], dim=-1)
    assert torch.allclose(grid, expected.double(), atol=1e-9)
    assert torch.allclose(distance, torch.full_like(distance, 0.8)) and front.all()
    _, _, behind = bake.project(camera, origins - dirs)
    assert not behind.any()


def test_baked_colours_are_red_in_front_and_blue_behind_through_an_identity_decoder() -> None:
    field = latent_two_tone(32, channels=3)  # raw features: not an RGB field, so colours must be baked
    mesh = meshes.extract_mesh(field, decode=identity, bake_size=48)
    assert mesh.metadata["sjc"]["colours"] == "baked"
    colours, z = np.asarray(mesh.visual.vertex_colors), mesh.vertices[:, 2]
    front, back = colours[z > 0.1], colours[z < -0.1]
    assert len(front) > 100 and len(back) > 100
    assert _share(front, 0) >= 0.95, _share(front, 0)
    assert _share(back, 2) >= 0.95, _share(back, 2)
    assert (colours[:, 3] == 255).all()


def test_occluded_surfaces_take_colours_only_from_views_that_see_them() -> None:
    # A red sphere in front of a blue one: from the front cameras the blue sphere's front face lies
    # behind the red one, and those cameras must not paint it red.
    field = latent_two_tone(32, channels=4, centres_z=(0.45, -0.45), radius=0.3)
    mesh = meshes.extract_mesh(field, keep_largest=False, decode=vae_like, bake_size=32)
    colours, z = np.asarray(mesh.visual.vertex_colors), mesh.vertices[:, 2]
    assert len(mesh.split(only_watertight=False)) == 2
    red_ball, blue_ball = colours[z > 0.2], colours[z < -0.2]
    assert _share(red_ball, 0) >= 0.95, _share(red_ball, 0)
    assert _share(blue_ball, 2) >= 0.95, _share(blue_ball, 2)
    # The blue ball's face turned to the red one is hidden from the front cameras, which face it
    # squarely: without the depth test a third of it turns red.
    facing = colours[(z < -0.15) & (mesh.vertex_normals[:, 2] > 0.7)]
    assert len(facing) > 20 and _share(facing, 2) >= 0.95, _share(facing, 2)


def rim_tinted(x: torch.Tensor) -> torch.Tensor:
    """Identity, except that green is added far from the image centre, where a sphere in the middle
    is seen edge-on: a decoder whose colours are only right for surfaces seen squarely."""
    h, w = x.shape[-2:]
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    rim = ((xx**2 + yy**2).sqrt() > 0.55).to(x.dtype)
    return torch.cat([x[:, :1], x[:, 1:2] + 2 * rim, x[:, 2:3]], dim=1)


def test_squarely_facing_views_outweigh_grazing_ones() -> None:
    field = latent_two_tone(32, channels=3)
    mesh = meshes.extract_mesh(field, decode=rim_tinted, bake_size=32)
    green = np.asarray(mesh.visual.vertex_colors)[:, 1].astype(float)
    # Every vertex is seen edge-on (green) by some views and squarely (clean) by others: weighting
    # views equally leaves 91 % of the vertices green (mean 165), cos^4 2 % (mean 29).
    assert (green > 128).mean() < 0.05, (green > 128).mean()
    assert green.mean() < 50, green.mean()


def test_vertices_no_view_sees_take_the_nearest_seen_colour() -> None:
    field = latent_two_tone(16, channels=3)
    mesh = meshes.extract_mesh(field)
    only_front = [View(0.0, 0.0)]
    colours = bake.bake_vertex_colours(field, mesh.vertices, mesh.vertex_normals, identity, only_front, size=32)
    assert _share(colours, 0) == pytest.approx(1.0)  # the back, unseen, borrows from the seen front
    nothing = bake.bake_vertex_colours(field, mesh.vertices, mesh.vertex_normals, identity, [], size=32)
    assert (nothing[:, :3] == 170).all()  # no view at all: grey
