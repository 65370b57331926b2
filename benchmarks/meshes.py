"""The mesh people download, against the true shape: how marching cubes' resolution and Taubin's smoothing change it.

For each field saved by `benchmarks/quality.py --fields DIR` (toy prompts: the truth is known), extracts the mesh
the way `sjc export` does under several settings and measures
- volume IoU: the solid the mesh encloses, voxelised at 96^3, against the true shape turned by the field's angle
  (the rotation the 3D IoU chose);
- normal error: the area-weighted mean angle (degrees) between each face's normal and the true surface's normal
  (the gradient of the primitive's signed distance) at the face's centre;
- faces and seconds.

    python benchmarks/quality.py --only suite --fields runs/fields
    python benchmarks/meshes.py runs/fields
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from sjc.core.voxel import VoxelField
from sjc.outputs import mesh as meshes
from sjc.outputs.metrics import evaluate_field, iou, mesh_occupancy, true_rotations
from sjc.priors import toy as toyworld

EVAL_RESOLUTION = 96
# (name, marching-cubes resolution as a multiple of the field's, Taubin passes)
SETTINGS = (
    ("field grid, raw", 1, 0),
    ("field grid, Taubin 10", 1, 10),
    ("field grid, Taubin 30", 1, 30),
    ("2x grid, raw", 2, 0),
    ("2x grid, Taubin 10", 2, 10),
    ("2x grid, Taubin 30", 2, 30),
)


def load_field(path: Path) -> tuple[VoxelField, dict]:
    with safe_open(str(path), framework="pt") as f:
        spec = json.loads(f.metadata()["spec"])
    info = {k: spec.pop(k) for k in ("prompt", "variant")}
    field = VoxelField(**spec)
    field.load_state_dict(load_file(str(path)))
    return field, info


def _to_truth_frame(points: np.ndarray, angle: float) -> np.ndarray:
    """Field coordinates -> the truth's: the field holds the truth turned by `angle` about +y."""
    c, s = math.cos(math.radians(angle)), math.sin(math.radians(angle))
    x, y, z = points.T
    return np.stack([c * x - s * z, y, s * x + c * z], axis=1)


def normal_error(mesh, scene: toyworld.Scene, angle: float, eps: float = 1e-3) -> float:
    """Area-weighted mean angle (degrees) between face normals and the true surface normals at the face centres."""
    centres = torch.from_numpy(_to_truth_frame(mesh.triangles_center, angle))
    normals = _to_truth_frame(mesh.face_normals, angle)
    grad = []
    for k in range(3):  # central differences of the signed distance
        step = torch.zeros(3, dtype=centres.dtype)
        step[k] = eps
        grad.append((toyworld.sdf(scene, centres + step) - toyworld.sdf(scene, centres - step)).double() / (2 * eps))
    true = torch.stack(grad, dim=1).numpy()
    true /= np.linalg.norm(true, axis=1, keepdims=True) + 1e-12
    cos = np.clip((normals * true).sum(axis=1), -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)) @ mesh.area_faces / mesh.area_faces.sum())


def measure(path: Path) -> list[dict]:
    field, info = load_field(path)
    scene = toyworld.parse_prompt(info["prompt"])
    angle = evaluate_field(field, scene)["angle"]
    truth = true_rotations(scene.shape, EVAL_RESOLUTION, [angle])[0]
    rows = []
    for name, factor, passes in SETTINGS:
        start = time.perf_counter()
        resolution = None if factor == 1 else factor * field.resolution
        mesh = meshes.extract_mesh(field, resolution=resolution, smoothing=passes)
        seconds = time.perf_counter() - start
        volume = iou(mesh_occupancy(mesh, EVAL_RESOLUTION), truth)
        rows.append(
            {
                "prompt": info["prompt"],
                "variant": info["variant"],
                "setting": name,
                "volume_iou": volume,
                "normal_error_deg": normal_error(mesh, scene, angle),
                "faces": len(mesh.faces),
                "watertight": bool(mesh.is_watertight),
                "seconds": seconds,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("fields", type=Path, help="a folder of fields from benchmarks/quality.py --fields")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()
    torch.set_num_threads(1)
    rows = [row for path in sorted(args.fields.glob("*.safetensors")) for row in measure(path)]
    print("| prompt | mesh | volume IoU | normal error (deg) | faces | watertight | seconds |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['prompt']} | {r['setting']} | {r['volume_iou']:.3f} | {r['normal_error_deg']:.1f} | {r['faces']} | "
            f"{'yes' if r['watertight'] else 'no'} | {r['seconds']:.2f} |"
        )
    print("\n| mesh | mean volume IoU | mean normal error (deg) | worst normal error (deg) | mean faces |")
    print("|---|---|---|---|---|")
    for name, _, _ in SETTINGS:
        group = [r for r in rows if r["setting"] == name]
        if group:
            n = len(group)
            print(
                f"| {name} | {sum(r['volume_iou'] for r in group) / n:.3f} | "
                f"{sum(r['normal_error_deg'] for r in group) / n:.1f} | "
                f"{max(r['normal_error_deg'] for r in group):.1f} | {sum(r['faces'] for r in group) / n:.0f} |"
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
