"""What `align plan` prints beside the stage table: where each stage runs, and the train stage's
global batch, tokens per optimizer step and per-GPU memory estimate (align/train/memory.py)."""

from __future__ import annotations

from align.config import PipelineConfig, accelerate_strategy
from align.config.accelerate import SHARDED
from align.config.judge import BackendConfig
from align.pipeline.graph import active_stages

# K, the responses per prompt, where the data format fixes it
FORMAT_K = {"pairs": 2, "ultrafeedback": 4}
STRATEGY_NAMES = {"MULTI_GPU": "DDP", "FSDP": "FSDP", "DEEPSPEED": "DeepSpeed"}


def device_here(setting: str) -> str:
    """`model.device` as this machine resolves it: 'auto (cpu here)', 'cuda:1', ..."""
    import torch

    if setting != "auto":
        return setting
    return f"auto ({'cuda' if torch.cuda.is_available() else 'cpu'} here)"


def _backend(backend: BackendConfig, device: str) -> str:
    return f"local {backend.model} on {device}" if backend.kind == "local" else "remote HTTP"


def _strategy(cfg: PipelineConfig) -> str:
    """accelerate's distributed type of train.distributed ('MULTI_GPU' for plain DDP), or a
    note when the config file cannot be read here."""
    try:
        return accelerate_strategy(cfg.train.distributed.config)
    except ValueError:
        return "an unreadable accelerate config"


def _workers(cfg: PipelineConfig, processes: int, where: str) -> str:
    """A stage's placement with its worker processes (align/stages/workers.py), if several."""
    if processes == 1:
        return where
    unit = "CPU share" if cfg.model.device == "cpu" else "GPU"
    return f"{processes} workers (one {unit} each): {where}"


def stage_placement(cfg: PipelineConfig) -> dict[str, str]:
    """Where each active stage runs its models (`model.device` for all of them, the same
    resolution every stage makes when it starts)."""
    device = device_here(cfg.model.device)
    tc = cfg.train
    out = {"prepare-model": "no model compute (files)"}
    if cfg.sample is not None:
        tp = cfg.sample.tensor_parallel
        where = "vllm on cuda" if cfg.sample.backend == "vllm" else device
        where += f", tensor parallel over {tp} GPUs" if tp > 1 else ""
        out["sample"] = _workers(cfg, cfg.sample.processes, where)
    if cfg.annotate is not None:
        reward = cfg.annotate.reward
        extra = ""
        if reward.model:
            extra = f"; reward model on {device}"
        elif reward.judge:
            extra = f"; judge {_backend(reward.judge.backend, device)}"
        if any(spec.model for spec in tc.aux_rewards):
            extra += f"; aux classifier on {device}"
        where = f"{device} (reference log-probs){extra}"
        out["annotate"] = _workers(cfg, cfg.annotate.processes, where)
    if cfg.rewrite is not None:
        out["rewrite"] = f"{device}; rewriter {_backend(cfg.rewrite.backend, device)}"
    if tc.distributed is not None:
        dist = tc.distributed
        unit = "CPU" if cfg.model.device == "cpu" else "GPU"
        out["train"] = (
            f"{tc.processes} processes ({dist.num_processes} per machine x {dist.machines}), "
            f"one {unit} each, {STRATEGY_NAMES.get(_strategy(cfg), _strategy(cfg))}"
        )
    else:
        out["train"] = f"{device}, 1 process"
    if cfg.evaluate is not None:
        out["evaluate"] = device
    if cfg.judge is not None:
        policy = "vllm on cuda" if cfg.judge.policy_backend == "vllm" else f"on {device}"
        out["judge"] = f"policy {policy}; judge {_backend(cfg.judge.backend, device)}"
    return {name: out[name] for name in active_stages(cfg) if name in out}


def responses_per_prompt(cfg: PipelineConfig) -> int | None:
    """K for the train stage: sample.k, 2 for pairs (and BMC's rewritten pairs, online pairs),
    4 for UltraFeedback's layout; None for K-wise files (K is per record)."""
    if cfg.train.online or cfg.rewrite is not None:
        return 2
    if cfg.sample is not None:
        return cfg.sample.k
    return FORMAT_K.get(cfg.data.train.format)


def train_figures(cfg: PipelineConfig) -> list[str]:
    """The train stage's lines of `align plan`: global batch, tokens per optimizer step, the
    per-GPU memory estimate (or why there is none)."""
    from align.model.shape import model_config, model_shape
    from align.train.memory import estimate_train_memory, micro_batch_tokens

    tc = cfg.train
    dist = tc.distributed
    procs = f"{tc.processes} processes" if dist else "1 process"
    stated = "" if tc.global_batch is None else " (as stated)"
    lines = [
        f"global batch {tc.effective_global_batch}{stated} = batch_size {tc.batch_size} x "
        f"grad_accum {tc.grad_accum} x {procs}"
    ]
    k = responses_per_prompt(cfg)
    k_note = "" if k is not None else f" (K-wise data: K taken as loss min {tc.loss.min_k})"
    k = k or tc.loss.min_k
    tokens, _ = micro_batch_tokens(cfg, k)
    step_tokens = tokens * tc.grad_accum * tc.processes
    rows = "each prompt once" if tc.share_prompt and not tc.gradient_checkpointing else "K rows"
    lines.append(f"tokens per optimizer step <= {step_tokens:,} (K={k}{k_note}, {rows}, at most)")
    config = model_config(cfg.model.policy)
    if config is None:
        lines.append(f"memory per GPU: no config.json of {cfg.model.policy} here")
        lines.append("  (run prepare-model, or `hf download MODEL config.json`)")
        return lines
    lora = cfg.model.lora
    shape = model_shape(config, lora.r if lora else 0, lora.target_modules if lora else "")
    sharded = dist is not None and _strategy(cfg) in SHARDED
    estimate = estimate_train_memory(shape, cfg, k, tc.processes, sharded)
    how = "sharded" if sharded else "replicated" if dist else "one process"
    size = f"{shape.params / 1e9:.2f}B" if shape.params >= 1e9 else f"{shape.params / 1e6:.1f}M"
    total, terms = estimate.describe()
    kind = "LoRA" if lora else "full"
    lines.append(f"memory per GPU ~ {total} ({size} params, {kind}, {how}; docs/gpu.md)")
    lines.append(f"  = {terms}")
    return lines
