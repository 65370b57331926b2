"""End to end: with an oracle prior, SJC must reconstruct a known object."""

import dataclasses
import json
import time

import pytest
import torch

from oracle import OraclePrior, two_colour_sphere
from sjc.app.runs.generate import load_run, run_fit
from sjc.app.settings.presets import preset
from sjc.core.cameras import View, camera_from_view
from sjc.core.fit import NonFiniteError, build_field, make_generators
from sjc.core.render import render


def _config(steps, **train):
    cfg = preset("toy", "default")
    return dataclasses.replace(cfg, prompt="oracle", train=dataclasses.replace(cfg.train, steps=steps, **train))


@pytest.fixture(scope="module")
def oracle_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("oracle")
    target = two_colour_sphere(32)
    prior = OraclePrior(target, 32)
    cfg = _config(400, checkpoint_every=200, validate_every=200, log_every=50)
    gens = make_generators(cfg.train.seed, torch.device("cpu"))
    field = build_field(prior, cfg.field, torch.device("cpu"), generator=gens["init"])
    start = time.process_time()  # CPU seconds: robust to other work on the machine
    run_fit(field, prior, cfg, run_dir, gens=gens, progress=False)
    return run_dir, field, target, time.process_time() - start


def test_oracle_fit_reconstructs_the_object(oracle_run):
    _, field, target, seconds = oracle_run
    pred, true = field.voxel_alpha() > 0.5, target.voxel_alpha() > 0.5
    iou = ((pred & true).sum() / (pred | true).sum()).item()
    psnrs = []
    with torch.no_grad():
        for az in (20, 110, 200, 290):  # held-out views: azimuths and an elevation never drawn exactly
            cam = camera_from_view(View(az, 12.5), 32)
            err = (render(field, cam).image - render(target, cam).image).square().mean()
            psnrs.append(10 * torch.log10(4 / err).item())  # images span [-1, 1]
    assert iou >= 0.85, iou
    assert sum(psnrs) / len(psnrs) >= 22, psnrs
    assert seconds < 60


def test_run_folder_holds_log_checkpoints_and_validation(oracle_run):
    run_dir, *_ = oracle_run
    lines = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [50, 100, 150, 200, 250, 300, 350, 400]
    assert {"sigma", "sjc", "emptiness", "grad_norm", "seconds"} <= set(lines[0])
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == [
        "step_0000200.safetensors",
        "step_0000400.safetensors",
    ]
    assert (run_dir / "validation" / "step_0000400.png").exists()


def test_run_folder_reloads_and_renders_bit_identically(oracle_run):
    run_dir, field, *_ = oracle_run
    cfg, loaded, step = load_run(run_dir)
    assert step == 400 and cfg.train.steps == 400 and cfg.prompt == "oracle"
    cam = camera_from_view(View(33, 21), 24)
    with torch.no_grad():
        a, b = render(field, cam), render(loaded, cam)
    assert torch.equal(a.image, b.image) and torch.equal(a.depth, b.depth)
    _, older, step = load_run(run_dir, step=200)
    assert step == 200 and not torch.equal(older.grid, loaded.grid)


def test_same_seed_gives_the_same_field_and_other_seeds_differ():
    prior = OraclePrior(two_colour_sphere(12), 16)
    fields = []
    for seed in (3, 3, 4):
        cfg = _config(5, seed=seed)
        cfg = dataclasses.replace(cfg, field=dataclasses.replace(cfg.field, resolution=12))
        gens = make_generators(seed, torch.device("cpu"))
        field = build_field(prior, cfg.field, torch.device("cpu"), generator=gens["init"])
        fields.append(run_fit(field, prior, cfg, None, gens=gens, progress=False).field.grid.detach())
    assert torch.equal(fields[0], fields[1])
    assert not torch.equal(fields[0], fields[2])


def test_a_non_finite_score_stops_the_run_at_its_step():
    class Broken(OraclePrior):
        def denoise(self, x, sigma, cond):
            return torch.full_like(x, float("nan"))

    prior = Broken(two_colour_sphere(8), 8)
    cfg = _config(3)
    cfg = dataclasses.replace(cfg, field=dataclasses.replace(cfg.field, resolution=8))
    gens = make_generators(0, torch.device("cpu"))
    field = build_field(prior, cfg.field, torch.device("cpu"), generator=gens["init"])
    before = field.grid.detach().clone()
    with pytest.raises(NonFiniteError, match="sjc loss became nan at step 1"):
        run_fit(field, prior, cfg, None, gens=gens, progress=False)
    assert torch.equal(field.grid, before)  # the bad update never reached the parameters
