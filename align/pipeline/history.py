"""Each run's results kept apart: `runs/<pipeline>/history/<UTC time>-<run id>/`.

The stage folders (`runs/<pipeline>/<stage>/`) hold the current, content-hashed outputs that the
cache reuses; a nightly re-training replaces them. After every flow run the final outputs are
filed under the run's own folder, so each night's checkpoint, metrics and lineage stay
distinct. Weights (`*.safetensors`) are hard links (no extra disk; stages never rewrite a weight
file in place, they write new files and wipe old folders), everything else is copied.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from align.config import PipelineConfig
from align.core.io import atomic_dir, atomic_write_json, link_or_copy
from align.pipeline import MANIFEST, plan, stage_folder

SKIP = {"checkpoints"}  # intermediate trainer checkpoints: only the final model is kept


def keep_run(cfg: PipelineConfig, run_id: str, now: datetime | None = None) -> Path:
    """File every current stage output of `cfg` (checkpoints excepted) and the run report under
    history/<YYYYmmddTHHMMSSZ>-<run_id[:8]>/ with a lineage.json (stage hashes and inputs);
    returns that folder. Written to a temporary name and renamed, so it is complete or absent."""
    stamp = (now or datetime.now(UTC)).strftime("%Y%m%dT%H%M%SZ")
    final = Path(cfg.runs_dir) / cfg.name / "history" / f"{stamp}-{run_id[:8]}"
    lineage = {"pipeline": cfg.name, "run_id": run_id, "time": stamp, "stages": {}}
    with atomic_dir(final) as tmp:
        for p in plan(cfg):
            if not (p.folder / MANIFEST).is_file():
                continue
            lineage["stages"][p.name] = {"stage_hash": p.stage_hash, "inputs": p.inputs}
            for src in sorted(p.folder.rglob("*")):
                rel = src.relative_to(p.folder)
                if src.is_file() and not SKIP.intersection(rel.parts):
                    link_or_copy(src, tmp / p.name / rel)
        base = stage_folder(cfg, "")
        for extra in [base / "report.md", *sorted((base / "plots").glob("*.png"))]:
            if extra.is_file():
                link_or_copy(extra, tmp / extra.relative_to(base))
        atomic_write_json(tmp / "lineage.json", lineage)
    return final
