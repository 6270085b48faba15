"""The `prepare-model` stage: resolve the policy and reference to checked local folders."""

from __future__ import annotations

from pathlib import Path

from align.config import PipelineConfig
from align.core.errors import AlignError
from align.core.io import sha256_tree
from align.model.loading import (
    check_model_folder,
    resolve_model,
)


def prepare_model_stage(
    cfg: PipelineConfig, out: Path, upstream: dict, _: str
) -> tuple[dict, list]:
    """Resolve the policy and reference to local folders and check them before any other stage
    loads them: safetensors weights, no custom code, a chat template, one shared vocabulary."""
    models = {"policy": cfg.model.policy, "reference": cfg.model.reference or cfg.model.policy}
    summary: dict = {}
    vocab: dict[str, dict] = {}
    for role, source in models.items():
        # model.revision pins the policy, and the reference when it is the initial policy
        pinned = role == "policy" or cfg.model.reference is None
        path = resolve_model(source, role, cfg.model.revision if pinned else None)
        vocab[role] = check_model_folder(path, role).get_vocab()
        summary[role] = {"source": source, "path": str(path), "hash": sha256_tree(path)}
    if vocab["policy"] != vocab["reference"]:
        raise AlignError(
            f"model.reference: {models['reference']!r} has another vocabulary than model.policy "
            f"{models['policy']!r} ({len(vocab['reference'])} vs {len(vocab['policy'])} tokens); "
            "reference log-probs must score the policy's tokens: use a reference with the "
            "policy's tokenizer, or remove model.reference to use the initial policy"
        )
    return summary, [summary["policy"]["path"], summary["reference"]["path"]]
