"""DVC experiments on the tiny pipeline, in a git + DVC project built from the repository's own
.gitignore, .dvcignore and .dvc/config (so `runs/` is git-ignored as in a user's clone): two
`dvc exp run -S` runs re-run training, evaluation and judging only; `dvc exp show` has both
runs' train, evaluate and judge metrics; `dvc metrics show` lists the figures with no warning;
`dvc exp diff`, `dvc plots diff` and `align plots --exp` compare them; `dvc exp apply` restores
an older experiment's model and `dvc push`/`pull` restore the weights byte for byte."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.test_orchestration import _align, _dvc, tiny_dvc_project

pytestmark = pytest.mark.integration

TRAIN = "runs/tiny/train/metrics.json"
EVALUATE = "runs/tiny/evaluate/metrics.json"
JUDGE = "runs/tiny/judge/scores.json"
MODEL = "runs/tiny/train/model"


def _git(project: Path, *args: str) -> None:
    subprocess.run(["git", *args], cwd=project, check=True, capture_output=True)


def _json(out: str) -> object:
    value, _ = json.JSONDecoder().raw_decode(out[out.index(out.lstrip()[0]) :])
    return value


def _runs(rows: list[dict]) -> list[dict]:
    """Every run in `dvc exp show --json`: the workspace, the commits and their experiments."""
    found = []
    for row in rows:
        found += [row] if row.get("data") else []
        for group in row.get("experiments") or []:
            found += _runs(group.get("revs") or [])
    return found


def _weights(project: Path) -> dict[str, str]:
    """sha256 of every file of the final model, by name."""
    return {
        p.name: hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((project / MODEL).iterdir())
    }


def _ran(out: str) -> set[str]:
    return set(re.findall(r"Running stage '[\w/.]+:([\w-]+)'", out))


def test_two_experiments_compare_and_restore(project: Path, tmp_path_factory) -> None:
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
    _, dvcfile = tiny_dvc_project(project, update=update)
    _dvc(project, "repro", dvcfile)
    # `dvc metrics show`: every metrics file with its figures, no warning, no row of `-` only
    shown = _dvc(project, "metrics", "show")
    assert "failed to load" not in shown and "WARNING" not in shown, shown
    rows = {ln.split()[0]: ln.split()[1:] for ln in shown.splitlines()[1:] if ln.strip()}
    assert set(rows) == {TRAIN, EVALUATE, JUDGE}, shown
    assert all(any(cell != "-" for cell in cells) for cells in rows.values()), shown
    _git(project, "config", "user.name", "align tests")
    _git(project, "config", "user.email", "tests@align.invalid")
    _git(project, "add", "-A")
    _git(project, "commit", "-q", "-m", "baseline: nca")
    assert not any(p.startswith("runs/") for p in _tracked(project))  # runs/ stays out of git

    first = _dvc(
        project,
        "exp",
        "run",
        dvcfile,
        "-n",
        "infonca",
        "-S",
        "pipelines/tiny.yaml:train.loss.name=infonca",
    )
    assert _ran(first) == {"train", "evaluate", "judge"}, first[-2000:]
    infonca_weights = _weights(project)
    second = _dvc(
        project,
        "exp",
        "run",
        dvcfile,
        "-n",
        "beta",
        "-S",
        "pipelines/tiny.yaml:train.loss.beta=0.5",
    )
    assert _ran(second) == {"train", "evaluate", "judge"}, second[-2000:]
    beta_weights = _weights(project)
    assert infonca_weights != beta_weights

    table = _json(_dvc(project, "exp", "show", "--json"))
    by_name = {row.get("name"): row["data"] for row in _runs(table)}
    assert {"infonca", "beta"} <= set(by_name), list(by_name)
    for name in ("infonca", "beta"):
        metrics = by_name[name]["metrics"]
        assert not by_name[name].get("error"), by_name[name]
        assert metrics[TRAIN]["data"]["steps"] == 3, metrics
        assert isinstance(metrics[EVALUATE]["data"]["reward/trained"], float), metrics
        assert metrics[JUDGE]["data"]["mtbench/n_judgments"] >= 1, metrics
    losses = {n: by_name[n]["metrics"][TRAIN]["data"]["final/loss"] for n in ("infonca", "beta")}
    assert losses["infonca"] != pytest.approx(losses["beta"], rel=1e-3)
    params = {
        n: by_name[n]["params"]["pipelines/tiny.yaml"]["data"]["train"]["loss"]
        for n in by_name
        if n in ("infonca", "beta")
    }
    assert params["infonca"]["name"] == "infonca" and params["beta"]["beta"] == 0.5

    diff = _json(_dvc(project, "exp", "diff", "infonca", "beta", "--json"))
    assert diff["metrics"][TRAIN]["final/loss"]["old"] == pytest.approx(losses["infonca"])
    assert diff["metrics"][TRAIN]["final/loss"]["new"] == pytest.approx(losses["beta"])
    # the workspace keeps an experiment's params: the second ran InfoNCA with beta 0.5
    assert diff["params"]["pipelines/tiny.yaml"] == {
        "train.loss.beta": {"old": 0.1, "new": 0.5, "diff": pytest.approx(0.4)}
    }

    plots = _dvc(project, "plots", "diff", "infonca", "beta", "--json")
    assert "runs/tiny/train/curves.csv" in plots and "infonca" in plots and "beta" in plots
    assert "error" not in plots.lower(), plots[-2000:]

    page = project / "compare.html"
    done = _align(
        project, "plots", "pipelines/tiny.yaml", "--exp", "infonca", "beta", "--output", str(page)
    )
    assert done.returncode == 0, done.stderr[-2000:]
    text = page.read_text()
    assert "infonca (3 steps), beta (3 steps)" in text
    assert text.count("data:image/png;base64,") == 3
    assert "<script" not in text and "http" not in text  # nothing fetched from a network
    bad = _align(project, "plots", "pipelines/tiny.yaml", "--exp", "nosuch")
    assert bad.returncode == 2 and "--exp nosuch: no such experiment" in bad.stderr

    # an older experiment's model comes back with `dvc exp apply`
    _dvc(project, "exp", "apply", "infonca")
    assert _weights(project) == infonca_weights
    # intermediate checkpoints never enter the cache (every run's outputs are there now)
    cached = {p.parent.name + p.name for p in (project / ".dvc/cache/files/md5").glob("*/*")}
    checkpoint_files = [
        p for p in (project / "runs/tiny/train/checkpoints").rglob("*") if p.is_file()
    ]
    assert checkpoint_files
    for path in checkpoint_files:
        assert hashlib.md5(path.read_bytes()).hexdigest() not in cached, path

    # the final model is a cached out: push, lose it, pull it back byte for byte
    remote = tmp_path_factory.mktemp("remote")
    _dvc(project, "remote", "add", "-d", "local", str(remote))
    _dvc(project, "push")
    shutil.rmtree(project / ".dvc/cache")
    shutil.rmtree(project / MODEL)
    _dvc(project, "pull")
    assert _weights(project) == infonca_weights


def _tracked(project: Path) -> list[str]:
    return subprocess.run(
        ["git", "ls-files"], cwd=project, check=True, capture_output=True, text=True
    ).stdout.split()
