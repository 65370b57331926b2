"""Side-by-side pictures of runs for the docs: the truth, each run's render and its exported mesh, one row a run.

The mesh is drawn by a small z-buffer rasteriser (flat shading by the angle to a light from the camera's upper
left), so the staircase of marching cubes shows as it would in Blender.

    python benchmarks/pictures.py runs/torus-before runs/torus-then runs/torus-now --labels before then now \
        --meshes 1:0 2:30 2:30 --out docs/images/torus-before-after.png
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from sjc.app.runs.generate import load_run
from sjc.core.cameras import View, camera_from_view
from sjc.core.render import render
from sjc.outputs.mesh import extract_mesh
from sjc.priors import toy as toyworld

SIZE = 192
VIEW = View(azimuth=30.0, elevation=25.0)


def _to_uint8(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [-1, 1] -> [H, W, 3] uint8."""
    return ((image.clamp(-1, 1).permute(1, 2, 0).cpu().numpy() + 1) * 127.5).round().astype(np.uint8)


def draw_mesh(mesh, view: View = VIEW, size: int = SIZE) -> np.ndarray:
    """[size, size, 3] uint8: the mesh's vertex colours, flat-shaded, seen from `view` (pinhole, z-buffer)."""
    camera = camera_from_view(view, size)
    w2c = torch.linalg.inv(camera.c2w).numpy()
    K = camera.K.numpy()
    cam = mesh.vertices @ w2c[:3, :3].T + w2c[:3, 3]  # camera looks down -z
    depth = -cam[:, 2]
    px = np.stack([K[0, 0] * cam[:, 0] / depth + K[0, 2], -K[1, 1] * cam[:, 1] / depth + K[1, 2]], axis=1)
    normals = mesh.face_normals @ w2c[:3, :3].T
    light = np.array([-0.4, 0.5, 0.77])
    light /= np.linalg.norm(light)
    shade = 0.3 + 0.7 * np.clip(normals @ light, 0, 1)
    colours = mesh.visual.vertex_colors[:, :3].astype(np.float64) if mesh.visual.kind == "vertex" else None
    image = np.full((size, size, 3), 255.0)
    zbuf = np.full((size, size), np.inf)
    for f, face in enumerate(mesh.faces):
        if normals[f, 2] <= 0:  # facing away
            continue
        p = px[face]
        lo = np.maximum(np.floor(p.min(0)).astype(int), 0)
        hi = np.minimum(np.ceil(p.max(0)).astype(int), size - 1)
        if (hi < lo).any():
            continue
        xs, ys = np.meshgrid(np.arange(lo[0], hi[0] + 1) + 0.5, np.arange(lo[1], hi[1] + 1) + 0.5)
        a, b, c = p
        det = (b[0] - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (b[1] - a[1])
        if abs(det) < 1e-12:
            continue
        w1 = ((xs - a[0]) * (c[1] - a[1]) - (c[0] - a[0]) * (ys - a[1])) / det
        w2 = ((b[0] - a[0]) * (ys - a[1]) - (xs - a[0]) * (b[1] - a[1])) / det
        inside = (w1 >= 0) & (w2 >= 0) & (w1 + w2 <= 1)
        if not inside.any():
            continue
        z = depth[face[0]] * (1 - w1 - w2) + depth[face[1]] * w1 + depth[face[2]] * w2
        rows, cols = (ys - 0.5).astype(int), (xs - 0.5).astype(int)
        r, cc, zz = rows[inside], cols[inside], z[inside]
        nearer = zz < zbuf[r, cc]
        r, cc, zz = r[nearer], cc[nearer], zz[nearer]
        zbuf[r, cc] = zz
        base = colours[face].mean(0) if colours is not None else np.array([170.0, 170.0, 170.0])
        image[r, cc] = base * shade[f]
    return image.round().astype(np.uint8)


def row(run: Path, label: str, mesh_setting: str | None = None) -> tuple[np.ndarray, str, str]:
    """Render | mesh of a run; `mesh_setting` 'UPSAMPLE:PASSES' overrides the run's export.mesh_* settings."""
    cfg, field, _ = load_run(run)
    with torch.no_grad():
        picture = _to_uint8(render(field, camera_from_view(VIEW, SIZE)).image[0])
    upsample, passes = cfg.export.mesh_upsample, cfg.export.mesh_smoothing
    if mesh_setting:
        upsample, passes = (int(v) for v in mesh_setting.split(":"))
    mesh = extract_mesh(field, resolution=field.resolution * upsample if upsample != 1 else None, smoothing=passes)
    m = json.loads((run / "metrics.json").read_text()) if (run / "metrics.json").exists() else {}
    text = f"{label}: 3D IoU {m['iou_3d']:.3f}" if m else label
    text += f"\nmesh: marching cubes on a {upsample}x grid, {passes} Taubin passes"
    return np.concatenate([picture, draw_mesh(mesh)], axis=1), text, cfg.prompt


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", type=Path, nargs="+")
    parser.add_argument("--labels", nargs="*", default=None)
    parser.add_argument("--meshes", nargs="*", default=None, help="UPSAMPLE:PASSES per run (default: the run's)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    labels = args.labels or [r.name for r in args.runs]
    settings = args.meshes or [None] * len(args.runs)
    rows = [row(r, label, m) for r, label, m in zip(args.runs, labels, settings, strict=True)]
    scene = toyworld.parse_prompt(rows[0][2])
    truth, _, _ = toyworld.render_scene(scene, camera_from_view(VIEW, SIZE))
    blank = np.full((SIZE, SIZE, 3), 255, np.uint8)
    top = np.concatenate([_to_uint8(truth), blank], axis=1)
    band = 30
    canvas = Image.new("RGB", (2 * SIZE, (SIZE + band) * (len(rows) + 1)), "white")
    draw = ImageDraw.Draw(canvas)
    for k, (picture, text) in enumerate([(top, f"truth: {scene.prompt}")] + [(p, t) for p, t, _ in rows]):
        y = k * (SIZE + band)
        draw.text((4, y + 3), text + ("\nleft: render, right: exported mesh" if k == 0 else ""), fill="black")
        canvas.paste(Image.fromarray(picture), (0, y + band))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(args.out)
    print(args.out)


if __name__ == "__main__":
    main()
