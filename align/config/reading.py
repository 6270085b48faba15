"""Reading a pipeline YAML: safe loading with YAML 1.2 numbers and no duplicate keys, errors
that name the file, line and column and say how to fix them.

The input is bounded before anything is built from it: the file's size, the nesting depth, the
number of aliases and the size of the document once every alias is expanded (a "billion laughs"
document is a few hundred bytes that expand to gigabytes), and the digits of an integer.
"""

from __future__ import annotations

import re
import typing
from pathlib import Path

import yaml

from align.core.errors import AlignError
from align.core.io import is_local_file

MAX_BYTES = 1 << 20  # a pipeline file is a few KB; a MB is already far more than any needs
MAX_DEPTH = 64  # nesting levels, aliases expanded
MAX_ALIASES = 1000  # `*name` references in one document
MAX_NODES = 100_000  # values in the document once every alias is expanded
MAX_INT_DIGITS = 40  # far past any count or seed (2**64 has 20 digits)
MERGE_TAG = "tag:yaml.org,2002:merge"


class InputTooLarge(yaml.MarkedYAMLError):
    """The document passes a bound (size, depth, aliases, expansion, digits)."""


def _bound_error(problem: str, mark: yaml.Mark | None) -> InputTooLarge:
    return InputTooLarge(None, None, problem, mark)


class _Loader(yaml.SafeLoader):
    """Safe loading (no Python tags) with YAML 1.2 numbers (PyYAML's 1.1 rules read `1e-3` as a
    string), duplicate keys refused (PyYAML keeps the last one without a word) and the document
    bounded in depth, aliases and expanded size before it is constructed."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._aliases = 0

    def compose_node(self, parent: yaml.Node | None, index: object) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise _bound_error(
                    f"more than {MAX_ALIASES} aliases; write the values out",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _bound_error(
                    f"nested deeper than {MAX_DEPTH} levels; flatten the document",
                    self.peek_event().start_mark,
                )
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def get_single_node(self) -> yaml.Node | None:
        root = super().get_single_node()
        if root is not None:
            _check_expansion(root)
        return root

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        digits = sum(c.isalnum() for c in node.value)
        if digits > MAX_INT_DIGITS:
            raise _bound_error(
                f"an integer of {digits} digits; numbers in a pipeline have at most "
                f"{MAX_INT_DIGITS}",
                node.start_mark,
            )
        return super().construct_yaml_int(node)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            if key_node.tag == MERGE_TAG:
                continue  # `<<: *base` merges keys; keys written here may override them
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


_Loader.add_constructor("tag:yaml.org,2002:int", _Loader.construct_yaml_int)


def _check_expansion(root: yaml.Node) -> None:
    """Refuse a document whose aliases expand past MAX_NODES values or MAX_DEPTH levels, or
    refer to themselves, by counting over the node graph (each shared node counted once per
    reference) without building anything."""
    sizes: dict[int, tuple[int, int]] = {}  # id(node) -> (expanded values, expanded depth)
    active: set[int] = set()

    def walk(node: yaml.Node) -> tuple[int, int]:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in active:
            raise _bound_error("an alias refers to the value that holds it", node.start_mark)
        children: list[yaml.Node] = []
        if isinstance(node, yaml.SequenceNode):
            children = list(node.value)
        elif isinstance(node, yaml.MappingNode):
            children = [n for pair in node.value for n in pair]
        active.add(key)
        count, depth = 1, 0
        for child in children:
            c, d = walk(child)
            count, depth = count + c, max(depth, d)
            if count > MAX_NODES or depth + 1 > MAX_DEPTH:
                raise _bound_error(
                    f"its aliases expand to more than {MAX_NODES} values or {MAX_DEPTH} levels; "
                    "write the values out",
                    node.start_mark,
                )
        active.discard(key)
        sizes[key] = (count, depth + 1)
        return sizes[key]

    walk(root)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][-+]?\d+)?$"),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    """The document in `text`, bounded (module docstring); a YAMLError names what is wrong."""
    if len(text) > MAX_BYTES:
        raise _bound_error(f"{len(text)} characters, over the {MAX_BYTES} allowed", None)
    return yaml.load(text, Loader=_Loader)


def yaml_problem(exc: yaml.YAMLError) -> tuple[str, str]:
    """(' line L, column C' or '', what is wrong and how to fix it) for a YAML error."""
    mark = getattr(exc, "problem_mark", None)
    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if "could not determine a constructor for the tag" in problem:
        tag = problem.split("tag", 1)[1].strip()
        return where, f"unsupported tag {tag}; pipelines are plain YAML, remove the tag"
    if isinstance(exc, InputTooLarge) or problem.startswith("duplicate key"):
        return where, problem
    return where, f"malformed YAML ({problem}); fix the syntax"


def read_yaml(path: Path) -> dict:
    if not is_local_file(path):
        raise AlignError(f"{path}: no such pipeline file (pipelines live in pipelines/<name>.yaml)")
    if path.stat().st_size > MAX_BYTES:
        raise AlignError(
            f"{path}: {path.stat().st_size} bytes, over the {MAX_BYTES} a pipeline file may hold; "
            "is this the right file?"
        )
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
