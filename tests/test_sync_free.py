"""The fit loop without host reads between checks: the same numbers whenever it reads, and a NaN still stops the
run at a checkpoint boundary, named at its step, with nothing bad saved. A GPU reads every `DEVICE_CHECK_EVERY`
steps; here the CPU is made to read as rarely, which is the same code."""

import dataclasses
import json
import re

import pytest
import torch

import sjc.core.fit as trainer
from oracle import OraclePrior, two_colour_sphere
from sjc.app.runs.checkpoint import list_checkpoints
from sjc.app.runs.generate import load_run, prepare_run_dir, run_fit
from sjc.app.settings.presets import preset
from sjc.core.fit import (
    DEVICE_CHECK_EVERY,
    FiniteGuard,
    NonFiniteError,
    build_field,
    default_check_every,
    make_generators,
)


def _setup(steps, **train):
    cfg = preset("toy", "default")
    cfg = dataclasses.replace(
        cfg,
        prompt="oracle",
        field=dataclasses.replace(cfg.field, resolution=8, coarse_scale=None, upsample_at=(), occupancy_every=4),
        train=dataclasses.replace(cfg.train, steps=steps, validate_every=0, **train),
    )
    prior = OraclePrior(two_colour_sphere(8), 8)
    gens = make_generators(0, torch.device("cpu"))
    return cfg, prior, gens, build_field(prior, cfg.field, torch.device("cpu"), generator=gens["init"])


def test_the_cpu_reads_every_step_and_a_gpu_every_few():
    assert default_check_every("cpu") == 1 and default_check_every("cuda") == DEVICE_CHECK_EVERY > 1


@pytest.mark.parametrize("every", [3, 7, 50])
def test_reading_rarely_gives_the_same_field_bit_for_bit(every):
    fields, logged = [], []
    for check_every in (1, every):
        cfg, prior, gens, field = _setup(20)
        seen = []
        run_fit(field, prior, cfg, gens=gens, progress=False, check_every=check_every, callback=seen.append)
        fields.append(field.grid.detach().clone())
        logged.append([s.losses for s in seen])
    assert torch.equal(fields[0], fields[1])
    assert logged[0] == logged[1]  # the values a callback reads are the same too


def _poison_at(monkeypatch, k):
    """Step k (counted from 1) starts from a density holding a NaN."""
    real_step = trainer.sjc_step

    def poisoned(field, loop, step):
        if step + 1 == k:
            with torch.no_grad():
                field.grid[0, 0, 1, 2, 3] = float("nan")
        return real_step(field, loop, step)

    monkeypatch.setattr("sjc.core.fit.sjc_step", poisoned)


def test_a_nan_between_reads_stops_at_the_next_boundary_named_at_its_step_and_nothing_bad_is_saved(
    tmp_path, monkeypatch
):
    k = 13
    _poison_at(monkeypatch, k)
    cfg, prior, gens, field = _setup(30, checkpoint_every=10, log_every=5)
    prepare_run_dir(tmp_path, cfg, overwrite=True)
    with pytest.raises(NonFiniteError) as info:
        run_fit(field, prior, cfg, tmp_path, gens=gens, progress=False, check_every=50)
    message = str(info.value)
    assert re.search(rf"the (\w+ loss|gradient of grid|gradient norm|parameter grid) became nan at step {k}; ", message)
    assert "last checkpoint is intact" in message
    # Stopped at the first boundary after step 13 (the log line of step 15): checkpoint 10 is the last one, clean.
    assert [s for s, _ in list_checkpoints(tmp_path)] == [10]
    _, saved, step = load_run(tmp_path)
    assert step == 10 and torch.isfinite(saved.grid).all()
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10]  # no line of a broken state


def test_the_loop_reads_its_guard_every_check_every_steps_without_a_run_folder(monkeypatch):
    k = 4
    _poison_at(monkeypatch, k)
    cfg, prior, gens, field = _setup(30)
    stops = []
    with pytest.raises(NonFiniteError, match=rf"at step {k}; "):
        run_fit(field, prior, cfg, gens=gens, progress=False, check_every=10, callback=lambda s: stops.append(s.step))
    assert stops[-1] == 9  # the loop went on to its read after step 10, which stopped it before that step's callback


