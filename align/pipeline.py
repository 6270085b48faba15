"""The stage graph of a pipeline, content hashes, manifests, and running one stage.

A stage's hash covers its config sections, its inputs (upstream stage hashes, data files,
model and reward fingerprints) and the code version. The hash is Prefect's cache key; DVC's
`dvc.lock` records the same deps and outs. A stage folder is complete only once its
`manifest.json` (written last, atomically) carries the current hash.

`run_stage` holds an exclusive lock (`runs/<pipeline>/.<stage>.lock`) while it works: a second
process asking for the same stage of the same pipeline waits, then finds the output current
instead of writing into the same folder at the same time.
"""

from __future__ import annotations

import difflib
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from align.config import DatasetConfig, PipelineConfig, section
from align.errors import AlignError
from align.io import (
    atomic_write_json,
    atomic_write_text,
    canonical_json,
    disk_error,
    exclusive_lock,
    read_json,
    sha256_file,
    sha256_text,
)

MANIFEST = "manifest.json"
MARKER = ".stage_hash"  # written when a stage starts: partial output of another config is wiped
PACKAGE_ROOT = Path(__file__).resolve().parent


@cache
def code_version() -> str:
    """Hash of the library's source: any change to align/ re-runs every stage."""
    return sha256_text(
        "".join(
            f"{p.relative_to(PACKAGE_ROOT)}\n{p.read_text()}"
            for p in sorted(PACKAGE_ROOT.rglob("*.py"))
        )
    )[:16]


def data_fingerprint(ds: DatasetConfig | None) -> str | None:
    if ds is None:
        return None
    if ds.path is not None:
        path = Path(ds.path)
        return sha256_file(path) if path.is_file() else f"missing:{ds.path}"
    return f"hf:{ds.hf_dataset}:{ds.split}"


@dataclass(frozen=True)
class Out:
    """One output path for DVC: a plain out, a metrics file or a plots table."""

    path: str
    kind: str = "out"  # out | metrics | plots
    cache: bool = True
    persist: bool = False
    dep: bool = True  # whether downstream stages depend on it (checkpoints and logs: no)


@dataclass(frozen=True)
class StageDef:
    name: str
    upstream: tuple[str, ...]
    sections: tuple[str, ...]  # config keys hashed into this stage
    outs: Callable[[PipelineConfig, str], list[Out]]  # (config, stage folder) -> outputs
    inputs: Callable[[PipelineConfig], dict[str, Any]] = lambda cfg: {}
    data_deps: Callable[[PipelineConfig], list[str]] = lambda cfg: []


@dataclass
class StagePlan:
    name: str
    stage_hash: str
    inputs: dict[str, Any]
    folder: Path
    outs: list[Out]
    cached: bool
    data_deps: list[str] = field(default_factory=list)


def _folder_outs(cfg: PipelineConfig, folder: str) -> list[Out]:
    return [Out(folder, persist=True)]


def _train_outs(cfg: PipelineConfig, folder: str) -> list[Out]:
    return [
        Out(f"{folder}/model", cache=False),
        Out(f"{folder}/checkpoints", cache=False, persist=True, dep=False),
        Out(f"{folder}/log.jsonl", persist=True, dep=False),
        Out(f"{folder}/{MANIFEST}"),
        Out(f"{folder}/metrics.json", kind="metrics", cache=False),
        Out(f"{folder}/curves.csv", kind="plots", cache=False),
    ]


def _evaluate_outs(cfg: PipelineConfig, folder: str) -> list[Out]:
    return [
        Out(f"{folder}/answers-initial.jsonl"),
        Out(f"{folder}/answers-trained.jsonl"),
        Out(f"{folder}/report.md", cache=False),
        Out(f"{folder}/{MANIFEST}"),
        Out(f"{folder}/metrics.json", kind="metrics", cache=False),
    ]


def _judge_outs(cfg: PipelineConfig, folder: str) -> list[Out]:
    protocols = [name for name in ("mtbench", "alpacaeval") if getattr(cfg.judge, name)]
    return [
        *(Out(f"{folder}/{name}") for name in protocols),
        Out(f"{folder}/report.md", cache=False),
        Out(f"{folder}/{MANIFEST}"),
        Out(f"{folder}/scores.json", kind="metrics", cache=False),
    ]


JUDGE_FILE_KEYS = (
    "questions",
    "reference_answers",
    "baseline_answers",
    "reference_outputs",
    "instructions",
    "difficulty",
)


def _judge_files(cfg: PipelineConfig) -> list[str]:
    """Every question, reference and baseline file the judge stage reads."""
    sections = [cfg.judge.mtbench, cfg.judge.alpacaeval] if cfg.judge else []
    return [
        value
        for sec in sections
        if sec is not None
        for key, value in sec.model_dump().items()
        if key in JUDGE_FILE_KEYS and value
    ]


