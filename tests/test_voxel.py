import torch
import torch.nn.functional as F

from sjc.voxel import VoxelField


def test_lookup_at_voxel_centres_returns_grid_values():
    field = VoxelField(6, 2, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        field.grid.normal_()
    pts = field.voxel_centres().reshape(-1, 3)
    density, feats = field.query(pts)
    raw = field.grid[0].permute(1, 2, 3, 0).reshape(-1, 3)  # [z, y, x] order, like voxel_centres
    assert torch.allclose(feats, raw[:, 1:], atol=1e-5)
    assert torch.allclose(density, F.softplus(raw[:, 0] - 1.0), atol=1e-5)


def test_voxel_centres_span_the_box():
    field = VoxelField(4, 1)
    c = field.voxel_centres()
    assert torch.allclose(c[0, 0, 0], torch.tensor([-0.75, -0.75, -0.75]))
    assert torch.allclose(c[0, 0, 3], torch.tensor([0.75, -0.75, -0.75]))  # last index is x
    assert torch.allclose(c[3, 0, 0], torch.tensor([-0.75, -0.75, 0.75]))  # first index is z


def test_upsample_keeps_a_constant_field():
    field = VoxelField(5, 3)
    with torch.no_grad():
        field.grid.copy_(torch.tensor([0.7, -0.2, 0.1, 0.4]).view(1, 4, 1, 1, 1).expand_as(field.grid))
    field.upsample(9)
    assert field.grid.shape == (1, 4, 9, 9, 9)
    assert torch.allclose(field.grid, torch.tensor([0.7, -0.2, 0.1, 0.4]).view(1, 4, 1, 1, 1).expand(1, 4, 9, 9, 9))
    assert field.voxel_size == 2 / 9


def test_sigmoid_features_lie_in_minus_one_one_and_groups_have_their_lrs():
    field = VoxelField(4, 3, feature_activation="sigmoid")
    with torch.no_grad():
        field.grid.mul_(100)
    _, feats = field.query(torch.rand(50, 3) * 2 - 1)
    assert feats.min() >= -1 and feats.max() <= 1
    groups = field.param_groups(0.05, 1e-4)
    assert [g["lr"] for g in groups] == [0.05, 1e-4]
    assert groups[1]["params"] == [field.bg]
    fixed = VoxelField(4, 3, background="fixed", background_value=0.25)
    assert len(fixed.param_groups(0.05, 1e-4)) == 1
    assert torch.all(fixed.background(torch.randn(7, 3)) == 0.25)


def test_background_texture_depends_on_direction():
    field = VoxelField(4, 3, background="texture", background_size=4, generator=torch.Generator().manual_seed(1))
    dirs = torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])
    bg = field.background(dirs)
    assert bg.shape == (4, 3)
    assert not torch.allclose(bg[0], bg[2])
