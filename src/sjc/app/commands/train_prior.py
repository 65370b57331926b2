"""`sjc train-prior`: train the learned toy prior (see `learned.py`) on cached toy renders.

Every random draw (initial weights, batches, sigmas, noise, condition dropout) comes from one seeded
generator whose state is checkpointed with the weights, the moving average and Adam's moments, so a
resumed run continues exactly where it stopped. log.jsonl records the EDM-weighted loss per sigma band.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shlex
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor
from tqdm.auto import tqdm

from ...core.cameras import view_bucket
from ...core.errors import UserError
from ...priors.learned import VIEWS, EDMDenoiser, ToyUNet, UNetSpec, edm_loss_weight, save_weights
from ...priors.toy import make_dataset, parse_prompt
from ..runs.interrupt import Interrupted, catch_signals
from ..settings.config import to_json
from ..settings.train_prior_config import TrainPriorConfig

SIGMA_BANDS = (0.1, 0.5, 1.5)  # log.jsonl reports the loss below, between and above these sigmas
UNIFORM_RANGE = (0.002, 80.0)  # the sampler's range: every sigma it visits is trained on
# Settings a resumed run may change; every other one must match the checkpoint's.
RESUMABLE = {
    "steps",
    "time_limit",
    "threads",
    "device",
    "resume",
    "overwrite",
    "dry_run",
    "checkpoint_every",
    "log_every",
}


class TrainPriorError(UserError, ValueError):
    """A training folder that cannot be used as asked."""


@dataclass
class TrainingData:
    images: Tensor  # [N, 3, S, S] in [-1, 1]
    classes: Tensor  # [N] index into the prompts
    views: Tensor  # [N] index into learned.VIEWS


def load_training_data(cfg: TrainPriorConfig) -> TrainingData:
    """The cached toy data sets of every prompt (rendered on first use), labelled by prompt and view bucket."""
    images, classes, views = [], [], []
    for k, prompt in enumerate(cfg.prompts):
        data = make_dataset(parse_prompt(prompt), cfg.n_images, cfg.image_size, cfg.data_seed)
        images.append(data.images)
        classes.append(torch.full((len(data.views),), k, dtype=torch.long))
        views.append(torch.tensor([VIEWS.index(view_bucket(v)) for v in data.views], dtype=torch.long))
    return TrainingData(torch.cat(images), torch.cat(classes), torch.cat(views))


def draw_sigmas(n: int, cfg: TrainPriorConfig, generator: torch.Generator) -> Tensor:
    """ln sigma ~ N(p_mean, p_std^2), except a `uniform_fraction` log-uniform over UNIFORM_RANGE."""
    normal = torch.exp(cfg.p_mean + cfg.p_std * torch.randn(n, generator=generator))
    lo, hi = math.log(UNIFORM_RANGE[0]), math.log(UNIFORM_RANGE[1])
    uniform = torch.exp(lo + (hi - lo) * torch.rand(n, generator=generator))
    pick = torch.rand(n, generator=generator) < cfg.uniform_fraction
    return torch.where(pick, uniform, normal)


def drop_conditions(classes: Tensor, views: Tensor, cfg: TrainPriorConfig, generator: torch.Generator):
    """Replace (class, view) by the dropped tokens with probability class_dropout, and the view alone with
    probability view_dropout: the network learns p(y), p(y | prompt) and p(y | prompt, view) at once."""
    u = torch.rand(classes.shape[0], generator=generator)
    drop_all = u < cfg.class_dropout
    drop_view = u < cfg.class_dropout + cfg.view_dropout
    n_classes = len(cfg.prompts)
    return torch.where(drop_all, n_classes, classes), torch.where(drop_view, len(VIEWS), views)


def band_names() -> list[str]:
    edges = SIGMA_BANDS
    return [f"<{edges[0]}"] + [f"{a}-{b}" for a, b in zip(edges, edges[1:], strict=False)] + [f">{edges[-1]}"]


def build_model(cfg: TrainPriorConfig) -> EDMDenoiser:
    spec = UNetSpec(n_classes=len(cfg.prompts), channels=tuple(cfg.channels), blocks=cfg.blocks)
    return EDMDenoiser(ToyUNet(spec), cfg.sigma_data)


# --- resumable checkpoints: safetensors of every tensor of the state, JSON metadata ----------------
def save_training_state(
    path: Path, model: EDMDenoiser, ema: EDMDenoiser, opt: torch.optim.Adam, gen, step: int, cfg
) -> None:
    tensors = {f"net.{k}": v for k, v in model.net.state_dict().items()}
    tensors |= {f"ema.{k}": v for k, v in ema.net.state_dict().items()}
    for i, p in enumerate(model.parameters()):
        for key, value in opt.state.get(p, {}).items():
            tensors[f"opt.{i}.{key}"] = torch.as_tensor(value)
    tensors["rng"] = gen.get_state()
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    save_file(tensors, str(tmp), metadata={"step": str(step), "config": to_json(cfg)})
    tmp.replace(path)


def load_training_state(path: Path, model: EDMDenoiser, ema: EDMDenoiser, opt: torch.optim.Adam, gen) -> int:
    """Restore everything `save_training_state` wrote; returns the step."""
    device = next(model.parameters()).device
    with safe_open(str(path), "pt") as f:
        step = int(f.metadata()["step"])
        t = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open is not a mapping)
    model.net.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("net.")})
    ema.net.load_state_dict({k[4:]: v for k, v in t.items() if k.startswith("ema.")})
    for i, p in enumerate(model.parameters()):
        state = {k.split(".", 2)[2]: v.to(device) for k, v in t.items() if k.startswith(f"opt.{i}.")}
        if state:
            opt.state[p] = state
    gen.set_state(t["rng"])
    return step


def _check_resumable(out: Path, cfg: TrainPriorConfig) -> None:
    saved = json.loads((out / "config.json").read_text())
    now = dataclasses.asdict(cfg)
    changed = [k for k in now if k not in RESUMABLE and json.loads(json.dumps(now[k])) != saved.get(k)]
    if changed:
        raise TrainPriorError(
            f"--resume continues {out} with its own settings, but these differ: {', '.join(changed)}; "
            "drop them (only --steps, --time-limit, --threads, --device and logging may change)"
        )


def prepare_out(cfg: TrainPriorConfig) -> tuple[Path, bool]:
    """The output folder, and whether a checkpoint is there to resume from."""
    out = Path(cfg.out)
    ckpt = out / "checkpoint.safetensors"
    if cfg.resume:
        if not ckpt.exists():
            raise TrainPriorError(f"nothing to resume in {out}: no checkpoint.safetensors; drop --resume to start")
        _check_resumable(out, cfg)
        return out, True
    if ckpt.exists() or (out / "weights.safetensors").exists():
        if not cfg.overwrite:
            raise TrainPriorError(
                f"{out} already holds a training run; pass --resume to continue it, --overwrite to replace it, "
                "or choose another --out"
            )
        for name in ("checkpoint.safetensors", "weights.safetensors", "log.jsonl"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(to_json(cfg) + "\n")
    return out, False


def train_step(
    model: EDMDenoiser,
    ema: EDMDenoiser,
    opt: torch.optim.Adam,
    data: TrainingData,
    cfg: TrainPriorConfig,
    gen: torch.Generator,
    step: int,
) -> tuple[Tensor, Tensor]:
    """One Adam step on the EDM-weighted denoising loss of a random batch, then the moving average; returns
    the batch's sigmas and weighted losses [batch_size]."""
    device = data.images.device
    idx = torch.randint(0, data.images.shape[0], (cfg.batch_size,), generator=gen).to(device)
    sigma = draw_sigmas(cfg.batch_size, cfg, gen).to(device)
    y = data.images[idx]
    noise = torch.randn(y.shape, generator=gen).to(device)
    cls, view = drop_conditions(data.classes[idx], data.views[idx], cfg, gen)
    per_image = (model(y + sigma[:, None, None, None] * noise, sigma, cls, view) - y).square().mean((1, 2, 3))
    weighted = edm_loss_weight(sigma, cfg.sigma_data) * per_image
    for group in opt.param_groups:
        group["lr"] = cfg.lr * min(1.0, (step + 1) / max(cfg.warmup, 1))
    opt.zero_grad(set_to_none=True)
    weighted.mean().backward()
    opt.step()
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1 - cfg.ema)
    return sigma, weighted


