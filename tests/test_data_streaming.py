"""Data at scale: records are streamed (RecordStream, ShardRecords), training examples and online
prompts live in memory-mapped Arrow files (ExampleStore, ArrowRows) whose rows read back exactly
as they were built, and BMC's rewrite stage holds one shard of pairs at a time.

Files here are larger than one read batch (1024 rows), so every check crosses batch boundaries.
"""

from __future__ import annotations

import datetime
import json
import weakref
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from align.config import DatasetConfig, load_pipeline, validate_dict
from align.config.data import WindowConfig
from align.core.errors import AlignError
from align.data.datasets import RecordStream, load_records, window_positions
from align.data.reading import BATCH_ROWS
from align.data.records import ShardRecords, read_shards, write_shard
from align.llm.fake import ScriptedBackend
from align.model.loading import resolve_model
from align.model.tiny import build_tiny_tokenizer
from align.model.tokenize import check_prompt_lengths, encode_prompt, encode_record
from align.stages import rewrite
from align.stages.annotate import _reward_summary
from align.train.examples import (
    EXAMPLES_FILE,
    ArrowRows,
    ExampleStore,
    build_example,
    write_examples,
)
from align.train.online import OnlineTrainer, prompt_row

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


def _config(rewrite: dict | None = None, **loss):
    backend = {"kind": "local", "model": "embedded"}
    bmc = {"rewrite": {"method": "bmc", "backend": backend, **(rewrite or {})}}
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


def test_arrow_rows_are_mapped_not_copied(tmp_path: Path) -> None:
    tok, cfg = build_tiny_tokenizer(), _config()
    path = tmp_path / "examples.arrow"
    write_examples(annotated(), tok, cfg, path)
    before = pa.total_allocated_bytes()
    rows = ArrowRows(path)
    assert pa.total_allocated_bytes() - before < path.stat().st_size // 100
    assert rows[1024] == vars(ExampleStore(path)[1024])


# ---- BMC's rewrite stage: one shard of pairs at a time ---------------------------------------
class _Tracked(dict):
    """An annotated record the test can see die (a dict subclass takes weak references)."""


def _rewrite_setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, records: list[dict]):
    """Annotate shards of 4 records, a scripted rewriter, the tiny model as the reference."""
    monkeypatch.chdir(tmp_path)
    cfg = _config({"shard_size": 3, "cache_dir": "cache"}, name="dpo_bmc", beta=0.1)
    folder = tmp_path / "runs" / "t" / "annotate"
    for s in range(0, len(records), 4):
        write_shard(folder / f"shard-{s // 4:05d}.parquet", records[s : s + 4])

    def make_backend(cfg, device) -> ScriptedBackend:
        return ScriptedBackend(lambda request: "It is 7.")

    monkeypatch.setattr("align.llm.open.make_backend", make_backend)
    upstream = {"prepare-model": {"summary": {"reference": {"path": resolve_model("tiny")}}}}
    return cfg, upstream


def test_the_rewrite_stage_holds_one_shard_of_pairs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = annotated(20)
    for i in (2, 9, 17):  # ties: skipped
        records[i]["rewards"] = [0.5, 0.5, 0.5]
    cfg, upstream = _rewrite_setup(tmp_path, monkeypatch, records)
    refs: list[weakref.ref] = []  # to every annotated record read
    held: list[int] = []
    stream, make_rows = ShardRecords.__iter__, rewrite.pair_records

    def tracked(self: ShardRecords):
        for rec in stream(self):
            if self.paths[0].parent.name == "annotate":
                rec = _Tracked(rec)
                refs.append(weakref.ref(rec))
            yield rec

    def pair_records(shard, *args):
        held.append(sum(ref() is not None for ref in refs))  # records still referenced
        return make_rows(shard, *args)

    monkeypatch.setattr(ShardRecords, "__iter__", tracked)
    monkeypatch.setattr(rewrite, "pair_records", pair_records)
    out = tmp_path / "runs" / "t" / "rewrite"
    summary, _ = rewrite.rewrite_stage(cfg, out, upstream, "h")
    assert held == [3, 3, 3, 3, 3, 2]  # 17 pairs in shards of 3, never the 20 records
    assert (summary["pairs"], summary["skipped_ties"], summary["modified"]) == (17, 3, 17)
    rows = read_shards(out)
    assert [r["id"] for r in rows] == [f"r{i}" for i in range(20) if i not in (2, 9, 17)]
    # the figures are counted as the records stream by: a one-pass iterator is enough
    figures = {k: v for k, v in summary.items() if k != "device"}
    assert rewrite.summarise(iter(rows), 3, summary["rewriter"]) == figures


def test_the_rewrite_stage_names_the_records_when_none_has_a_preference(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    records = [r | {"rewards": [1.0, 1.0, 1.0]} for r in annotated(6)]
    cfg, upstream = _rewrite_setup(tmp_path, monkeypatch, records)
    with pytest.raises(AlignError, match="none of the 6 annotated records has a preference"):
        rewrite.rewrite_stage(cfg, tmp_path / "runs" / "t" / "rewrite", upstream, "h")


# ---- online training's prompts: a memory-mapped file, not lists ---------------------------------
def test_online_prompts_come_from_a_memory_mapped_file(project: Path) -> None:
    rows = [{"prompt": f"What is {i} + 1?", "answer": i + 1, "note": None} for i in range(N)]
    # an int column with one float, a null column with one object: each value keeps its type
    rows[1030] |= {"answer": 2.5, "note": {"level": "hard", "steps": [1, 2]}}
    source = write_jsonl(project / "p.jsonl", rows)
    records = RecordStream(DatasetConfig(path=str(source)), None, "data.train")
    cfg = load_pipeline("pipelines/ipo-md-quickstart.yaml", smoke=True)
    tiny = Path(resolve_model("tiny"))
    trainer = OnlineTrainer(cfg, tiny, tiny, records, project / "out", "h")
    assert isinstance(trainer.prompts, ArrowRows) and len(trainer.examples) == N
    assert (project / "out" / EXAMPLES_FILE).is_file()
    expected = list(records)
    for i in (0, 1023, 1030, N - 1):
        ids, prompts, columns = trainer._read_prompts([i])
        assert ids == [
            encode_prompt(trainer.tokenizer, expected[i]["prompt"], cfg.train.max_prompt_length)
        ]
        assert prompts == [expected[i]["prompt"]]
        assert columns == {"answer": [expected[i]["answer"]], "note": [expected[i]["note"]]}
    assert [type(trainer._read_prompts([i])[2]["answer"][0]) for i in (1, 1030)] == [int, float]


def test_a_column_json_cannot_hold_is_refused_naming_the_record() -> None:
    rec = {"id": "r3", "prompt": [{"role": "user", "content": "hi"}], "at": datetime.date.today()}
    with pytest.raises(AlignError, match=r"data\.train record r3: a column is not a JSON value"):
        prompt_row(rec, build_tiny_tokenizer(), 32)
