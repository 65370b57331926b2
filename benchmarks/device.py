"""One prepared run on a lent GPU machine: the CUDA renderer, the GPU-marked tests, and whole SJC steps at the
paper's setting with a full-size (random-weight) Stable Diffusion 1.5, in one compact report.

1. Renderer: `render.render` (engine 'auto': on CUDA the PyTorch path) with and without empty-space skipping,
   against the official-faithful baseline `official.render_official`, at the paper setting (100^3 grid, 64x64,
   4 channels; `benchmarks/speed.py`'s "paper" config), field at initialisation and formed: forward and
   forward+backward milliseconds per call (synchronised, medians after warm-up), peak memory, speed-up.
   First the CUDA results are compared with the CPU ones on a small case (largest absolute differences).
2. Whole SJC steps: UNet2DConditionModel, AutoencoderKL and CLIPTextModel with SD 1.5's configurations and random
   weights (a tokenizer written here, as tests/tiny_sd.py does: nothing is downloaded), wrapped in
   `StableDiffusionPrior` (float16 on CUDA), driven by sjc's own fit loop (`app.runs.run_fit` with a run folder,
   i.e. `sjc generate`'s loop) at the "sd" preset (guidance 100, 100^3 grid, 64x64 latents, 512 px). Seconds per
   step and the projected minutes per 10k steps (with the validation renders and checkpoints of a run), beside
   the official figure: 25 min per 10k steps on an A5000.
2b. The same for image-to-3D with Zero-1-to-3: an SD-1.5-shaped UNet of 8 input channels, the VAE, CLIP ViT-L/14's
   vision tower and the camera projection, random weights, at the "zero123" preset (100^3 grid, 32x32 latents,
   guidance 100, the reference view's losses every step): ms a step and peak memory.
2c. The sd preset's step run each way in one process: the non-finite guard read every step (as before the loop
   kept its values on the device) against every 25, the UNet compiled (--compile-modes) or not; ms a step from
   CUDA events, no sync of the timing's own; then a torch.profiler breakdown by the step's named regions (camera,
   render, score and the network inside it, losses, backward, guard, optimizer) and the host's waits.
3. Tests: `pytest -m gpu` (skipped without SJC_SD_MODEL) and `pytest tests/test_render.py tests/test_sd.py`,
   whose render tests run on CUDA too where it is present.

Results go to stdout and to $OUT/device_report.txt and $OUT/device_report.json (--out, else $OUT, else out/),
rewritten after each section so a run stopped early still leaves what it measured.

    python benchmarks/device.py                          # on the GPU machine (benchmarks/device.sh runs it)
    python benchmarks/device.py --device cpu --small     # a quick check of the code paths on a CPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing may come from the hub
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tiny_sd: the offline tokenizer files

from sjc.app.settings.presets import preset  # noqa: E402
from sjc.core import chaining  # noqa: E402
from sjc.core.cameras import camera_from_view, sample_training_view  # noqa: E402
from sjc.core.official import render_official  # noqa: E402
from sjc.core.render import render  # noqa: E402
from sjc.core.settings import FieldConfig  # noqa: E402
from sjc.core.voxel import VoxelField  # noqa: E402

OFFICIAL_MIN_PER_10K = 25.0  # the paper's code: 25 minutes per 10k steps on an A5000
CHANNELS = 4
EMPTINESS = 1e4  # the paper's weight, as benchmarks/speed.py's step loss


class Report:
    """Lines printed as they come, and a JSON record; both written under `out` after each section."""

    def __init__(self, out: Path) -> None:
        self.out, self.lines, self.data = out, [], {}
        out.mkdir(parents=True, exist_ok=True)

    def line(self, text: str = "") -> None:
        print(text, flush=True)
        self.lines.append(text)

    def save(self) -> None:
        (self.out / "device_report.txt").write_text("\n".join(self.lines) + "\n")
        (self.out / "device_report.json").write_text(json.dumps(_strict(self.data), indent=2, default=str) + "\n")


def _strict(value):
    """Strict JSON: NaN (no GPU memory on a CPU) becomes null."""
    if isinstance(value, dict):
        return {str(k): _strict(v) for k, v in value.items()}
    if isinstance(value, float) and value != value:
        return None
    return value


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_mib(device: torch.device) -> float:
    return torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else float("nan")


# --- 0. the machine ---------------------------------------------------------------------------------
def environment(rep: Report, device: torch.device) -> None:
    info = {"python": platform.python_version(), "torch": torch.__version__, "device": str(device)}
    for name in ("diffusers", "transformers", "numba", "huggingface_hub", "tyro", "trimesh", "imageio_ffmpeg"):
        try:
            info[name] = __import__(name).__version__
        except Exception as e:  # noqa: BLE001 - a missing package is a finding
            info[name] = f"missing ({type(e).__name__})"
    try:
        from sjc.core import fused  # noqa: F401

        info["fused CPU renderer"] = "available"
    except Exception as e:  # noqa: BLE001
        info["fused CPU renderer"] = f"unavailable ({type(e).__name__}: {e})"
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        info |= {"gpu": p.name, "gpu memory GiB": round(p.total_memory / 2**30, 1), "sms": p.multi_processor_count}
        info["cuda"] = torch.version.cuda
    info["cpu cores"] = os.cpu_count()
    rep.data["environment"] = info
    rep.line("== environment")
    rep.line("  " + ", ".join(f"{k} {v}" for k, v in info.items()))


# --- 1. the renderer ---------------------------------------------------------------------------------
def make_field(resolution: int, state: str, seed: int = 0) -> VoxelField:
    """As benchmarks/speed.py: raw density 0 and N(0, 1) features at 'init'; 'formed' adds an opaque sphere
    of radius 0.5 and empties everything else."""
    field = VoxelField(resolution, CHANNELS, background="texture", generator=torch.Generator().manual_seed(seed))
    if state == "formed":
        with torch.no_grad():
            field.grid[0, 0] = torch.where(field.voxel_centres().norm(dim=-1) < 0.5, 40.0, -30.0)
    return field


def cameras(count: int, size: int, seed: int = 0) -> list:
    gen = torch.Generator().manual_seed(seed)
    return [camera_from_view(sample_training_view(gen), size) for _ in range(count)]


def step_loss(out, g: torch.Tensor) -> torch.Tensor:
    return chaining.chain_surrogate(out.image, g) + EMPTINESS * chaining.emptiness_loss(out.weights, 10.0)


def _outputs_and_grads(field: VoxelField, fn, cam, g: torch.Tensor) -> dict[str, torch.Tensor]:
    field.zero_grad(set_to_none=True)
    out = fn(field, cam)
    step_loss(out, g).backward()
    grads = {f"grad {n}": p.grad.detach().cpu() for n, p in field.named_parameters() if p.grad is not None}
    return {"image": out.image.detach().cpu(), "depth": out.depth.detach().cpu(), **grads}


def render_agreement(rep: Report, device: torch.device, small: bool) -> None:
    """The device's results against the CPU's (fused kernels where numba is there) on a small case."""
    rep.line(f"== renderer on {device.type} vs CPU, small case (32^3 grid, 24x24), largest absolute difference")
    cam = cameras(1, 24, seed=5)[0]
    results = {}
    for dtype in (torch.float64, torch.float32):
        for state in ("init", "formed"):
            g = torch.randn(1, CHANNELS, 24, 24, generator=torch.Generator().manual_seed(2), dtype=dtype)
            for name, fn in (("sjc render (auto)", render), ("official", render_official)):
                cpu_field = make_field(32, state).to(dtype)
                dev_field = make_field(32, state).to(dtype).to(device)
                a = _outputs_and_grads(cpu_field, fn, cam, g)
                b = _outputs_and_grads(dev_field, fn, cam, g.to(device))
                diff = max(float((a[k] - b[k]).abs().max()) for k in a)
                key = f"{name}, {state}, {str(dtype).removeprefix('torch.')}"
                results[key] = diff
                rep.line(f"  {key}: {diff:.1e} (image, depth, every gradient)")
    rep.data["render agreement"] = results


def time_contender(fn, field, cams, gs, warmup: int, device: torch.device) -> dict[str, float]:
    """Median forward and forward+backward milliseconds of render + step loss, and the peak memory."""
    fwd, total = [], []
    reset_peak(device)
    for i, (cam, g) in enumerate(zip(cams, gs, strict=True)):
        field.zero_grad(set_to_none=True)
        sync(device)
        t0 = time.perf_counter()
        loss = step_loss(fn(field, cam), g)
        sync(device)
        t1 = time.perf_counter()
        loss.backward()
        sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            fwd.append(t1 - t0)
            total.append(t2 - t0)
    return {
        "forward ms": 1e3 * statistics.median(fwd),
        "fwd+bwd ms": 1e3 * statistics.median(total),
        "peak MiB": peak_mib(device),
    }


def render_speed(rep: Report, device: torch.device, small: bool) -> None:
    resolution, size, reps, warmup = (32, 32, 5, 2) if small else (100, 64, 40, 5)
    rep.line(
        f"== renderer speed on {device.type}: {resolution}^3 grid, {size}x{size}, C={CHANNELS}, "
        f"median of {reps - warmup} after {warmup} warm-up, render + SJC surrogate + emptiness loss"
    )
    f = FieldConfig()
    results = {}
    for state in ("init", "formed"):
        cams = cameras(reps, size)
        gen = torch.Generator().manual_seed(1)
        gs = [torch.randn(1, CHANNELS, size, size, generator=gen).to(device) for _ in cams]
        contenders = {
            "official (baseline)": (render_official, False),
            "sjc render (auto)": (render, False),
            "sjc render + skipping": (lambda fl, c: render(fl, c, skip_empty=True), True),
        }
        by_name = {}
        for name, (fn, skip) in contenders.items():
            field = make_field(resolution, state).to(device)
            if skip:
                field.refresh_occupancy(f.occupancy_threshold, f.occupancy_dilation)
            by_name[name] = time_contender(fn, field, cams, gs, warmup, device)
            del field
        base = by_name["official (baseline)"]["fwd+bwd ms"]
        for name, r in by_name.items():
            r["speed-up"] = base / r["fwd+bwd ms"]
            rep.line(
                f"  {state:6s} {name:22s} forward {r['forward ms']:7.2f} ms  fwd+bwd {r['fwd+bwd ms']:7.2f} ms  "
                f"x{r['speed-up']:.2f} vs official  peak {r['peak MiB']:.0f} MiB"
            )
        results[state] = by_name
    rep.data["render speed"] = {"grid": resolution, "image": size, "timed": reps - warmup, **results}


# --- 2. whole SJC steps with a Stable-Diffusion-sized prior ---------------------------------------------
SD15_UNET = dict(
    sample_size=64,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768,
    attention_head_dim=8,
    norm_num_groups=32,
)
SD15_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(128, 256, 512, 512),
    layers_per_block=2,
    latent_channels=4,
    norm_num_groups=32,
    sample_size=512,
)
SD15_TEXT = dict(
    vocab_size=49408,
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    max_position_embeddings=77,
    projection_dim=768,
    hidden_act="quick_gelu",
)
SMALL_UNET = dict(
    sample_size=8,
    in_channels=4,
    out_channels=4,
    layers_per_block=1,
    block_out_channels=(32, 64),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
)
SMALL_VAE = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(8, 16, 16, 16),
    norm_num_groups=8,
    latent_channels=4,
    sample_size=64,
)
SMALL_TEXT = dict(
    vocab_size=49408,
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=32,
)


def build_sd_parts(small: bool, device: torch.device, dtype: torch.dtype):
    """Random-weight SD parts built on `device` (UNet and text encoder in `dtype`, VAE in float32, as
    `load_components` leaves them), a CLIP tokenizer from tests/tiny_sd.py's offline vocabulary with SD's
    77 tokens, and SD 1.5's noise schedule."""
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    from sjc.priors.sd import SDComponents
    from tiny_sd import BOS, EOS, write_tokenizer_folder

    # The tests' offline tokenizer folder, read back as load_components reads a checkpoint's, with SD's 77 tokens.
    folder = write_tokenizer_folder(Path(tempfile.mkdtemp(prefix="sjc-tokenizer-")))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"model_max_length": 77}))
    tokenizer = CLIPTokenizer.from_pretrained(str(folder))
    vocab = json.loads((folder / "vocab.json").read_text())
    torch.manual_seed(0)
    with torch.device(device):  # random initialisation straight on the GPU
        unet = UNet2DConditionModel(**(SMALL_UNET if small else SD15_UNET))
        vae = AutoencoderKL(**(SMALL_VAE if small else SD15_VAE))
        text = CLIPTextModel(
            CLIPTextConfig(
                **(SMALL_TEXT if small else SD15_TEXT),
                bos_token_id=vocab[BOS],
                eos_token_id=vocab[EOS],
                pad_token_id=vocab[EOS],
            )
        )
    schedule = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in (("unet", unet), ("vae", vae), ("text", text))}
    parts = SDComponents(
        unet=unet.to(device=device, dtype=dtype).eval().requires_grad_(False),
        vae=vae.to(device=device, dtype=torch.float32).eval().requires_grad_(False),
        text_encoder=text.to(device=device, dtype=dtype).eval().requires_grad_(False),
        tokenizer=tokenizer,
        alphas_cumprod=schedule.alphas_cumprod.clone(),
        prediction_type="epsilon",
    )
    return parts, params


