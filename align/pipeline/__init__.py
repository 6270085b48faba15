"""The pipeline as a whole: the stage graph and its hashes (graph), running a stage (run), the
DVC file rendered from the YAML (dvcfile), kept copies of past runs (history) and the training
plots (plots, plots_page). The top of align/: it may import every other package."""

from align.pipeline.graph import MANIFEST, MARKER, STAGES, active_stages, plan, stage_folder
from align.pipeline.run import run_stage

__all__ = ["MANIFEST", "MARKER", "STAGES", "active_stages", "plan", "run_stage", "stage_folder"]
