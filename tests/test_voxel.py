import pytest
import torch
import torch.nn.functional as F

from sjc.core.voxel import VoxelField


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


def _blob_field(n=16):
    field = VoxelField(n, 2, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        field.grid[0, 0] = torch.where(field.voxel_centres().norm(dim=-1) < 0.3, 10.0, -40.0)
    return field


def test_refresh_occupancy_marks_every_cell_touching_density_and_grows_by_the_dilation():
    field = _blob_field()
    assert field.occupancy.all()  # a new field skips nothing
    field.refresh_occupancy(threshold=1e-4, dilation=0)
    tight = field.occupancy.clone()
    lit = field.voxel_alpha() > 1e-4
    n = field.resolution
    for z, y, x in lit.nonzero().tolist():  # every cell with this voxel as a corner is marked
        for dz, dy, dx in [(a, b, c) for a in (0, -1) for b in (0, -1) for c in (0, -1)]:
            if 0 <= z + dz < n - 1 and 0 <= y + dy < n - 1 and 0 <= x + dx < n - 1:
                assert tight[z + dz, y + dy, x + dx]
    assert not tight[0, 0, 0] and tight.float().mean() < 0.1
    fraction = field.refresh_occupancy(threshold=1e-4, dilation=2)
    assert (field.occupancy >= tight).all() and field.occupancy.sum() > tight.sum()
    assert fraction.item() == field.occupancy.float().mean().item()


def test_cell_query_bounds_the_density_from_below_and_reads_the_occupancy():
    gen = torch.Generator().manual_seed(3)
    field = VoxelField(9, 2, generator=gen)
    with torch.no_grad():
        field.grid[:, 0] = 4 * torch.randn(field.grid[:, 0].shape, generator=gen)
        field.d_scale.fill_(0.3)
    pts = torch.rand(5000, 3, generator=gen) * 2.4 - 1.2
    lower, marked = field.cell_query(pts, lower_bound=True, occupancy=True)
    exact, _ = field.query(pts)
    assert (lower <= exact + 1e-6).all() and marked.all()
    blob = _blob_field()
    blob.refresh_occupancy(dilation=0)
    _, marked = blob.cell_query(torch.tensor([[0.0, 0.0, 0.0], [0.9, 0.9, -0.9]]), lower_bound=False, occupancy=True)
    assert marked.tolist() == [True, False]


def test_the_occupancy_grid_is_saved_and_an_upsampled_grid_skips_nothing():
    field = _blob_field()
    field.refresh_occupancy()
    state = field.state_dict()
    assert state["occupancy"].dtype == torch.bool and not state["occupancy"].all()
    fresh = VoxelField(16, 2)
    fresh.load_state_dict(state)
    assert torch.equal(fresh.occupancy, field.occupancy)
    field.upsample(20)
    assert field.occupancy.shape == (20, 20, 20) and field.occupancy.all()


def test_sparse_and_grid_sample_lookups_agree_and_bad_names_are_refused():
    field = VoxelField(6, 3, generator=torch.Generator().manual_seed(4))
    pts = torch.rand(300, 3, generator=torch.Generator().manual_seed(5)) * 2.2 - 1.1
    field.lookup = "sparse"
    sparse = field.query(pts)
    field.lookup = "grid_sample"
    plain = field.query(pts)
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(sparse, plain, strict=True))
    field.lookup = "bilinear"
    with pytest.raises(ValueError, match="lookup"):
        field.query(pts)
