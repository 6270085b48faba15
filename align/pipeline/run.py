"""Running one stage: skip it when its output is current, else wipe output of another
configuration, run the stage's runner and write its manifest last.

`run_stage` holds an exclusive lock (`runs/<pipeline>/.<stage>.lock`) while it works: a second
process asking for the same stage of the same pipeline waits, then finds the output current
instead of writing into the same folder at the same time.

A multi-node train stage (train.distributed.machines > 1) runs on machine 0 like any stage; on
every other machine `run_stage` only joins the training (`join_training`): no lock (machine 0
holds it while it waits for this machine), no marker, no manifest, nothing written in the run
folder.
"""

from __future__ import annotations

import difflib
import time
from pathlib import Path

from align.config import PipelineConfig
from align.core.errors import AlignError
from align.core.io import (
    atomic_write_json,
    atomic_write_text,
    disk_error,
    exclusive_lock,
    read_json,
)
from align.pipeline.code import stage_code_version
from align.pipeline.folders import claim_run_folder, reset_stage_folder
from align.pipeline.graph import (
    MANIFEST,
    MARKER,
    STAGES,
    active_stages,
    plan,
    stage_folder,
)


def stage_lock_path(cfg: PipelineConfig, name: str) -> Path:
    """Beside the stage folder, not in it: a folder of another configuration is deleted whole."""
    return Path(cfg.runs_dir) / cfg.name / f".{name}.lock"


def run_stage(
    cfg: PipelineConfig, name: str, force: bool = False, threads: int | None = None
) -> tuple[dict, bool]:
    """Run one stage unless its output is current. Returns (manifest, ran).

    Holds the stage's lock throughout: a concurrent run of the same stage waits for this one,
    then sees the manifest and does nothing. `threads`: torch threads for this stage (default
    all cores); the flow passes a share when stages run side by side in one process."""
    active = active_stages(cfg)
    dist = cfg.train.distributed
    if name == "train" and dist is not None and dist.machine_rank > 0:
        return join_training(cfg), True
    if name not in active:
        hint = difflib.get_close_matches(name, active, n=1)
        raise AlignError(
            f"stage {name!r} is not part of pipeline {cfg.name}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; valid: {', '.join(active)}"
        )
    claim_run_folder(cfg)  # before the lock file goes in: the folder must be align's own
    try:
        with exclusive_lock(stage_lock_path(cfg, name), f"stage {name!r} of pipeline {cfg.name}"):
            return _run_unlocked(cfg, name, force, threads)
    except OSError as exc:
        _close_progress_bars()
        err = disk_error(exc, exc.filename or stage_folder(cfg, name))
        if err is None:
            raise
        raise err from None
    except BaseException:
        _close_progress_bars()
        raise


def join_training(cfg: PipelineConfig) -> dict:
    """Machine `train.distributed.machine_rank` > 0 of a multi-node train stage: launch this
    machine's processes into the run machine 0 leads, with the same job (config, prepared
    policy, stage hash) read from the shared run folder. Returns a manifest-like record of this
    machine's part; machine 0 writes the stage's outputs and its manifest."""
    from align.train.launch import launch_training

    plans = {p.name: p for p in plan(cfg)}
    stale = [u for u in STAGES["train"].upstream if u in plans and not plans[u].cached]
    if stale:
        raise AlignError(
            f"train.distributed.machine_rank {cfg.train.distributed.machine_rank}: "
            f"{', '.join(stale)} is not current in {stage_folder(cfg, stale[0]).parent}; every "
            "machine needs the run folder machine 0 prepared (a shared volume at the same path)"
        )
    p = plans["train"]
    models = read_json(plans["prepare-model"].folder / MANIFEST)["summary"]
    started = time.time()
    launch_training(
        cfg,
        Path(models["policy"]["path"]),
        p.folder,
        p.stage_hash,
        reference=Path(models["reference"]["path"]),
    )
    dist = cfg.train.distributed
    return {
        "stage": "train",
        "pipeline": cfg.name,
        "stage_hash": p.stage_hash,
        "summary": {"machine_rank": dist.machine_rank, "machines": dist.machines},
        "seconds": round(time.time() - started, 2),
    }


def _close_progress_bars() -> None:
    """Close the failed stage's open progress bars, so the error that follows starts on a line
    of its own instead of being glued to a half-drawn bar."""
    from tqdm.std import tqdm

    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()


def _run_unlocked(
    cfg: PipelineConfig, name: str, force: bool, threads: int | None
) -> tuple[dict, bool]:
    plans = {p.name: p for p in plan(cfg)}
    p = plans[name]
    if p.cached and not force:
        return read_json(p.folder / MANIFEST), False
    stale = [u for u in STAGES[name].upstream if u in plans and not plans[u].cached]
    if stale:
        raise AlignError(
            f"stage {name!r} needs {', '.join(stale)} to be current first; "
            f"run `align run` or `align stage` on {stale[0]!r}"
        )
    reset_stage_folder(p.folder, p.stage_hash)  # only a folder align made is ever deleted
    (p.folder / MANIFEST).unlink(missing_ok=True)
    atomic_write_text(p.folder / MARKER, p.stage_hash)
    upstream = {
        u: read_json(plans[u].folder / MANIFEST) for u in STAGES[name].upstream if u in plans
    }
    # torch, transformers and the trainers take ~3 s to import: `align plan`, `align validate`
    # and cached stages never pay for that
    from align.core.device import free_accelerator
    from align.core.runtime import prepare_process
    from align.stages import RUNNERS

    prepare_process(threads)  # torch threads, a heap that keeps freed blocks (core/runtime.py)
    started = time.time()
    try:
        summary, requires = RUNNERS[name](cfg, p.folder, upstream, p.stage_hash)
    finally:
        free_accelerator()  # the next stage, or vLLM, gets the memory (align/core/device.py)
    manifest = {
        "stage": name,
        "pipeline": cfg.name,
        "stage_hash": p.stage_hash,
        "config_hash": p.config_hash,
        "inputs": p.inputs,
        "code_version": stage_code_version(name),
        "summary": summary,
        "requires": [str(r) for r in requires],
        "seconds": round(time.time() - started, 2),
    }
    atomic_write_json(p.folder / MANIFEST, manifest)
    return manifest, True
