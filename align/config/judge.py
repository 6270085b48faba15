"""Judge configuration: the `judge:` pipeline section and the judge-based reward source.

Every model forbids unknown keys (a typo is an error, never a silent default); closed
vocabularies are Literals. Defaults follow FastChat's MT-Bench and AlpacaEval 2 where those
define one; the comment beside each field says where it comes from.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from align.config.base import Strict, check_vllm_installed

ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
OPENAI_ONLY = (
    "base_url",
    "api_key_env",
    "concurrency",
    "requests_per_minute",
    "timeout_s",
    "max_retries",
    "backoff_base_s",
    "backoff_max_s",
    "price_per_1k_input",
    "price_per_1k_output",
)
LOCAL_ONLY = ("batch_size", "dtype")
RatingTemplate = Literal[
    "overall", "helpfulness", "honesty", "instruction_following", "truthfulness"
]


class BackendConfig(Strict):
    """Where judgments come from: an OpenAI-compatible HTTP server or a local HF model."""

    kind: Literal["openai", "local"]
    model: str  # openai: the served model name; local: 'embedded', 'tiny' or an HF folder
    max_new_tokens: int = Field(2048, gt=0)  # judge output cap; FastChat calls GPT-4 with 2048
    logprobs: bool = True  # ask for first-token top log-probs (AlpacaEval's soft preference)
    # openai ---------------------------------------------------------------------------------
    base_url: str | None = None  # e.g. https://api.openai.com/v1 or http://localhost:8000/v1
    api_key_env: str | None = None  # NAME of the env var holding the key (never the key itself)
    concurrency: int = Field(8, gt=0)  # requests in flight at once
    requests_per_minute: float | None = Field(None, gt=0)  # client-side pacing; None: unpaced
    timeout_s: float = Field(120.0, gt=0)  # per attempt; a timed-out attempt is retried
    max_retries: int = Field(6, ge=0)  # retries after the first attempt (429, 5xx, timeouts)
    backoff_base_s: float = Field(1.0, gt=0)  # full-jitter backoff: U(0, base * 2^attempt)
    backoff_max_s: float = Field(60.0, gt=0)  # cap of one backoff wait (Retry-After overrides)
    price_per_1k_input: float | None = Field(None, ge=0)  # USD per 1k prompt tokens (cost line)
    price_per_1k_output: float | None = Field(None, ge=0)  # USD per 1k completion tokens
    # local ----------------------------------------------------------------------------------
    batch_size: int = Field(4, gt=0)  # judge prompts per generate call
    dtype: Literal["float32", "bfloat16"] = "float32"  # as align.models.load_model

    @field_validator("api_key_env")
    @classmethod
    def _env_name(cls, value: str | None) -> str | None:
        # The message never repeats the value: a pasted key must not reach a log.
        if value is not None and not ENV_NAME.fullmatch(value):
            raise ValueError(
                "must be the NAME of an environment variable (letters, digits, '_'), "
                "not the key itself; export the key in that variable"
            )
        return value

    @model_validator(mode="after")
    def _kind_keys(self) -> BackendConfig:
        other = LOCAL_ONLY if self.kind == "openai" else OPENAI_ONLY
        stray = sorted(set(other) & self.model_fields_set)
        if stray:
            raise ValueError(f"{', '.join(stray)}: not used by kind {self.kind!r}; remove")
        if self.kind == "openai" and not re.match(r"https?://", self.base_url or ""):
            raise ValueError(
                "kind 'openai' needs base_url starting with http:// or https:// "
                "(e.g. https://api.openai.com/v1)"
            )
        return self


class MTBenchConfig(Strict):
    """MT-Bench in FastChat's file layout (the question file is not shipped: its text is not
    ours)."""

    questions: str  # FastChat question.jsonl: {question_id, category, turns[, reference]}
    reference_answers: str | None = None  # FastChat answer jsonl (reference_answer/gpt-4.jsonl)
    mode: Literal["single", "pairwise"] = "single"  # FastChat's default is single-answer grading
    baseline_answers: str | None = None  # pairwise: the baseline's answer jsonl (gpt-3.5-turbo)
    max_new_tokens: int = Field(1024, gt=0)  # FastChat gen_model_answer default
    limit: int | None = Field(None, gt=0)  # first N questions (smoke runs)
    # single grading: 'parsed' reads the judgment's [[N]] (FastChat); 'expected' is the judge's
    # probability-weighted rating sum_k k P(k), k = 1..10, where the backend gives token
    # probabilities (local: always, a rating is asked for when the judgment states none;
    # openai: from logprobs at the judgment's [[N]]), else the parsed one (docs/judging.md)
    rating: Literal["parsed", "expected"] = "parsed"

    @model_validator(mode="after")
    def _baseline(self) -> MTBenchConfig:
        if self.mode == "pairwise" and not self.baseline_answers:
            raise ValueError("mode 'pairwise' needs baseline_answers (a FastChat answer jsonl)")
        return self


class AlpacaEvalConfig(Strict):
    """AlpacaEval 2: pairwise against reference outputs, plus the length-controlled win rate."""

    reference_outputs: str  # JSON list of {instruction, output, generator}; AE2: gpt4_turbo
    instructions: str | None = None  # JSON list of {instruction[, dataset]}; None: the references'
    difficulty: str | None = None  # per-instruction gamma (instruction_difficulty.csv); None: no γ
    seed: int = 0  # seeds the per-instruction order swap (AlpacaEval's default seed is 0)
    max_new_tokens: int = Field(1024, gt=0)  # policy output cap
    temperature: float = Field(0.0, ge=0)  # policy decoding; 0 = greedy
    limit: int | None = Field(None, gt=0)  # first N instructions (smoke runs)


class JudgeConfig(Strict):
    """The `judge` stage: which protocols to run and with which judge."""

    backend: BackendConfig
    mtbench: MTBenchConfig | None = None
    alpacaeval: AlpacaEvalConfig | None = None
    cache_dir: str | None = None  # judgment cache; None: the caller supplies one
    # how the trained policy writes its answers: HF generate on model.device, or one vLLM
    # engine (GPU machines with vllm installed; an HTTP judge then, docs/judging.md)
    policy_backend: Literal["hf", "vllm"] = "hf"

    @model_validator(mode="after")
    def _something(self) -> JudgeConfig:
        if self.mtbench is None and self.alpacaeval is None:
            raise ValueError("set at least one of 'mtbench' or 'alpacaeval'")
        if self.policy_backend == "vllm":
            check_vllm_installed("policy_backend")
            if self.backend.kind == "local":
                raise ValueError(
                    "policy_backend: 'vllm' keeps most of the GPU for its cache while the local "
                    "judge would run beside it; use an HTTP judge (backend.kind: openai, e.g. a "
                    "vLLM server) or policy_backend: hf"
                )
        return self


class JudgeRewardConfig(Strict):
    """Rewards from a judge: an UltraFeedback-style 1–10 rating per (prompt, response)."""

    backend: BackendConfig
    template: RatingTemplate = "overall"  # UltraFeedback's overall score; or one aspect
    on_failure: Literal["error", "neutral"] = "error"  # neutral: mean of the prompt's valid ratings
    cache_dir: str | None = None  # judgment cache; None: the caller supplies one
