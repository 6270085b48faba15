"""Run the real `align` CLI in a subprocess over a throw-away project, and check what a failed
or killed run leaves behind. Shared by tests/test_bad_inputs.py and tests/test_reliability_*.py.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from align.pipeline import STAGES

REPO = Path(__file__).resolve().parents[2]
CORPUS = Path(__file__).resolve().parent
HOOKS = CORPUS / "_hooks"
STAGE_ORDER = list(STAGES)


def make_project(dest: Path, overlay: str | None = None) -> Path:
    """A project folder: the corpus base (pipeline.yaml, data/, corpus_rewards.py) with the
    files of `overlay` (a folder under tests/bad_inputs/) laid over it."""
    shutil.copytree(CORPUS / "_base", dest, dirs_exist_ok=True)
    if overlay:
        shutil.copytree(CORPUS / overlay, dest, dirs_exist_ok=True)
    return dest


def cli_env(project: Path, faults: dict | None = None, **extra: str) -> dict[str, str]:
    """The venv first on PATH, a project-local Prefect home, no hub access, and the fault hooks
    on PYTHONPATH when `faults` asks for some. ALIGN_CACHE is inherited (tests share it)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ALIGN_TEST_")}
    env.pop("PYTHONPATH", None)
    env.update(
        PATH=f"{REPO / '.venv' / 'bin'}:{env['PATH']}",
        PREFECT_HOME=str(project / ".prefect"),
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    if faults:
        env["PYTHONPATH"] = str(HOOKS)
        env["ALIGN_TEST_FAULTS"] = json.dumps(faults)
    env.update(extra)
    return env


def align_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def run_align(
    project: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        align_cmd(*args),
        cwd=project,
        env=env or cli_env(project),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def popen_align(project: Path, *args: str, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        align_cmd(*args),
        cwd=project,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def error_line(stderr: str) -> str:
    """The one `error:` line of a failed command: exactly one, on a line of its own and last
    (progress bars before it aside), and no traceback."""
    lines = [ln for ln in stderr.replace("\r", "\n").splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    assert "Traceback" not in stderr, stderr[-3000:]
    assert len(errors) == 1, stderr[-3000:]
    assert lines[-1] == errors[0], stderr[-3000:]
    return errors[0]


def manifests(project: Path) -> dict[str, Path]:
    """Stage name -> manifest.json under runs/<pipeline>/<stage>/."""
    return {p.parent.name: p for p in (project / "runs").glob("*/*/manifest.json")}


def assert_nothing_looks_complete(
    project: Path, fails_at: str | None, kept: list[str] | tuple = ()
) -> None:
    """No manifest for the failing stage or a later one (none at all when `fails_at` is None),
    no temp files left, and every shard and JSON file that carries a final name is whole.
    `kept`: the user's own files under runs/ (left as they were, not align's output)."""
    done = manifests(project)
    later = STAGE_ORDER[STAGE_ORDER.index(fails_at) :] if fails_at else STAGE_ORDER
    assert not set(done) & set(later), sorted(done)
    runs = project / "runs"
    users = {project / k for k in kept}
    files = [p for p in runs.rglob("*") if p.is_file() and p not in users] if runs.exists() else []
    if fails_at is None:
        assert all(p.name.endswith((".lock", ".align-run")) for p in files), files
    for path in files:
        assert ".tmp-" not in str(path.relative_to(project)), path
        assert ".old-" not in str(path.relative_to(project)), path
        if path.suffix == ".parquet":
            pq.read_table(path)
        elif path.suffix == ".json":
            json.loads(path.read_text())


def files_containing(root: Path, needle: bytes) -> list[Path]:
    """Every file under `root` whose bytes contain `needle` (symlinks not followed)."""
    hits = []
    for path in root.rglob("*"):
        if path.is_file() and not path.is_symlink() and needle in path.read_bytes():
            hits.append(path)
    return hits


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def make_judged_project(dest: Path) -> Path:
    """The corpus base with a judge stage and the MT-Bench / AlpacaEval example files."""
    from align.data.judge_examples import write_alpacaeval_example, write_mtbench_example

    make_project(dest, "_judged")
    write_mtbench_example(dest / "data" / "mtbench")
    write_alpacaeval_example(dest / "data" / "alpacaeval")
    return dest


def openai_backend(url: str, key_env: str, **extra: object) -> str:
    """A `--set judge.backend=...` value for an OpenAI-compatible server at `url`."""
    fields = {
        "kind": "openai",
        "model": "judge-model",
        "base_url": url,
        "api_key_env": key_env,
        "concurrency": 1,
        "timeout_s": 5,
        "max_retries": 3,
        "backoff_base_s": 0.01,
        "backoff_max_s": 0.05,
        "max_new_tokens": 16,
        **extra,
    }
    return "judge.backend=" + json.dumps(fields)


def run_stages_here(project: Path, overrides: list[str], *stages: str) -> None:
    """Run upstream stages in this process (cheap: the libraries are loaded already), with the
    `--set` overrides and --smoke, exactly as `align stage` would."""
    import contextlib

    from align.config import load_pipeline
    from align.pipeline import run_stage

    with contextlib.chdir(project):
        cfg = load_pipeline("pipeline.yaml", overrides, smoke=True)
        for stage in stages:
            run_stage(cfg, stage)


def overrides_of(args: list[str]) -> list[str]:
    """The values of the --set options in a CLI argument list."""
    return [args[i + 1] for i, a in enumerate(args) if a == "--set"]
