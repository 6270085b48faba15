"""A model's shape without its weights: the config of any model source, and exact parameter
counts from an instance on torch's meta device (no memory, no download of weights)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig

from align.model.loading import BUILT_IN, SAFE, cache_root


@dataclass(frozen=True)
class ModelShape:
    """What the memory estimate needs: parameter counts and per-layer widths."""

    params: int  # every parameter of the causal LM (tied embeddings counted once)
    layer_params: int  # one decoder layer's parameters
    layers: int
    hidden: int
    intermediate: int
    kv_width: int  # key (= value) projection width: kv heads x head dim
    vocab: int
    lora_params: int  # adapter parameters for model.lora (0 without LoRA)
    lora_inputs: int  # summed input widths of one layer's adapted linears (dropout keeps them)


def model_config(source: str) -> PretrainedConfig | None:
    """The transformers config of a model source, never downloading or building anything: a
    local folder, a model prepare-model already built into the cache, or a hub id's config.json
    in the HF cache. None where none is here (a hub model never fetched, a built-in model before
    prepare-model)."""
    name = source if source in BUILT_IN else "hub--" + source.replace("/", "--")
    prepared = cache_root() / "models" / name
    try:
        if Path(source).is_dir():
            return AutoConfig.from_pretrained(source, **SAFE)
        if (prepared / "config.json").is_file():
            return AutoConfig.from_pretrained(prepared, **SAFE)
        if source in BUILT_IN:
            return None
        return AutoConfig.from_pretrained(source, local_files_only=True, **SAFE)
    except (OSError, ValueError):
        return None


def _adapted(name: str, module: nn.Module, targets: list[str] | str) -> bool:
    """Whether PEFT would put an adapter on this linear: every linear but the output head for
    'all-linear', else those whose name ends in one of `targets`."""
    if not isinstance(module, nn.Linear):
        return False
    if targets == "all-linear":
        return not name.endswith("lm_head")
    return any(name == t or name.endswith(f".{t}") for t in targets)


def model_shape(
    config: PretrainedConfig, lora_r: int = 0, targets: list[str] | str = ""
) -> ModelShape:
    """Exact parameter counts of the causal LM `config` describes (built on the meta device) and
    of rank-`lora_r` adapters on `targets`: r x (in + out) per adapted linear."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    layer = model.model.layers[0]
    adapted = [m for n, m in model.named_modules() if lora_r and _adapted(n, m, targets)]
    in_layer = [m for n, m in layer.named_modules() if lora_r and _adapted(n, m, targets)]
    text = config.get_text_config()
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    return ModelShape(
        params=sum(p.numel() for p in model.parameters()),
        layer_params=sum(p.numel() for p in layer.parameters()),
        layers=text.num_hidden_layers,
        hidden=text.hidden_size,
        intermediate=text.intermediate_size,
        kv_width=(getattr(text, "num_key_value_heads", None) or heads) * head_dim,
        vocab=text.vocab_size,
        lora_params=sum(lora_r * (m.in_features + m.out_features) for m in adapted),
        lora_inputs=sum(m.in_features for m in in_layer),
    )
