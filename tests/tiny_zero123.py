"""A tiny random Zero-1-to-3, written to a folder laid out like the published diffusers conversions.

unet/ (UNet2DConditionModel, 8 input channels), vae/ (AutoencoderKL, latents 1/8 of the image side),
image_encoder/ (CLIPVisionModelWithProjection), cc_projection/ (a ModelMixin's config.json and weights holding one
Linear as `projection`), scheduler/ (DDIM, as the conversions ship it): nothing comes from the hub.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from tiny_sd import tiny_unet, tiny_vae

os.environ["HF_HUB_OFFLINE"] = "1"  # nothing may come from the hub

IMAGE_DIM = 24  # the CLIP image embedding's width (768 in the real model)
CONTEXT_DIM = 32  # the UNet's cross-attention width (768 in the real model)
CLIP_SIZE = 32  # the image encoder's input side (224 in the real model)


def build_tiny_zero123(folder: Path, seed: int = 0, projection_format: str = "safetensors") -> Path:
    """Write the five subfolders and model_index.json under `folder`; returns it."""
    from diffusers import DDIMScheduler
    from safetensors.torch import save_file
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    folder = Path(folder)
    torch.manual_seed(seed)
    tiny_unet(8, CONTEXT_DIM).save_pretrained(folder / "unet")  # the noisy latent and the reference's
    tiny_vae().save_pretrained(folder / "vae")
    vision = CLIPVisionConfig(
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=2,
        num_attention_heads=2,
        image_size=CLIP_SIZE,
        patch_size=8,
        projection_dim=IMAGE_DIM,
    )
    CLIPVisionModelWithProjection(vision).save_pretrained(folder / "image_encoder")
    projection = torch.nn.Linear(IMAGE_DIM + 4, CONTEXT_DIM)
    with torch.no_grad():
        projection.weight.normal_(0, 0.3)
    state = {
        "projection.weight": projection.weight.detach().clone(),
        "projection.bias": projection.bias.detach().clone(),
    }
    (folder / "cc_projection").mkdir(parents=True, exist_ok=True)
    config = {"_class_name": "CCProjection", "in_channel": IMAGE_DIM + 4, "out_channel": CONTEXT_DIM}
    (folder / "cc_projection" / "config.json").write_text(json.dumps(config))
    if projection_format == "safetensors":
        save_file(state, str(folder / "cc_projection" / "diffusion_pytorch_model.safetensors"))
    else:
        torch.save(state, folder / "cc_projection" / "diffusion_pytorch_model.bin")
    DDIMScheduler(
        beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False
    ).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "Zero1to3StableDiffusionPipeline"}))
    return folder
