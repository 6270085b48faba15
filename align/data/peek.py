"""Checking a dataset before any model loads: its columns and its first records, read the cheap
way (local files through the run's own reader, `reading.dataset_rows`, stopped after the first
rows; the first rows of a streamed hub dataset), then normalised exactly as a run would
(`datasets.normalise_row`).
"""

from __future__ import annotations

import itertools

from align.config import DatasetConfig, PipelineConfig
from align.core.errors import AlignError
from align.data.datasets import check_columns, normalise_row
from align.data.reading import dataset_rows, first_line

PEEK_ROWS = 8


def first_rows(ds: DatasetConfig, n: int = PEEK_ROWS) -> tuple[set[str], list[dict]]:
    """(column names, the first `n` rows) of a dataset section, without reading all of it."""
    if ds.path is None:
        import datasets

        try:
            stream = datasets.load_dataset(ds.hf_dataset, split=ds.split, streaming=True)
            rows = [dict(r) for r in itertools.islice(stream, n)]
        except Exception as exc:  # datasets raises many types for unreadable or unreachable data
            raise AlignError(
                f"cannot read hf_dataset {ds.hf_dataset!r} split {ds.split!r}: {first_line(exc)}"
            ) from None
        columns = set(stream.column_names or []) or {k for r in rows for k in r}
        return columns, rows
    # local files as a run reads them, stopped after n rows (a .json document is read whole)
    rows = list(itertools.islice(dataset_rows(ds), n))
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