def _fit_run(cfg, prior, device, steps: int, run_dir: Path, reference=None) -> tuple[list[float], object]:
    """sjc's fit loop with a run folder (logs, validation, checkpoints: `sjc generate`'s loop) for `steps`
    steps; the wall seconds of each step (every step ends in host syncs: loss values, gradient norm)."""
    from sjc.app.runs.generate import prepare_run_dir, run_fit
    from sjc.core.fit import build_field, make_generators, make_optimizer

    gens = make_generators(cfg.train.seed, device)
    field = build_field(prior, cfg.field, device, generator=gens["init"])
    optimizer = make_optimizer(field, cfg.optim)
    stamps = [time.perf_counter()]

    def clock(info) -> None:
        sync(device)
        stamps.append(time.perf_counter())

    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, steps=steps, schedule_steps=10_000))
    cfg = dataclasses.replace(cfg, out=str(run_dir))
    prepare_run_dir(run_dir, cfg, overwrite=True)  # as `sjc generate`: the folder and its config.json
    run_fit(
        field, prior, cfg, run_dir, optimizer=optimizer, gens=gens, callback=clock, progress=False, reference=reference
    )
    return [b - a for a, b in zip(stamps, stamps[1:], strict=False)], (prior, field, optimizer, gens, cfg)


def _sd_prior(cfg, small: bool, device: torch.device, dtype: torch.dtype):
    """A Stable-Diffusion-1.5-sized (or tiny) random-weight prior of `cfg`, its parameter counts, no reference."""
    from sjc.priors.sd import StableDiffusionPrior

    parts, params = build_sd_parts(small, device, dtype)
    prior = StableDiffusionPrior(
        parts,
        cfg.prompt,
        guidance_scale=cfg.scoring.guidance_scale,
        negative_prompt=cfg.sd.negative_prompt,
        resolution=cfg.sd.resolution,
        device=device,
    )
    return prior, params, None


def sjc_steps(rep: Report, device: torch.device, small: bool, warmup: int, timed: int) -> None:
    cfg = preset("sd", "tiny" if small else "paper")
    cfg = dataclasses.replace(cfg, prompt="a DSLR photo of a hamburger", device=str(device))
    side = cfg.sd.resolution // 8
    rep.line(
        f"== whole SJC steps: sd preset '{cfg.preset}' ({cfg.field.resolution}^3 grid, "
        f"{side}x{side} latents, guidance {cfg.scoring.guidance_scale:g}, "
        f"skip_empty {cfg.field.skip_empty}), {'tiny' if small else 'SD 1.5-sized'} random-weight prior, "
        f"{warmup} warm-up + {timed} timed steps of app.runs.run_fit"
    )
    result = {"preset": cfg.preset, "grid": cfg.field.resolution, "latent": side}
    result["guidance"] = cfg.scoring.guidance_scale
    rep.data["sjc steps"] = _time_steps(rep, cfg, cfg.sd.dtype, _sd_prior, device, small, warmup, timed, result)


