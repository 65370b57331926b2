"""Tiny random pixel-space diffusers checkpoints of both kinds, written to folders as users get them.

`build_tiny_ddpm`: a UNet2DModel with a DDPMScheduler (alphas_cumprod schedule, eps- or v-prediction), in
DDPMPipeline.save_pretrained's layout (unet/, scheduler/) or the google/ddpm-* root layout.
`build_tiny_ve`: an NCSN++-style UNet2DModel (Fourier sigma embedding, skip blocks, output divided by sigma)
with a ScoreSdeVeScheduler, in the google/ncsnpp-* root layout. Nothing comes from the hub.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

os.environ["HF_HUB_OFFLINE"] = "1"  # read once by huggingface_hub when it is first imported

SIZE = 16
# The google/ncsnpp-ffhq-256 schedule: sigma from 0.01 to 348 over 2000 levels, data in [0, 1].
VE_SCHEDULE = {"num_train_timesteps": 2000, "sigma_min": 0.01, "sigma_max": 348.0, "snr": 0.15}


def _save(unet, scheduler, folder: Path, root_layout: bool, pipeline: str) -> Path:
    folder = Path(folder)
    if root_layout:
        unet.save_pretrained(folder)
        scheduler.save_config(folder)
    else:
        unet.save_pretrained(folder / "unet")
        scheduler.save_config(folder / "scheduler")
    components = {"unet": ["diffusers", "UNet2DModel"], "scheduler": ["diffusers", type(scheduler).__name__]}
    (folder / "model_index.json").write_text(json.dumps({"_class_name": pipeline, **components}))
    return folder


def _scale_output(unet, std: float = 0.1) -> None:
    # Random-init output convolutions are near zero; scale them so the tests compare non-trivial outputs.
    with torch.no_grad():
        unet.conv_out.weight.normal_(0, std)


def build_tiny_ddpm(folder: Path, prediction_type: str = "epsilon", root_layout: bool = False, seed: int = 0) -> Path:
    from diffusers import DDPMScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=SIZE,
        block_out_channels=(16, 32),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=8,
        attention_head_dim=8,
    )
    _scale_output(unet)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="linear", prediction_type=prediction_type)
    return _save(unet, scheduler, folder, root_layout, "DDPMPipeline")


def build_tiny_ve(folder: Path, root_layout: bool = True, seed: int = 0) -> Path:
    from diffusers import ScoreSdeVeScheduler, UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(
        sample_size=SIZE,
        block_out_channels=(32, 64),  # the skip blocks normalise in groups of 32 channels
        layers_per_block=1,
        time_embedding_type="fourier",
        down_block_types=("SkipDownBlock2D", "AttnSkipDownBlock2D"),
        up_block_types=("AttnSkipUpBlock2D", "SkipUpBlock2D"),
        mid_block_scale_factor=2**0.5,
        norm_num_groups=8,
        attention_head_dim=8,
    )
    _scale_output(unet)
    return _save(unet, ScoreSdeVeScheduler(**VE_SCHEDULE), folder, root_layout, "ScoreSdeVePipeline")
