"""The learned toy prior: a small class- and view-conditional UNet with EDM preconditioning, trained by
`sjc train-prior` on toy renders and shipped with the package (`--prior toy-learned`).

Unlike the exact toy prior, this denoiser has only ever seen noisy inputs, so it shows what the paper is
about: scoring a clean render directly (naive) is out of distribution, perturbing it first (PAAS) is not.

EDM preconditioning (Karras et al. 2022, Table 1), with sigma_data the data's standard deviation:
    D(x; sigma) = c_skip(sigma) x + c_out(sigma) F(c_in(sigma) x; c_noise(sigma), class, view)
    c_skip = sigma_data^2 / (sigma^2 + sigma_data^2)      c_out = sigma sigma_data / sqrt(sigma^2 + sigma_data^2)
    c_in   = 1 / sqrt(sigma^2 + sigma_data^2)               c_noise = ln(sigma) / 4
and the training loss weight lambda(sigma) = 1 / c_out^2 = (sigma^2 + sigma_data^2) / (sigma sigma_data)^2.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..core.cameras import View, view_bucket
from ..core.denoisers import ClassifierFreeGuidance, _per_sample
from ..core.errors import UserError
from ..core.methods import Branches
from ..core.settings import VSD_LR
from .settings import EMPTY_SCENE, LEARNED_GUIDANCE_SCALE
from .toy import BACKGROUND, SIGMA_RANGE, PromptError, parse_prompt

VIEWS = ("front", "side", "back", "overhead")  # view-bucket tokens; index len(VIEWS) is "no view"
SHIPPED_WEIGHTS = "toy_learned.safetensors"  # inside the package's weights/ folder


class WeightsError(UserError, ValueError):
    """Learned-prior weights that are missing, unreadable or of another format."""


# --- EDM preconditioning ---------------------------------------------------------------------
def edm_scalings(sigma: Tensor, sigma_data: float) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """c_skip, c_out, c_in, c_noise of EDM for noise levels sigma (any shape)."""
    s2, d2 = sigma.square(), sigma_data**2
    c_skip = d2 / (s2 + d2)
    c_out = sigma * sigma_data / (s2 + d2).sqrt()
    c_in = 1 / (s2 + d2).sqrt()
    c_noise = sigma.log() / 4
    return c_skip, c_out, c_in, c_noise


def edm_loss_weight(sigma: Tensor, sigma_data: float) -> Tensor:
    """lambda(sigma) = 1 / c_out^2: every sigma then trains F towards a unit-variance target."""
    return (sigma.square() + sigma_data**2) / (sigma * sigma_data).square()


# --- the network -----------------------------------------------------------------------------
@dataclass(frozen=True)
class UNetSpec:
    """Architecture of the learned toy prior; saved with the weights, so a file rebuilds its network."""

    n_classes: int
    channels: tuple[int, ...] = (64, 128, 128)  # per resolution level, 32 -> 16 -> 8 pixels
    blocks: int = 2  # residual blocks per level on the way down (one more on the way up)
    emb_dim: int = 256
    attention: bool = True  # self-attention in the middle, at the lowest resolution
    dropout: float = 0.0


def _groups(channels: int) -> int:
    return math.gcd(32, channels // 4) or 1


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; the noise/condition embedding scales and shifts the middle."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1, self.conv1 = nn.GroupNorm(_groups(cin), cin), nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout)
        self.norm2, self.conv2 = nn.GroupNorm(_groups(cout), cout), nn.Conv2d(cout, cout, 3, padding=1)
        self.dropout = nn.Dropout(dropout)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()
        nn.init.zeros_(self.conv2.weight)  # each block starts as the identity
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb(emb)[:, :, None, None].chunk(2, dim=1)
        h = F.silu(torch.addcmul(shift, self.norm2(h), 1 + scale))
        return self.skip(x) + self.conv2(self.dropout(h))


class Attention(nn.Module):
    """Multi-head self-attention over the pixels of a small feature map."""

    def __init__(self, channels: int, head_dim: int = 32) -> None:
        super().__init__()
        self.heads = max(channels // head_dim, 1)
        self.norm, self.qkv = nn.GroupNorm(_groups(channels), channels), nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor) -> Tensor:
        B, C, H, W = x.shape
        q, k, v = self.qkv(self.norm(x)).view(B, 3, self.heads, C // self.heads, H * W).transpose(-1, -2).unbind(1)
        h = F.scaled_dot_product_attention(q, k, v)  # [B, heads, HW, C / heads]
        return x + self.proj(h.transpose(-1, -2).reshape(B, C, H, W))


class ToyUNet(nn.Module):
    """F(x_in; c_noise, class, view) -> [B, 3, S, S]. Class index n_classes and view index len(VIEWS)
    are the "dropped" tokens of classifier-free guidance."""

    def __init__(self, spec: UNetSpec) -> None:
        super().__init__()
        self.spec = spec
        ch, E = spec.channels, spec.emb_dim
        self.register_buffer("freqs", torch.exp(torch.linspace(0, math.log(1000.0), ch[0] // 2)), persistent=False)
        self.noise_mlp = nn.Sequential(nn.Linear(ch[0], E), nn.SiLU(), nn.Linear(E, E))
        self.class_emb = nn.Embedding(spec.n_classes + 1, E)
        self.view_emb = nn.Embedding(len(VIEWS) + 1, E)
        self.inp = nn.Conv2d(3, ch[0], 3, padding=1)
        self.down, self.downsample = nn.ModuleList(), nn.ModuleList()
        skips, c = [ch[0]], ch[0]
        for i, co in enumerate(ch):
            level = nn.ModuleList()
            for _ in range(spec.blocks):
                level.append(ResBlock(c, co, E, spec.dropout))
                c = co
                skips.append(c)
            self.down.append(level)
            if i < len(ch) - 1:
                self.downsample.append(nn.Conv2d(c, c, 3, stride=2, padding=1))
                skips.append(c)
        self.mid1, self.mid2 = ResBlock(c, c, E, spec.dropout), ResBlock(c, c, E, spec.dropout)
        self.mid_attn = Attention(c) if spec.attention else nn.Identity()
        self.up, self.upsample = nn.ModuleList(), nn.ModuleList()
        for i, co in reversed(list(enumerate(ch))):
            level = nn.ModuleList()
            for _ in range(spec.blocks + 1):
                level.append(ResBlock(c + skips.pop(), co, E, spec.dropout))
                c = co
            self.up.append(level)
            if i > 0:
                self.upsample.append(nn.Conv2d(c, c, 3, padding=1))
        self.out_norm, self.out = nn.GroupNorm(_groups(c), c), nn.Conv2d(c, 3, 3, padding=1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def embed(self, c_noise: Tensor, class_id: Tensor, view_id: Tensor) -> Tensor:
        angles = c_noise.reshape(-1, 1) * self.freqs
        noise = self.noise_mlp(torch.cat([angles.cos(), angles.sin()], dim=1))
        return F.silu(noise + self.class_emb(class_id) + self.view_emb(view_id))

    def forward(self, x: Tensor, c_noise: Tensor, class_id: Tensor, view_id: Tensor) -> Tensor:
        emb = self.embed(c_noise, class_id, view_id)
        h = self.inp(x)
        skips = [h]
        for i, level in enumerate(self.down):
            for block in level:
                h = block(h, emb)
                skips.append(h)
            if i < len(self.downsample):
                h = self.downsample[i](h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for i, level in enumerate(self.up):
            for block in level:
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            if i < len(self.upsample):
                h = self.upsample[i](F.interpolate(h, scale_factor=2.0, mode="nearest"))
        return self.out(F.silu(self.out_norm(h)))


class EDMDenoiser(nn.Module):
    """D(x; sigma, class, view) = c_skip x + c_out F(c_in x; c_noise, class, view)."""

    def __init__(self, net: ToyUNet, sigma_data: float) -> None:
        super().__init__()
        self.net, self.sigma_data = net, float(sigma_data)

    def forward(self, x: Tensor, sigma: Tensor, class_id: Tensor, view_id: Tensor) -> Tensor:
        sigma = _per_sample(sigma, x).expand(x.shape[0], 1, 1, 1)
        c_skip, c_out, c_in, c_noise = edm_scalings(sigma, self.sigma_data)
        return c_skip * x + c_out * self.net(c_in * x, c_noise.reshape(-1), class_id, view_id)


# --- weights files ---------------------------------------------------------------------------
def save_weights(path: str | Path, model: EDMDenoiser, prompts: Sequence[str], info: dict | None = None) -> None:
    """safetensors of the network, with the architecture, prompts and sigma_data as metadata."""
    meta = {
        "format": "sjc-toy-learned-1",
        "spec": json.dumps(asdict(model.net.spec)),
        "prompts": json.dumps(list(prompts)),
        "sigma_data": repr(model.sigma_data),
        "info": json.dumps(info or {}),
    }
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in model.net.state_dict().items()}
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    save_file(tensors, str(tmp), metadata=meta)
    tmp.replace(path)


def shipped_weights_path() -> Path:
    return Path(str(resources.files("sjc.priors") / "weights" / SHIPPED_WEIGHTS))


def load_weights(
    path: str | Path | None = None, device: torch.device | str = "cpu"
) -> tuple[EDMDenoiser, list[str], dict]:
    """The denoiser, its prompts and its training info from a weights file (None: the shipped one)."""
    path = Path(path) if path is not None else shipped_weights_path()
    if not path.is_file():
        raise WeightsError(f"no learned toy prior weights at {path}; train them with `sjc train-prior`")
    try:
        from safetensors import safe_open

        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != "sjc-toy-learned-1":
            raise WeightsError(f"{path} is not a learned toy prior weights file (no sjc-toy-learned-1 metadata)")
        spec = json.loads(meta["spec"])
        spec = UNetSpec(**{**spec, "channels": tuple(spec["channels"])})
        net = ToyUNet(spec)
        net.load_state_dict(load_file(str(path)))
    except WeightsError:
        raise
    except Exception as err:  # a torn or foreign file: say which, and how to get a good one
        raise WeightsError(f"cannot read learned toy prior weights {path}: {err}") from err
    model = EDMDenoiser(net, float(meta["sigma_data"])).to(device).eval().requires_grad_(False)
    return model, json.loads(meta["prompts"]), json.loads(meta.get("info", "{}"))


# --- the prior -------------------------------------------------------------------------------
class LearnedToyPrior:
    """The learned toy prior as the 3D loop and the 2D commands see it (see `denoisers.Prior`).

    Conditions are (class index, view index) pairs; with a guidance scale other than 1, a pair of pairs
    (conditional, unconditional) scored with classifier-free guidance in one batched call."""

    channels = 3
    feature_activation = "sigmoid"
    background = BACKGROUND
    sigma_min, sigma_max = SIGMA_RANGE  # the 3D loop's range, as for the exact toy prior
    sigmas = None

    def __init__(
        self,
        model: EDMDenoiser,
        prompts: Sequence[str],
        prompt: str,
        view_conditioning: bool = True,
        guidance_scale: float = LEARNED_GUIDANCE_SCALE,
        info: dict | None = None,
    ) -> None:
        self.model, self.prompts = model, [parse_prompt(p).prompt for p in prompts]
        self.image_size = int(info.get("image_size", 32)) if info else 32
        self.view_conditioning, self.guidance_scale, self.info = view_conditioning, guidance_scale, info or {}
        self.prompt = self.resolve(prompt)
        self.class_id = self.prompts.index(self.prompt)
        self.null = (len(self.prompts), len(VIEWS))
        self._cfg = ClassifierFreeGuidance(self._denoise_batch, guidance_scale) if guidance_scale != 1 else None

    @classmethod
    def from_file(
        cls, prompt: str, path: str | Path | None = None, *, device: torch.device | str = "cpu", **kwargs
    ) -> LearnedToyPrior:
        """The prior of `prompt` from a weights file (None: the shipped one); kwargs go to the constructor."""
        model, prompts, info = load_weights(path, device)
        return cls(model, prompts, prompt, info=info, **kwargs)

    def resolve(self, prompt: str) -> str:
        """The canonical form of a prompt the network was trained on; PromptError otherwise."""
        canonical = parse_prompt(prompt).prompt
        if canonical not in self.prompts:
            raise PromptError(
                f"the learned toy prior was not trained on {canonical!r}; it knows: {', '.join(self.prompts)} "
                "(use --prior toy for any prompt of the toy grammar)"
            )
        return canonical

    def condition(self, view: View | None = None) -> Hashable:
        """(class, view bucket) indices, the dropped view token with no view or view conditioning off; with
        guidance, paired with the dropped tokens (the unconditional branch)."""
        cond = (self.class_id, self._view_id(view))
        return (cond, self.null) if self._cfg is not None else cond

    def _view_id(self, view: View | None) -> int:
        return VIEWS.index(view_bucket(view)) if view is not None and self.view_conditioning else len(VIEWS)

    def branches(self, view: View | None = None, negative_prompt: str | None = None) -> Branches:
        """For the guided methods (`core.methods`): the unguided network with the (class, view) tokens of the
        prompt, the dropped tokens (its unconditional branch) and a negative prompt's (None or '': the dropped
        tokens, as Stable Diffusion's empty negative prompt; else one of its classes, seen from the same view)."""
        view_id = self._view_id(view)
        if negative_prompt in (None, ""):
            negative = self.null
        elif negative_prompt == EMPTY_SCENE:
            raise PromptError(f"the learned toy prior has no {EMPTY_SCENE!r}; give one of: {', '.join(self.prompts)}")
        else:
            negative = (self.prompts.index(self.resolve(negative_prompt)), view_id)
        return Branches(self._denoise_batch, (self.class_id, view_id), self.null, negative)

    def online_copy(self, lr: float = VSD_LR) -> OnlineCopy:
        """A copy of the network for variational score distillation, trained online on the field's renders."""
        return OnlineCopy(self, lr)

    def _denoise_batch(self, x: Tensor, sigma: Tensor, cond) -> Tensor:
        """cond: one (class, view) pair for the whole batch, or a list of pairs, one per image."""
        pairs = cond if isinstance(cond, list) else [cond] * x.shape[0]
        ids = torch.tensor(pairs, dtype=torch.long, device=x.device)
        param = next(self.model.parameters())
        sigma = torch.as_tensor(sigma, device=x.device).reshape(-1).expand(x.shape[0])
        with torch.no_grad():
            out = self.model(x.to(param.dtype), sigma.to(param.dtype), ids[:, 0], ids[:, 1])
        return out.to(x.dtype)

    def denoise(self, x: Tensor, sigma: Tensor, cond: Hashable) -> Tensor:
        """The network's estimate of E[y | x] [B, 3, S, S] at noise level sigma [B] (no gradient)."""
        if tuple(x.shape[1:]) != (3, self.image_size, self.image_size):
            raise ValueError(
                f"the learned toy prior expects images [B, 3, {self.image_size}, {self.image_size}], "
                f"got {tuple(x.shape)}"
            )
        return self._cfg(x, sigma, cond) if self._cfg is not None else self._denoise_batch(x, sigma, cond)

    def decode(self, x: Tensor) -> Tensor:
        return x


