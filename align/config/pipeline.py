"""`PipelineConfig`, the root of the YAML schema, and the rules that span sections (an online
loss needs `train.online`, BMC needs `rewrite`, sampling needs a prompts-only dataset, ...)."""

from __future__ import annotations

import re
from typing import Any

from pydantic import BaseModel, model_validator

from align.config.base import Strict, inside_project
from align.config.data import DataConfig
from align.config.judge import JudgeConfig
from align.config.losses import LOSS_MODELS
from align.config.model import ModelConfig
from align.config.rewards import RewardConfig
from align.config.rounds import GATE_METRICS, RoundsConfig
from align.config.stages import (
    AnnotateConfig,
    EvaluateConfig,
    RewriteConfig,
    SampleConfig,
    ScheduleConfig,
    SmokeConfig,
)
from align.config.train import TrainConfig
from align.core.device import worker_gpus
from align.core.io import is_local_file

MAX_NAME = 80  # a folder name, with room for '-smoke' and history suffixes under 255 bytes


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
    rounds: RoundsConfig | None = None  # each run is one round of iterative training
    runs_dir: str = "runs"

    @model_validator(mode="after")
    def _paths(self) -> PipelineConfig:
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]*", self.name) or ".." in self.name:
            raise ValueError(
                f"name: {self.name!r} must start with a lowercase letter or digit and use only "
                "a-z, 0-9, '.', '_', '-' (it names the folder runs/<name>/)"
            )
        if len(self.name) > MAX_NAME:
            raise ValueError(
                f"name: {len(self.name)} characters, over {MAX_NAME} (it names the folder "
                "runs/<name>/); shorten it"
            )
        inside_project(self.runs_dir, "runs_dir")
        if self.judge is not None:
            inside_project(self.judge.cache_dir, "judge.cache_dir")
        if self.rewrite is not None:
            inside_project(self.rewrite.cache_dir, "rewrite.cache_dir")
        for key in ("annotate", "evaluate", "train.preference"):
            reward = getattr(section_model(self, key), "reward", None)
            if reward is not None and reward.judge is not None:
                inside_project(reward.judge.cache_dir, f"{key}.reward.judge.cache_dir")
        if self.train.preference is not None and self.train.preference.judge is not None:
            inside_project(
                self.train.preference.judge.cache_dir, "train.preference.judge.cache_dir"
            )
        return self

    @model_validator(mode="after")
    def _consistent(self) -> PipelineConfig:
        _check_distributed(self)
        if self.rounds is not None:
            _check_rounds(self)
        _check_global_batch(self)
        _check_device(self)
        if self.train.online:
            _check_online(self)
            return self
        if self.train.loss.kind == "online":
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
        min_k = self.train.loss.min_k
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
    spec = cfg.train.loss
    name = spec.name
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
    """train.distributed: a launchable accelerate config; sharded strategies (FSDP, DeepSpeed)
    train full weights offline, DeepSpeed without our gradient accumulation."""
    from align.config.accelerate import SHARDED, accelerate_strategy

    dist = cfg.train.distributed
    if dist is None:
        return
    if dist.config is not None and not is_local_file(dist.config):
        return  # like a data file: the train stage refuses a missing one before it launches
    try:
        strategy = accelerate_strategy(dist.config)
    except ValueError as exc:
        raise ValueError(f"train.distributed.config: {exc}") from None
    if strategy in SHARDED and cfg.train.online:
        raise ValueError(
            f"train.distributed.config: {dist.config} shards the model ({strategy}) but online "
            "training samples with the whole policy on every process; use "
            "configs/accelerate/ddp.yaml"
        )
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


def _check_global_batch(cfg: PipelineConfig) -> None:
    """train.global_batch, when stated, is what the run does: batch_size x grad_accum x
    processes; the message says which value of grad_accum (or batch_size) makes it so."""
    tc = cfg.train
    want, have = tc.global_batch, tc.effective_global_batch
    if want is None or want == have:
        return
    dist = tc.distributed
    processes = (
        f"{tc.processes} processes (train.distributed.num_processes {dist.num_processes} x "
        f"machines {dist.machines})"
        if dist
        else "1 process (no train.distributed)"
    )
    if want % (tc.batch_size * tc.processes) == 0:
        fix = f"set train.grad_accum: {want // (tc.batch_size * tc.processes)}"
    elif want % (tc.grad_accum * tc.processes) == 0:
        fix = f"set train.batch_size: {want // (tc.grad_accum * tc.processes)}"
    else:
        fix = f"choose batch_size, grad_accum and processes whose product is {want}"
    raise ValueError(
        f"train.global_batch: {want} but train.batch_size {tc.batch_size} x train.grad_accum "
        f"{tc.grad_accum} x {processes} = {have}; {fix}, or change train.global_batch"
    )


def _check_device(cfg: PipelineConfig) -> None:
    """model.device against the stages that cannot follow it: vLLM runs on GPUs only; launched
    processes and stage workers each take their own GPU, so a fixed index cannot hold for all
    of them, and there must be a GPU for every worker."""
    device = cfg.model.device
    spread = {  # stage -> (worker processes, GPUs per worker)
        "sample": cfg.sample and (cfg.sample.processes, cfg.sample.tensor_parallel),
        "annotate": cfg.annotate and (cfg.annotate.processes, 1),
    }
    for key, shape in spread.items():
        if not shape or shape == (1, 1):
            continue
        workers, each = shape
        if device.startswith("cuda:"):
            asked = f"{key}.processes {workers}" + (
                f" x {key}.tensor_parallel {each}" if each > 1 else ""
            )
            raise ValueError(
                f"model.device: {device!r} pins one GPU but {asked} runs {key} on "
                f"{workers * each} GPUs; use 'auto' or 'cuda' (CUDA_VISIBLE_DEVICES picks them)"
            )
        try:
            worker_gpus(device, workers, each)
        except ValueError as exc:
            raise ValueError(f"{key}.processes: {exc}") from None
    engines = {
        "sample.backend": cfg.sample and cfg.sample.backend,
        "judge.policy_backend": cfg.judge and cfg.judge.policy_backend,
    }
    for key, backend in engines.items():
        if device == "cpu" and backend == "vllm":
            raise ValueError(
                f"model.device: 'cpu' but {key} is vllm, which runs on GPUs only; use "
                f"{key}: hf, or model.device: auto"
            )
    if device.startswith("cuda:") and cfg.train.distributed is not None:
        raise ValueError(
            f"model.device: {device!r} pins one GPU but train.distributed launches "
            f"{cfg.train.processes} processes, one per GPU; use 'auto' or 'cuda' (accelerate's "
            "gpu_ids in train.distributed.config picks the GPUs)"
        )


def _check_rounds(cfg: PipelineConfig) -> None:
    """Rounds re-sample from the promoted policy, so they need the sample stage; the promotion
    metric must be one this pipeline produces."""
    if cfg.train.online or cfg.sample is None:
        raise ValueError(
            "rounds: a round samples fresh responses from the promoted policy, but this pipeline "
            + (
                "trains online (it is on-policy within one run already)"
                if cfg.train.online
                else "has no sample stage (its data holds fixed responses)"
            )
            + "; remove rounds, or use a pipeline with sample and annotate"
        )
    metric = GATE_METRICS[cfg.rounds.promote.metric]
    if section_model(cfg, metric.needs) is None:
        raise ValueError(
            f"rounds.promote.metric: {cfg.rounds.promote.metric!r} is produced by "
            f"{metric.needs}, which this pipeline does not set; add {metric.needs} or pick a "
            f"metric it produces"
        )


def _check_online(cfg: PipelineConfig) -> None:
    """An online pipeline: prepare-model -> train -> evaluate, prompts only, an online loss and a
    preference source."""
    online = sorted(n for n, m in LOSS_MODELS.items() if m.kind == "online")
    if cfg.train.loss.kind != "online":
        raise ValueError(
            f"train.loss: {cfg.train.loss.name!r} is an offline loss but train.online is true; "
            f"use one of {', '.join(online)}, or set train.online: false"
        )
    if cfg.train.preference is None:
        raise ValueError(
            "train.preference: required with train.online: true; set reward (Bradley-Terry), "
            "judge (pairwise LLM judge) or function (module:function)"
        )
    if cfg.train.probe is not None:
        raise ValueError(
            "train.probe: probes fixed annotated records, which online training does not have; "
            "remove train.probe (or set train.online: false)"
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


def section(cfg: PipelineConfig, key: str) -> Any:
    """A config section ('train', 'data.eval', ...) as plain JSON-able data, the form stage
    hashes are taken over."""
    value: Any = cfg
    for part in key.split("."):
        value = getattr(value, part)
    return value.model_dump(mode="json") if isinstance(value, BaseModel) else value
