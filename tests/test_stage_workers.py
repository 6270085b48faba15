"""`sample.processes` / `annotate.processes`: worker processes split a stage's shards, one per
GPU; the output equals the one-process run's, each worker sees only its GPU, a worker's bad
input is the stage's one-line error, and a dead worker stops the stage."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from align.config import load_pipeline
from align.core.device import worker_gpus
from align.core.errors import AlignError
from align.data.records import read_shards
from align.pipeline import plan, run_stage, stage_folder
from align.stages.workers import Part, run_parts
from flows.cli import main
from tests.conftest import REPO

QS = "pipelines/quickstart.yaml"
SHARDS = ["sample.shard_size=1"]  # the smoke run's 4 prompts in 4 shards: 2 per worker


def _stages(overrides: list[str], threads: int) -> tuple[list[dict], list[dict], dict]:
    """Run prepare-model, sample and annotate on `threads` threads; their records and
    manifests."""
    cfg = load_pipeline(QS, [*SHARDS, *overrides], smoke=True)
    manifests = {p.name: run_stage(cfg, p.name, threads=threads)[0] for p in plan(cfg)[:3]}
    sampled = read_shards(stage_folder(cfg, "sample"))
    return sampled, read_shards(stage_folder(cfg, "annotate")), manifests


@pytest.mark.slow
def test_two_workers_write_what_one_process_writes(project: Path) -> None:
    # two workers split the stage's 2 threads, one each; the one-process run gets one thread
    # too, so both run the same kernels, bit for bit
    threads = torch.get_num_threads()
    try:
        one_sampled, one_annotated, _ = _stages(["runs_dir=runs-one"], threads=1)
        sampled, annotated, manifests = _stages(
            ["runs_dir=runs-two", "sample.processes=2", "annotate.processes=2"], threads=2
        )
    finally:
        torch.set_num_threads(threads)
    assert len(sampled) == 4
    assert sampled == one_sampled  # same prompts, seeds, batches: same responses
    assert [r["id"] for r in annotated] == [r["id"] for r in one_annotated]
    for two, one in zip(annotated, one_annotated, strict=True):
        assert two["rewards"] == one["rewards"]
        assert two["n_tokens"] == one["n_tokens"]
        assert two["ref_logps"] == pytest.approx(one["ref_logps"], abs=1e-6)
    assert manifests["sample"]["summary"]["device"] == "2 workers: cpu, cpu"
    assert manifests["annotate"]["summary"]["device"] == "2 workers: cpu, cpu"
    # the worker count is not part of what the stage computes: one process finds it current
    cfg = load_pipeline(QS, [*SHARDS, "runs_dir=runs-two"], smoke=True)
    assert [run_stage(cfg, name)[1] for name in ("sample", "annotate")] == [False, False]


def test_shards_go_round_robin_and_every_shard_to_one_worker() -> None:
    records = [{"id": i} for i in range(7)]
    owned = [[i for i, _ in Part(rank, 3).shards(records, 2)] for rank in range(3)]
    assert owned == [[0, 3], [1], [2]]
    assert [len(shard) for _, shard in Part().shards(records, 2)] == [2, 2, 2, 1]


def report_gpu(part: Part, progress) -> dict:
    """A worker body for the tests: what it sees, after one unit of progress."""
    progress(part.rank + 1)
    return {"device": "cpu", "visible": os.environ.get("CUDA_VISIBLE_DEVICES")}


def refuse(part: Part, progress) -> dict:
    if part.rank == 1:
        raise AlignError("data.train: record 3 (id 'q3'): bad prompt; fix the record")
    return {"device": "cpu"}


def die(part: Part, progress) -> dict:
    if part.rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return {"device": "cpu"}


def test_each_worker_sees_only_its_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("align.stages.workers.worker_gpus", lambda device, n, each: ["5", "7"])
    results = run_parts(report_gpu, 2, "auto", 3, "test", "record", "sample.processes")
    assert results == [
        {"device": "cpu (GPU 5)", "visible": "5"},
        {"device": "cpu (GPU 7)", "visible": "7"},
    ]


def test_a_workers_bad_input_is_the_stages_one_line_error() -> None:
    with pytest.raises(AlignError, match=r"^data.train: record 3 \(id 'q3'\): bad prompt"):
        run_parts(refuse, 2, "cpu", 2, "test", "record", "annotate.processes")


def test_a_killed_worker_stops_the_stage_with_its_status() -> None:
    with pytest.raises(
        RuntimeError, match=r"annotate.processes: worker 1 of 2 exited with status -9"
    ):
        run_parts(die, 2, "cpu", 2, "test", "record", "annotate.processes")


def _cuda(monkeypatch: pytest.MonkeyPatch, count: int) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)


def test_workers_take_the_visible_gpus_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    _cuda(monkeypatch, 2)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4, 6")
    assert worker_gpus("auto", 2) == ["4", "6"]
    assert worker_gpus("cpu", 2) is None
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert worker_gpus("cuda", 1) == ["0"]
    with pytest.raises(ValueError, match="3 worker processes but this machine has 2 CUDA"):
        worker_gpus("auto", 3)
    _cuda(monkeypatch, 8)  # vLLM tensor parallel: each worker takes consecutive GPUs
    assert worker_gpus("auto", 2, 4) == ["0,1,2,3", "4,5,6,7"]
    with pytest.raises(ValueError, match=r"^3 worker processes x 4 GPUs but this machine has 8 "):
        worker_gpus("auto", 3, 4)


def test_more_workers_than_gpus_is_a_one_line_config_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _cuda(monkeypatch, 2)
    pipeline = REPO / "pipelines/quickstart.yaml"
    assert main(["validate", str(pipeline), "--set", "annotate.processes=3"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: {pipeline}: annotate.processes: 3 worker processes but this machine has 2 CUDA "
        "device(s); use at most 2 workers"
    )
    assert main(["validate", str(pipeline), "--set", "sample.processes=2"]) == 0
