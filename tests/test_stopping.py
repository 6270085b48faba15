"""Ctrl-C (SIGINT) and SIGTERM stop a real `align run` in a subprocess: within 5 s, with one
line, no process of the run left (Prefect's temporary server, the stage workers), and every
record a finished batch produced kept, so the re-run scores only the rest.

The run's annotate stage scores one prompt per batch and is slowed by the fault hook (0.5 s
a batch), so the signal lands after some batches are kept and before the shard is whole.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest

from align.data.records import read_shards, write_shard_by_units
from tests.bad_inputs.harness import align_cmd, cli_env, make_project, read_jsonl, run_align

PROMPTS = 12
ARGS = [
    "pipeline.yaml",
    "--smoke",
    *("--set", "data.train={path: data/prompts.jsonl, format: prompts}"),
    *("--set", f"data.train.limit={PROMPTS}", "--set", "sample={k: 2, shard_size: 6}"),
    *("--set", "annotate={reward: {function: 'align.rewards.arithmetic:exact_answer'}}"),
    *("--set", "annotate.batch_size=2"),  # 2 // K=2: one prompt per kept batch
]
EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143}


def project_with_prompts(dest: Path) -> Path:
    project = make_project(dest)
    (project / "data" / "prompts.jsonl").write_text(
        "".join(
            json.dumps({"id": f"q{i}", "prompt": f"What is {i} plus 1?", "answer": i + 1}) + "\n"
            for i in range(PROMPTS)
        )
    )
    return project


def alive(pids: set[int]) -> list[int]:
    left = []
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                left.append(pid)
        except psutil.NoSuchProcess:
            pass
    return left


@pytest.mark.slow
@pytest.mark.parametrize(
    ("sig", "mode"),
    [(signal.SIGINT, []), (signal.SIGTERM, []), (signal.SIGINT, ["--no-prefect"])],
    ids=["sigint-prefect", "sigterm-prefect", "sigint-no-prefect"],
)
def test_signal_stops_the_run_and_keeps_finished_records(
    tmp_path: Path, sig: signal.Signals, mode: list[str]
) -> None:
    project = project_with_prompts(tmp_path / "p")
    calls = project / "calls.jsonl"
    env = cli_env(project, {"slow_score": 0.5, "calls": str(calls)})
    proc = subprocess.Popen(
        align_cmd("run", *ARGS, *mode),
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    folder = project / "runs" / "corpus-smoke" / "annotate"
    children: set[int] = set()
    deadline = time.time() + 300
    while len(list(folder.glob("part-*.parquet"))) < 2:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() < deadline, "annotate never kept two batches"
        children |= {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
        time.sleep(0.05)
    children |= {p.pid for p in psutil.Process(proc.pid).children(recursive=True)}
    sent = time.monotonic()
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=30)
    seconds = time.monotonic() - sent
    print(f"{sig.name} {mode}: exit {proc.returncode} after {seconds:.2f}s")

    assert seconds < 5, (seconds, err[-3000:])
    assert proc.returncode == EXIT[sig], err[-3000:]
    assert "Traceback" not in out + err, err[-3000:]
    stops = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("align: stop")]
    assert stops == [
        f"align: stopping ({sig.name}); finished records are kept, run the same command "
        "again to resume"
    ], err[-3000:]
    if not mode:  # Prefect: its temporary server and the stage worker were running
        assert len(children) >= 2, children
    time.sleep(0.5)
    assert alive(children) == [], "processes of the stopped run are still running"

    kept = {r["id"] for p in folder.glob("part-*.parquet") for r in read_shards_file(p)}
    assert len(kept) >= 2 and not (folder / "shard-00000.parquet").exists()
    assert not (folder / "manifest.json").exists()
    scored_before = [p for line in read_jsonl(calls) for p in line]

    calls.unlink()
    resumed = run_align(
        project,
        "run",
        *ARGS,
        "--no-prefect",
        env=cli_env(project, {"slow_score": 0, "calls": str(calls)}),
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    records = read_shards(folder)
    assert sorted(r["id"] for r in records) == sorted(f"q{i}" for i in range(PROMPTS))
    assert not list(folder.glob("part-*"))  # parts are folded into their shard
    rescored = {p for line in read_jsonl(calls) for p in line}
    kept_prompts = {f"What is {i[1:]} plus 1?" for i in kept}
    assert not rescored & kept_prompts  # a kept batch is never scored again
    assert kept_prompts <= set(scored_before)
    sampled = read_shards(project / "runs" / "corpus-smoke" / "sample")
    assert sorted(r["id"] for r in sampled) == sorted(f"q{i}" for i in range(PROMPTS))


def read_shards_file(path: Path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def test_a_shard_resumes_from_its_kept_units(tmp_path: Path) -> None:
    """A stop inside unit 2 of 4 keeps units 0 and 1; the resumed shard computes only units 2
    and 3 and equals the uninterrupted one, with no part file left."""
    rows = [{"id": f"r{i}", "x": i} for i in range(8)]
    units = [rows[i : i + 2] for i in range(0, 8, 2)]
    done: list[int] = []
    stop_at = [2]

    def work(unit: list[dict], index: int) -> list[dict]:
        if index in stop_at:
            stop_at.clear()
            raise KeyboardInterrupt  # the signal arrives while unit 2 is computed
        done.append(index)
        return [{**r, "y": r["x"] * 10} for r in unit]

    progress: list[int] = []
    with pytest.raises(KeyboardInterrupt):
        write_shard_by_units(tmp_path, 0, units, work, progress.append)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "part-00000-00000.parquet",
        "part-00000-00001.parquet",
    ]
    assert read_shards(tmp_path) == []  # parts are never records on their own
    done.clear()
    assert write_shard_by_units(tmp_path, 0, units, work, progress.append)
    assert done == [2, 3]
    assert read_shards(tmp_path) == [{**r, "y": r["x"] * 10} for r in rows]
    assert [p.name for p in tmp_path.iterdir()] == ["shard-00000.parquet"]
    assert progress == [2, 2, 2, 2, 2, 2]  # 2 kept before the stop, then all 4 on resume
    assert not write_shard_by_units(tmp_path, 0, units, work, progress.append)  # whole: skip
