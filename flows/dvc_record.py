"""Record a finished run in `dvc.lock`, so that a scheduled (nightly) run updates DVC's lineage
as `dvc repro` would.

After the flow's stages, `dvc commit --force <the pipeline's dvc.yaml>` stores the hashes of the
current outputs, deps and params in `dvc.lock`. That is only true lineage when the outputs were
made from the YAML as written: a smoke run (other folders) or a run with `--set` overrides (other
params) is not recorded. DVC admits one command per workspace at a time, so align's DVC commands
queue on a project lock instead of failing on DVC's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from align.core.errors import AlignError
from align.core.io import exclusive_lock
from align.pipeline.dvcfile import dvc_file_for

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
    with exclusive_lock(LOCK, "a DVC command"):
        done = subprocess.run(
            [sys.executable, "-m", "dvc", "commit", "--force", "--quiet", str(dvcfile)],
            capture_output=True,
            text=True,
            check=False,
        )
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()
        raise AlignError(
            f"dvc commit {dvcfile} failed: {last[-1] if last else done.returncode}; "
            f"run `dvc status {dvcfile}` to see why"
        )
    lock = dvcfile.with_name("dvc.lock")
    return f"recorded this run's outputs, deps and params in {lock}"
