"""DVC experiments on the tiny pipeline: after a committed `dvc repro`, `dvc exp run -S` with
another loss re-runs training only, and `dvc exp show` lists both runs with their own metrics."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from tests.test_orchestration import _dvc, tiny_dvc_project

pytestmark = pytest.mark.integration

METRICS = "runs/tiny/train/metrics.json"


def _git(project: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)


def _runs(rows: list[dict]) -> list[dict]:
    """Every run in `dvc exp show --json`: the workspace, the commits and their experiments."""
    found = []
    for row in rows:
        found += [row] if row.get("data") else []
        for group in row.get("experiments") or []:
            found += _runs(group.get("revs") or [])
    return found


def _loss_and_metrics(row: dict) -> tuple[str, dict]:
    data = row["data"]
    params = data["params"]["pipelines/tiny.yaml"]["data"]
    return params["train"]["loss"]["name"], data["metrics"][METRICS]["data"]


def test_exp_run_with_another_loss_then_exp_show_compares_them(project: Path) -> None:
    # the tiny model never answers the arithmetic right (all rewards tie, every loss is log 4
    # with zero gradient); a reward module in the project folder gives rewards that differ
    (project / "length_reward.py").write_text(
        "def chars(prompts, completions, **_):\n    return [len(c) / 10 for c in completions]\n"
    )
    # and a learning rate that moves the policy within 3 steps (no warm-up step at lr 0)
    update = {
        "annotate": {"reward": {"function": "length_reward:chars"}},
        "train": {"learning_rate": 1e-3, "warmup_ratio": 0.0, "max_steps": 3},
    }
    _, dvcfile = tiny_dvc_project(project, drop=("evaluate", "judge"), update=update)
    _dvc(project, "repro", dvcfile)
    _git(project, "config", "user.name", "align tests")
    _git(project, "config", "user.email", "tests@align.invalid")
    _git(project, "add", "-A")
    _git(project, "commit", "-q", "-m", "baseline: nca")

    out = _dvc(project, "exp", "run", dvcfile, "-S", "pipelines/tiny.yaml:train.loss.name=infonca")
    assert set(re.findall(r"Running stage '[\w/.]+:([\w-]+)'", out)) == {"train"}, out[-2000:]

    shown = _dvc(project, "exp", "show", "--json")
    table, _ = json.JSONDecoder().raw_decode(shown[shown.index("[") :])
    runs = {row["rev"]: _loss_and_metrics(row) for row in _runs(table)}
    by_loss = {loss: metrics for loss, metrics in runs.values()}
    assert set(by_loss) == {"nca", "infonca"}, runs
    assert len(runs) == 3  # the workspace, the baseline commit and the experiment
    nca, infonca = by_loss["nca"], by_loss["infonca"]
    assert nca["steps"] == infonca["steps"] == 3
    assert nca["final/loss"] != pytest.approx(infonca["final/loss"], rel=1e-3)
