"""Data at scale: records are streamed (RecordStream, ShardRecords) and training examples live in
a memory-mapped Arrow file (ExampleStore) whose rows read back exactly as they were built.

Files here are larger than one read batch (1024 rows), so every check crosses batch boundaries.
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from align.config import DatasetConfig, validate_dict
from align.config.data import WindowConfig
from align.core.errors import AlignError
from align.data.datasets import RecordStream, load_records, window_positions
from align.data.reading import BATCH_ROWS
from align.data.records import ShardRecords, write_shard
from align.model.tiny import build_tiny_tokenizer
from align.model.tokenize import check_prompt_lengths, encode_record
from align.stages.annotate import _reward_summary
from align.train.examples import ExampleStore, build_example, write_examples

N = BATCH_ROWS * 2 + 100


def kwise_rows(n: int = N) -> list[dict]:
    return [
        {
            "id": f"r{i}",
            "prompt": f"What is {i} + 1?",
            "responses": [f"{i + 1}", f"{i}", f"{i + 2}"],
            "rewards": [1.0, 0.0, 0.25 * (i % 3)],
        }
        for i in range(n)
    ]


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def stream(path: Path, **ds) -> RecordStream:
    return RecordStream(DatasetConfig(path=str(path), format="kwise", **ds), None, "data.train")


def test_a_stream_yields_every_record_on_every_pass(tmp_path: Path) -> None:
    records = stream(write_jsonl(tmp_path / "d.jsonl", kwise_rows()))
    first, second = list(records), list(records)
    assert len(records) == N == len(first)
    assert first == second
    assert [r["id"] for r in first[:2]] == ["r0", "r1"]
    assert first[N - 1]["rewards"] == [1.0, 0.0, 0.25 * ((N - 1) % 3)]


def test_parquet_streams_the_same_records_as_jsonl(tmp_path: Path) -> None:
    rows = kwise_rows()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet", row_group_size=500)
    from_jsonl = list(stream(write_jsonl(tmp_path / "d.jsonl", rows)))
    assert list(stream(tmp_path / "d.parquet")) == from_jsonl


def test_a_column_that_only_late_rows_hold_reaches_every_record(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i}"} for i in range(N)]
    rows[-1]["answer"] = "42"
    records = load_records(
        DatasetConfig(path=str(write_jsonl(tmp_path / "p.jsonl", rows))), None, "data.train"
    )
    assert records[0]["answer"] is None and records[-1]["answer"] == "42"


def test_a_duplicate_id_past_the_first_batch_is_named(tmp_path: Path) -> None:
    rows = kwise_rows()
    rows[-1]["id"] = "r7"
    with pytest.raises(AlignError, match=r"duplicate id 'r7'; ids must be unique"):
        stream(write_jsonl(tmp_path / "d.jsonl", rows))


def test_a_bad_record_is_refused_before_any_record_is_used(tmp_path: Path) -> None:
    rows = kwise_rows()
    rows[-5]["rewards"][1] = "high"
    with pytest.raises(AlignError, match=rf"record {N - 5} \(id r{N - 5}\) reward 1"):
        stream(write_jsonl(tmp_path / "d.jsonl", rows))


def test_types_must_agree_across_batches(tmp_path: Path) -> None:
    rows = [{"prompt": f"q{i}", "level": i} for i in range(N)]
    write_jsonl(tmp_path / "ints.jsonl", [*rows[:-1], {"prompt": "x", "level": 2.5}])
    assert load_records(DatasetConfig(path=str(tmp_path / "ints.jsonl")))[-1]["level"] == 2.5
    write_jsonl(tmp_path / "mixed.jsonl", [*rows[:-1], {"prompt": "x", "level": "hard"}])
    with pytest.raises(AlignError, match="a column holds values of different types"):
        load_records(DatasetConfig(path=str(tmp_path / "mixed.jsonl")))


def test_limit_and_window_pick_the_same_records_as_positions(tmp_path: Path) -> None:
    path = write_jsonl(tmp_path / "d.jsonl", kwise_rows())
    assert [r["id"] for r in stream(path, limit=5)] == [f"r{i}" for i in range(5)]
    window = WindowConfig(size=40, index=3, seed=7)
    picked = [r["id"] for r in stream(path, limit=1500, window=window.model_dump())]
    assert picked == [f"r{p}" for p in window_positions(1500, window)]
    assert len(set(picked)) == 40


def test_prompt_lengths_name_the_record_past_the_first_batch() -> None:
    tok = build_tiny_tokenizer()
    records = [{"id": f"r{i}", "prompt": [{"role": "user", "content": "hi"}]} for i in range(700)]
    records[650]["prompt"][0]["content"] = "hi " * 200
    with pytest.raises(AlignError, match=r"data.train: x record 650 \(id r650\)"):
        check_prompt_lengths(tok, iter(records), 64, "data.train: x")


def _config(**loss):
    bmc = {"rewrite": {"method": "bmc", "backend": {"kind": "local", "model": "embedded"}}}
    return validate_dict(
        {
            **(bmc if loss.get("name", "").endswith("bmc") else {}),
            "name": "t",
            "model": {"policy": "embedded"},
            "data": {"train": {"path": "d.jsonl", "format": "kwise"}},
            "annotate": {"reward": {"from_data": True}},
            "train": {
                "loss": loss or {"name": "nca", "beta": 0.1},
                "max_length": 64,
                "max_prompt_length": 32,
            },
        },
        "test",
    )


def annotated(n: int = 1500) -> list[dict]:
    return [
        {
            **r,
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "ref_logps": [-1.0 / (i + 1), -2.5, -0.1 * i],  # floats that float32 would round
            "n_tokens": [2, 2, 2],
        }
        for i, r in enumerate(kwise_rows(n))
    ]


def test_the_example_store_reads_back_exactly_what_was_built(tmp_path: Path) -> None:
    tok, cfg, records = build_tiny_tokenizer(), _config(), annotated()
    path = tmp_path / "train" / "examples.arrow"
    assert write_examples(iter(records), tok, cfg, path) == len(records)
    store = ExampleStore(path)
    assert len(store) == len(records)
    for i in (0, 1023, 1024, len(records) - 1):
        assert store[i] == build_example(records[i], tok, cfg)
    assert store[1].ref_logps == [-0.5, -2.5, -0.1]


def test_bmc_fields_survive_the_store(tmp_path: Path) -> None:
    tok, cfg = build_tiny_tokenizer(), _config(name="dpo_bmc", beta=0.1)
    rec = annotated(1)[0] | {"responses": ["1", "0"], "rewards": [1.0, 0.0]}
    rec["ref_logps"] = [-1.0, -2.0]
    lengths = [len(r) for r in encode_record(tok, rec, 64, 32)[1]]
    rec["diff_masks"] = [[1, 0, 1, 1][:n] for n in lengths]
    rec["ref_token_logps"] = [[-0.123456789] * n for n in lengths]
    write_examples([rec], tok, cfg, tmp_path / "e.arrow")
    assert ExampleStore(tmp_path / "e.arrow")[0] == build_example(rec, tok, cfg)


def test_a_bad_record_leaves_no_example_file(tmp_path: Path) -> None:
    records = annotated()
    del records[1400]["ref_logps"]
    path = tmp_path / "examples.arrow"
    with pytest.raises(AlignError, match="record r1400: no ref_logps"):
        write_examples(records, build_tiny_tokenizer(), _config(), path)
    assert list(tmp_path.iterdir()) == []


def test_shards_stream_in_order_with_their_count_and_reward_summary(tmp_path: Path) -> None:
    records = annotated(10)
    write_shard(tmp_path / "shard-00000.parquet", records[:6])
    write_shard(tmp_path / "shard-00001.parquet", records[6:])
    shards = ShardRecords(tmp_path)
    assert len(shards) == 10 and [r["id"] for r in shards] == [f"r{i}" for i in range(10)]
    flat = [x for r in records for x in r["rewards"]]
    summary = _reward_summary(shards)
    assert summary["reward_mean"] == pytest.approx(sum(flat) / len(flat))
    assert (summary["reward_min"], summary["reward_max"]) == (0.0, 1.0)
