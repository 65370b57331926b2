"""One figure for one measurement: the tables of the README and docs/ are held to the rows the benchmarks wrote
(benchmarks/results/*.jsonl), made into tables by the benchmarks' own functions, so the two cannot drift; and the
facts the docs state about the code (where the learned prior's weights are, how many parameters its network has)
are checked against it."""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
sys.path.insert(0, str(ROOT / "benchmarks"))


def rows(name: str) -> list[dict]:
    return [json.loads(line) for line in (RESULTS / name).read_text().splitlines() if line.strip()]


def doc(path: str) -> str:
    return (ROOT / path).read_text()


def missing_lines(table: str, text: str) -> list[str]:
    return [line for line in table.splitlines() if line.strip() and line not in text]


def test_the_methods_table_is_the_benchmarks_rows():
    from methods import METHODS, SUITE, summarise

    priors, prompts = ("toy", "toy-learned"), list(SUITE)
    found = sorted(
        (r for r in rows("methods-rows.jsonl") if r["seed"] == 0),
        key=lambda r: (priors.index(r["prior"]), METHODS.index(r["variant"].split()[0]), r["variant"],
                       prompts.index(r["prompt"]) if r["prompt"] in prompts else len(prompts), r["prompt"]),
    )  # fmt: skip
    table = summarise(found)
    assert len(table.splitlines()) > 10
    assert missing_lines(table, doc("docs/methods.md")) == []


def test_the_image_to_3d_table_is_the_benchmarks_rows_and_the_readme_quotes_it():
    from image3d import table

    text = table(rows("image3d-rows.jsonl"))
    assert missing_lines(text, doc("docs/image-to-3d.md")) == []
    summary = {line.split("|")[1].strip(): line for line in text.splitlines() if "**suite" in line}
    cells = {c.strip() for key in ("**suite mean**", "**suite worst**") for c in summary[key].split("|")}
    readme = doc("README.md")
    start = readme.index("| | the picture alone (no prior)")
    block = readme[start : readme.index("\n\n", start)].splitlines()[2:]  # the mean and worst rows
    learned = _learned_preset_rows()
    iou, closed = [r["iou_3d"] for r in learned], [r["iou_3d_closed"] for r in learned]
    learned_cells = {
        f"{statistics.mean(iou):.3f} / {statistics.mean(closed):.3f}",
        f"{min(iou):.3f} / {min(closed):.3f}",
    }
    for line in block:
        for cell in [c.strip().strip("*") for c in line.split("|")[2:-1]]:
            assert cell in cells | learned_cells, (cell, line)


def _learned_preset_rows() -> list[dict]:
    return [r for r in rows("quality-rows.jsonl") if r["prior"] == "toy-learned" and r["variant"] == "default"]


def test_the_learned_priors_suite_table_is_the_methods_benchmarks_paas_rows():
    found = [r for r in rows("methods-rows.jsonl") if r["prior"] == "toy-learned" and r["variant"] == "paas"]
    found = [r for r in found if r["seed"] == 0]
    text = doc("docs/learned-prior.md")
    for r in found:
        start = f"| {r['prompt']} | {r['iou_3d']:.3f} | {r['silhouette_iou']:.3f} | {r['psnr']:.2f} |"
        assert start in text, start
    iou = [r["iou_3d"] for r in found]
    assert f"Mean 3D IoU {statistics.mean(iou):.3f} (the exact prior: 0.802), lowest {min(iou):.3f}" in text
    assert f"about\n{statistics.mean(r['seconds'] for r in found):.0f} s a prompt" in text


@pytest.mark.parametrize(
    ("variant", "label"),
    [
        ("default", "its preset (one 32^3 grid, 2000 steps, sigma annealed 10 -> 0.1)"),
        ("c2f 16-32 at 0.67, 3000 steps", "coarse-to-fine 16 -> 32 at 2/3 of 3000 steps"),
        ("Adam 0.1", "Adam 0.1 (betas 0.9, 0.99), one 32^3 grid, 2000 steps"),
    ],
)
def test_the_learned_priors_levers_in_quality_md_are_the_quality_benchmarks_rows(variant, label):
    found = [r for r in rows("quality-rows.jsonl") if r["prior"] == "toy-learned" and r["variant"] == variant]
    assert len(found) == 10
    line = next(line for line in doc("docs/quality.md").splitlines() if line.startswith(f"| {label}"))
    iou, closed = [r["iou_3d"] for r in found], [r["iou_3d_closed"] for r in found]
    expected = f"| {statistics.mean(iou):.3f} / {min(iou):.3f} | {statistics.mean(closed):.3f} / {min(closed):.3f} |"
    assert expected in line, (expected, line)
    assert line.rstrip(" |").endswith(f"| {statistics.mean(r['seconds'] for r in found):.0f}")


def test_the_docs_give_the_learned_networks_size_and_weights_where_they_are():
    from safetensors import safe_open

    weights = ROOT / "src" / "sjc" / "priors" / "weights" / "toy_learned.safetensors"
    with safe_open(str(weights), "pt") as f:
        count = sum(_numel(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (no __iter__)
    size = f"{count / 1e6:.2f} M"
    texts = {p: doc(p) for p in ("README.md", "docs/CONVENTIONS.md", "docs/learned-prior.md", "docs/methods.md")}
    texts["src/sjc/priors/learned.py"] = doc("src/sjc/priors/learned.py")
    said = {(p, m) for p, t in texts.items() for m in re.findall(r"(\d+(?:\.\d+)?) ?M[- ]param", t)}
    assert said and all(f"{float(m):.2f} M" == size for _, m in said), (size, said)
    for path, text in texts.items():
        assert "src/sjc/weights/" not in text, path
    assert "src/sjc/priors/weights/toy_learned.safetensors" in texts["docs/CONVENTIONS.md"]


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def test_every_docs_page_is_listed_in_the_readme():
    readme = doc("README.md")
    listing = " ".join(readme[readme.index("docs/             ") :].split("\n```")[0].split()).lower()
    names = {"learned-prior": "learned toy prior", "canvas": "2d canvas"}
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert names.get(page.stem, page.stem.lower()) in listing, page.name


def test_the_readmes_suite_table_is_the_quality_benchmarks_rows():
    found = rows("quality-rows.jsonl")

    def pick(prior, variant):
        return {r["prompt"]: r for r in found if r["prior"] == prior and r["variant"] == variant and r["seed"] == 0}

    ceiling, before, now = (
        pick("oracle", "default"),
        pick("toy", "the default before (fov 40-70, 2500 steps)"),
        pick("toy", "default"),
    )
    readme = doc("README.md")
    for prompt, r in now.items():
        c, b = ceiling[prompt], before[prompt]
        line = (
            f"| {prompt} | {c['iou_3d']:.3f} | {b['iou_3d']:.3f} | **{r['iou_3d']:.3f}** | "
            f"{c['iou_3d_closed']:.3f} / {r['iou_3d_closed']:.3f} | {r['silhouette_iou']:.3f} | {r['psnr']:.2f} | "
        )
        assert line in readme, line
        constrained = f"| {c['iou_3d_constrained']:.3f} / {r['iou_3d_constrained']:.3f} |"
        assert next(x for x in readme.splitlines() if x.startswith(line)).endswith(constrained), constrained
    figure = [r["iou_3d_constrained"] for r in now.values()]
    assert f"constrained 3D IoU mean **{statistics.mean(figure):.3f}**, lowest {min(figure):.3f}" in readme