def _time_steps(rep: Report, cfg, dtype_name: str, make_prior, device, small, warmup, timed, result) -> dict:
    """Build the prior (`make_prior(cfg, small, device, dtype)` -> prior, parameter counts, reference) and time
    `warmup` + `timed` steps of the run loop, a validation render and a checkpoint; the projected minutes per 10k."""
    from sjc.app.runs.checkpoint import save_checkpoint
    from sjc.app.runs.generate import save_validation
    from sjc.app.settings.config import to_json
    from sjc.core.fit import NonFiniteError
    from sjc.priors.loading import resolve_dtype

    dtypes = [resolve_dtype(dtype_name, device)] + ([torch.bfloat16] if device.type == "cuda" else [])
    for dtype in dtypes:  # float16 (sjc's choice on CUDA); bfloat16 only if random weights overflow float16
        t0 = time.perf_counter()
        prior, params, reference = make_prior(cfg, small, device, dtype)
        sync(device)
        build_s = time.perf_counter() - t0
        reset_peak(device)  # the weights stay counted; a transient of building them does not
        rep.line(
            "  parameters: "
            + ", ".join(f"{k} {v / 1e6:.1f} M" for k, v in params.items())
            + f"; built in {build_s:.1f} s, {str(dtype).removeprefix('torch.')}"
        )
        with tempfile.TemporaryDirectory() as tmp:
            try:
                seconds, (prior, field, optimizer, gens, run_cfg) = _fit_run(
                    cfg, prior, device, warmup + timed, Path(tmp) / "run", reference
                )
            except NonFiniteError as e:
                rep.line(f"  {dtype}: {e}")
                result[f"non-finite {dtype}"] = str(e)
                del prior
                continue
            peak = peak_mib(device)
            # What a run adds every 500 / 1000 steps: a validation render (VAE decode) and a checkpoint.
            sync(device)
            t = time.perf_counter()
            save_validation(field, prior, run_cfg, Path(tmp) / "validation.png")
            sync(device)
            validation_s = time.perf_counter() - t
            t = time.perf_counter()
            save_checkpoint(Path(tmp) / "ckpt.safetensors", field, optimizer, gens, 1, to_json(run_cfg))
            checkpoint_s = time.perf_counter() - t
        steps = seconds[warmup:-1] or seconds[warmup:]  # the last step also writes the final checkpoint
        median, mean = statistics.median(steps), statistics.fmean(steps)
        t = run_cfg.train
        n_val = 10_000 // t.validate_every if t.validate_every else 0
        n_ckpt = 10_000 // t.checkpoint_every
        per_10k = 10_000 * mean + n_val * validation_s + n_ckpt * checkpoint_s
        result |= {
            "dtype": str(dtype),
            "parameters": params,
            "build s": build_s,
            "first step s": seconds[0],
            "median step s": median,
            "mean step s": mean,
            "min step s": min(steps),
            "max step s": max(steps),
            "validation render s": validation_s,
            "checkpoint s": checkpoint_s,
            "projected min per 10k steps": per_10k / 60,
            "official min per 10k (A5000)": OFFICIAL_MIN_PER_10K,
            "peak GPU MiB": peak,
            "validate_every": t.validate_every,
            "checkpoint_every": t.checkpoint_every,
        }
        rep.line(
            f"  first step {seconds[0]:.2f} s; timed steps: median {1e3 * median:.1f} ms, mean "
            f"{1e3 * mean:.1f} ms (min {1e3 * min(steps):.1f}, max {1e3 * max(steps):.1f})"
        )
        rep.line(
            f"  validation render {validation_s:.2f} s, checkpoint {checkpoint_s:.2f} s; peak GPU memory {peak:.0f} MiB"
        )
        rep.line(
            f"  projected: {per_10k / 60:.1f} min per 10k steps (mean step x 10k + {n_val} validations + "
            f"{n_ckpt} checkpoints) vs official {OFFICIAL_MIN_PER_10K:.0f} min on an A5000 "
            f"(x{OFFICIAL_MIN_PER_10K * 60 / per_10k:.2f})"
        )
        break
    return result


