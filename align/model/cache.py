"""The KV cache handed to and returned by a causal LM's forward, in the installed transformers'
own terms.

transformers 5.x renamed the forward argument and output field `past_key_values` to `cache`
(the old name is deprecated for removal in 5.40); earlier 5.x releases know only the old one.
Every call site goes through `cache_kwargs` and `output_cache`, so either release works.
"""

from __future__ import annotations

import inspect

from transformers import DynamicCache, LlamaForCausalLM, PretrainedConfig

# every decoder in one transformers release names the argument alike; Llama stands for them
CACHE_ARG = (
    "cache"
    if "cache" in inspect.signature(LlamaForCausalLM.forward).parameters
    else "past_key_values"
)


def new_cache(config: PretrainedConfig) -> DynamicCache:
    """An empty dynamic KV cache laid out for `config` (sliding-window layers included)."""
    return DynamicCache(config=config)


def cache_kwargs(cache: DynamicCache | None) -> dict[str, DynamicCache | None]:
    """The forward keyword that passes `cache`: {"cache": c} (or {"past_key_values": c})."""
    return {CACHE_ARG: cache}


def output_cache(output) -> DynamicCache | None:
    """The KV cache a forward returned (with use_cache=True)."""
    return getattr(output, CACHE_ARG)
