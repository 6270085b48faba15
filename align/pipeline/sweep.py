"""`align sweep`: one pipeline over a grid of settings. Every stage whose hash a cell shares
with the pipeline itself (with `--set` but without the grid) runs once, in the pipeline's own
run folder, and each cell links to it; the stages the grid changes run per cell under
runs/<name>/sweep/<cell>/. The comparison (align/pipeline/sweep_report.py) follows.

Cells run one after another, or `jobs` at a time in worker processes, each with an equal share
of the cores (torch threads).
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
from collections.abc import Iterable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from align.config import PipelineConfig, load_pipeline
from align.config.load import parse_override
from align.core.errors import AlignError
from align.core.io import atomic_write_json
from align.pipeline.folders import claim_run_folder
from align.pipeline.graph import MARKER, active_stages, plan
from align.pipeline.run import run_stage

SWEEP_DIR = "sweep"


@dataclass(frozen=True)
class Cell:
    """One point of the grid: its folder name and its settings (grid key -> value)."""

    id: str
    settings: dict[str, Any]

    def overrides(self) -> list[str]:
        """The cell's settings as `--set` overrides (JSON is YAML)."""
        return [f"{key}={json.dumps(value)}" for key, value in self.settings.items()]


def parse_grid(texts: Iterable[str]) -> dict[str, list[Any]]:
    """`--grid 'train.loss.name=[nca,dpo]'` -> {'train.loss.name': ['nca', 'dpo']}."""
    grid: dict[str, list[Any]] = {}
    for text in texts:
        key, values = parse_override(text)
        if not isinstance(values, list) or not values:
            raise AlignError(
                f"--grid {text!r}: expected key.path=[value, ...], e.g. "
                "--grid 'train.loss.name=[nca,dpo]'"
            )
        if key in grid:
            raise AlignError(f"--grid {key}: given twice; list every value in one --grid")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise AlignError(f"--grid {text!r}: a value is listed twice")
        grid[key] = values
    if not grid:
        raise AlignError("align sweep: give at least one --grid key.path=[value, ...]")
    return grid


def describe(value: Any) -> str:
    """A grid value in words: 'nca', '0.1', or for a mapping with a name (a whole
    `train.loss`) 'dpo(beta=0.1)'."""
    if isinstance(value, dict) and isinstance(value.get("name"), str):
        rest = ",".join(f"{k}={describe(v)}" for k, v in sorted(value.items()) if k != "name")
        return f"{value['name']}({rest})" if rest else value["name"]
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _slug(value: Any) -> str:
    return re.sub(r"[^a-z0-9.]+", "-", describe(value).lower()).strip("-.") or "x"


def grid_cells(grid: dict[str, list[Any]]) -> list[Cell]:
    """Every combination of the grid's values, in order; ids join the values' slugs."""
    cells, seen = [], set()
    for values in itertools.product(*grid.values()):
        cell_id = "_".join(_slug(v) for v in values)
        while cell_id in seen:
            cell_id += "-"
        seen.add(cell_id)
        cells.append(Cell(cell_id, dict(zip(grid, values, strict=True))))
    return cells


def sweep_root(base: PipelineConfig) -> Path:
    return Path(base.runs_dir) / base.name / SWEEP_DIR


def cell_config(
    pipeline: str, overrides: list[str], smoke: bool, base: PipelineConfig, cell: Cell
) -> PipelineConfig:
    """The pipeline with the cell's settings, its run folder runs/<name>/sweep/<cell>/."""
    extra = [*cell.overrides(), f"runs_dir={sweep_root(base)}", f"name={cell.id}"]
    try:
        return load_pipeline(pipeline, [*overrides, *extra], smoke)
    except AlignError as exc:
        raise AlignError(f"sweep cell {cell.id} ({', '.join(cell.overrides())}): {exc}") from None


def shared_stages(base: PipelineConfig, cfg: PipelineConfig) -> list[str]:
    """The stages of `cfg` whose hash equals the base pipeline's: their output is the base's."""
    base_hashes = {p.name: p.stage_hash for p in plan(base)}
    return [p.name for p in plan(cfg) if base_hashes.get(p.name) == p.stage_hash]


def link_stage(base: PipelineConfig, cfg: PipelineConfig, stage: str) -> None:
    """runs/<name>/sweep/<cell>/<stage> -> runs/<name>/<stage> (relative, so the run folder can
    move); replaces a folder the project made there (it has the stage marker)."""
    link = claim_run_folder(cfg) / stage
    if link.is_symlink():
        link.unlink()
    elif link.is_dir():
        if not (link / MARKER).is_file():
            raise AlignError(f"{link}: not a stage folder made by align; move it away")
        shutil.rmtree(link)
    link.symlink_to(Path("..", "..", stage), target_is_directory=True)


def _stages_until(cfg: PipelineConfig, until: str | None) -> list[str]:
    stages = active_stages(cfg)
    if until is None:
        return stages
    if until not in stages:
        raise AlignError(
            f"--until {until!r}: not a stage of {cfg.name}; valid: {', '.join(stages)}"
        )
    return stages[: stages.index(until) + 1]


def _run_cell(
    pipeline: str,
    overrides: list[str],
    smoke: bool,
    cell: Cell,
    until: str | None,
    threads: int | None,
) -> dict:
    """Run one cell's own stages (the shared ones are linked and current); its record."""
    base = load_pipeline(pipeline, overrides, smoke)
    cfg = cell_config(pipeline, overrides, smoke, base, cell)
    ran = []
    for name in _stages_until(cfg, until):
        _, did = run_stage(cfg, name, threads=threads)
        if did:
            ran.append(name)
    return {"id": cell.id, "settings": cell.settings, "ran": ran}


def run_sweep(
    pipeline: str,
    overrides: list[str],
    smoke: bool,
    grid: dict[str, list[Any]],
    until: str | None = None,
    jobs: int = 1,
) -> tuple[Path, list[dict]]:
    """Run every cell of the grid: shared stages once in the base run, then each cell's own
    stages; writes runs/<name>/sweep/cells.json and returns (sweep folder, cell records)."""
    base = load_pipeline(pipeline, overrides, smoke)
    cells = grid_cells(grid)
    configs = {c.id: cell_config(pipeline, overrides, smoke, base, c) for c in cells}
    shared: dict[str, list[str]] = {}
    for c in cells:
        wanted = _stages_until(configs[c.id], until)
        shared[c.id] = [s for s in shared_stages(base, configs[c.id]) if s in wanted]
    for name in active_stages(base):  # DAG order: a shared stage's upstream is shared too
        if any(name in shared[c.id] for c in cells):
            run_stage(base, name)
    for c in cells:
        for name in shared[c.id]:
            link_stage(base, configs[c.id], name)
    root = sweep_root(base)
    jobs = max(1, min(jobs, len(cells)))
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None
    args = [(pipeline, overrides, smoke, c, until, threads) for c in cells]
    if jobs == 1:
        records = [_run_cell(*a) for a in args]
    else:
        # spawn: a fresh interpreter per worker, no torch state inherited through fork
        with ProcessPoolExecutor(jobs, mp_context=get_context("spawn")) as pool:
            records = list(pool.map(_run_cell, *zip(*args, strict=True)))
    for rec in records:
        rec["shared"] = shared[rec["id"]]
    atomic_write_json(
        root / "cells.json",
        {
            "pipeline": pipeline,
            "overrides": overrides,
            "smoke": smoke,
            "grid": grid,
            "cells": records,
        },
    )
    return root, records
