"""The flow `align` submits the whole stage DAG: evaluate and judge, which both need only train,
run at the same time; a judge that fails leaves evaluate finished and current, and the flow run
fails with the judge's error."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from align.config import load_pipeline
from align.data.quickstart import write_quickstart_data
from align.pipeline import plan
from flows.align import thread_shares
from tests.conftest import REPO, venv_env

PIPELINE = "pipelines/quickstart.yaml"

# Evaluate's reward function: it waits (at most two minutes) until the judge stage of this run
# has started, i.e. written its marker with the hash the test expects, and notes what it saw.
# Evaluate cannot finish before judge starts, so the overlap does not depend on timing.
PROBE = """
import multiprocessing
import os
import time
from pathlib import Path

from align.rewards.arithmetic import exact_answer


def reward(prompts, completions, **columns):
    marker = Path("runs/quickstart-smoke/judge/.stage_hash")
    deadline = time.monotonic() + 120
    started = lambda: marker.is_file() and marker.read_text() == os.environ["PROBE_JUDGE_HASH"]
    while not started() and time.monotonic() < deadline:
        time.sleep(0.05)
    with open("probe.log", "a") as log:
        log.write(f"judge started while evaluate ran: {started()}\\n")
        own = multiprocessing.parent_process() is not None  # a worker, not the flow's process
        log.write(f"evaluate ran in a process of its own: {own}\\n")
    return exact_answer(prompts, completions, **columns)
"""
PROBE_SET = ["--set", "evaluate.reward.function=overlap_probe:reward"]


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Path:
    """One project for both flow runs: the second reuses the first one's stages up to train."""
    root = tmp_path_factory.mktemp("dag")
    write_quickstart_data(root / "data")
    shutil.copytree(REPO / "pipelines", root / "pipelines")
    (root / "overlap_probe.py").write_text(PROBE)
    return root


def _plan(project: Path, overrides: list[str]) -> dict:
    cwd = Path.cwd()
    os.chdir(project)
    try:
        return {p.name: p for p in plan(load_pipeline(PIPELINE, overrides, smoke=True))}
    finally:
        os.chdir(cwd)


def _run(project: Path, overrides: list[str]) -> subprocess.CompletedProcess:
    sets = [a for o in overrides for a in ("--set", o)]
    env = venv_env(project) | {"PROBE_JUDGE_HASH": _plan(project, overrides)["judge"].stage_hash}
    (project / "probe.log").unlink(missing_ok=True)
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", "run", PIPELINE, "--smoke", *sets],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def _probe(project: Path) -> set[str]:
    """What evaluate's reward function saw, once per call (answers before and after training)."""
    return set((project / "probe.log").read_text().splitlines())


def test_stages_side_by_side_share_the_cores(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # nothing cached: a smoke run in the checkout would be
    cfg = load_pipeline(REPO / PIPELINE, smoke=True)
    shares = thread_shares(plan(cfg))
    cores = len(os.sched_getaffinity(0))
    assert shares["evaluate"] == shares["judge"] == max(1, cores // 2)
    assert all(shares[s] == cores for s in ("prepare-model", "sample", "annotate", "train"))


@pytest.mark.integration
@pytest.mark.slow
def test_evaluate_and_judge_run_at_the_same_time(project: Path) -> None:
    """Side by side, each stage in a process of its own (evaluate generating in bf16, judge in
    float32): in threads of one process, transformers' bf16 loading switched the other stage's
    default dtype mid-run."""
    overrides = [PROBE_SET[1], "evaluate.dtype=bfloat16"]
    res = _run(project, overrides)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    assert _probe(project) == {
        "judge started while evaluate ran: True",
        "evaluate ran in a process of its own: True",
    }
    assert all(p.cached for p in _plan(project, overrides).values())


@pytest.mark.integration
@pytest.mark.slow
def test_a_failed_judge_leaves_evaluate_finished_and_fails_the_flow(project: Path) -> None:
    """Evaluate (changed, so it runs again) is still scoring when judge fails on a broken
    questions file; it finishes and stays current, and the flow run ends failed."""
    (project / "data/broken.jsonl").write_text("{not json\n")
    overrides = [
        PROBE_SET[1],
        "evaluate.max_new_tokens=12",
        "judge.mtbench.questions=data/broken.jsonl",
    ]
    res = _run(project, overrides)
    logs = res.stdout + res.stderr
    assert res.returncode != 0, logs[-3000:]
    assert "broken.jsonl" in res.stderr, logs[-3000:]
    assert "Finished in state Failed" in logs, logs[-3000:]
    assert _probe(project) == {
        "judge started while evaluate ran: True",
        "evaluate ran in a process of its own: True",
    }
    plans = _plan(project, overrides)
    assert (
        plans["evaluate"].cached
        and (project / plans["evaluate"].folder / "manifest.json").is_file()
    )
    assert not plans["judge"].cached