def _judge_inputs(cfg: PipelineConfig) -> dict[str, Any]:
    from align.judging.backends import judge_fingerprint

    files = {
        path: sha256_file(Path(path)) if Path(path).is_file() else "missing"
        for path in _judge_files(cfg)
    }
    return {"judge": judge_fingerprint(cfg.judge.backend), "files": files}


def _reward_input(cfg: PipelineConfig, which: str) -> dict[str, Any]:
    from align.rewards import reward_fingerprint

    reward = cfg.annotate.reward if which == "annotate" else cfg.eval_reward
    return {"reward": reward_fingerprint(reward)}


def _train_inputs(cfg: PipelineConfig) -> dict[str, Any]:
    """Online training reads the prompts and the preference source itself (no annotate)."""
    if not cfg.train.online:
        return {}
    from align.preference import preference_fingerprint

    return {
        "data": data_fingerprint(cfg.data.train),
        "system_prompt": cfg.data.system_prompt,
        "preference": preference_fingerprint(cfg.train.preference),
    }


def _aux_input(cfg: PipelineConfig) -> list[str] | None:
    from align.rewards.aux import aux_fingerprint

    return aux_fingerprint(cfg.train.aux_rewards)


def _rewrite_input(cfg: PipelineConfig) -> dict[str, Any]:
    from align.judging.backends import judge_fingerprint

    return {"rewriter": judge_fingerprint(cfg.rewrite.backend)}


def _model_source(cfg: PipelineConfig) -> dict[str, Any]:
    from align.models import source_fingerprint

    return {
        "policy": source_fingerprint(cfg.model.policy),
        "reference": cfg.model.reference and source_fingerprint(cfg.model.reference),
    }


STAGES: dict[str, StageDef] = {
    s.name: s
    for s in [
        StageDef("prepare-model", (), ("model",), _folder_outs, inputs=_model_source),
        StageDef(
            "sample",
            ("prepare-model",),
            ("sample", "data.train", "data.system_prompt"),
            _folder_outs,
            inputs=lambda cfg: {"data": data_fingerprint(cfg.data.train)},
            data_deps=lambda cfg: [cfg.data.train.path] if cfg.data.train.path else [],
        ),
        StageDef(
            "annotate",
            ("prepare-model", "sample"),
            ("annotate", "data.train", "data.system_prompt", "train.lengths", "train.aux_rewards"),
            _folder_outs,
            inputs=lambda cfg: {
                **_reward_input(cfg, "annotate"),
                "aux": _aux_input(cfg),
                "data": None if cfg.sample else data_fingerprint(cfg.data.train),
            },
            data_deps=lambda cfg: (
                [] if cfg.sample or not cfg.data.train.path else [cfg.data.train.path]
            ),
        ),
        StageDef(
            "rewrite",
            ("prepare-model", "annotate"),
            ("rewrite", "train.lengths"),
            _folder_outs,
            inputs=_rewrite_input,
        ),
        StageDef(
            "train",
            ("prepare-model", "annotate", "rewrite"),
            ("train", "model"),
            _train_outs,
            inputs=_train_inputs,
            data_deps=lambda cfg: (
                [cfg.data.train.path] if cfg.train.online and cfg.data.train.path else []
            ),
        ),
        StageDef(
            "evaluate",
            ("prepare-model", "train"),
            ("evaluate", "data.eval", "data.system_prompt", "train.aux_rewards"),
            _evaluate_outs,
            inputs=lambda cfg: {
                **_reward_input(cfg, "evaluate"),
                "aux": _aux_input(cfg),
                "eval_data": data_fingerprint(cfg.data.eval),
            },
            data_deps=lambda cfg: (
                [cfg.data.eval.path] if cfg.data.eval and cfg.data.eval.path else []
            ),
        ),
        StageDef(
            "judge",
            ("prepare-model", "train"),
            ("judge",),
            _judge_outs,
            inputs=_judge_inputs,
            data_deps=_judge_files,
        ),
    ]
}


def active_stages(cfg: PipelineConfig) -> list[str]:
    """Stages of this pipeline in DAG order (optional ones only when configured)."""
    optional = {
        "sample": cfg.sample is not None,
        "annotate": cfg.annotate is not None,  # absent with train.online
        "rewrite": cfg.rewrite is not None,
        "evaluate": cfg.evaluate is not None,
        "judge": cfg.judge is not None,
    }
    return [name for name in STAGES if optional.get(name, True)]


def stage_folder(cfg: PipelineConfig, name: str) -> Path:
    return Path(cfg.runs_dir) / cfg.name / name


