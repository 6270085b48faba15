"""Raw rows of a dataset, streamed: JSON Lines line by line, Parquet a row batch at a time, a
hub dataset (Arrow, memory-mapped by `datasets`) a batch at a time. Only a `.json` file (one
JSON document) is read whole. Errors name the file and the line, item or batch.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from align.config import DatasetConfig
from align.core.errors import AlignError

LOCAL_SUFFIXES = (".jsonl", ".json", ".parquet")
BATCH_ROWS = 1024  # rows read per Parquet / hub batch: enough to amortise, small to hold


def first_line(exc: BaseException) -> str:
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


def json_value(text: str, name: str, number: int) -> Any:
    """The JSON value of line `number` of file `name`; one line naming both when it is not
    JSON (bounded: a 100000-deep array or a 5000-digit integer is refused, not a traceback)."""
    try:
        return json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise AlignError(
            f"cannot read {name}: line {number}: not valid JSON ({first_line(exc)}); fix or "
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


def _not_utf8(name: str, line: int, byte: int) -> AlignError:
    return AlignError(
        f"cannot read {name}: line {line}: byte 0x{byte:02x} is not UTF-8; save the file as UTF-8"
    )


def jsonl_rows(path: Path, name: str) -> Iterator[dict]:
    """The records of a JSON Lines file, one line at a time (blank lines skipped)."""
    with path.open("rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise _not_utf8(name, number, raw[exc.start]) from None
            if line.strip():
                yield json_record(json_value(line, name, number), name, f"line {number}")


def json_rows(path: Path, name: str) -> list[dict]:
    """The records of a `.json` file (one object, or an array of objects), strictly UTF-8."""
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _not_utf8(name, data[: exc.start].count(b"\n") + 1, data[exc.start]) from None
    if not text.strip():
        return []
    value = json_value(text, name, 1)
    rows = value if isinstance(value, list) else [value]
    return [json_record(row, name, f"item {i}") for i, row in enumerate(rows)]


def _parquet_rows(path: Path, name: str) -> Iterator[dict]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=BATCH_ROWS):
            yield from batch.to_pylist()
    except (pa.ArrowException, OSError) as exc:
        raise AlignError(f"cannot read {name}: {first_line(exc)}") from None


def _hub_rows(ds: DatasetConfig) -> Iterator[dict]:
    import datasets

    datasets.disable_progress_bars()
    source = f"hf_dataset {ds.hf_dataset!r} split {ds.split!r}"
    try:
        table = datasets.load_dataset(ds.hf_dataset, split=ds.split, revision=ds.revision)
    except Exception as exc:  # datasets raises many types for unreachable data
        raise AlignError(f"cannot read {source}: {first_line(exc)}") from None
    yield from table  # a row at a time from the memory-mapped Arrow cache


def dataset_rows(ds: DatasetConfig) -> Iterator[dict]:
    """The rows of a dataset section as the file holds them (JSON values keep their types: a
    reward "7" stays a string, to be refused, not coerced to 7), `ds.limit` at most."""
    if ds.path is None:
        rows = _hub_rows(ds)
    else:
        path = Path(ds.path)
        check_local_file(path, ds.path)
        if path.suffix == ".parquet":
            rows = _parquet_rows(path, ds.path)
        elif path.suffix == ".jsonl":
            rows = jsonl_rows(path, ds.path)
        else:
            rows = iter(json_rows(path, ds.path))
    for i, row in enumerate(rows):
        if ds.limit is not None and i >= ds.limit:
            return
        yield row
