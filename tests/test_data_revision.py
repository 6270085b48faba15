"""Which version of a dataset or base model a run read is part of its stage hashes and lineage:
a hub dataset's or model's revision resolves to its commit (the hub cache's ref, offline), a
local dataset folder is hashed by content, and a changed folder re-runs the stages that read it
under DVC and under align."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from huggingface_hub import constants

from align.config import load_pipeline
from align.config.data import DatasetConfig
from align.core.hub import resolved_revision
from align.model.loading import source_fingerprint
from align.pipeline import plan
from align.pipeline.graph import data_fingerprint
from tests.test_orchestration import _align, _dvc, tiny_dvc_project

SHA_A, SHA_B = "a" * 40, "b" * 40


@pytest.fixture
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An offline hub cache where each repo's refs/<name> file holds a commit, as downloads
    leave it."""
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    resolved_revision.cache_clear()
    source_fingerprint.cache_clear()
    yield tmp_path / "hub"
    resolved_revision.cache_clear()
    source_fingerprint.cache_clear()


def _ref(cache: Path, folder: str, name: str, commit: str) -> None:
    (cache / folder / "refs").mkdir(parents=True, exist_ok=True)
    (cache / folder / "refs" / name).write_text(commit)


def test_hub_revisions_resolve_to_commits_in_the_fingerprints(hub_cache: Path) -> None:
    ds = DatasetConfig(hf_dataset="org/prefs", split="train", revision="v1")
    assert data_fingerprint(ds) == "hf:org/prefs@unresolved:v1:train"  # nothing cached yet
    resolved_revision.cache_clear()
    _ref(hub_cache, "datasets--org--prefs", "v1", SHA_A)
    assert data_fingerprint(ds) == f"hf:org/prefs@{SHA_A}:train"
    resolved_revision.cache_clear()
    _ref(hub_cache, "datasets--org--prefs", "v1", SHA_B)  # the tag moved upstream
    assert data_fingerprint(ds) == f"hf:org/prefs@{SHA_B}:train"
    pinned = DatasetConfig(hf_dataset="org/prefs", revision=SHA_A)
    assert data_fingerprint(pinned) == f"hf:org/prefs@{SHA_A}:train"

    _ref(hub_cache, "models--org--base", "main", SHA_A)
    assert source_fingerprint("org/base") == f"hub:org/base@{SHA_A}"
    assert source_fingerprint("org/base", SHA_B) == f"hub:org/base@{SHA_B}"


def test_model_revision_changes_every_stage_hash(hub_cache: Path, monkeypatch) -> None:
    monkeypatch.chdir(Path(__file__).resolve().parent.parent)
    _ref(hub_cache, "models--org--base", "main", SHA_A)
    base = ["model.policy=org/base"]
    first = {p.name: p for p in plan(load_pipeline("pipelines/quickstart.yaml", base))}
    pinned = [*base, f"model.revision={SHA_B}"]
    second = {p.name: p for p in plan(load_pipeline("pipelines/quickstart.yaml", pinned))}
    assert first["prepare-model"].inputs["policy"] == f"hub:org/base@{SHA_A}"
    assert second["prepare-model"].inputs["policy"] == f"hub:org/base@{SHA_B}"
    assert all(first[n].stage_hash != second[n].stage_hash for n in first)


def test_revision_needs_a_hub_dataset() -> None:
    with pytest.raises(ValueError, match="revision applies to hf_dataset only"):
        DatasetConfig(path="data/x.jsonl", revision="v1")


@pytest.mark.integration
def test_a_changed_dataset_folder_reruns_its_stages(project: Path) -> None:
    folder = project / "data/prompts"
    folder.mkdir()
    shutil.copy(project / "data/quickstart/train.jsonl", folder / "part-0.jsonl")
    update = {"data": {"train": {"hf_dataset": "data/prompts", "limit": 4}}}
    _, dvcfile = tiny_dvc_project(project, drop=("evaluate", "judge"), update=update)
    assert "    - data/prompts\n" in (project / dvcfile).read_text()  # a DVC dependency
    first = _dvc(project, "repro", f"{dvcfile}:sample")
    assert f"Running stage '{dvcfile}:sample'" in first, first[-2000:]
    manifest = json.loads((project / "runs/tiny/sample/manifest.json").read_text())
    assert manifest["inputs"]["data"].startswith("dir:")  # the lineage names the content
    assert _cached(project) == {"prepare-model": True, "sample": True}

    # a new version of the folder's table: the first record's answer changes
    rows = (folder / "part-0.jsonl").read_text().splitlines()
    record = json.loads(rows[0]) | {"answer": "-1"}
    (folder / "part-0.jsonl").write_text("\n".join([json.dumps(record), *rows[1:]]) + "\n")
    assert _cached(project) == {"prepare-model": True, "sample": False}
    again = _dvc(project, "repro", f"{dvcfile}:sample")
    assert f"Running stage '{dvcfile}:sample'" in again, again[-2000:]
    assert f"'{dvcfile}:prepare-model' didn't change" in again
    changed = json.loads((project / "runs/tiny/sample/manifest.json").read_text())
    assert changed["inputs"]["data"] != manifest["inputs"]["data"]
    run = _align(project, "run", "pipelines/tiny.yaml", "--no-prefect", "--no-record-dvc")
    assert "sample: up to date" in run.stdout, run.stdout + run.stderr[-2000:]


def _cached(project: Path) -> dict[str, bool]:
    """Whether align finds prepare-model and sample current (`align plan`'s status column)."""
    cfg = load_pipeline(str(project / "pipelines/tiny.yaml"))
    return {p.name: p.cached for p in plan(cfg) if p.name in ("prepare-model", "sample")}
