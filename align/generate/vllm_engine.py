"""Sampling with vLLM on GPU machines (`sample.backend: vllm`), same contract as
`align.sampling.generate`: K responses per prompt, texts [P][K] and finished [P][K].

The prompt goes to vLLM as the token ids our chat template produces (no second BOS, the same
tokens the HF path and the reference log-probs see); each request carries its own seed, so a
resumed shard draws what an uninterrupted run would. vLLM is optional: the config validator
refuses `backend: vllm` where it is not installed.
"""

from __future__ import annotations

from pathlib import Path

from transformers import PreTrainedTokenizerBase

from align.model.tokenize import encode_prompt


class VLLMSampler:
    """One vLLM engine over a prepared model folder; `generate` mirrors `align.sampling`."""

    def __init__(self, path: Path | str, dtype: str, seed: int) -> None:
        from vllm import LLM

        self.llm = LLM(model=str(path), tokenizer=str(path), dtype=dtype, seed=seed)

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
