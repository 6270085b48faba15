"""align/'s package layout: imports point one way, with no circles (function-level imports count),
no Prefect or DVC, and every package says what it owns."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from tests.conftest import REPO

ALIGN = REPO / "align"
# Lowest first: a package may import only packages before it (align/__init__.py says the same).
ORDER = (
    "core",
    "config",
    "data",
    "model",
    "generate",
    "llm",
    "rewards",
    "rewrite",
    "train",
    "judging",
    "stages",
    "pipeline",
)


def _module(path: Path, root: Path) -> str:
    name = ".".join(path.relative_to(root.parent).with_suffix("").parts)
    return name.removesuffix(".__init__")


def _imports(path: Path) -> list[str]:
    """Every module `path` imports, at any depth of the file (functions included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out += [node.module] + [f"{node.module}.{a.name}" for a in node.names]
    return out


def _graph(root: Path = ALIGN) -> dict[str, set[str]]:
    """Module -> the align modules it imports (a name imported from a package counts as the
    package); a submodule's import of its own package is no edge."""
    files = {_module(p, root): p for p in root.rglob("*.py")}
    edges: dict[str, set[str]] = {m: set() for m in files}
    for mod, path in files.items():
        for target in _imports(path):
            while target and target not in files:
                target = target.rpartition(".")[0]
            if target and target != mod and not mod.startswith(target + "."):
                edges[mod].add(target)
    return edges


def test_packages_are_the_documented_stack() -> None:
    packages = sorted(p.name for p in ALIGN.iterdir() if (p / "__init__.py").is_file())
    assert packages == sorted(ORDER)
    assert not [p.name for p in ALIGN.glob("*.py") if p.name != "__init__.py"]
    assert ", ".join(ORDER) in (ALIGN / "__init__.py").read_text().replace("\n", " ")


def _upward(edges: dict[str, set[str]]) -> list[str]:
    rank = {name: i for i, name in enumerate(ORDER)}
    upward = []
    for mod, targets in edges.items():
        if mod == "align":
            continue
        src = mod.split(".")[1]
        for target in targets:
            dst = target.split(".")[1] if target.count(".") else None
            if dst and dst != src and rank[dst] > rank[src]:
                upward.append(f"{mod} -> {target}")
    return upward


def _circle(edges: dict[str, set[str]]) -> list[str]:
    """One import circle as [a, b, ..., a], or [] when there is none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(mod: str) -> list[str]:
        if mod in path:
            return [*path[path.index(mod) :], mod]
        if mod in done:
            return []
        path.append(mod)
        for target in sorted(edges[mod]):
            if found := visit(target):
                return found
        path.pop()
        done.add(mod)
        return []

    for mod in sorted(edges):
        if found := visit(mod):
            return found
    return []


def test_no_import_points_up_the_stack() -> None:
    assert _upward(_graph()) == []


def test_no_import_circle() -> None:
    assert _circle(_graph()) == []


def test_the_library_never_imports_prefect_or_dvc() -> None:
    found = [
        (str(p.relative_to(REPO)), name)
        for p in ALIGN.rglob("*.py")
        for name in _imports(p)
        if name.split(".")[0] in ("prefect", "dvc")
    ]
    assert found == []


def test_every_package_says_what_it_owns() -> None:
    for name in ORDER:
        doc = importlib.import_module(f"align.{name}").__doc__
        assert doc and len(doc.split()) >= 12, name


def test_the_checks_catch_a_circle_and_an_upward_import(tmp_path: Path) -> None:
    """A function-level import from core up to config, closing a circle, is caught by both."""
    fake = tmp_path / "align"
    for pkg in ("core", "config"):
        (fake / pkg).mkdir(parents=True)
        (fake / pkg / "__init__.py").write_text('"""x"""\n')
    (fake / "__init__.py").write_text("")
    (fake / "core" / "a.py").write_text("def f():\n    from align.config.b import g\n")
    (fake / "config" / "b.py").write_text("from align.core.a import f\n\n\ndef g():\n    f()\n")
    edges = _graph(fake)
    assert _upward(edges) == ["align.core.a -> align.config.b"]
    assert _circle(edges) in (
        ["align.config.b", "align.core.a", "align.config.b"],
        ["align.core.a", "align.config.b", "align.core.a"],
    )
