"""Rounds of iterative training through the CLI (`align run --no-prefect`, what a scheduled run
does minus Prefect; tests/test_ops_prefect.py runs rounds through a real deployment): each run
is one round, trains from the incumbent, keeps fresh prompt windows, resumes a killed round,
rolls back by hand; and the bad inputs of the rounds section."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from align.config import load_pipeline
from align.config.data import WindowConfig
from align.core.errors import AlignError
from align.core.io import sha256_tree
from align.data.datasets import window_positions
from tests.conftest import REPO, venv_env

PIPELINE = "pipelines/iterative-quickstart.yaml"
FAST = [
    "--smoke",
    "--set",
    "train.warmup_ratio=0",
    "--set",
    "train.lr_scheduler=constant",
    "--set",
    "train.learning_rate=1e-3",
]


def test_windows_are_fresh_seeded_slices() -> None:
    rows = list(range(10))
    w = [window_positions(10, WindowConfig(size=4, index=i, seed=3)) for i in range(3)]
    assert w[0] == window_positions(10, WindowConfig(size=4, index=0, seed=3))  # seeded
    assert not set(w[0]) & set(w[1])  # consecutive windows do not overlap
    assert len(set(w[0] + w[1] + w[2])) == 10  # the third wraps around: every row is used
    assert sorted(window_positions(10, WindowConfig(size=50, seed=0))) == rows


@pytest.mark.parametrize(
    ("pipeline", "overrides", "message"),
    [
        ("pipelines/online-ipo-quickstart.yaml", ["rounds={}"], "rounds: a round samples"),
        (PIPELINE, ["rounds.promote.metric=judge.mtbench.score"], "produced by judge.mtbench"),
        (PIPELINE, ["rounds.promote.metric=evaluate.rewrad"], "rounds.promote.metric: "),
        (PIPELINE, ["rounds.prompts_per_round=0"], "rounds.prompts_per_round"),
        (PIPELINE, ["rounds.promote.min_delta=.nan"], "rounds.promote.min_delta"),
    ],
)
def test_bad_rounds_sections_are_one_line_errors(
    pipeline: str, overrides: list[str], message: str
) -> None:
    with pytest.raises(AlignError, match=message) as err:
        load_pipeline(pipeline, overrides)
    assert "\n" not in str(err.value)


def _align(project: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(
        ["align", *args], cwd=project, env=venv_env(project), capture_output=True, text=True
    )
    if check:
        assert done.returncode == 0, done.stdout[-1500:] + done.stderr[-1500:]
    return done


def _table(project: Path) -> list[dict]:
    return json.loads(_align(project, "rounds", PIPELINE, "--smoke", "--json").stdout)


def test_rounds_resume_after_a_kill_and_roll_back(project: Path) -> None:
    run = project / "runs" / "iterative-quickstart-smoke"
    _align(project, "run", PIPELINE, "--no-prefect", *FAST)
    (first,) = _table(project)
    assert (first["round"], first["parent"], first["data"]) == (1, "base", "window 0 x 48")
    assert first["decision"].startswith("promoted")

    # Round 2, killed (SIGKILL, the whole process group) once training has logged a step.
    slow = [*FAST, "--set", "train.max_steps=12", "--set", "train.save_steps=1"]
    proc = subprocess.Popen(
        ["align", "run", PIPELINE, "--no-prefect", *slow],
        cwd=project,
        env=venv_env(project),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    log, marker = run / "train" / "log.jsonl", run / "train" / ".stage_hash"
    round_1_train = marker.read_text()
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline and proc.poll() is None:
        started = marker.is_file() and marker.read_text() != round_1_train
        if started and log.is_file() and len(log.read_text().splitlines()) >= 2:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "round 2 ended before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    sample_manifest = (run / "sample" / "manifest.json").read_text()
    rows = _table(project)
    assert [r["decision"] for r in rows] == [first["decision"], "running"]

    # The next run is round 2 again: same window, finished stages reused, training resumed.
    done = _align(project, "run", PIPELINE, "--no-prefect", *slow)
    assert "sample: up to date" in done.stdout and "resuming from" in done.stdout
    assert (run / "sample" / "manifest.json").read_text() == sample_manifest
    rows = _table(project)
    assert [(r["round"], r["parent"], r["data"]) for r in rows] == [
        (1, "base", "window 0 x 48"),
        (2, 1, "window 1 x 48"),
    ]
    # round 2 trained from round 1's model: the policy it prepared is round 1's, by hash
    prepared = json.loads((run / "prepare-model" / "manifest.json").read_text())["summary"]
    events = [json.loads(x) for x in (run / "rounds" / "rounds.jsonl").read_text().splitlines()]
    round_1 = next(e for e in events if e["event"] == "promoted" and e["round"] == 1)
    assert prepared["policy"]["hash"] == round_1["model_hash"]
    assert prepared["reference"]["source"] == "tiny"  # rounds.reference: base
    assert events[-1]["model_hash"] != round_1["model_hash"]  # round 2 really trained

    # Roll back: the next run is round 2 again, from round 1's model, and round 2 is gone.
    bad = _align(
        project, "run", PIPELINE, "--no-prefect", "--smoke", "--set", "rounds.start=9", check=False
    )
    assert bad.returncode == 2 and "rounds.start: 9 does not exist yet" in bad.stderr
    _align(project, "run", PIPELINE, "--no-prefect", *FAST, "--set", "rounds.start=2")
    rows = _table(project)
    assert [(r["round"], r["parent"]) for r in rows] == [(1, "base"), (2, 1)]
    promoted = [r["round"] for r in rows if r["decision"].startswith("promoted")]
    wrong = _align(project, "rounds", PIPELINE, "--smoke", "--promote", "7", check=False)
    assert wrong.returncode == 2 and "--promote 7: no such round; rounds: 1, 2" in wrong.stderr
    _align(project, "rounds", PIPELINE, "--smoke", "--promote", "1")
    assert [r["decision"].endswith("*") for r in _table(project)] == [True, False]
    assert promoted  # at least round 1


def test_round_lineage_is_kept_by_dvc_and_git(project: Path) -> None:
    """In a git + DVC project made from the repository's own .gitignore, .dvcignore and
    .dvc/config, each round records its rounds folder with `dvc add`: git sees exactly the
    pointer `rounds.dvc`, which changes with every round, and round 1's model comes back from
    DVC's cache byte for byte after it is deleted."""
    for name in (".gitignore", ".dvcignore"):
        shutil.copy(REPO / name, project / name)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=project, check=True)
    shutil.copy(REPO / ".dvc/config", project / ".dvc/config")
    run = project / "runs" / "iterative-quickstart-smoke"
    done = _align(project, "run", PIPELINE, "--no-prefect", *FAST)
    assert f"recorded the rounds in {run.relative_to(project)}/rounds.dvc" in done.stdout
    status = subprocess.run(
        ["git", "status", "--porcelain", "-uall", "runs"],
        cwd=project,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert status == ["??", "runs/iterative-quickstart-smoke/rounds.dvc"]  # nothing else of runs/
    first_pointer = (run / "rounds.dvc").read_text()
    model = run / "rounds" / "round-1" / "model"
    events = [json.loads(x) for x in (run / "rounds" / "rounds.jsonl").read_text().splitlines()]
    promoted = next(e for e in events if e["event"] == "promoted")
    assert sha256_tree(model) == promoted["model_hash"]
    shutil.rmtree(model)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "dvc",
            "checkout",
            "-q",
            str(run.relative_to(project) / "rounds.dvc"),
        ],
        cwd=project,
        check=True,
    )
    assert sha256_tree(model) == promoted["model_hash"]  # restored from its lineage record
    _align(project, "run", PIPELINE, "--no-prefect", *FAST)  # round 2 moves the pointer
    assert (run / "rounds.dvc").read_text() != first_pointer
