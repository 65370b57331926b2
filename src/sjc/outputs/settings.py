"""Settings of the files a run ends with: turntable, contact sheet and mesh. Imports no torch."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ExportConfig:
    turntable_frames: int = 48
    """Frames of the turntable video."""
    turntable_size: int = 128
    """Side of the turntable and contact-sheet renders, pixels of the prior's data space (SD latents decode 8x)."""
    mesh_threshold: float = 0.5
    """Marching-cubes level on the voxel alpha (alpha of one voxel-length step)."""
    mesh_upsample: int = 2
    """Marching cubes runs on the field resampled (trilinearly, as the renderer reads it) to this many times its
    resolution: a finer staircase for the smoothing to remove."""
    mesh_smoothing: int = 30
    """Passes of Taubin's volume-keeping smoothing of the mesh (0 keeps marching cubes' staircase)."""
