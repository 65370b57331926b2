"""The quality levers that work with every prior: coarse-to-fine upsampling (with the optimiser state, across a
resume), the opacity and total-variation regularisers, learning-rate decay and the annealed-random sigma."""

import dataclasses

import pytest
import torch
from safetensors.torch import load_file

from sjc.app.commands import cli
from sjc.app.runs.checkpoint import list_checkpoints
from sjc.app.runs.generate import generate, load_run
from sjc.app.settings.presets import preset
from sjc.core import chaining
from sjc.core.cameras import View, camera_from_view
from sjc.core.errors import ConfigError
from sjc.core.fit import decay_learning_rates, make_optimizer
from sjc.core.render import render
from sjc.core.settings import FieldConfig
from sjc.core.voxel import VoxelField


def _blob(n: int) -> VoxelField:
    """A smooth two-coloured blob: raw density falling linearly with the distance from the centre."""
    gen = torch.Generator().manual_seed(1)
    field = VoxelField(n, 3, feature_activation="sigmoid", background="fixed", generator=gen)
    xyz = field.voxel_centres()
    with torch.no_grad():
        field.grid[0, 0] = 30 * (0.5 - xyz.norm(dim=-1))
        field.grid[0, 1] = 3 * xyz[..., 2]
        field.grid[0, 2] = -2 * xyz[..., 0]
        field.grid[0, 3] = 2 * xyz[..., 1]
    return field


def test_upsampled_grid_holds_the_old_fields_lookups_and_renders_alike():
    field = _blob(16)
    old = VoxelField(16, 3, feature_activation="sigmoid", background="fixed")
    old.load_state_dict(field.state_dict())
    field.upsample(24)
    assert field.grid.shape == (1, 4, 24, 24, 24) and field.resolution == 24 and field.grid.requires_grad
    # Each new voxel holds the old field's trilinear lookup at its centre (exact up to rounding).
    old.lookup = "grid_sample"
    density, features = old._lookup(field.voxel_centres().reshape(-1, 3))
    assert torch.allclose(field.grid[0, 0].reshape(-1), density, atol=1e-4)
    assert torch.allclose(field.grid[0, 1:].reshape(3, -1).T, features, atol=1e-5)
    # Renders move little: the resampling only smooths within a voxel.
    camera = camera_from_view(View(30.0, 20.0), 32)
    before, after = render(old, camera), render(field, camera)
    assert (before.image - after.image).abs().mean() < 0.01
    assert (before.opacity - after.opacity).abs().max() < 0.1


def test_upsampling_carries_the_optimiser_state_and_the_step_goes_on():
    field = _blob(8)
    optimizer = make_optimizer(field, preset("toy", "tiny").optim)
    render(field, camera_from_view(View(0.0, 10.0), 16)).image.sum().backward()
    optimizer.step()
    state = optimizer.state[field.grid]
    moments = {k: v.clone() for k, v in state.items() if torch.is_tensor(v) and v.dim() == 5}
    assert moments  # Adamax's exp_avg and exp_inf
    kept = render(field, camera_from_view(View(0.0, 10.0), 16))  # a graph that still holds the coarse grid
    field.upsample(12, optimizer)
    assert optimizer.param_groups[0]["params"][0] is field.grid and field.grid in optimizer.state
    for key, value in moments.items():
        assert optimizer.state[field.grid][key].shape == (1, 4, 12, 12, 12)
        # A constant stays constant, so the mean of a resampled moment is close to the old one's.
        assert torch.allclose(optimizer.state[field.grid][key].mean(), value.mean(), rtol=0.2)
    optimizer.zero_grad()
    render(field, camera_from_view(View(0.0, 10.0), 16)).image.sum().backward()
    optimizer.step()
    assert torch.isfinite(field.grid).all() and kept.image.shape == (1, 3, 16, 16)


def test_the_resolution_schedule_is_geometric_and_ends_at_the_resolution():
    f = FieldConfig(resolution=48, coarse_scale=1 / 3, upsample_at=(0.2, 0.5))
    assert f.coarse_resolution == 16
    assert [f.resolution_at(s, 100) for s in (0, 19, 20, 49, 50, 99)] == [16, 16, 28, 28, 48, 48]
    assert FieldConfig(resolution=3, coarse_scale=0.1, upsample_at=(0.5,)).coarse_resolution == 2
    assert FieldConfig(resolution=32).resolution_at(5, 10) == 32 == FieldConfig(resolution=32).coarse_resolution


