"""The files a finished field is shown and shared as: turntable (MP4 and GIF, with a depth strip), a
contact sheet of views, and a coloured mesh (glb), all from the settings in `outputs.settings`."""

from __future__ import annotations

from pathlib import Path

from ..core.denoisers import Prior
from ..core.voxel import VoxelField
from . import mesh, video
from .settings import ExportConfig


def write_outputs(
    field: VoxelField, prior: Prior, out_dir: str | Path, settings: ExportConfig = ExportConfig()
) -> dict[str, Path]:
    """Write turntable.mp4/.gif, views.png and mesh.glb into `out_dir`; returns {kind: path}. An empty field
    has no surface: the mesh is then left out with a message, and the pictures are still written."""
    out_dir, e = Path(out_dir), settings
    files: dict[str, Path] = {}
    written = video.write_turntable(
        field, out_dir / "turntable", n_frames=e.turntable_frames, size=e.turntable_size, decode=prior.decode
    )
    for path in written:
        files[Path(path).suffix.lstrip(".")] = Path(path)
    files["views"] = Path(video.contact_sheet(field, out_dir / "views.png", size=e.turntable_size, decode=prior.decode))
    try:
        # RGB fields colour the mesh themselves; latent ones are baked from views the prior decodes.
        surface = mesh.extract_mesh(
            field,
            threshold=e.mesh_threshold,
            resolution=field.resolution * e.mesh_upsample,
            smoothing=e.mesh_smoothing,
            decode=prior.decode,
            bake_size=e.turntable_size,
        )
        files["mesh"] = Path(mesh.write_mesh(surface, out_dir / "mesh.glb"))
    except ValueError as err:
        print(f"no mesh written: {err}")
    return files
