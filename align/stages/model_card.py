"""The trained model's Hub model card: `train/model/README.md`, YAML metadata and a short text,
built with huggingface_hub's `ModelCard` / `ModelCardData` so `push_to_hub` (or an upload of the
folder) shows it as is.

Metadata: the Hub's own keys (`base_model`, `datasets`, `tags`, `library_name`,
`pipeline_tag`) plus `align_loss` (the loss and its parameters), `align_datasets` (each
dataset with its revision: a local file's sha256 or the hub id, split and revision),
`align_metrics` (the training figures of metrics.json) and `align_lineage` (stage hashes and the
weights' sha256). Written by the train stage inside its output, so the card is versioned with the
weights whichever orchestrator ran the stage; only facts fixed by the stage's inputs go in.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from huggingface_hub import ModelCard, ModelCardData

from align.config import PipelineConfig
from align.config.data import DatasetConfig
from align.core.io import atomic_write_text, sha256_file
from align.model.loading import BUILT_IN, EMBEDDED

# the model the embedded GGUF was quantised from: the base model the Hub should link to
EMBEDDED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
CARD = "README.md"


def hub_base_model(source: str) -> str | None:
    """The Hub id of a policy source: the embedded model's origin, a hub id as written; None
    for a local folder or a random built-in (no Hub page to link to)."""
    if source == EMBEDDED:
        return EMBEDDED_HUB_ID
    if source in BUILT_IN or Path(source).exists() or source.count("/") != 1:
        return None
    return source


def dataset_entry(role: str, ds: DatasetConfig) -> dict[str, Any]:
    """One dataset with its revision: a local file's sha256, or the hub id, split and the
    revision asked for (None: the hub's default branch at run time)."""
    if ds.path is not None:
        path = Path(ds.path)
        return {
            "role": role,
            "name": ds.path,
            "sha256": sha256_file(path) if path.is_file() else None,
        }
    return {
        "role": role,
        "name": ds.hf_dataset,
        "split": ds.split,
        "revision": getattr(ds, "revision", None),
    }


def _finite(metrics: dict) -> dict[str, float | int]:
    return {
        k: v
        for k, v in metrics.items()
        if isinstance(v, int | float) and not (isinstance(v, float) and not math.isfinite(v))
    }


def build_model_card(
    cfg: PipelineConfig, upstream: dict, stage_hash: str, metrics: dict
) -> ModelCard:
    """The card of the model trained by `cfg` from the `upstream` manifests (prepare-model,
    annotate or rewrite) with the train stage's `metrics`."""
    loss = cfg.train.loss
    datasets = [dataset_entry("train", cfg.data.train)]
    if cfg.data.eval is not None:
        datasets.append(dataset_entry("eval", cfg.data.eval))
    prep = upstream.get("prepare-model", {}).get("summary", {})
    lineage: dict[str, Any] = {
        "pipeline": cfg.name,
        "train_stage_hash": stage_hash,
        "upstream_stage_hashes": {k: m.get("stage_hash") for k, m in upstream.items()},
        **{
            f"{role}_model": {"source": s["source"], "weights_sha256": s["hash"]}
            for role, s in prep.items()
        },
    }
    base = hub_base_model(cfg.model.policy)
    names = ", ".join(f"`{d['name']}`" for d in datasets)
    data = ModelCardData(
        base_model=base,
        base_model_relation="finetune" if base else None,
        datasets=[d["name"] for d in datasets if d["role"] == "train"],
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=["align", "preference-alignment", loss.name, *(["lora"] if cfg.model.lora else [])],
        align_loss={"name": loss.name, **loss.params()},
        align_datasets=datasets,
        align_metrics=_finite(metrics),
        align_lineage=lineage,
    )
    text = "\n".join(
        [
            f"# {cfg.name}",
            "",
            cfg.description.strip() or "A policy aligned with the `align` pipeline.",
            "",
            f"- base model: `{cfg.model.policy}`"
            + (f" ({base})" if base and base != cfg.model.policy else "")
            + (f", LoRA r={cfg.model.lora.r} merged" if cfg.model.lora else ""),
            f"- loss: `{loss.name}` {json.dumps(loss.params(), sort_keys=True)}",
            f"- optimisation: learning rate {cfg.train.learning_rate} ({cfg.train.lr_scheduler}),"
            f" {metrics.get('steps', '?')} steps, precision {cfg.train.precision}",
            f"- data: {names}",
            "",
            "The metadata above lists the datasets with their revisions, the training figures"
            " and the stage hashes that identify this run.",
            "",
        ]
    )
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{text}")


def write_model_card(
    folder: Path, cfg: PipelineConfig, upstream: dict, stage_hash: str, metrics: dict
) -> Path:
    """Write `folder/README.md` and return its path."""
    path = folder / CARD
    atomic_write_text(path, str(build_model_card(cfg, upstream, stage_hash, metrics)))
    return path