def test_coarse_to_fine_settings_are_checked(tmp_path, capsys):
    bad = [
        (["--field.upsample-at", "0.5"], "needs both"),
        (["--field.coarse-scale", "1.0", "--field.upsample-at", "0.5"], "below --field.resolution (16)"),
        (["--field.coarse-scale", "0.5", "--field.upsample-at", "0.5", "0.3"], "increasing fractions"),
        (["--field.coarse-scale", "0.5", "--field.upsample-at", "1.5"], "increasing fractions"),
        (["--optim.lr-decay", "0"], "--optim.lr-decay"),
        (["--losses.opacity-weight", "-1"], "--losses.opacity-weight"),
    ]
    for flags, message in bad:
        assert cli.main(["generate", "a red cube", "--preset", "tiny", "--out", str(tmp_path / "x"), *flags]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, err


def _c2f_config(tmp_path, cache_dir, name: str, steps: int = 60):
    cfg = preset("toy", "tiny")
    return dataclasses.replace(
        cfg,
        prompt="a red and blue cube",
        out=str(tmp_path / name),
        threads=1,
        field=dataclasses.replace(cfg.field, coarse_scale=0.5, upsample_at=(0.25, 0.5)),
        toy=dataclasses.replace(cfg.toy, cache_dir=cache_dir, n_images=300),
        losses=dataclasses.replace(cfg.losses, opacity_weight=30.0, tv_weight=10.0),
        optim=dataclasses.replace(cfg.optim, optimizer="adam", betas=(0.9, 0.99), lr_decay=0.2),
        train=dataclasses.replace(cfg.train, steps=steps, checkpoint_every=10, keep_checkpoints=10, validate_every=0),
    )


def test_a_run_stopped_before_an_upsampling_and_resumed_after_it_ends_bit_identical(tmp_path, monkeypatch):
    monkeypatch.setattr("sjc.app.runs.generate.write_outputs", lambda *args: {})
    monkeypatch.setattr("sjc.app.runs.generate.evaluate", lambda *args: None)
    cache = str(tmp_path / "cache")
    reference = generate(_c2f_config(tmp_path, cache, "reference"), progress=False)
    assert reference.field.resolution == 16
    # Resolutions 8 -> 11 (step 15) -> 16 (step 30); checkpoints hold the resolution of their step.
    assert [load_run(reference.run_dir, s)[1].resolution for s in (10, 20, 40)] == [8, 11, 16]

    stopped = generate(_c2f_config(tmp_path, cache, "stopped"), callback=lambda info: info.step == 10, progress=False)
    assert stopped.stopped and list_checkpoints(stopped.run_dir)[-1][0] == 10
    assert cli.main(["generate", "--resume", str(stopped.run_dir)]) == 0
    ref = load_file(list_checkpoints(reference.run_dir)[-1][1])
    resumed = load_file(list_checkpoints(stopped.run_dir)[-1][1])
    assert ref.keys() == resumed.keys()
    for key in ref:
        assert torch.equal(ref[key], resumed[key]), key

    # A resume from a checkpoint taken after an upsampling restores the finer field into the coarse one.
    for later in (40, 50, 60):
        (stopped.run_dir / "checkpoints" / f"step_{later:07d}.safetensors").unlink()
    assert cli.main(["generate", "--resume", str(stopped.run_dir)]) == 0
    resumed = load_file(list_checkpoints(stopped.run_dir)[-1][1])
    for key in ref:
        assert torch.equal(ref[key], resumed[key]), key


def test_export_and_render_read_a_coarse_to_fine_run(tmp_path):
    cache = str(tmp_path / "cache")
    result = generate(_c2f_config(tmp_path, cache, "run", steps=40), progress=False)
    assert result.field.resolution == 16 and "iou_3d_closed" in result.metrics
    cfg, field, step = load_run(result.run_dir)
    assert step == 40 and field.resolution == 16 and torch.equal(field.grid, result.field.grid)
    level = float(field.voxel_alpha().detach().max()) / 2  # a short run's field is still faint
    mesh = str(tmp_path / "m.obj")
    assert cli.main(["export", str(result.run_dir), "--mesh", mesh, "--threshold", f"{level:.4f}"]) == 0
    assert cli.main(["render", str(result.run_dir), "--frames", "2", "--size", "16"]) == 0
    assert (result.run_dir / "render.mp4").stat().st_size > 0


def test_opacity_entropy_gradient_is_the_closed_form():
    o = torch.tensor([0.01, 0.2, 0.5, 0.7, 0.999], dtype=torch.float64, requires_grad=True)
    loss = chaining.opacity_entropy(o)
    p = o.detach()
    assert torch.isclose(loss, -(p * p.log() + (1 - p) * (1 - p).log()).mean())
    loss.backward()
    # d/do of the mean binary entropy: log((1 - o) / o) / N; zero at 0.5, pushing to the nearer of 0 and 1.
    assert torch.allclose(o.grad, torch.log((1 - p) / p) / len(p))
    assert o.grad[2] == 0 and o.grad[0] > 0 and o.grad[4] < 0
    clamped = torch.tensor([0.0, 1.0], dtype=torch.float64, requires_grad=True)
    chaining.opacity_entropy(clamped).backward()  # finite at the ends: clamped, no gradient
    assert torch.equal(clamped.grad, torch.zeros(2, dtype=torch.float64))


def test_total_variation_of_a_ramp_and_its_gradient():
    n = 5
    ramp = torch.arange(n, dtype=torch.float64).view(1, 1, n).expand(n, n, n).clone().requires_grad_(True)
    # Neighbours differ by 1 along x only: mean square difference 1 there, 0 along y and z.
    assert chaining.total_variation(ramp).item() == pytest.approx(1.0)
    volume = torch.randn(4, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(chaining.total_variation, (volume,))


def test_learning_rates_decay_exponentially_to_the_final_fraction():
    field = VoxelField(4, 3)
    optimizer = make_optimizer(field, preset("toy", "tiny").optim)
    base = [g["lr"] for g in optimizer.param_groups]
    for step, factor in ((0, 1.0), (50, 0.1**0.5), (100, 0.1), (150, 0.1)):
        decay_learning_rates(optimizer, 0.1, step, 100)
        assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([b * factor for b in base])


def test_annealed_random_sigma_stays_under_its_falling_ceiling():
    gen = torch.Generator().manual_seed(0)
    lo, hi = 0.1, 1.5
    for step in (0, 500, 999):
        ceiling = chaining.sigma_annealed(step, 1000, (lo * hi) ** 0.5, hi)
        draws = [chaining.sigma_annealed_random(step, 1000, lo, hi, gen) for _ in range(200)]
        assert lo <= min(draws) and max(draws) <= ceiling
        assert max(draws) > 0.8 * ceiling  # spread over the whole interval
    assert chaining.sigma_annealed(999, 1000, (lo * hi) ** 0.5, hi) == pytest.approx((lo * hi) ** 0.5)


def test_the_levers_are_refused_by_resume_but_accepted_by_every_prior():
    for prior in ("toy", "toy-learned", "sd", "pixel"):
        cfg = preset(prior, "tiny")
        assert cfg.losses.opacity_weight == 0 and cfg.optim.lr_decay == 1 and not cfg.field.upsample_at
    with pytest.raises(ConfigError):
        from sjc.app.settings.config import validate

        validate(dataclasses.replace(preset("toy", "tiny"), prompt="a red cube", field=FieldConfig(upsample_at=(0.5,))))


def test_adam_is_built_with_its_betas_and_bad_betas_are_refused(tmp_path):
    field = VoxelField(4, 3)
    cfg = preset("toy", "tiny")
    adam = make_optimizer(field, dataclasses.replace(cfg.optim, optimizer="adam", betas=(0.8, 0.95)))
    assert isinstance(adam, torch.optim.Adam) and adam.param_groups[0]["betas"] == (0.8, 0.95)
    assert isinstance(make_optimizer(field, cfg.optim), torch.optim.Adamax)
    flags = ["--optim.optimizer", "adam", "--optim.betas", "0.9", "1.0"]
    assert cli.main(["generate", "a red cube", "--preset", "tiny", "--out", str(tmp_path / "x"), *flags]) == 2


def test_the_initial_density_ball_is_highest_at_the_centre_and_zero_past_its_radius():
    from sjc.core.fit import build_field

    class _RGB:
        channels, feature_activation = 3, "sigmoid"

    plain = build_field(_RGB(), FieldConfig(resolution=16))
    ball = build_field(_RGB(), FieldConfig(resolution=16, init_blob=8.0, init_blob_radius=0.5))
    added = (ball.grid[0, 0] - plain.grid[0, 0]).detach()
    centres = -1 + (torch.arange(16, dtype=torch.float64) + 0.5) * 2 / 16
    z, y, x = torch.meshgrid(centres, centres, centres, indexing="ij")
    r = (x.square() + y.square() + z.square()).sqrt()
    assert torch.allclose(added.double(), (8.0 * (1 - r / 0.5)).clamp_min(0), atol=1e-6)
    assert added.max() > 6.0 and (added[r >= 0.5] == 0).all()  # the nearest centres are 0.11 from the middle
    assert torch.equal(ball.grid[0, 1:], plain.grid[0, 1:])  # the colours start as they would without it
    with pytest.raises(ValueError, match="radius"):
        build_field(_RGB(), FieldConfig(resolution=16, init_blob=1.0, init_blob_radius=0.0))
