"""Shared fixtures: a throw-away project folder with the project's data and pipelines, and a
session-wide model cache so the tiny model is built once."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState

from align.data.quickstart import write_quickstart_data

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session", autouse=True)
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built-in models (tiny, tiny-reward) go to one cache for the whole session."""
    cache = tmp_path_factory.mktemp("align-cache")
    os.environ["ALIGN_CACHE"] = str(cache)
    return cache


@pytest.fixture(autouse=True)
def fresh_accelerator_state() -> None:
    """accelerate keeps one mixed-precision setting per process; each test sets its own."""
    AcceleratorState._reset_state()


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A folder laid out like the repo (data/, pipelines/), made the working directory."""
    write_quickstart_data(tmp_path / "data")
    shutil.copytree(REPO / "pipelines", tmp_path / "pipelines")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def venv_env(project: Path) -> dict[str, str]:
    """Environment for subprocesses: the venv's scripts first, project-local Prefect home."""
    env = dict(os.environ)
    env["PATH"] = f"{REPO / '.venv' / 'bin'}:{env['PATH']}"
    env["PREFECT_HOME"] = str(project / ".prefect")
    return env
