"""Which folders a run may write into and replace: only folders align itself made.

The run folder `<runs_dir>/<name>/` carries a marker file from the moment align creates it, and
each stage folder its `.stage_hash`. An existing folder without them belongs to the user: align
refuses to write into it instead of deleting it. Every folder is checked where it really is,
after symbolic links are resolved: it must lie inside the project (the working directory).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from align.config import PipelineConfig
from align.core.errors import AlignError
from align.core.io import atomic_write_text
from align.pipeline.graph import MANIFEST, MARKER

RUN_MARKER = ".align-run"  # in <runs_dir>/<name>/: align made this folder


def _inside_project(folder: Path, key: str) -> None:
    """Refuse `folder` when, links resolved, it is the project or lies outside it."""
    project, real = Path.cwd().resolve(), folder.resolve()
    if real == project or not real.is_relative_to(project):
        raise AlignError(
            f"{key}: {folder} resolves to {real}, which is not a folder inside the project "
            f"{project} (a symbolic link?); outputs never go outside it: remove the link or set "
            "runs_dir to a folder of the project"
        )


def _made_by_align(folder: Path) -> bool:
    """A run folder of an align run: its marker, or (from before markers) a stage's marker or
    manifest or a stage lock."""
    if (folder / RUN_MARKER).is_file():
        return True
    for entry in folder.iterdir():
        if entry.name.startswith(".") and entry.name.endswith(".lock"):
            return True
        if (entry / MARKER).is_file() or (entry / MANIFEST).is_file():
            return True
    return False


def claim_run_folder(cfg: PipelineConfig) -> Path:
    """`<runs_dir>/<name>/`, created with its marker, or an existing one align made; a folder of
    the user's at that place is refused in one line, untouched."""
    folder = Path(cfg.runs_dir) / cfg.name
    _inside_project(folder, "runs_dir")
    if folder.is_dir() and any(folder.iterdir()) and not _made_by_align(folder):
        raise AlignError(
            f"{folder}: this folder exists and was not made by align (no {RUN_MARKER} in it); "
            "align never writes into or deletes a folder it did not create: move it away, or "
            "change the pipeline's name or runs_dir"
        )
    if folder.exists() and not folder.is_dir():
        raise AlignError(f"{folder}: a file is in the way of the run folder; move it away")
    if not (folder / RUN_MARKER).is_file():
        atomic_write_text(folder / RUN_MARKER, "made by align: runs of this pipeline\n")
    return folder


def reset_stage_folder(folder: Path, stage_hash: str) -> None:
    """Make `folder` the stage's folder for `stage_hash`: output of another configuration is
    deleted (never resumed from), but only when its marker or manifest proves align made it; a
    folder that holds anything else (left by the user, or behind a symbolic link) is refused."""
    marker = folder / MARKER
    if folder.is_symlink():
        raise AlignError(
            f"{folder}: a symbolic link where align keeps a stage's output; remove the link"
        )
    if folder.is_dir():
        if marker.is_file() and marker.read_text() == stage_hash:
            return  # this configuration's partial output: resume from it
        leftovers = [p for p in folder.iterdir() if not p.name.startswith(f".{MARKER}.tmp-")]
        # the manifest proves it too: `dvc pull` restores a train folder without its marker
        if leftovers and not marker.is_file() and not (folder / MANIFEST).is_file():
            raise AlignError(
                f"{folder}: this folder exists and was not made by align (no {MARKER} in it); "
                "align never deletes a folder it did not create: move it away and re-run"
            )
        shutil.rmtree(folder)  # output of another configuration
    elif folder.exists():
        raise AlignError(f"{folder}: a file is in the way of the stage folder; move it away")
    folder.mkdir(parents=True, exist_ok=True)
