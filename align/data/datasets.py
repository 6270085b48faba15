"""Read prompts and K-wise data from local files or HF datasets into normalised records.

Every input shape becomes one of two record kinds:
  prompts:  {id, prompt: [messages], **extra columns (e.g. answer)}
  K-wise:   {id, prompt: [messages], responses: [K str], rewards: [K float]}
Formats: `prompts`, `kwise` (responses/rewards columns), `ultrafeedback` (prompt, A0..A{K-1},
A{i}_score, as in the NCA reward dataset), `pairs` (TRL prompt/chosen/rejected -> K=2, rewards 1/0).
"""

from __future__ import annotations

import json
import math
import random
import re
from pathlib import Path
from typing import Any

from align.config import DatasetConfig
from align.config.data import WindowConfig
from align.core.errors import AlignError

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")


def _load_rows(ds: DatasetConfig) -> list[dict]:
    if ds.path is not None:
        rows = _local_rows(Path(ds.path), ds.path)
    else:
        import datasets

        datasets.disable_progress_bars()
        try:
            table = datasets.load_dataset(ds.hf_dataset, split=ds.split, revision=ds.revision)
            rows = table.to_list()
        except Exception as exc:  # datasets raises many types for unreachable data
            source = f"hf_dataset {ds.hf_dataset!r} split {ds.split!r}"
            raise AlignError(f"cannot read {source}: {_first_line(exc)}") from None
    rows = rows[: ds.limit] if ds.limit else rows
    return window_rows(rows, ds.window) if ds.window else rows


def window_rows(rows: list, window: WindowConfig) -> list:
    """`window.size` rows of a permutation seeded by `window.seed`, starting at
    `window.index * window.size` and wrapping around (all rows, permuted, when size >= len)."""
    if not rows:
        return rows
    order = list(range(len(rows)))
    random.Random(window.seed).shuffle(order)
    start = window.index * window.size
    take = min(window.size, len(rows))
    return [rows[order[(start + i) % len(rows)]] for i in range(take)]


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def check_local_file(path: Path, name: str) -> None:
    """One line when the data file `name` is missing or of a kind we cannot read."""
    if not path.is_file():
        raise AlignError(f"data path {name!r} does not exist; run `make data` or fix it")
    if path.suffix not in LOCAL_SUFFIXES:
        raise AlignError(
            f"data path {name!r}: unsupported suffix; use one of {', '.join(LOCAL_SUFFIXES)}"
        )


def _local_rows(path: Path, name: str) -> list[dict]:
    """The records of a local file, read as written: JSON values keep their types (a reward
    "7" stays a string, to be refused, not coerced to 7); every record gets every column (None
    where it has none)."""
    check_local_file(path, name)
    if path.suffix == ".parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            return pq.read_table(path).to_pylist()
        except (pa.ArrowException, OSError) as exc:
            raise AlignError(f"cannot read {name}: {_first_line(exc)}") from None
    rows = json_rows(path, name)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    return [{k: row.get(k) for k in columns} for row in rows]


def _check_storable(records: list[dict], what: str, source: str) -> None:
    """The normalised records fit one Arrow table (the stages' shards are Arrow tables): every
    column one type, every number storable."""
    import pyarrow as pa

    try:
        pa.Table.from_pylist(records)
    except (pa.ArrowException, OverflowError) as exc:
        raise AlignError(
            f"{what}: {source}: a column holds values of different types, or a number too large "
            f"to store ({_first_line(exc)}); give each column one type in every record"
        ) from None


def json_value(text: str, name: str, number: int) -> Any:
    """The JSON value of line `number` of file `name`; one line naming both when it is not
    JSON (bounded: a 100000-deep array or a 5000-digit integer is refused, not a traceback)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise AlignError(
            f"cannot read {name}: line {number}: not valid JSON ({_first_line(exc)}); fix or "
            "drop the line"
        ) from None


def json_record(value: Any, name: str, where: str) -> dict:
    """`value` when it is a record (a JSON object); else one line naming `where` in `name`."""
    if not isinstance(value, dict):
        raise AlignError(
            f"cannot read {name}: {where}: a record must be a JSON object "
            f'({{"prompt": ...}}), got {type(value).__name__}'
        )
    return value


def json_rows(path: Path, name: str) -> list[dict]:
    """JSON Lines (one object per line) or a JSON array of objects, strictly UTF-8."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise AlignError(
            f"cannot read {name}: line {line}: byte 0x{data[exc.start]:02x} is not UTF-8; "
            "save the file as UTF-8"
        ) from None
    if path.suffix == ".jsonl":
        numbered = [(i, ln) for i, ln in enumerate(text.splitlines(), 1) if ln.strip()]
    else:
        numbered = [(1, text)] if text.strip() else []
    rows: list = []
    for number, line in numbered:
        value = json_value(line, name, number)
        rows.extend(value if path.suffix == ".json" and isinstance(value, list) else [value])
    for i, row in enumerate(rows):
        where = f"line {numbered[i][0]}" if path.suffix == ".jsonl" else f"item {i}"
        json_record(row, name, where)
    return rows


def as_messages(prompt: Any, where: str) -> list[dict]:
    """A string becomes one user message; TRL conversational prompts pass through."""
    if isinstance(prompt, str):
        if not prompt.strip():
            raise AlignError(f"{where}: empty prompt")
        return [{"role": "user", "content": prompt}]
    if (
        isinstance(prompt, list)
        and prompt
        and all(
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
            for m in prompt
        )
    ):
        return [{"role": m["role"], "content": m["content"]} for m in prompt]
    raise AlignError(f"{where}: prompt must be a string or a list of {{role, content}} messages")


