"""K-wise records on disk: Parquet shards written atomically, read back in order.

A record is a dict with `id`, `prompt` (conversational messages), and after sampling
`responses[K]`; after annotation `rewards[K]`, `ref_logps[K]`, `n_tokens[K]`.
"""

from __future__ import annotations

import io
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


def write_shard(path: Path, records: list[dict]) -> None:
    """Write one shard; it appears under its final name only when complete."""
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(records), buf)
    atomic_write_bytes(path, buf.getvalue())


def read_shards(folder: Path) -> list[dict]:
    """All records of a stage output folder, shard by shard."""
    records: list[dict] = []
    for path in sorted(folder.glob(SHARD_GLOB)):
        records.extend(pq.read_table(path).to_pylist())
    return records


def chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]
