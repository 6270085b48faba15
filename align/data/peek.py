"""Checking a dataset before any model loads: its columns and its first records, read the cheap
way (the first lines of a JSONL file, the first batch of a Parquet file, the first rows of a
streamed hub dataset), then normalised exactly as a run would (`datasets.normalise_row`).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pyarrow.parquet as pq

from align.config import DatasetConfig, PipelineConfig
from align.core.errors import AlignError
from align.data.datasets import check_columns, normalise_row
from align.data.reading import check_local_file, json_rows, jsonl_rows

PEEK_ROWS = 8


def first_rows(ds: DatasetConfig, n: int = PEEK_ROWS) -> tuple[set[str], list[dict]]:
    """(column names, the first `n` rows) of a dataset section, without reading all of it."""
    if ds.path is None:
        import datasets

        try:
            stream = datasets.load_dataset(ds.hf_dataset, split=ds.split, streaming=True)
            rows = [dict(r) for r in itertools.islice(stream, n)]
        except Exception as exc:  # datasets raises many types for unreadable or unreachable data
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise AlignError(
                f"cannot read hf_dataset {ds.hf_dataset!r} split {ds.split!r}: {first}"
            ) from None
        columns = set(stream.column_names or []) or {k for r in rows for k in r}
        return columns, rows
    path = Path(ds.path)
    check_local_file(path, ds.path)
    if path.suffix == ".parquet":
        try:
            handle = pq.ParquetFile(path)
        except Exception as exc:  # pyarrow: ArrowInvalid, OSError
            raise AlignError(f"cannot read {path}: {exc}") from None
        batch = next(handle.iter_batches(batch_size=n), None)
        return set(handle.schema_arrow.names), batch.to_pylist() if batch is not None else []
    # JSON Lines: only the first n lines; a JSON array is one document, read whole
    name = str(path)
    rows = (
        list(itertools.islice(jsonl_rows(path, name), n))
        if path.suffix == ".jsonl"
        else json_rows(path, name)[:n]
    )
    return {k for r in rows for k in r}, rows


def check_dataset(ds: DatasetConfig, what: str) -> str:
    """Raise on the first problem of a dataset section's columns or first records (naming the
    column and the file); else one line saying what was checked."""
    source = ds.path or ds.hf_dataset
    columns, rows = first_rows(ds)
    if not rows:
        raise AlignError(f"{what}: {source} holds no records")
    check_columns(columns, ds, f"{what}: {source}")
    for i, row in enumerate(rows):
        normalise_row(row, i, ds, f"{what}: {source} record {i}")
    return f"{what}: {source} ok ({ds.format}, first {len(rows)} records read)"


def check_inputs(cfg: PipelineConfig, local_only: bool = False) -> list[str]:
    """`check_dataset` on data.train and data.eval (with `local_only`, only those read from a
    local file: `align run` checks them before anything starts, hub datasets are left to
    `align validate`); one line per dataset checked."""
    sections = [("data.train", cfg.data.train), ("data.eval", cfg.data.eval)]
    return [
        check_dataset(ds, what)
        for what, ds in sections
        if ds is not None and (ds.path is not None or not local_only)
    ]
