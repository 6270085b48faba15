"""Record a finished run in `dvc.lock`, so that a scheduled (nightly) run updates DVC's lineage
as `dvc repro` would.

After the flow's stages, `dvc commit --force <the pipeline's dvc.yaml>` stores the hashes of the
current outputs, deps and params in `dvc.lock`. That is only true lineage when the outputs were
made from the YAML as written: a smoke run (other folders) or a run with `--set` overrides (other
params) is not recorded. A pipeline with rounds records its rounds folder instead (`dvc add`,
`record_rounds_in_dvc`). DVC admits one command per workspace at a time, so align's DVC commands
queue on a project lock instead of failing on DVC's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from align.config import PipelineConfig
from align.core.errors import AlignError
from align.core.io import exclusive_lock
from align.pipeline.dvcfile import dvc_file_for
from align.pipeline.rounds import rounds_folder

LOCK = Path(".dvc/tmp/align-dvc-commands.lock")


def record_in_dvc_lock(pipeline: str, overrides: list[str], smoke: bool) -> str:
    """Run `dvc commit --force` on the pipeline's dvc.yaml; returns one line saying what was
    recorded or why nothing was. Raises AlignError when DVC itself fails."""
    dvcfile = dvc_file_for(pipeline)
    if smoke or overrides:
        why = "a smoke run" if smoke else f"overrides {overrides}"
        return f"dvc.lock left alone: {why} does not match the params in {pipeline}"
    if not Path(".dvc").is_dir() or not dvcfile.is_file():
        return f"dvc.lock left alone: no DVC project here or no {dvcfile} (`align dvc {pipeline}`)"
    _dvc("commit", "--force", "--quiet", str(dvcfile), hint=f"dvc status {dvcfile}")
    lock = dvcfile.with_name("dvc.lock")
    return f"recorded this run's outputs, deps and params in {lock}"


def _dvc(*args: str, hint: str) -> None:
    """Run one DVC command under the project's DVC lock; AlignError (naming `hint`, a command
    that shows why) when it fails."""
    with exclusive_lock(LOCK, "a DVC command"):
        done = subprocess.run(
            [sys.executable, "-m", "dvc", *args], capture_output=True, text=True, check=False
        )
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        why = last[-1] if last else done.returncode
        raise AlignError(f"dvc {args[0]} failed: {why}; run `{hint}` to see why")


def record_rounds_in_dvc(rounds: Path) -> str:
    """Track a pipeline's rounds folder (rounds.jsonl and the promoted models) with `dvc add`:
    `<run folder>/rounds.dvc`, which git keeps (.gitignore lets it through), points at this
    state of the lineage in DVC's cache, so `git log` finds every round's record and `dvc
    checkout` / `dvc pull` restores its models. Returns one line saying what was done."""
    if not Path(".dvc").is_dir():
        return "round lineage left out of DVC: no DVC project here"
    _dvc("add", "--quiet", str(rounds), hint=f"dvc status {rounds}.dvc")
    return f"recorded the rounds in {rounds}.dvc (commit it with git to keep this round's lineage)"


def record_run(pipeline: str, overrides: list[str], smoke: bool, cfg: PipelineConfig) -> str:
    """What a finished run leaves in DVC: a pipeline with rounds records its rounds folder (its
    stages ran under the round's overrides, which dvc.yaml does not hold), any other one its
    outputs in dvc.lock."""
    if cfg.rounds is not None:
        return record_rounds_in_dvc(rounds_folder(cfg))
    return record_in_dvc_lock(pipeline, overrides, smoke)