def _section_value(cfg: PipelineConfig, key: str) -> Any:
    if key == "train.lengths":  # tokenisation of reference log-probs follows training's limits
        return {
            "max_length": cfg.train.max_length,
            "max_prompt_length": cfg.train.max_prompt_length,
            "prompt_overflow": cfg.train.prompt_overflow,
        }
    return section(cfg, key)


def plan(cfg: PipelineConfig) -> list[StagePlan]:
    """Every active stage with its hash, inputs, outputs and whether its output is current."""
    active = active_stages(cfg)
    hashes: dict[str, str] = {}
    plans = []
    for name in active:
        sd = STAGES[name]
        inputs = {u: hashes[u] for u in sd.upstream if u in active}
        inputs.update({k: v for k, v in sd.inputs(cfg).items() if v is not None})
        config = {key: _section_value(cfg, key) for key in sd.sections}
        stage_hash = sha256_text(
            canonical_json(
                {"stage": name, "config": config, "inputs": inputs, "code": code_version()}
            )
        )
        hashes[name] = stage_hash
        folder = stage_folder(cfg, name)
        plans.append(
            StagePlan(
                name,
                stage_hash,
                inputs,
                folder,
                sd.outs(cfg, str(folder)),
                is_current(folder, stage_hash),
                sd.data_deps(cfg),
            )
        )
    return plans


def is_current(folder: Path, stage_hash: str) -> bool:
    manifest = folder / MANIFEST
    if not manifest.is_file():
        return False
    m = read_json(manifest)
    if m.get("stage_hash") != stage_hash:
        return False
    return all(Path(p).exists() for p in m.get("requires", []))


def read_manifest(cfg: PipelineConfig, name: str) -> dict:
    folder = stage_folder(cfg, name)
    if not (folder / MANIFEST).is_file():
        raise AlignError(
            f"stage {name!r} of {cfg.name} has no output yet ({folder}); run it first "
            f"(`align run` runs every stage in order)"
        )
    return read_json(folder / MANIFEST)


def stage_lock_path(cfg: PipelineConfig, name: str) -> Path:
    """Beside the stage folder, not in it: a folder of another configuration is deleted whole."""
    return Path(cfg.runs_dir) / cfg.name / f".{name}.lock"


def run_stage(cfg: PipelineConfig, name: str, force: bool = False) -> tuple[dict, bool]:
    """Run one stage unless its output is current. Returns (manifest, ran).

    Holds the stage's lock throughout: a concurrent run of the same stage waits for this one,
    then sees the manifest and does nothing."""
    active = active_stages(cfg)
    if name not in active:
        hint = difflib.get_close_matches(name, active, n=1)
        raise AlignError(
            f"stage {name!r} is not part of pipeline {cfg.name}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; valid: {', '.join(active)}"
        )
    try:
        with exclusive_lock(stage_lock_path(cfg, name), f"stage {name!r} of pipeline {cfg.name}"):
            return _run_unlocked(cfg, name, force)
    except OSError as exc:
        _close_progress_bars()
        err = disk_error(exc, exc.filename or stage_folder(cfg, name))
        if err is None:
            raise
        raise err from None
    except BaseException:
        _close_progress_bars()
        raise


def _close_progress_bars() -> None:
    """Close the failed stage's open progress bars, so the error that follows starts on a line
    of its own instead of being glued to a half-drawn bar."""
    from tqdm.std import tqdm

    for bar in list(getattr(tqdm, "_instances", [])):
        bar.close()


def _run_unlocked(cfg: PipelineConfig, name: str, force: bool) -> tuple[dict, bool]:
    from align.runtime import prepare_process
    from align.stages import RUNNERS

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
    marker = p.folder / MARKER
    if p.folder.exists() and (not marker.is_file() or marker.read_text() != p.stage_hash):
        shutil.rmtree(p.folder)  # output of another configuration: never resume from it
    p.folder.mkdir(parents=True, exist_ok=True)
    (p.folder / MANIFEST).unlink(missing_ok=True)
    atomic_write_text(marker, p.stage_hash)
    upstream = {
        u: read_json(plans[u].folder / MANIFEST) for u in STAGES[name].upstream if u in plans
    }
    prepare_process()  # all cores, a heap that keeps freed blocks (align/runtime.py)
    started = time.time()
    summary, requires = RUNNERS[name](cfg, p.folder, upstream, p.stage_hash)
    manifest = {
        "stage": name,
        "pipeline": cfg.name,
        "stage_hash": p.stage_hash,
        "config_hash": sha256_text(
            canonical_json({k: _section_value(cfg, k) for k in STAGES[name].sections})
        ),
        "inputs": p.inputs,
        "code_version": code_version(),
        "summary": summary,
        "requires": [str(r) for r in requires],
        "seconds": round(time.time() - started, 2),
    }
    atomic_write_json(p.folder / MANIFEST, manifest)
    return manifest, True
