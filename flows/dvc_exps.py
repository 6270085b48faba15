"""The training curves of DVC experiments (or any Git revision), for `align plots --exp`.

Each experiment's `curves.csv` is a cached DVC output: `runs/` is git-ignored, so the file is
read through DVC's API at the experiment's revision (its dvc.lock names the hash, the local
cache holds the content). `workspace` names the files as they are now.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from align.config import PipelineConfig
from align.core.errors import AlignError
from align.pipeline.plots_page import plots_files, read_rows

WORKSPACE = "workspace"


def experiment_curves(cfg: PipelineConfig, revs: list[str]) -> dict[str, list[dict]]:
    """rev -> rows of the pipeline's curves.csv at that experiment, commit or `workspace`.
    AlignError (one line) names a revision DVC does not know or a run without curves."""
    import dvc.api
    from dvc.exceptions import DvcException
    from dvc.scm import RevError

    (path,) = plots_files(cfg)[:1] or [None]
    if path is None:
        raise AlignError(f"pipeline {cfg.name} declares no plots (its train stage writes them)")
    runs = {}
    with tempfile.TemporaryDirectory() as tmp:
        for rev in revs:
            try:
                text = dvc.api.read(str(path), rev=None if rev == WORKSPACE else rev)
            except RevError:
                raise AlignError(
                    f"--exp {rev}: no such experiment or Git revision; `dvc exp show` lists them"
                ) from None
            except (DvcException, FileNotFoundError) as exc:
                raise AlignError(
                    f"--exp {rev}: cannot read {path} ({type(exc).__name__}); did that "
                    "experiment run its train stage, and is its DVC cache here (`dvc pull`)?"
                ) from None
            copy = Path(tmp) / f"{len(runs)}.csv"
            copy.write_text(text)
            runs[rev] = read_rows(copy)
    return runs
