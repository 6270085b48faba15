"""The stage graph of a pipeline: each stage's upstream stages, config sections, inputs and
outputs, its content hash, and whether its output is current.

A stage's hash covers its config sections, its inputs (upstream stage hashes, data files,
model and reward fingerprints) and its own code version (align/pipeline/code.py: the source the
stage runs, so an edit re-runs only the stages whose code it touches, and through the upstream
hashes everything downstream of them). The hash is Prefect's cache key; DVC's
`dvc.lock` records the same deps and outs. A stage folder is complete only once its
`manifest.json` (written last, atomically) carries the current hash.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from align.config import DatasetConfig, PipelineConfig, section
from align.core.hub import resolved_revision
from align.core.io import (
    canonical_json,
    read_json,
    sha256_file,
    sha256_text,
    sha256_tree,
)
from align.pipeline.code import stage_code_version

MANIFEST = "manifest.json"


MARKER = ".stage_hash"  # written when a stage starts: partial output of another config is wiped


def data_fingerprint(ds: DatasetConfig | None) -> str | None:
    """Identity of a dataset's content: a local file's hash, a local dataset folder's content
    hash, or a hub dataset's resolved commit (align/core/hub.py), with the split."""
    if ds is None:
        return None
    if ds.path is not None:
        path = Path(ds.path)
        return sha256_file(path) if path.is_file() else f"missing:{ds.path}"
    folder = Path(ds.hf_dataset)
    if folder.is_dir():
        return f"dir:{sha256_tree(folder)}:{ds.split}"
    commit = resolved_revision(ds.hf_dataset, "dataset", ds.revision)
    return f"hf:{ds.hf_dataset}@{commit}:{ds.split}"


def data_files(ds: DatasetConfig | None) -> list[str]:
    """The local file or dataset folder DVC tracks as a dependency (none for hub datasets)."""
    if ds is None:
        return []
    if ds.path is not None:
        return [ds.path]
    return [ds.hf_dataset] if Path(ds.hf_dataset).is_dir() else []


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
    config_hash: str = ""  # of the config sections alone (the manifest records it)


def _folder_outs(cfg: PipelineConfig, folder: str) -> list[Out]:
    return [Out(folder, persist=True)]


def _train_outs(cfg: PipelineConfig, folder: str) -> list[Out]:
    """The final model, metrics and curves are cached (`dvc push`/`pull`/`exp apply` restore
    them; `dvc exp show` reads an experiment's metrics from the cache); checkpoints are not."""
    return [
        Out(f"{folder}/model"),
        Out(f"{folder}/checkpoints", cache=False, persist=True, dep=False),
        Out(f"{folder}/log.jsonl", persist=True, dep=False),
        Out(f"{folder}/{MANIFEST}"),
        Out(f"{folder}/metrics.json", kind="metrics"),
        Out(f"{folder}/curves.csv", kind="plots"),
    ]


def _evaluate_outs(cfg: PipelineConfig, folder: str) -> list[Out]:
    return [
        Out(f"{folder}/answers-initial.jsonl"),
        Out(f"{folder}/answers-trained.jsonl"),
        Out(f"{folder}/report.md", cache=False),
        Out(f"{folder}/{MANIFEST}"),
        Out(f"{folder}/metrics.json", kind="metrics"),
    ]


def _judge_outs(cfg: PipelineConfig, folder: str) -> list[Out]:
    protocols = [name for name in ("mtbench", "alpacaeval") if getattr(cfg.judge, name)]
    return [
        *(Out(f"{folder}/{name}") for name in protocols),
        Out(f"{folder}/report.md", cache=False),
        Out(f"{folder}/{MANIFEST}"),
        Out(f"{folder}/scores.json", kind="metrics"),
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
    from align.llm.backend import judge_fingerprint

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
    from align.rewards.preference import preference_fingerprint

    return {
        "data": data_fingerprint(cfg.data.train),
        "system_prompt": cfg.data.system_prompt,
        "preference": preference_fingerprint(cfg.train.preference),
    }


def _aux_input(cfg: PipelineConfig) -> list[str] | None:
    from align.rewards.aux import aux_fingerprint

    return aux_fingerprint(cfg.train.aux_rewards)


def _rewrite_input(cfg: PipelineConfig) -> dict[str, Any]:
    from align.llm.backend import judge_fingerprint

    return {"rewriter": judge_fingerprint(cfg.rewrite.backend)}


def _model_source(cfg: PipelineConfig) -> dict[str, Any]:
    from align.model.loading import source_fingerprint

    return {
        "policy": source_fingerprint(cfg.model.policy, cfg.model.revision),
        "reference": cfg.model.reference and source_fingerprint(cfg.model.reference, None),
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
            data_deps=lambda cfg: data_files(cfg.data.train),
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
            data_deps=lambda cfg: [] if cfg.sample else data_files(cfg.data.train),
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
            data_deps=lambda cfg: data_files(cfg.data.train) if cfg.train.online else [],
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
            data_deps=lambda cfg: data_files(cfg.data.eval),
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
    if key == "train" and cfg.train.distributed is not None:
        # every machine of a multi-node run computes the same hash: its own rank is left out
        value = section(cfg, key)
        del value["distributed"]["machine_rank"]
        return value
    if key == "train.lengths":  # tokenisation of reference log-probs follows training's limits
        return {
            "max_length": cfg.train.max_length,
            "max_prompt_length": cfg.train.max_prompt_length,
            "prompt_overflow": cfg.train.prompt_overflow,
        }
    value = section(cfg, key)
    if key == "train":  # where the log rows are also sent changes no output: no re-run
        value.pop("report_to", None)
    if key in ("sample", "annotate"):  # how the work is spread over GPUs, not what it computes
        value.pop("processes", None)
        value.pop("tensor_parallel", None)
    return value


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
                {
                    "stage": name,
                    "config": config,
                    "inputs": inputs,
                    "code": stage_code_version(name),
                }
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
                sha256_text(canonical_json(config)),
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
