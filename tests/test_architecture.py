"""The package's layers (docs/ARCHITECTURE.md): each module imports only its own layer and those below it.

core < priors < outputs < app, with the package root (the Python API) above them all; inside app, its groups
settings < runs < web, batch < commands. No import circle anywhere. Every import counts, at the top of a module or
inside a function, absolute or relative.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).parent.parent / "src" / "sjc"
ORDER = ("core", "priors", "outputs", "app")  # each layer may import the layers before it
# The app's groups, each importing only the groups below it (web and batch never each other).
APP_GROUPS = {"settings": 0, "runs": 1, "web": 2, "batch": 2, "commands": 3}


def layer_of(module: str) -> str:
    """'sjc.core.fit' -> 'core'; the package root and its own modules ('sjc', 'sjc.__main__') -> 'api'."""
    parts = module.split(".")
    return parts[1] if len(parts) > 2 or (len(parts) == 2 and parts[1] in ORDER) else "api"


def allowed(importer: str, imported: str) -> bool:
    if importer == "api":
        return True
    if imported == "api":
        return False
    return ORDER.index(imported) <= ORDER.index(importer)


def module_name(path: Path, root: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_module(root: Path, name: str) -> bool:
    path = root.parent.joinpath(*name.split("."))
    return path.is_dir() or path.with_suffix(".py").is_file()


def imports_of(path: Path, root: Path) -> list[tuple[int, str]]:
    """(line, absolute module) of every sjc import in the file."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from . import x` imports the submodule x when there is one
            subs = [f"{target}.{a.name}" for a in node.names if _is_module(root, f"{target}.{a.name}")]
            found += [(node.lineno, t) for t in (subs or [target])]
    return [(line, m) for line, m in found if m == root.name or m.startswith(root.name + ".")]


def violations(root: Path) -> list[str]:
    bad = []
    for path in sorted(root.rglob("*.py")):
        importer = layer_of(module_name(path, root))
        for line, imported in imports_of(path, root):
            if not allowed(importer, layer_of(imported)):
                bad.append(f"{path.relative_to(root.parent)}:{line}: {importer} imports {imported}")
    return bad


def test_every_module_imports_only_its_own_layer_and_those_below():
    assert violations(PACKAGE) == []


def test_every_module_belongs_to_a_layer():
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        assert len(rel.parts) == 1 and rel.name in ("__init__.py", "__main__.py") or rel.parts[0] in ORDER, rel


@pytest.mark.parametrize(
    ("where", "source", "expected"),
    [
        ("core/bad.py", "from ..app import cli\n", "core imports sjc.app.cli"),
        ("core/bad.py", "def f():\n    from ..priors.toy import ToyPrior\n", "core imports sjc.priors.toy"),
        ("priors/bad.py", "import sjc.outputs.video\n", "priors imports sjc.outputs.video"),
        ("outputs/bad.py", "from sjc import build_prior\n", "outputs imports sjc"),
        ("outputs/bad.py", "from .. import app\n", "outputs imports sjc.app"),
    ],
)
def test_the_rule_catches_a_forbidden_import(tmp_path, where, source, expected):
    root = tmp_path / "sjc"
    for layer in ORDER:
        (root / layer).mkdir(parents=True)
        (root / layer / "__init__.py").write_text("")
    (root / "__init__.py").write_text("")
    (root / "app" / "cli.py").write_text("from ..core import ok\n")  # allowed: app may import core
    (root / "core" / "ok.py").write_text("from . import errors\n")
    (root / where).write_text(source)
    found = violations(root)
    assert len(found) == 1 and found[0].endswith(expected), found


def import_graph(root: Path) -> dict[str, set[str]]:
    """module -> the sjc modules it imports (a package's __init__ counts as the package)."""
    graph: dict[str, set[str]] = {}
    for path in sorted(root.rglob("*.py")):
        name = module_name(path, root)
        graph.setdefault(name, set()).update(m for _, m in imports_of(path, root) if m != name)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_module_takes_part_in_an_import_circle():
    assert circles(import_graph(PACKAGE)) == []


def test_the_circle_check_finds_a_planted_circle(tmp_path):
    root = tmp_path / "sjc"
    (root / "app").mkdir(parents=True)
    for name, source in {
        "a": "from .b import x\n",
        "b": "def f():\n    from .c import y\n",
        "c": "from . import a\n",
    }.items():
        (root / "app" / f"{name}.py").write_text(source)
    (root / "app" / "d.py").write_text("from .a import z\n")  # uses the circle, is not in it
    (root / "__init__.py").write_text("")
    (root / "app" / "__init__.py").write_text("")
    assert circles(import_graph(root)) == [["sjc.app.a", "sjc.app.b", "sjc.app.c"]]


def app_group(module: str) -> str | None:
    parts = module.split(".")
    return parts[2] if len(parts) > 3 and parts[1] == "app" else None


def test_the_app_groups_import_only_the_groups_below_them():
    bad = []
    for path in sorted(PACKAGE.rglob("*.py")):
        importer = app_group(module_name(path, PACKAGE))
        if importer is None:
            continue
        for line, imported in imports_of(path, PACKAGE):
            group = app_group(imported)
            if group is not None and group != importer and APP_GROUPS[group] >= APP_GROUPS[importer]:
                bad.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {importer} imports {imported}")
    assert bad == []
    assert {p.name for p in (PACKAGE / "app").iterdir() if p.is_dir() and p.name != "__pycache__"} == set(APP_GROUPS)