# --- 2b. whole image-to-3D steps with a Zero-1-to-3-sized prior -----------------------------------------
# CLIP ViT-L/14's vision tower with its 768-wide projection: Zero-1-to-3's image encoder.
ZERO123_VISION = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=24,
    num_attention_heads=16,
    image_size=224,
    patch_size=14,
    projection_dim=768,
    hidden_act="quick_gelu",
)
SMALL_VISION = dict(
    hidden_size=16, intermediate_size=24, num_hidden_layers=2, num_attention_heads=2, image_size=32, patch_size=8,
    projection_dim=32,
)  # fmt: skip
ZERO123_DEMO_GB = 22  # the authors' README: their novel-view demo uses about 22 GB of GPU memory


def _zero123_prior(cfg, small: bool, device: torch.device, dtype: torch.dtype):
    """A Zero-1-to-3-sized (or tiny) random-weight prior bound to a picture of a disc, and the run's reference."""
    import numpy as np
    from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
    from imageio import v3 as iio
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from sjc.app.runs.picture import make_reference, read_picture
    from sjc.priors.zero123 import Zero123Components, Zero123Prior

    torch.manual_seed(0)
    unet_config = (SMALL_UNET if small else SD15_UNET) | {"in_channels": 8}
    vision = SMALL_VISION if small else ZERO123_VISION
    with torch.device(device):
        unet = UNet2DConditionModel(**unet_config)
        vae = AutoencoderKL(**(SMALL_VAE if small else SD15_VAE))
        encoder = CLIPVisionModelWithProjection(CLIPVisionConfig(**vision))
        projection = torch.nn.Linear(vision["projection_dim"] + 4, unet_config["cross_attention_dim"])
    schedule = DDPMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False)
    modules = (("unet", unet), ("vae", vae), ("image encoder", encoder), ("cc_projection", projection))
    params = {n: sum(p.numel() for p in m.parameters()) for n, m in modules}
    parts = Zero123Components(
        unet=unet.to(device=device, dtype=dtype).eval().requires_grad_(False),
        vae=vae.to(device=device, dtype=torch.float32).eval().requires_grad_(False),
        image_encoder=encoder.to(device=device, dtype=dtype).eval().requires_grad_(False),
        projection=projection.eval().requires_grad_(False),
        alphas_cumprod=schedule.alphas_cumprod.clone(),
        prediction_type="epsilon",
    )
    size = cfg.zero123.resolution
    yy, xx = np.mgrid[:size, :size]
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[(xx - size / 2) ** 2 + (yy - size / 2) ** 2 < (size / 4) ** 2] = [200, 60, 40, 255]
    path = Path(tempfile.mkdtemp(prefix="sjc-picture-")) / "disc.png"
    iio.imwrite(path, rgba)
    picture = read_picture(path, size)
    view = cfg.image.camera_view(cfg.camera)
    prior = Zero123Prior(
        parts, picture.rgb, view, guidance_scale=cfg.scoring.guidance_scale, resolution=size, device=device
    )
    return prior, params, make_reference(prior, picture, view, cfg.image)


