"""Real Prefect and real DVC on the tiny model: the flow runs every stage and caches them;
`dvc repro` runs them, skips them all the second time, and re-runs only downstream stages
after a parameter change."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO, venv_env

pytestmark = pytest.mark.integration

STAGES = ["prepare-model", "sample", "annotate", "train", "evaluate", "judge"]


def _align(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.cli", *args],
        cwd=project,
        env=venv_env(project),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_prefect_flow_runs_then_caches_every_stage(project: Path) -> None:
    first = _align(project, "run", "pipelines/quickstart.yaml", "--smoke")
    assert first.returncode == 0, first.stderr[-3000:]
    logs = first.stdout + first.stderr
    for stage in STAGES:
        assert re.search(rf"^{stage}: done in", first.stdout, re.M), (
            f"{stage} did not run:\n{logs[-3000:]}"
        )
    assert "report: runs/quickstart-smoke/report.md" in first.stdout

    second = _align(project, "run", "pipelines/quickstart.yaml", "--smoke")
    assert second.returncode == 0, second.stderr[-3000:]
    logs = second.stdout + second.stderr
    assert not re.search(r"\b(sample|annotate|train|evaluate): done", logs)
    assert second.stdout.count(": up to date") == len(STAGES), logs[-3000:]

    # each run is filed apart (a nightly run keeps its own checkpoint, metrics and lineage);
    # the weights are hard links to the one file, the lineage names the same stage hashes
    runs = sorted((project / "runs/quickstart-smoke/history").iterdir())
    assert len(runs) == 2 and all(re.fullmatch(r"\d{8}T\d{6}Z-[0-9a-f-]{8}", r.name) for r in runs)
    weights = [next((r / "train/model").glob("*.safetensors")) for r in runs]
    assert weights[0].stat().st_ino == weights[1].stat().st_ino
    assert weights[0].stat().st_nlink >= 3  # the stage folder's file and the two kept runs
    lineages = [yaml.safe_load((r / "lineage.json").read_text()) for r in runs]
    assert set(lineages[0]["stages"]) == set(STAGES)
    assert lineages[0]["stages"] == lineages[1]["stages"]
    assert (runs[1] / "evaluate/metrics.json").is_file() and (runs[1] / "report.md").is_file()
    assert not any((r / "train/checkpoints").exists() for r in runs)


def test_flagship_smoke_runs_its_stage_structure_under_prefect(project: Path) -> None:
    """nca-7b --smoke: UltraFeedback layout from a local file, LoRA, no sample stage."""
    res = _align(project, "run", "pipelines/nca-7b.yaml", "--smoke")
    assert res.returncode == 0, res.stderr[-3000:]
    logs = res.stdout + res.stderr
    for stage in ("prepare-model", "annotate", "train"):
        assert re.search(rf"^{stage}: done in", res.stdout, re.M), logs[-3000:]
    assert "sample:" not in logs
    manifest = yaml.safe_load((project / "runs/nca-7b-smoke/annotate/manifest.json").read_text())
    assert manifest["summary"]["reward_max"] == 9.0  # A0_score of the smoke file


def test_bad_pipeline_fails_fast_with_one_line(project: Path) -> None:
    res = _align(project, "run", "pipelines/quickstart.yaml", "--set", "train.loss.name=ncaa")
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0
    assert "did you mean 'nca'" in res.stderr


def _dvc(project: Path, *args: str) -> str:
    res = subprocess.run(
        [str(REPO / ".venv/bin/dvc"), *args],
        cwd=project,
        env=venv_env(project),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    return res.stdout + res.stderr


def tiny_dvc_project(
    project: Path, drop: tuple[str, ...] = (), update: dict[str, dict] | None = None
) -> tuple[dict, str]:
    """Make `project` a git + DVC repo holding pipelines/tiny.yaml (the quickstart on the tiny
    model with a handful of records, without the sections in `drop`, with the sections' keys
    in `update` replaced) and its generated dvc/tiny/dvc.yaml; returns (the pipeline, its path).
    The repository's own .gitignore, .dvcignore and .dvc/config come along: `runs/` is
    git-ignored, so whatever DVC shows of a run comes from its cache, as in a user's clone."""
    shutil.copytree(REPO / "align", project / "align", ignore=shutil.ignore_patterns("__pycache__"))
    for name in (".dvcignore", ".gitignore"):
        shutil.copy(REPO / name, project / name)
    raw = yaml.safe_load((project / "pipelines/quickstart.yaml").read_text())
    raw.update(name="tiny", model={"policy": "tiny"})
    raw["data"]["train"]["limit"] = 4
    raw["data"]["eval"]["limit"] = 2
    raw["sample"].update(max_new_tokens=6, batch_prompts=2)
    raw["train"].update(max_steps=2, max_length=96, max_prompt_length=64, precision="fp32")
    raw["evaluate"].update(max_new_tokens=6)
    raw["judge"]["backend"] = {"kind": "local", "model": "tiny", "max_new_tokens": 4}
    raw["judge"]["mtbench"].update(limit=1, max_new_tokens=4)
    raw["judge"]["alpacaeval"].update(limit=2, max_new_tokens=4)
    for key in drop:
        del raw[key]
    for section, values in (update or {}).items():
        raw[section].update(values)
    (project / "pipelines/tiny.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    _dvc(project, "init", "-q")
    shutil.copy(REPO / ".dvc/config", project / ".dvc/config")
    assert _align(project, "dvc", "pipelines/tiny.yaml").returncode == 0
    return raw, "dvc/tiny/dvc.yaml"  # every pipeline but the quickstart gets its own nested file


def test_dvc_repro_skips_unchanged_and_reruns_downstream(project: Path) -> None:
    raw, dvcfile = tiny_dvc_project(project)
    first = _dvc(project, "repro", dvcfile)
    for stage in STAGES:
        assert f"Running stage '{dvcfile}:{stage}'" in first, first[-3000:]

    # what `dvc repro` made, `align run` finds current, stage by stage
    after = _align(project, "run", "pipelines/tiny.yaml", "--no-prefect")
    assert after.returncode == 0, after.stderr[-2000:]
    assert [ln.split(",")[0] for ln in after.stdout.splitlines() if ": up to date" in ln] == [
        f"{stage}: up to date" for stage in STAGES
    ], after.stdout
    assert "Data and pipelines are up to date" in _dvc(project, "status", dvcfile)

    second = _dvc(project, "repro", dvcfile)
    assert "Running stage" not in second
    for stage in STAGES:
        assert f"'{dvcfile}:{stage}' didn't change, skipping" in second

    raw["train"]["learning_rate"] *= 2
    (project / "pipelines/tiny.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    third = _dvc(project, "repro", dvcfile)
    ran = set(re.findall(r"Running stage '[\w/.]+:([\w-]+)'", third))
    assert ran == {"train", "evaluate", "judge"}, third[-2000:]


def test_align_run_leaves_dvc_up_to_date(project: Path) -> None:
    """`align run` (the Prefect flow) records its outputs in the pipeline's dvc.lock as `dvc
    repro` would, so `dvc status` is clean and `dvc repro` runs nothing; a run with `--set`
    overrides is not recorded (other params), nor one with --no-record-dvc."""
    _, dvcfile = tiny_dvc_project(project, drop=("evaluate", "judge"))
    lock = project / "dvc/tiny/dvc.lock"
    over = _align(
        project, "run", "pipelines/tiny.yaml", "--no-prefect", "--set", "train.max_steps=1"
    )
    assert over.returncode == 0, over.stderr[-2000:]
    assert "dvc.lock left alone: overrides ['train.max_steps=1']" in over.stdout
    assert not lock.exists()
    off = _align(project, "run", "pipelines/tiny.yaml", "--no-prefect", "--no-record-dvc")
    assert off.returncode == 0, off.stderr[-2000:]
    assert not lock.exists()

    done = _align(project, "run", "pipelines/tiny.yaml")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "recorded this run's outputs, deps and params in dvc/tiny/dvc.lock" in (
        done.stdout + done.stderr
    )
    assert set(yaml.safe_load(lock.read_text())["stages"]) == {
        "prepare-model",
        "sample",
        "annotate",
        "train",
    }
    assert "Data and pipelines are up to date" in _dvc(project, "status", dvcfile)
    again = _dvc(project, "repro", dvcfile)
    assert "Running stage" not in again, again[-2000:]
