"""Each stage's code fingerprint: a hash of the source that stage runs, so an edit re-runs only
the stages whose code it touches (a judging docstring does not re-run training).

A stage's code is its runner module, align/stages/<stage>.py, and everything it reaches through
`align` imports, followed transitively. Outside align/stages/ a unit is a whole package: a
module importing anything from align.model pulls in every file of align/model/ (and what those
files import in turn). Inside align/stages/ each module is its own unit, so the annotate stage
does not hash the judge stage's module. Imports are found with `ast` (module level and inside
functions alike), never by importing: hashing needs no torch.

References by name that no import states, such as the reward function
`align.rewards.arithmetic:exact_answer`, are covered when their package is reached by an
import (every stage that scores rewards imports align.rewards).
"""

from __future__ import annotations

import ast
import hashlib
from functools import cache
from pathlib import Path

from align.core.errors import AlignError

PACKAGE_ROOT = Path(__file__).resolve().parent.parent  # the align/ folder
PER_FILE = "stages"  # the one package whose modules are units of their own
TOP = "__init__.py"  # align/__init__.py: runs before any align module, so part of every stage


def runner_unit(stage: str) -> str:
    """The unit of a stage's runner module: 'stages/prepare_model.py' for 'prepare-model'."""
    return f"{PER_FILE}/{stage.replace('-', '_')}.py"


def _resolve(module: str, root: Path) -> str | None:
    """The unit (path relative to `root`) that the dotted `module` lives in; None for a name
    that is no module (an attribute in `from align.x import name`) or outside the package."""
    parts = module.split(".")
    if parts[0] != root.name:
        return None
    parts = parts[1:]
    if not parts:
        return TOP
    head = parts[0]
    if head == PER_FILE and len(parts) > 1:
        rel = f"{PER_FILE}/{parts[1]}"
        if (root / rel).is_dir():
            return rel
        return f"{rel}.py" if (root / f"{rel}.py").is_file() else None
    if head == PER_FILE:
        return f"{PER_FILE}/__init__.py"  # the runner table itself, only when imported by name
    if (root / head).is_dir():
        return head
    return f"{head}.py" if (root / f"{head}.py").is_file() else None


def _unit_files(root: Path, unit: str) -> list[Path]:
    path = root / unit
    if path.is_file():
        return [path]
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    )


def _imports(path: Path, root: Path) -> list[tuple[str, ...]]:
    """Every import in `path`, as the dotted names it may refer to, most specific first:
    `from a.b import c` gives (a.b.c, a.b), since c may be a module or a name defined in a.b.
    Relative imports are resolved against the file's package."""
    package = path.relative_to(root.parent).with_suffix("").parts
    if path.name != "__init__.py":
        package = package[:-1]
    found: list[tuple[str, ...]] = []
    for node in ast.walk(ast.parse(path.read_bytes(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name,) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package[: len(package) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            found += [(f"{base}.{alias.name}", base) for alias in node.names]
    return found


def stage_units(stage: str, root: Path = PACKAGE_ROOT) -> list[str]:
    """The units (package folders, or files for align/stages/) a stage's code consists of."""
    start = runner_unit(stage)
    if not (root / start).is_file():
        raise AlignError(f"stage {stage!r} has no runner module {root.name}/{start}")
    seen = {TOP, start}
    todo = [start]
    while todo:
        for path in _unit_files(root, todo.pop()):
            if path.suffix != ".py":
                continue
            for names in _imports(path, root):
                unit = next(filter(None, (_resolve(n, root) for n in names)), None)
                if unit is not None and unit not in seen:
                    seen.add(unit)
                    todo.append(unit)
    return sorted(seen)


def units_hash(units: list[str], root: Path = PACKAGE_ROOT) -> str:
    """Hash of every file of `units`: its path relative to `root`, its length, its bytes."""
    digest = hashlib.sha256()
    for path in sorted({p for unit in units for p in _unit_files(root, unit)}):
        data = path.read_bytes()
        digest.update(f"{path.relative_to(root).as_posix()}\n{len(data)}\n".encode())
        digest.update(data)
    return digest.hexdigest()[:16]


@cache
def stage_code_version(stage: str) -> str:
    """The code fingerprint of one stage, once per process (the source does not change under a
    running pipeline)."""
    return units_hash(stage_units(stage))