def train_prior(cfg: TrainPriorConfig, device: torch.device, progress: bool = True) -> dict:
    """Train (or resume) and write out/weights.safetensors; returns a summary of the last log window."""
    for prompt in cfg.prompts:  # PromptError before anything is written
        parse_prompt(prompt)
    out, resuming = prepare_out(cfg)
    data = load_training_data(cfg)
    data = TrainingData(data.images.to(device), data.classes.to(device), data.views.to(device))
    gen = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)  # the initial weights
    model = build_model(cfg).to(device)
    ema = build_model(cfg).to(device).requires_grad_(False)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.99))
    step = load_training_state(out / "checkpoint.safetensors", model, ema, opt, gen) if resuming else 0
    n_params = sum(p.numel() for p in model.parameters())
    info = {"image_size": cfg.image_size, "parameters": n_params, "train_config": dataclasses.asdict(cfg)}
    names, start_time = band_names(), time.monotonic()
    sums, counts = torch.zeros(len(names)), torch.zeros(len(names))
    last: dict = {}

    def save(at: int) -> None:
        save_training_state(out / "checkpoint.safetensors", model, ema, opt, gen, at, cfg)
        save_weights(out / "weights.safetensors", ema, cfg.prompts, {**info, "steps": at})

    done = step
    bar = tqdm(range(step, cfg.steps), initial=step, total=cfg.steps, disable=not progress, desc="train-prior")
    with catch_signals() as stop:
        for step in bar:
            sigma, weighted = train_step(model, ema, opt, data, cfg, gen, step)
            band = torch.bucketize(sigma.cpu(), torch.tensor(SIGMA_BANDS))
            sums.index_add_(0, band, weighted.detach().cpu())
            counts.index_add_(0, band, torch.ones_like(weighted.detach().cpu()))
            done = step + 1
            if done % cfg.log_every == 0 or done == cfg.steps:
                bands = {n: round(float(s / c), 5) for n, s, c in zip(names, sums, counts, strict=True) if c > 0}
                last = {
                    "step": done,
                    "loss": round(float(sums.sum() / counts.sum()), 5),
                    "bands": bands,
                    "lr": opt.param_groups[0]["lr"],
                    "seconds": round(time.monotonic() - start_time, 1),
                }
                with open(out / "log.jsonl", "a") as f:
                    f.write(json.dumps(last) + "\n")
                bar.set_postfix(loss=f"{last['loss']:.4f}")
                sums.zero_()
                counts.zero_()
            out_of_time = cfg.time_limit is not None and time.monotonic() - start_time > 60 * cfg.time_limit
            if done % cfg.checkpoint_every == 0 or done == cfg.steps or stop.requested or out_of_time:
                save(done)
            if stop.requested:
                resume = f"sjc train-prior --out {shlex.quote(str(out))} --resume"
                raise Interrupted(done, out, stop.signum, resume_command=resume)
            if out_of_time:
                bar.close()
                return {**last, "step": done, "stopped": "time limit", "out": str(out), "parameters": n_params}
    return {**last, "step": done, "out": str(out), "parameters": n_params}
