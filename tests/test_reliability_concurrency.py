"""Concurrency: runs at the same time in one project do not corrupt each other.

Two different pipelines at once share the model cache (built under a lock, here from empty)
and end with intact outputs. Two runs of the same pipeline at once meet at the stage lock
(`runs/<pipeline>/.<stage>.lock`): the second waits for the first, then finds the stage
current, so training runs once and its log holds every step once.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

from align.core.io import read_json
from align.data.records import read_shards
from tests.bad_inputs.harness import STAGE_ORDER, align_cmd, cli_env, make_project, read_jsonl

RUN = ["run", "--no-prefect", "--smoke"]


def start(project: Path, pipeline: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        align_cmd(*RUN, pipeline),
        cwd=project,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen) -> tuple[str, str]:
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    return out, err


def assert_intact(project: Path, name: str) -> None:
    """Every stage complete and current, 4 annotated records, a 2-step log, a saved model."""
    runs = project / "runs" / name
    done = {p.parent.name for p in runs.glob("*/manifest.json")}
    assert done == {"prepare-model", "annotate", "train"} & set(STAGE_ORDER)
    records = read_shards(runs / "annotate")
    assert sorted(r["id"] for r in records) == ["a", "b", "c", "d"]
    assert [r["step"] for r in read_jsonl(runs / "train" / "log.jsonl")] == [1, 2]
    assert read_json(runs / "train" / "manifest.json")["summary"]["steps"] == 2
    assert (runs / "train" / "model" / "model.safetensors").is_file()
    assert not [p for p in runs.rglob("*") if ".tmp-" in p.name]


def test_two_pipelines_at_once_from_an_empty_model_cache(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    text = (project / "pipeline.yaml").read_text()
    (project / "other.yaml").write_text(text.replace("name: corpus", "name: other"))
    env = cli_env(project, ALIGN_CACHE=str(project / ".cache"))  # both build the tiny model
    procs = [start(project, p, env) for p in ("pipeline.yaml", "other.yaml")]
    for proc in procs:
        finish(proc)
    assert_intact(project, "corpus-smoke")
    assert_intact(project, "other-smoke")
    assert [p.name for p in (project / ".cache" / "models").iterdir() if p.is_dir()] == ["tiny"]


def test_same_pipeline_twice_at_once_trains_once(tmp_path: Path) -> None:
    """The first run holds training (hook) until the second says it waits for the lock."""
    project = make_project(tmp_path / "p")
    progress, release = project / "progress.txt", project / "release"
    hold = {"slow_step": 0.1, "progress": str(progress), "hold": str(release)}
    first = start(project, "pipeline.yaml", cli_env(project, hold))
    wait_until(progress.exists, first)  # the first run is inside training: it holds the lock
    err_file = project / "second.err"
    with open(err_file, "w") as err:
        second = subprocess.Popen(
            align_cmd(*RUN, "pipeline.yaml"),
            cwd=project,
            env=cli_env(project),
            stdout=subprocess.PIPE,
            stderr=err,
            text=True,
        )
        waiting = "stage 'train' of pipeline corpus-smoke is running in another process"
        wait_until(lambda: waiting in err_file.read_text(), second)
        release.touch()
        out2, _ = second.communicate(timeout=300)
    assert second.returncode == 0, err_file.read_text()[-3000:]
    out1, _ = finish(first)
    assert "train: done" in out1
    assert "train: up to date" in out2  # it waited, then found the first run's output current
    assert_intact(project, "corpus-smoke")


def wait_until(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.time() + timeout
    while not condition():
        assert proc.poll() is None, "the run ended too early"
        assert time.time() < deadline, "timed out"
        time.sleep(0.02)
