"""Sampling with vLLM on GPU machines (`sample.backend: vllm`), same contract as
`align.sampling.generate`: K responses per prompt, texts [P][K] and finished [P][K].

The prompt goes to vLLM as the token ids our chat template produces (no second BOS, the same
tokens the HF path and the reference log-probs see); each request carries its own seed, so a
resumed shard draws what an uninterrupted run would. vLLM is optional: the config validator
refuses `backend: vllm` where it is not installed.

The engine reserves most of the GPU's memory for its KV cache; `close` (or leaving the `with`
block) shuts it down and hands that memory back before the next stage in the same process.
"""

from __future__ import annotations

import gc
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from align.config import PipelineConfig
from align.model.tokenize import encode_prompt


def vllm_dtype(cfg: PipelineConfig, stage_dtype: str | None = None) -> str:
    """The engine's dtype: the stage's own (`sample.dtype`), else `model.dtype` when the
    pipeline sets it, else 'auto' (vLLM serves a float32 checkpoint in 16-bit; the schema's
    float32 default is for the CPU path, where it is the fast choice, not for a GPU engine)."""
    if stage_dtype is not None:
        return stage_dtype
    return cfg.model.dtype if "dtype" in cfg.model.model_fields_set else "auto"


class VLLMSampler:
    """One vLLM engine over a prepared model folder; `generate` mirrors `align.sampling`.
    A context manager: the engine is shut down on leaving."""

    def __init__(self, path: Path | str, dtype: str, seed: int, tensor_parallel: int = 1) -> None:
        """An engine over `path`; `tensor_parallel` > 1 splits the model over that many of the
        visible GPUs (vLLM's own tensor parallelism, for a model that does not fit one)."""
        from vllm import LLM

        self.llm = LLM(
            model=str(path),
            tokenizer=str(path),
            dtype=dtype,
            seed=seed,
            tensor_parallel_size=tensor_parallel,
        )

    def __enter__(self) -> VLLMSampler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Shut the engine down (its worker processes and KV cache) and return the GPU memory
        to the driver; a second call does nothing."""
        llm, self.llm = self.llm, None
        if llm is None:
            return
        shutdown = getattr(llm, "shutdown", None)  # vLLM releases with LLM.shutdown ...
        if shutdown is None:  # ... or, before it had one, through its engine core
            core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
            shutdown = getattr(core, "shutdown", None)
        if shutdown is not None:
            shutdown()
        del llm
        try:
            from vllm.distributed import cleanup_dist_env_and_memory
        except ImportError:  # an older vLLM: collecting the engine is all there is
            gc.collect()
        else:
            cleanup_dist_env_and_memory()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def generate(
        self,
        tokenizer: PreTrainedTokenizerBase,
        prompts: list[list[dict]],
        *,
        k: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int = 0,
    ) -> tuple[list[list[str]], list[list[bool]]]:
        """Sample k responses per prompt (n=k in one request); finished is False when
        max_new_tokens cut a response off (vLLM's finish_reason 'length')."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        requests = [TokensPrompt(prompt_token_ids=encode_prompt(tokenizer, p)) for p in prompts]
        params = [
            SamplingParams(
                n=k,
                temperature=temperature,
                top_p=top_p,
                max_tokens=max_new_tokens,
                seed=seed + i,
                skip_special_tokens=True,
            )
            for i in range(len(prompts))
        ]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        return (
            [[c.text for c in o.outputs] for o in outputs],
            [[c.finish_reason == "stop" for c in o.outputs] for o in outputs],
        )
