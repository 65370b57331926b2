"""Finding and reading diffusers checkpoints: one loader for every network prior (Stable Diffusion, pixel UNets).

A model is a local folder (checked for the files a layout needs) or a Hugging Face model id (read from the
local Hugging Face cache, or the hub when online). Whatever goes wrong, absent packages, folders or files,
ends as one `WeightsNotFoundError` that says where it looked and how to get the weights.
diffusers and transformers are imported only here, only when a model is read (the `[sd]` extra).
"""

from __future__ import annotations

import importlib
import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..core.errors import UserError

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
# A layout: (subfolder, names) pairs, any one of the names will do. An empty subfolder is the folder itself.
Layout = tuple[tuple[str, tuple[str, ...]], ...]


class WeightsNotFoundError(UserError):
    """Network weights, or the packages that read them, are not available."""


@dataclass(frozen=True)
class ModelKind:
    """What a kind of checkpoint is called, where it is named on the command line and how its folders look."""

    title: str  # e.g. 'Stable Diffusion model'
    flag: str  # e.g. '--sd.model'
    example: str  # a model id to name in messages
    layouts: tuple[Layout, ...]  # the folder layouts accepted, tried in order
    holds: str  # the layouts in words, for messages
    download: str = ""  # `hf download` options fetching only what sjc reads, e.g. '--include "*.json" ...'
    size: str = ""  # what that download weighs, in words ('about 4 GB')

    def how_to(self, local: bool, model: str) -> str:
        if local:
            return (
                f"Give {self.flag} a folder holding {self.holds}, or a Hugging Face model id such as "
                f"{self.example} whose files are in your Hugging Face cache."
            )
        options = f" {self.download}" if self.download else ""
        size = f", {self.size}" if self.size else ""
        return (
            f"Download it once, online, with `hf download {model}{options}` (it lands in that cache{size}), or give "
            f"{self.flag} a local folder holding {self.holds}."
        )

    def not_found(self, model: str, where: str, reason: str, local: bool = True) -> WeightsNotFoundError:
        how_to = self.how_to(local, model)
        return WeightsNotFoundError(f"{self.title} {model!r} not found: looked for {where}; {reason}. {how_to}")


def resolve_dtype(name: str, device: torch.device | str) -> torch.dtype:
    """'auto' is float16 on CUDA and float32 elsewhere; otherwise the named dtype."""
    if name == "auto":
        return torch.float16 if torch.device(device).type == "cuda" else torch.float32
    if name not in DTYPES:
        raise ValueError(f"unknown dtype {name!r}; use 'auto', {', '.join(repr(k) for k in DTYPES)}")
    return DTYPES[name]


def hub_cache_dir() -> str:
    """Where huggingface_hub keeps downloaded models ($HF_HUB_CACHE, $HF_HOME/hub, or the default)."""
    try:
        from huggingface_hub import constants

        return str(constants.HF_HUB_CACHE)
    except ImportError:
        home = os.environ.get("HF_HOME", os.path.join(os.path.expanduser("~"), ".cache", "huggingface"))
        return os.environ.get("HF_HUB_CACHE", os.path.join(home, "hub"))


def where_on_hub(model: str) -> str:
    """Where a model named by a hub id was looked for (for missing-weights messages)."""
    where = f"a local folder named {model!r} (none here), then the Hugging Face cache at {hub_cache_dir()}"
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return where + " (HF_HUB_OFFLINE is set, so nothing was downloaded)"
    return where + " and the hub"


def _missing(folder: Path, layout: Layout) -> list[str]:
    return [
        f"{sub}/{names[0]}" if sub else names[0]
        for sub, names in layout
        if not any((folder / sub / name).is_file() for name in names)
    ]


