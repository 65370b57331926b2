"""What `sjc batch` leaves next to its run folders: summary.csv, summary.md and index.html.

A row is one run: its folder name, prompt, seed, status ('done', 'failed', 'stopped'), steps, seconds and, for
toy prompts, the quality figures of its metrics.json. The summaries add a mean and a worst row over the finished
runs (worst: the lowest IoUs and PSNR, the longest time, any shape not matched). index.html is a gallery of
every run's turntable with its numbers; its links are relative, so it opens from disk and moves with the folder.
Imports neither torch nor Ray.
"""

from __future__ import annotations

import csv
import html
import io
import math
import os
from pathlib import Path
from urllib.parse import quote

from ..settings.config import markdown_text

COLUMNS = (
    "name",
    "prompt",
    "seed",
    "status",
    "steps",
    "seconds",
    "iou_3d",
    "iou_3d_closed",
    "silhouette_iou",
    "psnr",
    "shape_match",
    "attempts",
    "message",
)
METRICS = ("iou_3d", "iou_3d_closed", "silhouette_iou", "psnr")
REPORT_FILES = {"summary.csv": "csv", "summary.md": "md", "index.html": "html"}  # beside the run folders
HEADS = {
    "iou_3d": "3D IoU",
    "iou_3d_closed": "closed 3D IoU",
    "silhouette_iou": "silhouette IoU",
    "psnr": "PSNR (dB)",
    "shape_match": "shape",
}


def summary_row(
    name: str, prompt: str, seed: int | None, status: str, record: dict | None = None, message: str = ""
) -> dict:
    """One run's row; `record` is the run's result.json (steps, seconds, attempts, metrics)."""
    record = record or {}
    metrics = record.get("metrics") or {}
    row = {
        "name": name,
        "prompt": prompt,
        "seed": seed,
        "status": status,
        "steps": record.get("steps"),
        "seconds": record.get("seconds"),
        "attempts": record.get("attempts"),
        "message": message,
    }
    for key in METRICS:
        row[key] = metrics.get(key)
    row["shape_match"] = metrics.get("shape_accuracy")
    return row


def aggregate(rows: list[dict]) -> tuple[dict, dict] | None:
    """The mean and the worst row over the finished runs (None when none finished)."""
    done = [r for r in rows if r["status"] == "done"]
    if not done:
        return None
    mean = {"name": "mean", "status": f"{len(done)} done"}
    worst = {"name": "worst", "status": ""}
    for key in ("steps", "seconds", *METRICS):
        values = [float(r[key]) for r in done if r.get(key) is not None and math.isfinite(float(r[key]))]
        if values:
            mean[key] = sum(values) / len(values)
            worst[key] = max(values) if key in ("steps", "seconds") else min(values)
    shapes = [bool(r["shape_match"]) for r in done if r.get("shape_match") is not None]
    if shapes:
        mean["shape_match"] = f"{sum(shapes)}/{len(shapes)}"
        worst["shape_match"] = all(shapes)
    return mean, worst


def _cell(key: str, value) -> str:
    if value is None or value == "":
        return ""
    if key == "shape_match" and isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if key == "steps":
            return f"{value:.0f}"
        return f"{value:.1f}" if key == "seconds" else f"{value:.2f}" if key == "psnr" else f"{value:.3f}"
    return str(value)


def write_reports(out: Path, rows: list[dict]) -> dict[str, Path]:
    """summary.csv, summary.md and index.html in `out`, each written whole under a temporary name first."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = {kind: out / name for name, kind in REPORT_FILES.items()}
    texts = {"csv": summary_csv(rows), "md": summary_markdown(rows), "html": gallery_html(rows, out)}
    for kind, path in files.items():
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(texts[kind])
        os.replace(tmp, path)
    return files


def summary_csv(rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    extra = aggregate(rows) or ()
    for row in [*rows, *extra]:
        writer.writerow([_cell(key, row.get(key)) for key in COLUMNS])
    return buffer.getvalue()


def summary_markdown(rows: list[dict]) -> str:
    """A table of the runs, then the mean and worst rows, then the failures with their messages."""
    keys = ("prompt", "seed", "status", "steps", "seconds", *METRICS, "shape_match")
    lines = ["| " + " | ".join(HEADS.get(k, k) for k in keys) + " |", "|" + "---|" * len(keys)]
    for row in rows:
        lines.append("| " + " | ".join(markdown_text(_cell(k, row.get(k))) for k in keys) + " |")
    for row in aggregate(rows) or ():
        label = f"**{row['name']}** (finished runs)"
        cells = [label if k == "prompt" else _cell(k, row.get(k)) for k in keys]
        lines.append("| " + " | ".join(cells) + " |")
    failed = [r for r in rows if r["status"] != "done"]
    if failed:
        lines += ["", "Not finished:", ""]
        lines += [f"- {markdown_text(r['name'])} ({r['status']}): {markdown_text(r['message'])}" for r in failed]
    return "\n".join(lines) + "\n"


def gallery_html(rows: list[dict], out: Path) -> str:
    """A page of every run: its turntable (GIF), prompt, seed and numbers, linking to the run's files."""
    cards = "\n".join(_card(row, out) for row in rows)
    stats = ""
    if agg := aggregate(rows):
        mean, worst = agg
        stats = (
            "<p>Over the finished runs: "
            + html.escape(
                ", ".join(
                    f"{HEADS[k]} mean {_cell(k, mean[k])}, worst {_cell(k, worst[k])}" for k in METRICS if k in mean
                )
                + (f"; shape matched {mean['shape_match']}" if "shape_match" in mean else "")
            )
            + "</p>"
        )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>sjc batch: {len(rows)} runs</title>
<style>
body {{ font-family: sans-serif; margin: 1.5em; }}
.grid {{ display: flex; flex-wrap: wrap; gap: 1em; }}
figure {{ margin: 0; width: 220px; border: 1px solid #ccc; padding: 0.5em; }}
figure img {{ width: 200px; height: 200px; image-rendering: pixelated; background: #eee; }}
figcaption {{ font-size: 0.85em; }}
.failed {{ border-color: #c33; }}
</style></head><body>
<h1>sjc batch: {len(rows)} runs</h1>
{stats}
<p><a href="summary.md">summary.md</a> · <a href="summary.csv">summary.csv</a></p>
<div class="grid">
{cards}
</div></body></html>
"""


def _card(row: dict, out: Path) -> str:
    name, esc = row["name"], html.escape
    link = quote(name)
    title = f"<b>{esc(row['prompt'])}</b> · seed {esc(_cell('seed', row['seed']))}"
    if row["status"] != "done":
        return (
            f'<figure class="failed"><figcaption>{title}<br>{esc(row["status"])}: '
            f"{esc(row['message'])}</figcaption></figure>"
        )
    numbers = [f"{_cell('steps', row['steps'])} steps, {_cell('seconds', row['seconds'])} s"]
    numbers += [f"{HEADS[k]} {_cell(k, row[k])}" for k in METRICS if row.get(k) is not None]
    if row.get("shape_match") is not None:
        numbers.append(f"shape {_cell('shape_match', row['shape_match'])}")
    files = [f for f in ("turntable.mp4", "views.png", "mesh.glb", "metrics.json") if (out / name / f).exists()]
    links = " · ".join(f'<a href="{link}/{quote(f)}">{esc(f)}</a>' for f in files)
    return (
        f'<figure><img src="{link}/turntable.gif" alt="{esc(row["prompt"])}">'
        f"<figcaption>{title}<br>{'<br>'.join(esc(n) for n in numbers)}<br>{links}</figcaption></figure>"
    )
