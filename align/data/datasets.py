"""Read prompts and K-wise data from local files or HF datasets into normalised records.

Every input shape becomes one of two record kinds:
  prompts:  {id, prompt: [messages], **extra columns (e.g. answer)}
  K-wise:   {id, prompt: [messages], responses: [K str], rewards: [K float]}
Formats: `prompts`, `kwise` (responses/rewards columns), `ultrafeedback` (prompt, A0..A{K-1},
A{i}_score, as in the NCA reward dataset), `pairs` (TRL prompt/chosen/rejected -> K=2, rewards 1/0).
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from array import array
from collections.abc import Iterator
from typing import Any

from align.config import DatasetConfig
from align.config.data import WindowConfig
from align.core.errors import AlignError
from align.data.reading import BATCH_ROWS, dataset_rows, first_line
from align.data.records import batched


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


def window_positions(n: int, window: WindowConfig) -> list[int]:
    """The positions (of n records) in `window`: `window.size` of a permutation seeded by
    `window.seed`, from `window.index * window.size` on, wrapping around (all n, permuted, when
    size >= n)."""
    order = list(range(n))
    random.Random(window.seed).shuffle(order)
    start = window.index * window.size
    return [order[(start + i) % n] for i in range(min(window.size, n))]


def _id_hash(record_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(record_id.encode(), digest_size=8).digest(), "little")


class RecordStream:
    """The normalised records of one dataset section, read again from the source on every
    iteration, so memory does not grow with the dataset. Making one reads the source through
    once and checks every record (format, unique ids, one type per column), so bad data is
    refused before any model work; `len()` is the number of records an iteration yields."""

    def __init__(self, ds: DatasetConfig, system_prompt: str | None = None, what: str = "data"):
        self.ds, self.system_prompt, self.what = ds, system_prompt, what
        self.source = ds.path or ds.hf_dataset
        # every record gets every column (None where it has none), as when read whole
        self.columns = list(dict.fromkeys(k for row in dataset_rows(ds) for k in row))
        total = self._check()
        if total == 0:
            raise AlignError(f"{what}: {self.source} holds no records")
        self._window = window_positions(total, ds.window) if ds.window else None
        self._len = total if self._window is None else len(self._window)

    def __len__(self) -> int:
        return self._len

    def __iter__(self) -> Iterator[dict]:
        if self._window is None:
            yield from self._records()
            return
        slot = {position: s for s, position in enumerate(self._window)}
        picked: list[dict | None] = [None] * len(self._window)
        for i, rec in enumerate(self._records()):
            if i in slot:
                picked[slot[i]] = rec
        yield from (rec for rec in picked if rec is not None)

    def _records(self) -> Iterator[dict]:
        """Every record of the source, normalised, in file order."""
        system = self.system_prompt
        for i, row in enumerate(dataset_rows(self.ds)):
            row = {k: row.get(k) for k in self.columns}
            rec = normalise_row(row, i, self.ds, f"{self.what}: {self.source} record {i}")
            if system and rec["prompt"][0]["role"] != "system":
                rec["prompt"] = [{"role": "system", "content": system}, *rec["prompt"]]
            yield rec

    def _check(self) -> int:
        """Normalise every record (raising on the first bad one), check that ids are unique (by
        8-byte hashes: 8 MB for 1M records) and that each column keeps one type; the count."""
        import numpy as np
        import pyarrow as pa

        hashes: array[int] = array("Q")
        schema: pa.Schema | None = None
        for batch in batched(self._records(), BATCH_ROWS):
            hashes.extend(_id_hash(rec["id"]) for rec in batch)
            try:
                found = pa.Table.from_pylist(batch).schema
                schema = (
                    found
                    if schema is None
                    else pa.unify_schemas([schema, found], promote_options="permissive")
                )
            except (pa.ArrowException, OverflowError) as exc:
                raise AlignError(
                    f"{self.what}: {self.source}: a column holds values of different types, or "
                    f"a number too large to store ({first_line(exc)}); give each column one "
                    "type in every record"
                ) from None
        ordered = np.sort(np.frombuffer(hashes, dtype=np.uint64))
        repeated = ordered[1:][ordered[1:] == ordered[:-1]]
        if len(repeated):
            twice = int(repeated[0])
            rid = next(r["id"] for r in self._records() if _id_hash(r["id"]) == twice)
            raise AlignError(
                f"{self.what}: {self.source}: duplicate id {rid!r}; ids must be unique"
            )
        return len(hashes)


def load_records(
    ds: DatasetConfig, system_prompt: str | None = None, what: str = "data"
) -> list[dict]:
    """Normalised records of one dataset section, as a list (for small ones: the held-out
    prompts); errors name the source and the record."""
    return list(RecordStream(ds, system_prompt, what))
