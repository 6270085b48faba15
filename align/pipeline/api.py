"""The Python API for notebooks and scripts (`align.load_pipeline`, `align.run`,
`align.run_stage`, `align.results`; docs/python-api.md).

Stages run in this process, in order, through `run_stage` (the same cache, locks and manifests
as `align run --no-prefect`); no Prefect server starts and nothing is recorded in DVC.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from align.config import PipelineConfig
from align.config import load_pipeline as _load_config
from align.core.errors import AlignError
from align.core.io import read_json
from align.pipeline.graph import MANIFEST, plan, stage_folder
from align.pipeline.rounds import close_round, prepare_run
from align.pipeline.run import run_stage as _run_stage

Pipeline = str | Path | PipelineConfig
RESULT_FILES = ("metrics.json", "scores.json")  # a stage's flat figures, where it writes them


def load_pipeline(
    path: str | Path, overrides: list[str] | None = None, smoke: bool = False
) -> PipelineConfig:
    """The validated config of a pipeline YAML, with `key.path=value` overrides (as `--set`)
    and the smoke profile (as `--smoke`); AlignError names the file and field on bad input."""
    return _load_config(path, overrides, smoke)


def _config(pipeline: Pipeline, overrides: list[str] | None, smoke: bool) -> PipelineConfig:
    if isinstance(pipeline, PipelineConfig):
        if overrides or smoke:
            raise AlignError(
                "overrides and smoke apply to a YAML path; pass the path, or set them in "
                "align.load_pipeline(path, overrides, smoke) and pass its config"
            )
        return pipeline
    return load_pipeline(pipeline, overrides, smoke)


def run_stage(
    pipeline: Pipeline,
    stage: str,
    overrides: list[str] | None = None,
    smoke: bool = False,
    force: bool = False,
) -> dict:
    """Run one stage unless its output is current (`force`: run anyway); returns its
    manifest (`summary` holds the stage's figures, `seconds` its time, 0 reruns nothing)."""
    return _run_stage(_config(pipeline, overrides, smoke), stage, force=force)[0]


def run(
    pipeline: Pipeline, overrides: list[str] | None = None, smoke: bool = False
) -> dict[str, dict]:
    """Run every stage in order, skipping those whose output is current; returns
    {stage: manifest}. A failing stage raises and leaves the earlier stages' outputs. A
    pipeline with `rounds` (given as a YAML path) runs one round and closes it (docs/rounds.md)."""
    cfg = _config(pipeline, overrides, smoke)
    if cfg.rounds is None:
        return {p.name: _run_stage(cfg, p.name)[0] for p in plan(cfg)}
    if isinstance(pipeline, PipelineConfig):
        raise AlignError("a pipeline with rounds runs from its YAML path: pass the path")
    cfg, _, round_plan = prepare_run(str(pipeline), list(overrides or []), smoke)
    manifests = {p.name: _run_stage(cfg, p.name)[0] for p in plan(cfg)}
    close_round(cfg, round_plan)
    return manifests


@dataclass
class Results:
    """What a pipeline's stage folders hold now (read from disk, whoever ran the stages)."""

    cfg: PipelineConfig
    metrics: dict[str, dict] = field(default_factory=dict)  # stage -> its flat figures
    current: dict[str, bool] = field(default_factory=dict)  # stage -> output matches the config
    log: list[dict] = field(default_factory=list)  # the trainer's rows, one per optimizer step

    @property
    def folder(self) -> Path:
        return Path(self.cfg.runs_dir) / self.cfg.name

    @property
    def model(self) -> Path | None:
        """The trained model folder (Hugging Face format, with its model card), if trained."""
        path = stage_folder(self.cfg, "train") / "model"
        return path if (path / "config.json").is_file() else None

    def series(self, key: str) -> tuple[list[float], list[float]]:
        """(steps, values) of one logged quantity, e.g. 'loss'; steps that logged NaN or
        nothing for it are left out."""
        from align.pipeline.plots import series  # matplotlib loads only when asked for

        return series(self.log, key)


def results(pipeline: Pipeline, overrides: list[str] | None = None, smoke: bool = False) -> Results:
    """The figures of every stage that has run: metrics.json / scores.json where the stage
    writes one, else its manifest's summary; whether each output is current; the training
    log."""
    cfg = _config(pipeline, overrides, smoke)
    out = Results(cfg)
    for p in plan(cfg):
        out.current[p.name] = p.cached
        files = [p.folder / name for name in RESULT_FILES if (p.folder / name).is_file()]
        if files:
            out.metrics[p.name] = read_json(files[0])
        elif (p.folder / MANIFEST).is_file():
            out.metrics[p.name] = read_json(p.folder / MANIFEST).get("summary", {})
    log = stage_folder(cfg, "train") / "log.jsonl"
    if log.is_file():
        out.log = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return out