def _response_text(value: Any, where: str) -> str:
    """A response as text: a string, or the last assistant message of a chat list."""
    if isinstance(value, list):
        replies = [
            m.get("content") for m in value if isinstance(m, dict) and m.get("role") == "assistant"
        ]
        value = replies[-1] if replies else None
    if not isinstance(value, str) or not value.strip():
        raise AlignError(f"{where}: empty or missing response; drop the record or fill it in")
    return value


def _reward(value: Any, where: str) -> float:
    if value is None or isinstance(value, bool) or not isinstance(value, int | float):
        raise AlignError(f"{where}: reward must be a number, got {value!r}")
    if not math.isfinite(value):
        raise AlignError(f"{where}: reward is {value}; rewards must be finite numbers")
    return float(value)


def _ultrafeedback_columns(row: dict, where: str) -> list[int]:
    idx = sorted(int(m.group(1)) for k in row if (m := re.fullmatch(r"A(\d+)", k)))
    if not idx or idx != list(range(len(idx))):
        raise AlignError(
            f"{where}: ultrafeedback format needs columns A0..A{{K-1}} with A{{i}}_score"
        )
    return idx


# The columns each format needs, under our field names (ultrafeedback's A0..A{K-1} are checked
# by _ultrafeedback_columns).
FORMAT_COLUMNS = {
    "prompts": ("prompt",),
    "kwise": ("prompt", "responses", "rewards"),
    "ultrafeedback": ("prompt",),
    "pairs": ("prompt", "chosen", "rejected"),
}


def guess_format(columns: set[str]) -> str | None:
    """The format whose columns a file holds, when it is not ambiguous (for did-you-mean)."""
    if {"chosen", "rejected"} <= columns:
        return "pairs"
    if {"responses", "rewards"} <= columns:
        return "kwise"
    if {"A0", "A0_score"} <= columns:
        return "ultrafeedback"
    return None


def check_columns(columns: set[str], ds: DatasetConfig, where: str) -> None:
    """Raise naming the first column `ds.format` needs that `columns` lacks, with the mapping
    key that renames it and the format the columns look like, if another."""
    for name in FORMAT_COLUMNS[ds.format]:
        column = ds.fields.get(name, name)
        if column in columns:
            continue
        guess = guess_format(columns)
        hint = (
            f"the file looks like format {guess!r}: set data.*.format: {guess}"
            if guess and guess != ds.format
            else f"rename it in the file or map it with data.*.fields.{name}"
        )
        raise AlignError(
            f"{where}: no column {column!r} (format {ds.format!r} needs "
            f"{', '.join(ds.fields.get(n, n) for n in FORMAT_COLUMNS[ds.format])}); "
            f"columns: {', '.join(sorted(columns)) or 'none'}; {hint}"
        )


def normalise_row(row: dict, i: int, ds: DatasetConfig, where: str) -> dict:
    """One file row as a record of `ds.format` (see the module docstring); errors name `where`."""
    col = {
        name: ds.fields.get(name, name)
        for name in ("id", "prompt", "answer", "responses", "rewards", "chosen", "rejected")
    }
    check_columns(set(row), ds, where)
    rid = str(row[col["id"]]) if row.get(col["id"]) is not None else f"{i:06d}"
    rec: dict[str, Any] = {"id": rid, "prompt": as_messages(row[col["prompt"]], where)}
    where = f"{where} (id {rid})"
    if ds.format == "prompts":
        extra = {k: v for k, v in row.items() if k not in (col["id"], col["prompt"])}
        if col["answer"] in row:
            extra["answer"] = extra.pop(col["answer"])
        return rec | extra
    if ds.format == "kwise":
        responses, rewards = row.get(col["responses"]), row.get(col["rewards"])
        if not isinstance(responses, list) or not isinstance(rewards, list):
            raise AlignError(f"{where}: kwise records need list columns responses and rewards")
    elif ds.format == "ultrafeedback":
        idx = _ultrafeedback_columns(row, where)
        responses = [row[f"A{k}"] for k in idx]
        rewards = [row.get(f"A{k}_score") for k in idx]
    else:  # pairs
        responses, rewards = [row.get(col["chosen"]), row.get(col["rejected"])], [1.0, 0.0]
    if len(responses) != len(rewards):
        raise AlignError(
            f"{where}: {len(responses)} responses but {len(rewards)} rewards; K must match"
        )
    rec["responses"] = [_response_text(r, f"{where} response {k}") for k, r in enumerate(responses)]
    rec["rewards"] = [_reward(r, f"{where} reward {k}") for k, r in enumerate(rewards)]
    return rec


def load_records(
    ds: DatasetConfig, system_prompt: str | None = None, what: str = "data"
) -> list[dict]:
    """Normalised records of one dataset section; errors name the source and the record."""
    source = ds.path or ds.hf_dataset
    rows = _load_rows(ds)
    if not rows:
        raise AlignError(f"{what}: {source} holds no records")
    records = [normalise_row(r, i, ds, f"{what}: {source} record {i}") for i, r in enumerate(rows)]
    seen: set[str] = set()
    for rec in records:
        if rec["id"] in seen:
            raise AlignError(f"{what}: {source}: duplicate id {rec['id']!r}; ids must be unique")
        seen.add(rec["id"])
        if system_prompt and rec["prompt"][0]["role"] != "system":
            rec["prompt"] = [{"role": "system", "content": system_prompt}, *rec["prompt"]]
    _check_storable(records, what, source)
    return records