def zero123_steps(rep: Report, device: torch.device, small: bool, warmup: int, timed: int) -> None:
    cfg = preset("zero123", "tiny" if small else "paper")
    cfg = dataclasses.replace(cfg, device=str(device), image=dataclasses.replace(cfg.image, path="disc.png"))
    side = cfg.zero123.resolution // 8
    rep.line(
        f"== whole image-to-3D steps: zero123 preset '{cfg.preset}' ({cfg.field.resolution}^3 grid, "
        f"{side}x{side} latents, guidance {cfg.scoring.guidance_scale:g}, the reference view every step), "
        f"{'tiny' if small else 'Zero-1-to-3-sized'} random-weight prior, {warmup} warm-up + {timed} timed steps"
    )
    result = {"preset": cfg.preset, "grid": cfg.field.resolution, "latent": side}
    result["guidance"] = cfg.scoring.guidance_scale
    result = _time_steps(rep, cfg, cfg.zero123.dtype, _zero123_prior, device, small, warmup, timed, result)
    if "peak GPU MiB" in result:
        rep.line(
            f"  peak {result['peak GPU MiB'] / 1024:.1f} GiB (the weights and the steps) beside the authors' "
            f"{ZERO123_DEMO_GB} GB for their novel-view demo"
        )
    rep.data["zero123 steps"] = result


# --- 2c. the step, run each way, and where its milliseconds go ------------------------------------------
WAITS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "aten::_local_scalar_dense", "aten::item", "aten::nonzero")


def _step_times(loop, field, device, first: int, count: int) -> list[float]:
    """Milliseconds of each of `count` steps from 0-based `first`, as `core.fit.fit` runs them (the guard read when
    due), timed without a sync of their own: CUDA events between steps on a GPU, the host clock on a CPU."""
    from sjc.core.fit import sjc_step

    def one(step: int) -> None:
        sjc_step(field, loop, step)
        if loop.guard.due(step):
            loop.guard.check()

    if device.type != "cuda":
        stamps = [time.perf_counter()]
        for k in range(count):
            one(first + k)
            stamps.append(time.perf_counter())
        return [1e3 * (b - a) for a, b in zip(stamps, stamps[1:], strict=False)]
    events = [torch.cuda.Event(enable_timing=True) for _ in range(count + 1)]
    events[0].record()
    for k in range(count):
        one(first + k)
        events[k + 1].record()
    sync(device)
    return [a.elapsed_time(b) for a, b in zip(events, events[1:], strict=False)]


def _loop(cfg, parts, device, check_every: int, compile_mode: str):
    from sjc.core.fit import FitLoop, build_field, make_generators
    from sjc.priors.sd import StableDiffusionPrior

    prior = StableDiffusionPrior(
        parts,
        cfg.prompt,
        guidance_scale=cfg.scoring.guidance_scale,
        resolution=cfg.sd.resolution,
        device=device,
        compile=compile_mode,
    )
    gens = make_generators(cfg.train.seed, device)
    field = build_field(prior, cfg.field, device, generator=gens["init"])
    loop = FitLoop.create(field, prior, cfg.fit_settings(), steps=10_000, generators=gens, check_every=check_every)
    return loop, field


