"""sjc: Score Jacobian Chaining, lifting pretrained 2D diffusion models to 3D.

The Python API is the objects the command line uses, importable from here (docs/python-api.md):
build a prior (`build_prior`, or `DenoiserPrior` around any denoiser), a field (`build_field`), run the
fit (`fit`, with a callback per step; or `generate` for a run folder with checkpoints and resume), and
write the outputs (`write_outputs`). The layers are described in docs/ARCHITECTURE.md. Names are
imported on first use, so `import sjc` stays light (the command line's help imports no torch).
"""

from __future__ import annotations

import importlib
import os
from typing import Any

__version__ = "0.1.0"

# OpenMP threads that wait at a barrier sleep instead of spinning (unless the user chose otherwise). Spinning
# wins a little on an idle machine, but beside another busy process the spinning threads take the cores the
# working ones need, and each of a step's hundreds of parallel regions waits on a descheduled thread: 2-3x
# slower steps at two threads on two cores (docs/CONVENTIONS.md, "Threads"). Read when torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# name -> module (relative to this package) that defines it
API = {
    # core: the algorithm
    "Camera": "core.cameras",
    "View": "core.cameras",
    "camera_from_view": "core.cameras",
    "Denoiser": "core.denoisers",
    "Prior": "core.denoisers",
    "UserError": "core.errors",
    "ConfigError": "core.errors",
    "FieldConfig": "core.settings",
    "CameraConfig": "core.settings",
    "ScoringConfig": "core.settings",
    "LossConfig": "core.settings",
    "OptimConfig": "core.settings",
    "FitSettings": "core.settings",
    "build_field": "core.fit",
    "fit": "core.fit",
    "FitStep": "core.fit",
    "FitResult": "core.fit",
    "Reference": "core.fit",
    "PerspectiveCameras": "core.fit",
    "make_generators": "core.fit",
    "pick_device": "core.fit",
    "render": "core.render",
    "VoxelField": "core.voxel",
    "optimise_canvas": "core.canvas",
    "canvas_sigmas": "core.canvas",
    "sample_ode": "core.canvas",
    "karras_sigmas": "core.canvas",
    # priors
    "build_prior": "priors",
    "DenoiserPrior": "priors.custom",
    # outputs
    "write_outputs": "outputs.files",
    "ExportConfig": "outputs.settings",
    # app: reference pictures for image-to-3D
    "read_picture": "app.runs.picture",
    "make_reference": "app.runs.picture",
    "ImageConfig": "app.settings.config",
    # app: run folders and configurations
    "GenerateConfig": "app.settings.config",
    "preset": "app.settings.presets",
    "generate": "app.runs.generate",
    "load_run": "app.runs.generate",
    "RunResult": "app.runs.generate",
}
__all__ = ["__version__", *API]


def __getattr__(name: str) -> Any:
    if name not in API:
        raise AttributeError(f"module 'sjc' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{API[name]}", __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
