"""Stages killed with SIGKILL resume without losing or repeating work.

R1: `align stage ... train` is killed inside gradient accumulation at a random step after a
checkpoint; the resumed run ends at the same weights as an uninterrupted one and its per-step
log has every step once. R2: annotate and judge are killed half-way; the re-run holds every
record once and does not redo finished work (reward calls and judge requests are counted).
Sampling killed half-way is tests/test_stages.py::test_sampling_resumes_after_sigkill.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from safetensors.torch import load_file

from tests.bad_inputs.harness import (
    cli_env,
    make_judged_project,
    make_project,
    openai_backend,
    overrides_of,
    popen_align,
    read_jsonl,
    run_align,
    run_stages_here,
)
from tests.test_judging_http import ENV, KEY, FaultyServer, alpaca_and_rating_reply

SMOKE = ["pipeline.yaml", "--smoke"]


def write_kwise(path: Path, n: int, k: int = 3) -> None:
    """`n` arithmetic prompts with K responses and distinct rewards."""
    rows = [
        {
            "id": f"r{i}",
            "prompt": f"What is {i} plus {i + 2}?",
            "responses": [str(2 * i + 2), f"It is {2 * i + 3}", "no idea"][:k],
            "rewards": [1.0, 0.25, -0.5][:k],
        }
        for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def wait_for(condition: Callable[[], bool], proc, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, "the run ended before the point to kill it"
        assert time.time() < deadline, "timed out waiting for the point to kill the run"
        time.sleep(0.01)


def kill(proc) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()


def ok(project: Path, *args: str, faults: dict | None = None, **env: str) -> str:
    res = run_align(project, *args, env=cli_env(project, faults, **env))
    assert res.returncode == 0, res.stderr[-3000:]
    return res.stdout


# ---- R1: training ------------------------------------------------------------------------
def test_train_killed_inside_grad_accumulation_resumes_to_the_same_weights(
    tmp_path: Path,
) -> None:
    """10 records, 3 prompts x grad_accum 2 per step (6 does not divide 10), 6 steps,
    checkpoints every 2. The kill lands in micro-batch 2 of a random step after a checkpoint."""
    project = make_project(tmp_path / "p")
    write_kwise(project / "data" / "train.jsonl", 10)
    train = [
        *SMOKE,
        *("--set", "data.train.limit=10", "--set", "train.max_steps=6"),
        *("--set", "train.save_steps=2", "--set", "train.batch_size=3"),
        *("--set", "train.grad_accum=2", "--set", "train.learning_rate=1e-3"),
    ]
    fresh = [*train, "--set", "runs_dir=fresh"]
    for args in (train, fresh):
        run_stages_here(project, overrides_of(args), "prepare-model", "annotate")
    ok(project, "stage", fresh[0], "train", *fresh[1:])

    seed = int(os.environ.get("ALIGN_TEST_SEED", time.time_ns() % 10_000))
    kill_step = random.Random(seed).choice([3, 5])  # the step after checkpoint 2 or 4
    progress = project / "progress.txt"
    env = cli_env(project, {"slow_step": 0.4, "progress": str(progress)})
    proc = popen_align(project, "stage", train[0], "train", *train[1:], env=env)

    def in_second_micro_batch() -> bool:
        steps = progress.read_text().split() if progress.exists() else []
        return steps.count(str(kill_step)) == 2

    wait_for(in_second_micro_batch, proc)
    kill(proc)
    out = project / "runs" / "corpus-smoke" / "train"
    assert not (out / "manifest.json").exists() and not (out / "model").exists()
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == [f"step-{kill_step - 1:06d}"], (seed, ckpts)

    resumed = ok(project, "stage", train[0], "train", *train[1:])
    assert f"resuming from {out.relative_to(project)}/checkpoints/{ckpts[0]}" in resumed, seed

    assert not [p for p in out.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    a = load_file(project / "fresh/corpus-smoke/train/model/model.safetensors")
    b = load_file(out / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6, seed
    straight, log = (
        read_jsonl(project / "fresh/corpus-smoke/train/log.jsonl"),
        read_jsonl(out / "log.jsonl"),
    )
    assert [r["step"] for r in log] == [1, 2, 3, 4, 5, 6], seed
    assert [r["loss"] for r in log] == pytest.approx([r["loss"] for r in straight], abs=1e-6)


def test_train_killed_before_its_first_checkpoint_logs_every_step_once(tmp_path: Path) -> None:
    """Killed after two logged steps and before any checkpoint: the re-run starts from step 1
    and its log is valid JSON Lines holding each step once (1, 2, 3, 4, not 1, 2, 1, 2, ...)."""
    project = make_project(tmp_path / "p")
    train = [*SMOKE, *("--set", "train.max_steps=4", "--set", "train.save_steps=10")]
    run_stages_here(project, overrides_of(train), "prepare-model", "annotate")
    progress = project / "progress.txt"
    env = cli_env(project, {"slow_step": 0.3, "progress": str(progress)})
    proc = popen_align(project, "stage", train[0], "train", *train[1:], env=env)
    wait_for(lambda: progress.exists() and "3" in progress.read_text().split(), proc)
    kill(proc)
    out = project / "runs" / "corpus-smoke" / "train"
    assert [r["step"] for r in read_jsonl(out / "log.jsonl")] == [1, 2]
    assert not (out / "checkpoints").exists() or not list((out / "checkpoints").iterdir())
    ok(project, "stage", train[0], "train", *train[1:])
    lines = (out / "log.jsonl").read_text().splitlines()
    assert [json.loads(ln)["step"] for ln in lines] == [1, 2, 3, 4]
    assert not any(bare in ln for ln in lines for bare in ("NaN", "Infinity"))


# ---- R2: annotation ----------------------------------------------------------------------
def test_annotate_killed_after_a_shard_resumes_without_rescoring(tmp_path: Path) -> None:
    """12 prompts in shards of 2: the kill comes after the first shard; the re-run scores only
    the prompts of unwritten shards and every record appears once."""
    project = make_project(tmp_path / "p")
    (project / "data" / "prompts.jsonl").write_text(
        "".join(
            json.dumps({"id": f"q{i}", "prompt": f"What is {i} plus 1?", "answer": i + 1}) + "\n"
            for i in range(12)
        )
    )
    args = [
        *SMOKE,
        *("--set", "data.train={path: data/prompts.jsonl, format: prompts}"),
        *("--set", "data.train.limit=12", "--set", "sample={k: 2, shard_size: 2}"),
        *("--set", "annotate.reward={function: 'align.rewards.arithmetic:exact_answer'}"),
    ]
    run_stages_here(project, overrides_of(args), "prepare-model", "sample")
    calls = project / "calls.jsonl"
    env = cli_env(project, {"slow_score": 0.3, "calls": str(calls)})
    proc = popen_align(project, "stage", args[0], "annotate", *args[1:], env=env)
    folder = project / "runs" / "corpus-smoke" / "annotate"
    first = folder / "shard-00000.parquet"
    wait_for(first.exists, proc)
    kill(proc)
    written = sorted(folder.glob("shard-*.parquet"))
    assert 1 <= len(written) < 6 and not (folder / "manifest.json").exists()
    mtimes = {p.name: p.stat().st_mtime_ns for p in written}
    scored_before = {p for line in read_jsonl(calls) for p in line}

    count_only = {"slow_score": 0, "calls": str(calls)}
    ok(project, "stage", args[0], "annotate", *args[1:], faults=count_only)
    assert {p.name: p.stat().st_mtime_ns for p in written} == mtimes  # finished shards kept

    from align.data.records import read_shards

    records = read_shards(folder)
    assert sorted(r["id"] for r in records) == sorted(f"q{i}" for i in range(12))
    assert all(len(r["rewards"]) == len(r["ref_logps"]) == 2 for r in records)
    scored = Counter(p for line in read_jsonl(calls) for p in line)
    done_first = {r["prompt"][-1]["content"] for p in written for r in read_shards_file(p)}
    assert all(scored[p] == 2 for p in done_first)  # K=2 completions, scored once, never again
    assert set(scored) == {f"What is {i} plus 1?" for i in range(12)}
    # a prompt is scored twice only if its shard was being scored when the run was killed
    assert sum(n > 2 for n in scored.values()) <= 2 and done_first <= scored_before


def read_shards_file(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


# ---- R2: judging ---------------------------------------------------------------------------
@pytest.fixture
def judge_server():
    server = FaultyServer(fault_rate=0.0, reply=alpaca_and_rating_reply)
    server.delay_s = 0.25  # each verdict takes a while: time to kill in the middle
    yield server
    server.close()


def test_judge_killed_mid_run_resumes_without_repeating_requests(
    tmp_path: Path, judge_server: FaultyServer
) -> None:
    project = make_judged_project(tmp_path / "p")
    args = [*SMOKE, "--set", openai_backend(judge_server.url, ENV)]
    run_stages_here(project, overrides_of(args), "prepare-model", "annotate", "train")
    env = cli_env(project, **{ENV: KEY})
    proc = popen_align(project, "stage", args[0], "judge", *args[1:], env=env)
    wait_for(lambda: sum(judge_server.attempts.values()) >= 3, proc)
    kill(proc)
    before = Counter(judge_server.attempts)
    out = project / "runs" / "judged-smoke" / "judge"
    assert not (out / "manifest.json").exists()

    ok(project, "stage", args[0], "judge", *args[1:], **{ENV: KEY})
    total = sum(judge_server.attempts.values())
    distinct = len(judge_server.attempts)
    # concurrency 1: at most the one request in flight at the kill is sent again
    assert total - distinct <= 1, judge_server.attempts
    assert sum(before.values()) >= 3 and distinct > sum(before.values())
    assert judge_server.bad_auth == 0
    scores = json.loads((out / "scores.json").read_text())
    assert scores["judge/failed"] == 0
    assert scores["judge/cache_hits"] >= sum(before.values()) - 1
    judgments = [
        row
        for path in (out / "mtbench" / "model_judgment").glob("*.jsonl")
        for row in read_jsonl(path)
    ]
    keys = [(j["question_id"], j.get("turn")) for j in judgments]
    assert keys and len(keys) == len(set(keys))  # every judgment once
    annotations = json.loads((out / "alpacaeval" / "annotations.json").read_text())
    assert len({a["instruction"] for a in annotations}) == len(annotations) == 3
