"""A tiny random Stable Diffusion, written to a folder laid out like a diffusers checkpoint.

Small UNet2DConditionModel, AutoencoderKL (4 blocks, so latents are 1/8 of the image side, as in
SD), CLIP text model, and a CLIP tokenizer from a vocabulary written here: nothing comes from the hub.
"""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import torch

# Nothing may come from the hub: huggingface_hub reads this once, when it is first imported.
os.environ["HF_HUB_OFFLINE"] = "1"

TEXT_DIM = 32
MAX_TOKENS = 16
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
# Merges of a few word pieces the tests use, so the tokenizer does real BPE work.
MERGES = [("o", "f</w>"), ("v", "i"), ("vi", "e"), ("vie", "w</w>"), ("a", "m"), ("b", "u"), ("e", "r</w>")]


def write_tokenizer_files(folder: Path) -> tuple[Path, Path]:
    """vocab.json (every letter and digit, alone and word-final, the merge results, the two special
    tokens) and merges.txt; returns their paths."""
    folder.mkdir(parents=True, exist_ok=True)
    symbols = list(string.ascii_lowercase + string.digits + ".,'!-")
    tokens = symbols + [s + "</w>" for s in symbols] + ["".join(pair) for pair in MERGES] + [BOS, EOS]
    vocab = {token: i for i, token in enumerate(dict.fromkeys(tokens))}
    vocab_path, merges_path = folder / "vocab.json", folder / "merges.txt"
    vocab_path.write_text(json.dumps(vocab))
    merges_path.write_text("#version: 0.2\n" + "\n".join(f"{a} {b}" for a, b in MERGES) + "\n")
    return vocab_path, merges_path


def write_tokenizer_folder(folder: Path) -> Path:
    """A tokenizer folder as SD checkpoints ship it: vocab.json, merges.txt, tokenizer_config.json."""
    write_tokenizer_files(folder)
    config = {
        "tokenizer_class": "CLIPTokenizer",
        "model_max_length": MAX_TOKENS,
        "bos_token": BOS,
        "eos_token": EOS,
        "unk_token": EOS,
        "pad_token": EOS,
        "do_lower_case": True,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    return folder


def tiny_unet(in_channels: int, cross_attention_dim: int):
    """A two-level UNet2DConditionModel of 4 output channels, its random output layer scaled up (random-init output
    convolutions are small: this makes the tests compare non-trivial outputs)."""
    from diffusers import UNet2DConditionModel

    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
    )
    with torch.no_grad():
        unet.conv_out.weight.normal_(0, 0.1)
    return unet


def tiny_vae():
    """An AutoencoderKL of four blocks, so latents are 1/8 of the image side, as in Stable Diffusion."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        norm_num_groups=8,
        latent_channels=4,
        sample_size=64,
    )


def build_tiny_sd(folder: Path, prediction_type: str = "epsilon", seed: int = 0) -> Path:
    """Write tokenizer/, text_encoder/, unet/, vae/, scheduler/ and model_index.json under `folder`."""
    from diffusers import DDPMScheduler
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = Path(folder)
    write_tokenizer_folder(folder / "tokenizer")
    vocab = json.loads((folder / "tokenizer" / "vocab.json").read_text())
    torch.manual_seed(seed)
    text_config = CLIPTextConfig(
        vocab_size=len(vocab),
        hidden_size=TEXT_DIM,
        intermediate_size=37,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=MAX_TOKENS,
        projection_dim=TEXT_DIM,
        bos_token_id=vocab[BOS],
        eos_token_id=vocab[EOS],
        pad_token_id=vocab[EOS],
    )
    CLIPTextModel(text_config).save_pretrained(folder / "text_encoder")
    tiny_unet(4, TEXT_DIM).save_pretrained(folder / "unet")
    tiny_vae().save_pretrained(folder / "vae")
    DDPMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        prediction_type=prediction_type,
    ).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder
