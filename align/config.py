"""The pipeline YAML schema: one pydantic tree, closed vocabularies as Literals.

`load_pipeline(path, overrides, smoke)` is the only entry point: it reads the YAML, applies
`--set key.path=value` overrides (and the smoke profile), validates, and raises `AlignError`
with one line per problem that names the file, the YAML path and the valid values.
"""

from __future__ import annotations

import copy
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from align.errors import AlignError
from align.judging.config import BackendConfig, JudgeConfig, JudgeRewardConfig

Dtype = Literal["float32", "bfloat16"]


class _Loader(yaml.SafeLoader):
    """Safe loading (no Python tags) with YAML 1.2 numbers (PyYAML's 1.1 rules read `1e-3` as a
    string) and duplicate keys refused (PyYAML keeps the last one without a word)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if isinstance(key, typing.Hashable) and key in seen:
                raise yaml.constructor.ConstructorError(
                    None,
                    None,
                    f"duplicate key {key!r} (first on line {seen[key].line + 1}); keep one",
                    key_node.start_mark,
                )
            if isinstance(key, typing.Hashable):
                seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*(?:\.[\d_]*)?|\.\d[\d_]*)(?:[eE][-+]?\d+)?$"),
    list("-+0123456789."),
)


def parse_yaml(text: str):
    return yaml.load(text, Loader=_Loader)


class Strict(BaseModel):
    """Unknown keys are errors (a typo must never be silently ignored)."""

    model_config = ConfigDict(extra="forbid")


class LoraConfig(Strict):
    r: int = Field(16, gt=0)  # NCA recipe: r=16, lora_alpha=16, dropout 0.05
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] | Literal["all-linear"] = "all-linear"


class ModelConfig(Strict):
    policy: str  # 'embedded' (SmolLM2-135M-Instruct), 'tiny', a local HF folder or a hub id
    reference: str | None = None  # None: the policy's initial weights (the usual SFT reference)
    dtype: Dtype = "float32"  # weights as loaded; training precision is train.precision
    lora: LoraConfig | None = None


DataFormat = Literal["prompts", "kwise", "ultrafeedback", "pairs"]
FIELD_NAMES = ("id", "prompt", "answer", "responses", "rewards", "chosen", "rejected")


class DatasetConfig(Strict):
    path: str | None = None  # local .jsonl / .json / .parquet file
    hf_dataset: str | None = None  # hub id or local dataset folder, read with datasets.load_dataset
    split: str = "train"
    format: DataFormat = "prompts"  # prompts only, or responses with rewards (K-wise / pairs)
    fields: dict[str, str] = {}  # our field name -> column name in the file
    limit: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> DatasetConfig:
        if (self.path is None) == (self.hf_dataset is None):
            raise ValueError("set exactly one of 'path' (local file) or 'hf_dataset'")
        bad = sorted(set(self.fields) - set(FIELD_NAMES))
        if bad:
            raise ValueError(f"fields: unknown name(s) {bad}; valid: {', '.join(FIELD_NAMES)}")
        return self


class DataConfig(Strict):
    train: DatasetConfig
    eval: DatasetConfig | None = None
    system_prompt: str | None = None  # prepended as a system message to every prompt


class SampleConfig(Strict):
    k: int = Field(4, ge=1)  # responses per prompt
    max_new_tokens: int = Field(128, gt=0)
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    batch_prompts: int = Field(8, gt=0)  # prompts per generate call (x k sequences)
    shard_size: int = Field(32, gt=0)  # prompts per shard: the unit a killed run resumes from
    seed: int = 0
    dtype: Dtype | None = (
        None  # generation precision; None: model.dtype (bfloat16 is ~1.7x faster on CPU)
    )
    backend: Literal["hf", "vllm"] = "hf"  # vllm: GPU machines with vLLM installed

    @model_validator(mode="after")
    def _backend_installed(self) -> SampleConfig:
        from align.sampling_vllm import vllm_installed

        if self.backend == "vllm" and not vllm_installed():
            raise ValueError(
                "backend: 'vllm' needs the vllm package, which is not installed here; install "
                "it on the GPU machine (pip install vllm) or use backend: hf"
            )
        return self


class RewardConfig(Strict):
    function: str | None = None  # 'module:function' with TRL's reward-function signature
    model: str | None = None  # HF sequence-classification reward model ('tiny-reward' in tests)
    judge: JudgeRewardConfig | None = None  # an LLM judge's 1-10 rating (UltraFeedback style)
    from_data: bool = False  # the dataset already carries rewards (UltraFeedback scores)
    batch_size: int = Field(8, gt=0)

    @model_validator(mode="after")
    def _one_source(self) -> RewardConfig:
        chosen = [k for k in ("function", "model", "judge") if getattr(self, k)] + (
            ["from_data"] if self.from_data else []
        )
        if len(chosen) != 1:
            raise ValueError("set exactly one of 'function', 'model', 'judge' or 'from_data: true'")
        if self.function and not re.fullmatch(r"[\w.]+:\w+", self.function):
            raise ValueError(f"function: {self.function!r} must look like 'package.module:name'")
        return self


class PreferenceConfig(Strict):
    """Where an online run's labels p = P(y > y') come from (exactly one source)."""

    reward: RewardConfig | None = None  # Bradley-Terry surrogate: p = sigmoid(scale (r - r'))
    scale: float = Field(1.0, gt=0)  # BT only: sharpness of p in the reward difference
    judge: JudgeRewardConfig | None = None  # pairwise LLM judge, both orders averaged
    function: str | None = None  # 'module:function': fn(prompts, a, b, **columns) -> [P(a > b)]

    @model_validator(mode="after")
    def _one_source(self) -> PreferenceConfig:
        chosen = [k for k in ("reward", "judge", "function") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError(
                "set exactly one of 'reward' (Bradley-Terry from a reward), 'judge' (pairwise "
                "LLM judge) or 'function' (module:function returning P(a > b))"
            )
        if self.reward is not None and self.reward.from_data:
            raise ValueError(
                "reward.from_data cannot score sampled responses; set function or model"
            )
        if self.function and not re.fullmatch(r"[\w.]+:\w+", self.function):
            raise ValueError(f"function: {self.function!r} must look like 'package.module:name'")
        return self


class RolloutConfig(Strict):
    """Sampling inside online training (both models, KV-cached geometric mixture)."""

    max_new_tokens: int = Field(64, gt=0)  # TRL OnlineDPOConfig default
    temperature: float = Field(1.0, gt=0)  # 1: the policy's own distribution (on-policy)
    top_p: float = Field(1.0, gt=0, le=1)
    # log P(training sample > a reference sample) per step; one reference sample per prompt,
    # drawn once (seeded by the prompt's index) and kept
    win_rate: bool = True


class AnnotateConfig(Strict):
    reward: RewardConfig
    ref_logps: bool = True  # precompute reference log-probs once (offline losses need them)
    batch_size: int = Field(8, gt=0)  # sequences per reference forward pass


class AuxRewardConfig(Strict):
    """One designer reward of UPO: a registered function (align/rewards/aux.py) and its weight."""

    fn: str  # a name in align.rewards.aux.AUX_REWARDS: readability, brevity, sentence_end, safety
    weight: float = Field(1.0, ge=0)
    model: str | None = None  # safety only: a local HF sequence-classification folder

    @model_validator(mode="after")
    def _known(self) -> AuxRewardConfig:
        from align.rewards.aux import AUX_REWARDS, needs_model

        if self.fn not in AUX_REWARDS:
            hint = difflib.get_close_matches(self.fn, list(AUX_REWARDS), n=1)
            raise ValueError(
                f"fn: unknown auxiliary reward {self.fn!r}"
                + (f" (did you mean {hint[0]!r}?)" if hint else "")
                + f"; valid: {', '.join(AUX_REWARDS)}"
            )
        if needs_model(self.fn) != (self.model is not None):
            raise ValueError(
                f"model: {self.fn!r} needs a classifier folder in 'model'"
                if self.model is None
                else f"model: only 'safety' takes a model; remove it from {self.fn!r}"
            )
        return self


class RewriteConfig(Strict):
    """BMC's bridging stage: an LLM minimally edits each loser towards its winner."""

    method: Literal["bmc"] = "bmc"
    backend: BackendConfig  # the judge backends: local HF (offline default) or OpenAI-compatible
    # a rewrite longer than this many times the loser (in tokens, plus 16) is cut by rule
    max_length_ratio: float = Field(2.0, ge=1)
    cache_dir: str | None = None  # rewrite cache; None: <cache root>/rewrites
    shard_size: int = Field(32, gt=0)  # pairs per shard: the unit a killed run resumes from


class LossConfig(BaseModel):
    """`name` picks a loss from align.losses.LOSSES; the other keys are that loss's parameters."""

    model_config = ConfigDict(extra="allow")
    name: str

    @model_validator(mode="after")
    def _known(self) -> LossConfig:
        from align.losses import check_params, get_loss

        spec = get_loss(self.name)
        extra = dict(self.model_extra or {})
        for key, value in extra.items():
            if key not in spec.params:
                hint = difflib.get_close_matches(key, list(spec.params), n=1)
                raise ValueError(
                    f"unknown parameter {key!r} for loss {self.name!r}"
                    + (f" (did you mean {hint[0]!r}?)" if hint else "")
                    + f"; valid: {', '.join(spec.params)}"
                )
            default = spec.params[key]
            if isinstance(default, str):
                if not isinstance(value, str):
                    raise ValueError(f"{key}: must be a name, got {value!r}")
                continue
            if isinstance(default, bool) and not isinstance(value, bool):
                raise ValueError(f"{key}: must be true or false, got {value!r}")
            if not isinstance(default, bool) and (
                isinstance(value, bool) or not isinstance(value, int | float)
            ):
                raise ValueError(f"{key}: must be a number, got {value!r}")
        check_params(self.name, extra)
        return self

    def params(self) -> dict[str, Any]:
        """The loss parameters with the registry defaults filled in."""
        from align.losses import get_loss

        return {**get_loss(self.name).params, **(self.model_extra or {})}


class DistributedConfig(Strict):
    """Multi-process training under `accelerate launch` (docs/operations.md)."""

    num_processes: int = Field(gt=0)  # one per GPU; train.batch_size is per process
    # an accelerate config file (configs/accelerate/ddp.yaml, fsdp.yaml, zero3.yaml);
    # None: plain DDP (gloo on CPU, NCCL on GPUs)
    config: str | None = None


class TrainConfig(Strict):
    loss: LossConfig
    learning_rate: float = Field(5e-6, gt=0)
    lr_scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.1, ge=0, lt=1)
    epochs: float = Field(1.0, gt=0)
    max_steps: int | None = Field(None, gt=0)  # overrides epochs when set
    batch_size: int = Field(4, gt=0)  # prompts per micro-batch, each with all its responses
    grad_accum: int = Field(1, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float | None = Field(1.0, gt=0)
    # bf16: autocast over fp32 weights; bf16_weights: bf16 weights and activations, fp32 master
    # copies in the optimizer (align/precision.py; faster on CPU, one process or DDP)
    precision: Literal["fp32", "bf16", "bf16_weights"] = "fp32"
    # the trained policy's attention: 'sdpa' (torch's fused kernel, least memory) or 'matmul'
    # (grouped batched matmuls, align/attention.py; faster for bf16 on CPU, O(T^2) memory)
    attention: Literal["sdpa", "matmul"] = "sdpa"
    max_length: int = Field(1024, gt=0)  # prompt + response tokens
    max_prompt_length: int = Field(512, gt=0)  # prompt tokens (chat template included)
    # a longer prompt: 'error' names the record; 'keep_end' cuts it from the left (NCA recipe)
    prompt_overflow: Literal["error", "keep_end"] = "error"
    save_steps: int = Field(50, gt=0)
    keep_checkpoints: int = Field(1, ge=1)
    gradient_checkpointing: bool = False
    # run each prompt once and its K responses on its KV cache (off with gradient checkpointing)
    share_prompt: bool = True
    seed: int = 0
    # online alignment (docs/online.md): sample a pair per prompt every step, label it with
    # `preference`, update with an online loss (online_ipo, ipo_md, nash_md_pg, ...)
    online: bool = False
    preference: PreferenceConfig | None = None
    # UPO's designer rewards, computed once by annotate on every response: R = sum_i w_i r_i
    aux_rewards: list[AuxRewardConfig] = []
    rollout: RolloutConfig = RolloutConfig()
    # None: one process; set: `accelerate launch` with num_processes (global batch =
    # batch_size x grad_accum x num_processes)
    distributed: DistributedConfig | None = None

    @model_validator(mode="after")
    def _lengths(self) -> TrainConfig:
        if self.max_prompt_length >= self.max_length:
            raise ValueError("max_prompt_length must be smaller than max_length")
        return self


class EvaluateConfig(Strict):
    max_new_tokens: int = Field(128, gt=0)
    temperature: float = Field(0.0, ge=0)  # 0 = greedy
    batch_size: int = Field(16, gt=0)
    limit: int | None = Field(None, gt=0)
    dtype: Dtype | None = None  # generation precision; None: model.dtype
    reward: RewardConfig | None = None  # default: annotate.reward


class ScheduleConfig(Strict):
    """When the Prefect deployment of this pipeline runs on its own (not part of any hash)."""

    cron: str  # e.g. "0 2 * * *": nightly re-training at 02:00
    timezone: str = "UTC"


class SmokeConfig(Strict):
    set: dict[str, Any] = {}  # extra overrides `--smoke` applies after the global smoke profile


def _inside_project(value: str | None, key: str) -> None:
    """Output folders stay inside the project: relative, without '..' (R6)."""
    if value is None:
        return
    path = Path(value)
    if not value.strip() or path.is_absolute() or ".." in path.parts or value.startswith("~"):
        raise ValueError(
            f"{key}: {value!r} must be a relative folder inside the project without '..' "
            "(outputs never go outside it), e.g. 'runs'"
        )


class PipelineConfig(Strict):
    name: str  # names the run folder runs/<name>/: lowercase letters, digits, '.', '_', '-'
    description: str = ""
    model: ModelConfig
    data: DataConfig
    sample: SampleConfig | None = None  # None: the dataset already holds the responses
    annotate: AnnotateConfig | None = None  # None only with train.online (it labels its own pairs)
    rewrite: RewriteConfig | None = None  # BMC: pseudo-winners between annotate and train
    train: TrainConfig
    evaluate: EvaluateConfig | None = None
    judge: JudgeConfig | None = None  # MT-Bench / AlpacaEval on the trained policy
    smoke: SmokeConfig = SmokeConfig()
    schedule: ScheduleConfig | None = None  # cron schedule of the Prefect deployment
    runs_dir: str = "runs"

    @model_validator(mode="after")
    def _paths(self) -> PipelineConfig:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", self.name) or ".." in self.name:
            raise ValueError(
                f"name: {self.name!r} must start with a lowercase letter or digit and use only "
                "a-z, 0-9, '.', '_', '-' (it names the folder runs/<name>/)"
            )
        _inside_project(self.runs_dir, "runs_dir")
        if self.judge is not None:
            _inside_project(self.judge.cache_dir, "judge.cache_dir")
        if self.rewrite is not None:
            _inside_project(self.rewrite.cache_dir, "rewrite.cache_dir")
        for key in ("annotate", "evaluate", "train.preference"):
            reward = getattr(section_model(self, key), "reward", None)
            if reward is not None and reward.judge is not None:
                _inside_project(reward.judge.cache_dir, f"{key}.reward.judge.cache_dir")
        if self.train.preference is not None and self.train.preference.judge is not None:
            _inside_project(
                self.train.preference.judge.cache_dir, "train.preference.judge.cache_dir"
            )
        return self

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        from align.losses import get_loss

        _check_distributed(self)
        if self.train.online:
            _check_online(self)
            return self
        if get_loss(self.train.loss.name).kind == "online":
            raise ValueError(
                f"train.loss: {self.train.loss.name!r} is an online loss; set train.online: true "
                "(and train.preference), or pick an offline loss such as ipo or dpo"
            )
        if self.annotate is None:
            raise ValueError(
                "annotate: required (rewards and reference log-probs for offline training); "
                "or set train.online: true to sample and label pairs during training"
            )
        if self.train.preference is not None:
            raise ValueError(
                "train.preference: only used with train.online: true; set it or remove preference"
            )
        _check_bmc_upo(self)
        fmt = self.data.train.format
        if self.sample is not None and fmt != "prompts":
            raise ValueError(
                f"data.train.format is {fmt!r} but a sample stage is set; use format 'prompts' "
                "or remove 'sample' to train on the dataset's own responses"
            )
        if self.sample is None and fmt == "prompts":
            raise ValueError("data.train.format 'prompts' needs a 'sample' stage to make responses")
        if self.annotate.reward.from_data and fmt == "prompts":
            raise ValueError("annotate.reward.from_data needs a dataset with rewards")
        min_k = get_loss(self.train.loss.name).min_k
        if self.sample is not None and self.sample.k < min_k:
            raise ValueError(
                f"sample.k is {self.sample.k} but loss {self.train.loss.name!r} needs K >= {min_k}"
            )
        if self.evaluate is not None:
            if self.data.eval is None:
                raise ValueError("evaluate needs data.eval (held-out prompts)")
            if self.evaluate.reward is None and self.annotate.reward.from_data:
                raise ValueError("evaluate.reward is required when annotate uses rewards from data")
        return self

    @property
    def eval_reward(self) -> RewardConfig:
        """evaluate.reward, else annotate's reward, else an online run's Bradley-Terry reward."""
        if self.evaluate and self.evaluate.reward:
            return self.evaluate.reward
        if self.annotate is not None:
            return self.annotate.reward
        return self.train.preference.reward


def section_model(cfg: PipelineConfig, key: str) -> Any:
    """The config object at a dotted key ('train.preference'), None where a level is unset."""
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part, None)
    return value


def _check_bmc_upo(cfg: PipelineConfig) -> None:
    """The rewrite stage feeds pair losses only; dpo_bmc needs it; upo needs aux rewards."""
    from align.losses import get_loss

    spec = get_loss(cfg.train.loss.name)
    name = cfg.train.loss.name
    if spec.token_weights == "bmc" and cfg.rewrite is None:
        raise ValueError(
            f"train.loss: {name!r} trains on the rewrite stage's diff masks; add "
            "'rewrite: {method: bmc, backend: {kind: local, model: embedded}}' or use 'dpo'"
        )
    if cfg.rewrite is not None and spec.kind != "pair":
        raise ValueError(
            f"rewrite: makes (pseudo-winner, loser) pairs but train.loss {name!r} is not a pair "
            "loss; use dpo_bmc (or dpo, ipo, nca_pair, ...) or remove 'rewrite'"
        )
    if spec.kind == "upo" and not cfg.train.aux_rewards:
        raise ValueError(
            "train.aux_rewards: loss 'upo' needs at least one auxiliary reward, e.g. "
            "[{fn: readability, weight: 1.0}]"
        )


def _check_distributed(cfg: PipelineConfig) -> None:
    """train.distributed: an offline loss, a launchable accelerate config; sharded strategies
    (FSDP, DeepSpeed) train full weights, DeepSpeed without our gradient accumulation."""
    from align.launch import SHARDED, accelerate_strategy

    dist = cfg.train.distributed
    if dist is None:
        return
    if cfg.train.online:
        raise ValueError(
            "train.distributed: online training runs in one process; remove train.distributed "
            "or use an offline loss"
        )
    if dist.config is not None and not Path(dist.config).is_file():
        return  # like a data file: the train stage refuses a missing one before it launches
    try:
        strategy = accelerate_strategy(dist.config)
    except ValueError as exc:
        raise ValueError(f"train.distributed.config: {exc}") from None
    if strategy in SHARDED and cfg.model.lora is not None:
        raise ValueError(
            f"train.distributed.config: {dist.config} shards the model ({strategy}) but "
            "model.lora is set; use configs/accelerate/ddp.yaml (a LoRA model's base weights fit "
            "each GPU) or remove model.lora"
        )
    if strategy in SHARDED and cfg.train.precision == "bf16_weights":
        raise ValueError(
            f"train.precision: bf16_weights keeps fp32 master weights in our optimizer, which "
            f"{dist.config} ({strategy}) replaces; use precision bf16 or "
            "configs/accelerate/ddp.yaml"
        )
    if strategy == "DEEPSPEED" and cfg.train.grad_accum != 1:
        raise ValueError(
            f"train.grad_accum: must be 1 with DeepSpeed ({dist.config}), which accumulates "
            "inside its engine; raise train.batch_size or train.distributed.num_processes instead"
        )


def _check_online(cfg: PipelineConfig) -> None:
    """An online pipeline: prepare-model -> train -> evaluate, prompts only, an online loss and a
    preference source."""
    from align.losses import LOSSES, get_loss

    online = sorted(n for n, s in LOSSES.items() if s.kind == "online")
    if get_loss(cfg.train.loss.name).kind != "online":
        raise ValueError(
            f"train.loss: {cfg.train.loss.name!r} is an offline loss but train.online is true; "
            f"use one of {', '.join(online)}, or set train.online: false"
        )
    if cfg.train.preference is None:
        raise ValueError(
            "train.preference: required with train.online: true; set reward (Bradley-Terry), "
            "judge (pairwise LLM judge) or function (module:function)"
        )
    for key in ("sample", "annotate"):
        if getattr(cfg, key) is not None:
            raise ValueError(
                f"{key}: an online pipeline samples and labels its pairs inside train; remove "
                f"'{key}' (or set train.online: false)"
            )
    tc = cfg.train
    if tc.max_prompt_length + tc.rollout.max_new_tokens > tc.max_length:
        raise ValueError(
            f"train.rollout.max_new_tokens ({tc.rollout.max_new_tokens}) + train.max_prompt_length "
            f"({tc.max_prompt_length}) must fit in train.max_length ({tc.max_length}); raise "
            "max_length or lower one of the others"
        )
    if cfg.data.train.format != "prompts":
        raise ValueError(
            f"data.train.format is {cfg.data.train.format!r} but train.online needs prompts only; "
            "use format 'prompts'"
        )
    if cfg.evaluate is not None:
        if cfg.data.eval is None:
            raise ValueError("evaluate needs data.eval (held-out prompts)")
        if cfg.evaluate.reward is None and cfg.train.preference.reward is None:
            raise ValueError(
                "evaluate.reward: required when train.preference is not a reward (a judge or a "
                "function gives no score to evaluate with)"
            )


# Applied by --smoke before the pipeline's own `smoke.set`: the exact stage structure on the
# tiny model with a handful of records, in a separate run folder.
SMOKE_PROFILE: dict[str, Any] = {
    "model.policy": "tiny",
    "model.reference": None,
    "model.dtype": "float32",
    "data.train.limit": 4,
    "train.max_steps": 2,
    "train.save_steps": 1,
    "train.batch_size": 2,
    "train.grad_accum": 1,
    "train.precision": "fp32",
    "train.max_length": 128,
    "train.max_prompt_length": 64,
}
SMOKE_JUDGE = {"kind": "local", "model": "tiny", "max_new_tokens": 8}
SMOKE_IF_PRESENT = {
    "sample": {"sample.max_new_tokens": 8, "sample.batch_prompts": 2, "sample.shard_size": 2},
    "evaluate": {"evaluate.max_new_tokens": 8, "evaluate.limit": 4},
    "data.eval": {"data.eval.limit": 4},
    # the whole backend is replaced: openai-only keys must not survive on a local judge
    "judge": {"judge.backend": SMOKE_JUDGE},
    "judge.mtbench": {"judge.mtbench.limit": 2, "judge.mtbench.max_new_tokens": 8},
    "judge.alpacaeval": {"judge.alpacaeval.limit": 3, "judge.alpacaeval.max_new_tokens": 8},
    "annotate.reward.judge": {"annotate.reward.judge.backend": SMOKE_JUDGE},
    "train.preference.judge": {"train.preference.judge.backend": SMOKE_JUDGE},
    "train.online": {"train.rollout.max_new_tokens": 8},
    "rewrite": {"rewrite.backend": SMOKE_JUDGE},
    "train.preference.reward.judge": {"train.preference.reward.judge.backend": SMOKE_JUDGE},
}


def parse_override(text: str) -> tuple[str, Any]:
    """'train.loss.beta=0.1' -> ('train.loss.beta', 0.1); the value is read as YAML."""
    key, sep, value = text.partition("=")
    if not sep or not re.fullmatch(r"[A-Za-z_][\w-]*(\.[A-Za-z_][\w-]*)*", key):
        raise AlignError(f"--set {text!r}: expected key.path=value, e.g. train.loss.beta=0.1")
    try:
        return key, parse_yaml(value) if value else None
    except yaml.YAMLError as exc:
        problem = _yaml_problem(exc)[1].removesuffix("; fix the syntax")
        raise AlignError(
            f"--set {text!r}: the value is not valid YAML: {problem}; quote it, "
            "e.g. --set 'train.loss={name: dpo, beta: 0.1}'"
        ) from None


