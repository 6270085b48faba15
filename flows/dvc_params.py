"""Whether `dvc exp run -S <pipeline>:<key>=<value>` can edit a pipeline YAML safely.

DVC applies `-S` by loading the file with ruamel's round-trip loader, changing the value and
dumping the whole file again (`dvc.utils.hydra.apply_overrides`). That dump drops quotes that
are not needed in block style, so a flow mapping such as `{function: "module:fn"}` comes back as
`{function: module:fn}`, which no YAML parser reads: the run fails and the pipeline file is left
corrupted. This module runs the same load and dump with DVC's own functions and names the first
mapping that does not survive, so `align dvc` refuses such a file before DVC touches it.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from align.core.errors import AlignError


def _survives(data: Any) -> bool:
    """Whether DVC's dump of `data` (a ruamel round-trip node) reads back as the same value."""
    from dvc.utils.serialize._yaml import _dump, loads_yaml

    stream = io.StringIO()
    _dump(data, stream)
    try:
        return loads_yaml(stream.getvalue()) == data
    except Exception:  # ruamel raises several parser and scanner errors
        return False


def _first_broken(node: Any, path: str) -> tuple[str, int]:
    """(key path, 1-based line) of the innermost mapping or list under `node` whose dump alone
    does not survive."""
    items = node.items() if isinstance(node, dict) else enumerate(node)
    for key, child in items:
        if isinstance(child, dict | list) and not _survives({key: child}):
            line = node.lc.key(key)[0] + 1 if isinstance(node, dict) else node.lc.item(key)[0] + 1
            inner, inner_line = _first_broken(child, f"{path}.{key}" if path else str(key))
            return (inner, inner_line) if inner_line else (f"{path}.{key}".lstrip("."), line)
    return path, 0


def check_param_round_trip(pipeline: str | Path) -> None:
    """Raise AlignError naming the file, key and line when DVC's `-S` edit would corrupt
    `pipeline` (load it round-trip, dump it, read it back: the value must not change)."""
    from dvc.utils.serialize._yaml import parse_yaml_for_update

    path = Path(pipeline)
    data = parse_yaml_for_update(path.read_text(), str(path))
    if _survives(data):
        return
    key, line = _first_broken(data, "")
    raise AlignError(
        f"{path}:{line}: `{key}` would not survive `dvc exp run -S` (DVC rewrites the file and "
        "drops the quotes of values in {...} mappings); write that mapping in block style, one "
        "`key: value` per line"
    )