def locate(model: str, kind: ModelKind) -> tuple[Path | str, tuple[Layout, ...]]:
    """A checked local folder and the layout it has, or `model` itself (a hub id) with every layout to try."""
    path = Path(model).expanduser()
    if path.is_dir():
        for layout in kind.layouts:
            if not _missing(path, layout):
                return path, (layout,)
        missing = _missing(path, kind.layouts[0])
        reason = f"it lacks {', '.join(missing)}" if len(kind.layouts) == 1 else f"it holds neither {kind.holds}"
        raise kind.not_found(model, f"the folder {path.resolve()}", reason)
    if path.exists():
        raise kind.not_found(model, f"the folder {path.resolve()}", "it is a file, not a folder")
    if not REPO_ID.match(model):
        raise kind.not_found(model, f"the folder {path.resolve()}", "no such folder")
    return model, kind.layouts


def import_classes(model: str, kind: ModelKind, names: dict[str, str]) -> dict[str, Any]:
    """{key: class} for names 'package.Class' (diffusers, transformers): the [sd] extra, read on demand."""
    classes = {}
    try:
        for key, name in names.items():
            package, cls = name.rsplit(".", 1)
            classes[key] = getattr(importlib.import_module(package), cls)
    except ImportError as err:
        raise WeightsNotFoundError(
            f"{kind.title} {model!r} cannot be read: the [sd] extra is not installed ({err}). Install it with "
            f"`pip install 'sjc[sd]'` (diffusers, transformers), then give {kind.flag} a checkpoint folder or a "
            "Hugging Face model id in your Hugging Face cache."
        ) from None
    return classes


@contextmanager
def reading(model: str, kind: ModelKind, source: Path | str) -> Iterator[None]:
    """Within the block, what diffusers / transformers raise for absent or unreadable files becomes a
    WeightsNotFoundError naming where `model` was looked for; the hub client's deprecation chatter is hidden."""
    local = isinstance(source, Path)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=r"huggingface_hub\.")
            yield
    except (OSError, ValueError) as err:
        where = f"the folder {Path(source).resolve()}" if local else where_on_hub(model)
        reason = str(err).strip().splitlines()[0].rstrip(".")
        raise kind.not_found(model, where, reason, local) from None


# --- the network call: torch.compile, when asked ---------------------------------------------------
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune")
COMPILE_BACKEND = "inductor"  # torch.compile's backend (the tests use 'eager': tracing without code generation)


class CompiledNetwork:
    """A diffusers network called through `torch.compile` (static shapes: the guided batch of two has one shape a
    run), falling back to the plain module, once and with a warning, if compiling or the compiled call fails (no
    compiler on the machine, an unsupported operator). Attributes (`dtype`, `config`) are the module's."""

    def __init__(self, module: Any, mode: str = "default") -> None:
        if mode not in COMPILE_MODES[1:]:
            raise ValueError(f"unknown compile mode {mode!r}; use one of {', '.join(COMPILE_MODES)}")
        self.module, self.mode, self.failure = module, mode, None
        options = {} if mode == "default" else {"mode": mode}
        if COMPILE_BACKEND != "inductor":
            options = {"backend": COMPILE_BACKEND}
        self.compiled = torch.compile(module, dynamic=False, **options)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.failure is None:
            try:
                return self.compiled(*args, **kwargs)
            except Exception as err:  # noqa: BLE001 - any failure of the compiler: run the plain module instead
                self.failure = f"{type(err).__name__}: {str(err).strip().splitlines()[0] if str(err).strip() else ''}"
                warnings.warn(f"torch.compile of the network failed ({self.failure}); it runs uncompiled", stacklevel=2)
        return self.module(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)


def compiled(module: Any, mode: str, device: torch.device) -> Any:
    """`module` as the priors call it: itself for mode 'off', else a `CompiledNetwork`; on CUDA in channels-last
    memory layout (the convolutions' fastest there) when compiled."""
    if mode == "off":
        return module
    if torch.device(device).type == "cuda":
        module = module.to(memory_format=torch.channels_last)
    return CompiledNetwork(module, mode)