def set_path(data: dict, key: str, value: Any) -> None:
    """Set a dotted key in a nested dict, creating missing levels."""
    node = data
    parts = key.split(".")
    for part in parts[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[parts[-1]] = value


def _get_path(data: dict, key: str) -> Any:
    node: Any = data
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


def _apply_smoke(raw: dict) -> None:
    for key, value in SMOKE_PROFILE.items():
        set_path(raw, key, value)
    for present, overrides in SMOKE_IF_PRESENT.items():
        if _get_path(raw, present) is not None:
            for key, value in overrides.items():
                set_path(raw, key, value)
    smoke = raw.get("smoke")
    extra = smoke.get("set") if isinstance(smoke, dict) else None
    for key, value in (extra if isinstance(extra, dict) else {}).items():
        set_path(raw, key, value)
    raw["name"] = f"{raw.get('name', 'pipeline')}-smoke"


def _model_at(loc: tuple) -> type[BaseModel] | None:
    """The pydantic model whose fields live at `loc` (for 'did you mean' on unknown keys)."""
    model: Any = PipelineConfig
    for part in loc:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            return None
        field = model.model_fields.get(str(part))
        if field is None:
            return None
        model = field.annotation
        if isinstance(model, types.UnionType) or typing.get_origin(model) is typing.Union:
            model = next((a for a in typing.get_args(model) if a is not type(None)), None)
    return model if isinstance(model, type) and issubclass(model, BaseModel) else None


def _format_error(err: dict) -> str:
    loc = tuple(p for p in err["loc"] if not str(p).startswith("function-after"))
    where = ".".join(str(p) for p in loc) or "(top level)"
    if err["type"] == "extra_forbidden":
        parent = _model_at(loc[:-1])
        valid = list(parent.model_fields) if parent else []
        hint = difflib.get_close_matches(str(loc[-1]), valid, n=1)
        return (
            f"{where}: unknown key"
            + (f" (did you mean {'.'.join(map(str, (*loc[:-1], hint[0])))!r}?)" if hint else "")
            + (f"; valid keys here: {', '.join(valid)}" if valid else "")
        )
    msg = err["msg"].removeprefix("Value error, ")
    if not loc:  # whole-pipeline checks name their keys in the message
        return msg
    if err["type"] == "literal_error":
        msg = f"{err.get('input')!r} is not one of {err['ctx']['expected']}"
    elif err["type"].endswith(("_parsing", "_type")) and _short_scalar(err.get("input")):
        msg = f"{msg}; got {err['input']!r}"
    return f"{where}: {msg}"


def _short_scalar(value: Any) -> bool:
    """Whether a wrong value is worth echoing (short and plain: never a whole section)."""
    return isinstance(value, str | int | float | bool) and len(repr(value)) <= 40


def validate_dict(raw: Any, source: str) -> PipelineConfig:
    """Validate a parsed YAML document; every problem becomes one line naming `source`."""
    if not isinstance(raw, dict):
        raise AlignError(f"{source}: the pipeline must be a YAML mapping (key: value), not {raw!r}")
    try:
        return PipelineConfig.model_validate(raw)
    except ValidationError as exc:
        lines = sorted({_format_error(e) for e in exc.errors()})
        raise AlignError("; ".join(f"{source}: {line}" for line in lines)) from None


def _yaml_problem(exc: yaml.YAMLError) -> tuple[str, str]:
    """(' line L, column C' or '', what is wrong and how to fix it) for a YAML error."""
    mark = getattr(exc, "problem_mark", None)
    where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
    if "could not determine a constructor for the tag" in problem:
        tag = problem.split("tag", 1)[1].strip()
        return where, f"unsupported tag {tag}; pipelines are plain YAML, remove the tag"
    if problem.startswith("duplicate key"):
        return where, problem
    return where, f"malformed YAML ({problem}); fix the syntax"


def read_yaml(path: Path) -> dict:
    if not path.is_file():
        raise AlignError(f"{path}: no such pipeline file (pipelines live in pipelines/<name>.yaml)")
    try:
        raw = parse_yaml(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise AlignError(
            f"{path}: not UTF-8 text (byte {exc.start}); save the pipeline as UTF-8"
        ) from None
    except yaml.YAMLError as exc:
        where, problem = _yaml_problem(exc)
        raise AlignError(f"{path}:{where}: {problem}") from None
    return raw


def load_pipeline(
    path: str | Path, overrides: list[str] | None = None, smoke: bool = False
) -> PipelineConfig:
    """Read, override, smoke-profile and validate a pipeline YAML."""
    path = Path(path)
    raw = copy.deepcopy(read_yaml(path))
    if not isinstance(raw, dict):
        return validate_dict(raw, str(path))
    if smoke:
        _apply_smoke(raw)
    for text in overrides or []:
        set_path(raw, *parse_override(text))
    return validate_dict(raw, str(path))


def section(cfg: PipelineConfig, key: str) -> Any:
    """A config section ('train', 'data.eval', ...) as plain JSON-able data, the form stage
    hashes are taken over."""
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value