class OnlineCopy:
    """ProlificDreamer's second network, for --scoring.method vsd: a full copy of the prior's (1.36 M parameters;
    the network is small enough that no LoRA is needed), starting equal to it and conditioned on the prompt and
    the camera's view bucket. `train_step` takes one Adam step of the EDM-weighted denoising loss on the render
    just scored, at sigma drawn as the prior was trained (ln sigma ~ N(-0.8, 1.4^2)), so D_phi follows the
    distribution of the field's renders."""

    P_MEAN, P_STD = -0.8, 1.4  # the shipped network's training distribution of ln sigma (`sjc train-prior`)

    def __init__(self, prior: LearnedToyPrior, lr: float = VSD_LR) -> None:
        self.prior = prior
        self.model = copy.deepcopy(prior.model).requires_grad_(True).train()
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)

    def _ids(self, view: View | None, n: int, device: torch.device) -> tuple[Tensor, Tensor]:
        ids = torch.tensor([self.prior.class_id, self.prior._view_id(view)], dtype=torch.long, device=device)
        return ids[0].expand(n), ids[1].expand(n)

    @torch.no_grad()
    def denoise(self, x: Tensor, sigma: float, view: View | None) -> Tensor:
        """D_phi(x; sigma) of the adapted copy [B, 3, S, S]."""
        sigmas = torch.full((x.shape[0],), float(sigma), device=x.device)
        return self.model(x.float(), sigmas, *self._ids(view, x.shape[0], x.device)).to(x.dtype)

    def train_step(self, y: Tensor, view: View | None, generator: torch.Generator | None = None) -> float:
        """One update on the renders y [B, 3, S, S]; returns the weighted loss."""
        y = y.detach().float()
        n = y.shape[0]
        sigma = torch.exp(self.P_MEAN + self.P_STD * torch.randn(n, generator=generator, device=y.device))
        noise = torch.randn(y.shape, generator=generator, device=y.device)
        with torch.enable_grad():
            per_image = self.model(y + sigma[:, None, None, None] * noise, sigma, *self._ids(view, n, y.device)) - y
            loss = (edm_loss_weight(sigma, self.model.sigma_data) * per_image.square().mean((1, 2, 3))).mean()
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        self.optimizer.step()
        return float(loss.detach())