def step_variants(rep: Report, device: torch.device, small: bool, warmup: int, timed: int, modes, profile: bool):
    """The sd preset's step run each way in one process: the non-finite guard read every step (the loop before it
    kept its values on the device) or every `DEVICE_CHECK_EVERY`, the UNet compiled in each of `modes` or not;
    then a profile of the default way by the step's named regions."""
    from sjc.core.fit import DEVICE_CHECK_EVERY
    from sjc.priors.loading import resolve_dtype

    cfg = preset("sd", "tiny" if small else "paper")
    cfg = dataclasses.replace(cfg, prompt="a DSLR photo of a hamburger", device=str(device))
    parts, _ = build_sd_parts(small, device, resolve_dtype(cfg.sd.dtype, device))
    rep.line(
        f"== the step each way: sd preset '{cfg.preset}', {warmup} warm-up (compiling included) + {timed} timed "
        "steps, no sync of the timing's own"
    )
    variants = [("guard read every step (before)", 1, "off"), (f"guard read every {DEVICE_CHECK_EVERY}", None, "off")]
    variants += [(f"every {DEVICE_CHECK_EVERY} + compile {m}", None, m) for m in modes if m != "off"]
    results = {}
    for label, every, mode in variants:
        t = time.perf_counter()
        loop, field = _loop(cfg, parts, device, every or DEVICE_CHECK_EVERY, mode)
        _step_times(loop, field, device, 0, warmup)
        warm_s = time.perf_counter() - t
        ms = _step_times(loop, field, device, warmup, timed)
        failure = getattr(loop.prior.unet, "failure", None)
        results[label] = {"median ms": statistics.median(ms), "mean ms": statistics.fmean(ms), "warm-up s": warm_s}
        results[label]["compile failure"] = failure
        rep.line(
            f"  {label:38s} median {statistics.median(ms):7.1f} ms  mean {statistics.fmean(ms):7.1f} ms  "
            f"({warmup} warm-up steps {warm_s:.0f} s){'  COMPILE FAILED: ' + failure if failure else ''}"
        )
        del loop, field
        if device.type == "cuda":
            torch.cuda.empty_cache()
    rep.data["step variants"] = results
    if profile:
        _profile(rep, cfg, parts, device, warmup, min(timed, 20))


def _profile(rep: Report, cfg, parts, device, warmup: int, count: int) -> None:
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    from sjc.core.fit import DEVICE_CHECK_EVERY, REGIONS

    loop, field = _loop(cfg, parts, device, DEVICE_CHECK_EVERY, "off")
    _step_times(loop, field, device, 0, warmup)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    t = time.perf_counter()
    with torch_profile(activities=activities) as prof:
        _step_times(loop, field, device, warmup, count)
    wall = 1e3 * (time.perf_counter() - t) / count
    events = {e.key: e for e in prof.key_averages()}

    def device_ms(e) -> float:
        return getattr(e, "device_time_total", getattr(e, "cuda_time_total", 0.0)) / 1e3 / count

    rep.line(f"== where a step's {wall:.1f} ms go (profiled, {count} steps; host = launching, device = kernels)")
    rows = {}
    for name in [f"sjc.{r}" for r in REGIONS] + ["sjc.network"]:
        if name in events:
            e = events[name]
            rows[name] = {"host ms": e.cpu_time_total / 1e3 / count, "device ms": device_ms(e)}
            rep.line(f"  {name:16s} host {rows[name]['host ms']:7.2f} ms   device {rows[name]['device ms']:7.2f} ms")
    waits = {k: events[k].cpu_time_total / 1e3 / count for k in WAITS if k in events}
    for k, v in waits.items():
        rep.line(f"  host waits: {k:28s} {v:7.2f} ms a step ({events[k].count / count:.1f} a step)")
    rep.data["profile"] = {"wall ms a step": wall, "regions": rows, "waits": waits, "steps": count}
    (rep.out / "profile_table.txt").write_text(prof.key_averages().table(sort_by="cpu_time_total", row_limit=60))


# --- 3. tests ----------------------------------------------------------------------------------------
def run_pytest(rep: Report, label: str, args: list[str], timeout: float) -> None:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rs", *args]
    t = time.perf_counter()
    try:
        proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=max(timeout, 10))
        output, rc = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as e:
        output = (e.stdout or b"").decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        output, rc = output + f"\n(stopped after {timeout:.0f} s)", "timeout"
    seconds = time.perf_counter() - t
    lines = output.strip().splitlines()
    summary = lines[-1] if lines else "(no output)"
    rep.line(f"  {label}: rc {rc}, {seconds:.0f} s: {summary}")
    failed = [ln for ln in lines if ln.startswith(("FAILED", "ERROR", "SKIPPED"))]
    for ln in failed[:15]:
        rep.line(f"    {ln[:220]}")
    if rc not in (0, 5) and not failed:
        for ln in lines[-25:]:
            rep.line(f"    | {ln[:220]}")
    rep.data.setdefault("tests", {})[label] = {"rc": rc, "seconds": seconds, "summary": summary, "notes": failed}
    (rep.out / f"pytest_{label.split()[0]}.log").write_text(output)


def tests(rep: Report, which: str, budget: float) -> None:
    rep.line(
        f"== tests (CUDA available: {torch.cuda.is_available()}; SJC_SD_MODEL "
        f"{os.environ.get('SJC_SD_MODEL') or 'unset'})"
    )
    start = time.perf_counter()
    run_pytest(rep, "gpu (-m gpu)", ["-m", "gpu"], budget)
    if which == "all":
        left = budget - (time.perf_counter() - start)  # about 15 s on 2 CPU cores
        run_pytest(rep, "smoke (test_render.py test_sd.py)", ["tests/test_render.py", "tests/test_sd.py"], left)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--small", action="store_true", help="tiny sizes and few steps: a check of the code paths")
    parser.add_argument("--warmup", type=int, default=None, help="untimed SJC steps (default 30, small 2)")
    parser.add_argument("--steps", type=int, default=None, help="timed SJC steps (default 100, small 3)")
    parser.add_argument("--tests", choices=("all", "gpu", "none"), default=None, help="default all, small gpu")
    parser.add_argument("--test-budget", type=float, default=150.0, help="seconds for the tests at most")
    parser.add_argument(
        "--only", nargs="*", choices=("agree", "speed", "steps", "zero123", "variants", "tests"), default=None
    )
    parser.add_argument(
        "--profile", action="store_true", help="only the step variants and the profile (--only variants)"
    )
    parser.add_argument(
        "--compile-modes",
        nargs="*",
        default=["default"],
        choices=("off", "default", "reduce-overhead", "max-autotune"),
        help="torch.compile modes the variants try (besides off)",
    )
    parser.add_argument("--out", default=os.environ.get("OUT") or str(ROOT / "out" / "device"))
    args = parser.parse_args()
    device = torch.device(args.device)
    warmup = args.warmup if args.warmup is not None else (2 if args.small else 30)
    timed = args.steps if args.steps is not None else (3 if args.small else 100)
    which = args.tests or ("gpu" if args.small else "all")
    only = set(
        args.only or (("variants",) if args.profile else ("agree", "speed", "steps", "zero123", "variants", "tests"))
    )
    rep = Report(Path(args.out))
    start = time.perf_counter()
    environment(rep, device)
    rep.save()
    sections = [
        ("agree", lambda: render_agreement(rep, device, args.small)),
        ("speed", lambda: render_speed(rep, device, args.small)),
        ("steps", lambda: sjc_steps(rep, device, args.small, warmup, timed)),
        ("zero123", lambda: zero123_steps(rep, device, args.small, warmup, timed)),
        (
            "variants",
            lambda: step_variants(rep, device, args.small, warmup, timed, args.compile_modes, profile=True),
        ),
        ("tests", lambda: tests(rep, which, args.test_budget)),
    ]
    for name, section in sections:
        if name not in only or (name == "tests" and which == "none"):
            continue
        t = time.perf_counter()
        try:
            section()
        except Exception:  # noqa: BLE001 - report it and go on to the next section
            rep.line(f"  {name} FAILED:")
            for ln in traceback.format_exc().splitlines()[-12:]:
                rep.line(f"    {ln}")
            rep.data.setdefault("errors", {})[name] = traceback.format_exc()
        rep.line(f"  ({name}: {time.perf_counter() - t:.0f} s)")
        rep.save()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    rep.line(f"== done in {time.perf_counter() - start:.0f} s")
    rep.save()


if __name__ == "__main__":
    main()
