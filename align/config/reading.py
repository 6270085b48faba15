"""Reading a pipeline YAML: safe loading with YAML 1.2 numbers and no duplicate keys, errors
that name the file, line and column and say how to fix them.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

import yaml

from align.core.errors import AlignError


class _Loader(yaml.SafeLoader):
    """Safe loading (no Python tags) with YAML 1.2 numbers (PyYAML's 1.1 rules read `1e-3` as a
    string) and duplicate keys refused (PyYAML keeps the last one without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {seen[key].line + 1}); keep one",
                    key_node.start_mark,
                )
            if isinstance(key, typing.Hashable):
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][-+]?\d+)?$"),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


def yaml_problem(exc: yaml.YAMLError) -> tuple[str, str]:
    """(' line L, column C' or '', what is wrong and how to fix it) for a YAML error."""
    mark = getattr(exc, "problem_mark", None)
    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if "could not determine a constructor for the tag" in problem:
        tag = problem.split("tag", 1)[1].strip()
        return where, f"unsupported tag {tag}; pipelines are plain YAML, remove the tag"
    if problem.startswith("duplicate key"):
        return where, problem
    return where, f"malformed YAML ({problem}); fix the syntax"


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise AlignError(f"{path}: no such pipeline file (pipelines live in pipelines/<name>.yaml)")
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise AlignError(
            f"{path}: not UTF-8 text (byte {exc.start}); save the pipeline as UTF-8"
        ) from None
    except yaml.YAMLError as exc:
        where, problem = yaml_problem(exc)
        raise AlignError(f"{path}:{where}: {problem}") from None
    return raw
