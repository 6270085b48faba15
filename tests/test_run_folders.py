"""Which folders a run may replace (align/pipeline/folders.py): only those align made."""

from __future__ import annotations

from pathlib import Path

import pytest

from align.config.load import validate_dict
from align.core.errors import AlignError
from align.pipeline import MANIFEST, MARKER
from align.pipeline.folders import RUN_MARKER, claim_run_folder, reset_stage_folder

RAW = {
    "name": "p",
    "model": {"policy": "tiny"},
    "data": {"train": {"path": "d.jsonl", "format": "kwise"}},
    "annotate": {"reward": {"from_data": True}},
    "train": {"loss": {"name": "nca"}},
}


def _write(path: Path, text: str = "x") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.mark.parametrize("proof", [MARKER, MANIFEST])
def test_output_of_another_configuration_is_replaced(tmp_path: Path, proof: str) -> None:
    stage = tmp_path / "train"
    _write(stage / proof, "old-hash")
    _write(stage / "checkpoints" / "step-000001" / "state.json")
    reset_stage_folder(stage, "new-hash")
    assert stage.is_dir() and list(stage.iterdir()) == []


def test_this_configurations_partial_output_is_kept(tmp_path: Path) -> None:
    stage = tmp_path / "train"
    _write(stage / MARKER, "h")
    shard = _write(stage / "shard-00000.parquet")
    reset_stage_folder(stage, "h")
    assert shard.is_file()


def test_a_users_folder_is_refused_and_left_alone(tmp_path: Path) -> None:
    stage = tmp_path / "train"
    keep = _write(stage / "keep.txt", "mine")
    with pytest.raises(AlignError, match="was not made by align"):
        reset_stage_folder(stage, "h")
    assert keep.read_text() == "mine"


def test_a_link_where_a_stage_folder_goes_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    _write(elsewhere / MARKER, "old")
    (tmp_path / "train").symlink_to(elsewhere)
    with pytest.raises(AlignError, match="a symbolic link"):
        reset_stage_folder(tmp_path / "train", "h")
    assert (elsewhere / MARKER).is_file()


def test_run_folder_claims(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    cfg = validate_dict(RAW, "p.yaml")
    folder = claim_run_folder(cfg)  # a new one gets the marker
    assert (folder / RUN_MARKER).is_file()
    (folder / RUN_MARKER).unlink()
    _write(folder / "annotate" / MANIFEST, "{}")  # from before markers: a manifest proves it
    claim_run_folder(cfg)
    assert (folder / RUN_MARKER).is_file()
    other = validate_dict({**RAW, "name": "q"}, "p.yaml")
    keep = _write(tmp_path / "runs" / "q" / "notes.txt", "mine")
    with pytest.raises(AlignError, match="runs/q: this folder exists and was not made by align"):
        claim_run_folder(other)
    assert keep.read_text() == "mine" and not (keep.parent / RUN_MARKER).exists()