def test_the_guard_names_the_first_bad_quantity_of_the_first_bad_step():
    guard = FiniteGuard(every=100)
    good = torch.ones(3)
    guard.observe(0, [("sjc loss", torch.tensor(1.0)), ("parameter grid", good)])
    guard.check()  # nothing bad yet
    guard.observe(1, [("sjc loss", torch.tensor(2.0)), ("parameter grid", torch.tensor([1.0, float("-inf"), 2.0]))])
    guard.observe(2, [("sjc loss", torch.tensor(float("nan"))), ("parameter grid", good)])
    with pytest.raises(NonFiniteError, match="the parameter grid became -inf at step 2; "):
        guard.check()
    norms = FiniteGuard(every=100)  # watched by their norms between reads: the norm's value is reported
    grads = [("gradient of grid", torch.tensor([0.0, float("nan")]))]
    norms.observe(4, grads, [torch.linalg.vector_norm(grads[0][1])])
    with pytest.raises(NonFiniteError, match="the gradient of grid became nan at step 5"):
        norms.check()


def _fixed_shape_render(field, camera):
    """A render with no data-dependent shapes (every voxel column composited along z): what a loop test needs to
    see the loop's own reads alone. The camera is ignored."""
    from sjc.core.rays import Rendering

    sigma = torch.nn.functional.softplus(field.grid[0, 0] - 1.0) * field.step_size  # [z, y, x]
    alpha = 1 - torch.exp(-sigma)
    transmittance = torch.cumprod(torch.cat([torch.ones_like(alpha[:1]), 1 - alpha[:-1]]), dim=0)
    weights = transmittance * alpha
    colour = (weights[None] * torch.sigmoid(field.grid[0, 1:]) * 2 - weights[None]).sum(dim=1)
    opacity = weights.sum(dim=0)
    depth = (weights * torch.arange(len(alpha), dtype=alpha.dtype)[:, None, None]).sum(dim=0)
    image = colour + (1 - opacity)[None]
    return Rendering(image=image[None], depth=depth, opacity=opacity, weights=weights.reshape(len(alpha), -1).T)


def test_a_step_makes_no_host_read_between_checks(monkeypatch):
    """Between the guard's reads the loop itself (cameras given, sigma drawn on the host, the score, the losses,
    the guard, Adamax) asks nothing of a tensor's value: on a GPU each read would wait for the queue to drain.
    The renderer's own reads (its sample count, the compaction of samples) are the renderer's, measured apart."""
    from sjc.core.cameras import View, camera_from_view
    from sjc.priors.custom import DenoiserPrior

    cfg, _, gens, field = _setup(6)
    prior = DenoiserPrior(
        lambda x, sigma, cond: x / (1 + sigma[:, None, None, None] ** 2),  # a standard normal's denoiser
        channels=3,
        image_size=8,
        sigma_min=0.1,
        sigma_max=1.0,
    )
    view = View(30.0, 10.0)
    camera = camera_from_view(view, 8)
    reads = []
    for name in ("item", "__float__", "__int__", "__bool__", "tolist", "nonzero"):
        real = getattr(torch.Tensor, name)

        def counted(self, *a, _real=real, _name=name, **k):
            import traceback

            frame = traceback.extract_stack()[-2]
            # Host-side by construction: Adamax's step count and the sigma draws from CPU generators.
            host = "/torch/optim/" in frame.filename or frame.name.startswith("sigma_")
            if not host:
                reads.append((_name, frame.filename, frame.name))
            return _real(self, *a, **k)

        monkeypatch.setattr(torch.Tensor, name, counted)
    loop = trainer.FitLoop.create(
        field,
        prior,
        cfg.fit_settings(),
        steps=6,
        generators=gens,
        check_every=100,
        cameras=lambda generator, size: (camera, view),
        render_fn=_fixed_shape_render,
    )
    for step in range(6):
        trainer.sjc_step(field, loop, step)
    assert reads == [], reads
    loop.guard.check()  # the one read, of three values
    assert len(reads) == 3, reads
