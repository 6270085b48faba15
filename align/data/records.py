"""K-wise records on disk: Parquet shards written atomically, read back in order.

A shard is computed a unit (one generation or scoring batch) at a time; each finished unit is
kept as a part file beside it until the shard is whole, so a stopped run loses at most the unit
in flight. Only `shard-*.parquet` files are records: parts never reach a reader.

A record is a dict with `id`, `prompt` (conversational messages), and after sampling
`responses[K]`; after annotation `rewards[K]`, `ref_logps[K]`, `n_tokens[K]`.
"""

from __future__ import annotations

import io
import itertools
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from align.core.io import atomic_write_bytes

SHARD_GLOB = "shard-*.parquet"
# Record keys the pipeline owns; every other key of a record (e.g. `answer`) is a dataset column
# passed to reward functions.
RESERVED = {
    "id",
    "prompt",
    "responses",
    "rewards",
    "finished",
    "ref_logps",
    "n_tokens",
    "aux_rewards",
}


def shard_path(folder: Path, index: int) -> Path:
    return folder / f"shard-{index:05d}.parquet"


def part_path(folder: Path, shard: int, unit: int) -> Path:
    return folder / f"part-{shard:05d}-{unit:05d}.parquet"


def write_shard_by_units(
    folder: Path,
    index: int,
    units: list[list[dict]],
    work: Callable[[list[dict], int], list[dict]],
    progress: Callable[[int], object],
) -> bool:
    """Write shard `index` of `folder` as the concatenation of `work(unit, unit_index)` over
    `units`, keeping each finished unit as a part file (reused on resume); `progress(n)` after
    each unit of n input records. Returns False when the shard was already complete."""
    parts = [part_path(folder, index, u) for u in range(len(units))]
    target = shard_path(folder, index)
    if not target.exists():
        rows: list[dict] = []
        for u, (unit, part) in enumerate(zip(units, parts, strict=True)):
            if part.exists():  # finished by an earlier, stopped run of this configuration
                done = pq.read_table(part).to_pylist()
            else:
                done = work(unit, u)
                write_shard(part, done)
            rows.extend(done)
            progress(len(unit))
        write_shard(target, rows)
        fresh = True
    else:
        progress(sum(len(unit) for unit in units))
        fresh = False
    for part in parts:  # also those a run stopped between the shard and this clean-up left
        part.unlink(missing_ok=True)
    return fresh


def write_shard(path: Path, records: list[dict]) -> None:
    """Write one shard; it appears under its final name only when complete."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buf)
    atomic_write_bytes(path, buf.getvalue())


class ShardRecords:
    """The records of a stage output folder, read a shard at a time on every iteration;
    `len()` from the shards' footers."""

    def __init__(self, folder: Path):
        self.paths = sorted(folder.glob(SHARD_GLOB))

    def __len__(self) -> int:
        return sum(pq.ParquetFile(p).metadata.num_rows for p in self.paths)

    def __iter__(self) -> Iterator[dict]:
        for path in self.paths:
            yield from pq.read_table(path).to_pylist()


def read_shards(folder: Path) -> list[dict]:
    """All records of a stage output folder, as one list (for small outputs)."""
    return list(ShardRecords(folder))


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def batched(items: Iterable, size: int) -> Iterator[list]:
    """Lists of `size` consecutive items of a stream (the last may be shorter): `chunks`
    without holding the stream."""
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch
