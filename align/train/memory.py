"""A per-GPU memory estimate of a training step, from the model's shape and the train settings.

Bytes per GPU = weights + gradients + optimizer (masters and AdamW moments) + activations, with
  weights      P x b_w                 (P all parameters; b_w = 4 when every weight trains, since
                                        those are the optimizer's fp32 masters, except under
                                        bf16_weights (2); with LoRA the frozen base's model.dtype)
  gradients    T x b_t                 (T trainable: the LoRA adapters, else P; b_t their dtype,
                                        fp32 for adapters; DDP adds its all-reduce buckets, T x b_t)
  optimizer    T x 8 (two fp32 AdamW moments) + T x 4 fp32 masters under bf16_weights
  sharded      FSDP / ZeRO-3 divide weights, gradients and optimizer by the process count and
               gather one layer at a time (+ 2 layers of weights, the layer in use and the next)
  activations  per token and layer b_a x (6h + 2 kv + 4 i + lora_in): norm in/out, q/k/v/o
               inputs, attention output, residual, the MLP's gate, up, act and product; LoRA keeps
               its dropped-out inputs. b_a = 2 under bf16 autocast or bf16 weights, else 4.
               Gradient checkpointing keeps only each layer's input (b_a x h) plus one layer.
               Logits and their gradient: b_a x 2 x V per scored position (an upper bound:
               the chunked LM head keeps one chunk of them at a time where it applies).
  tokens       a micro-batch of batch_size prompts: with train.share_prompt (no checkpointing)
               each prompt once and its K responses (P + K R tokens, K R scored), else K full rows
               (K L tokens, K L scored); L = max_length, P = max_prompt_length, R = L - P.
  online       the reference model's weights (P x b_w) are added, except with LoRA and no separate
               reference (the adapters switched off are the reference); rollouts are K = 2
               responses of rollout.max_new_tokens after the prompt.
Not counted: the CUDA context and allocator slack (about 1-2 GiB per GPU in practice).
"""

from __future__ import annotations

from dataclasses import dataclass

from align.config import PipelineConfig
from align.model.shape import ModelShape
from align.train.precision import weights_dtype

GIB = 1 << 30


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per GPU of each part of a training step (see the module docstring)."""

    weights: float
    gradients: float
    optimizer: float
    activations: float

    @property
    def total(self) -> float:
        return self.weights + self.gradients + self.optimizer + self.activations

    def describe(self) -> tuple[str, str]:
        """('19.4 GiB', 'weights 13.5 + gradients 0.3 + optimizer 0.5 + activations 5.1 GiB'),
        in MiB below 1 GiB."""
        unit, size = ("GiB", GIB) if self.total >= GIB else ("MiB", 1 << 20)
        parts = [
            ("weights", self.weights),
            ("gradients", self.gradients),
            ("optimizer", self.optimizer),
            ("activations", self.activations),
        ]
        terms = " + ".join(f"{name} {value / size:.1f}" for name, value in parts)
        return f"{self.total / size:.1f} {unit}", f"{terms} {unit}"


def micro_batch_tokens(cfg: PipelineConfig, k: int) -> tuple[int, int]:
    """(tokens through the model, positions scored by the LM head) of one micro-batch at the
    length limits: shared prompt P + K R and K R, else K L and K L (module docstring)."""
    tc = cfg.train
    b = tc.batch_size
    prompt = tc.max_prompt_length
    response = tc.rollout.max_new_tokens if tc.online else tc.max_length - prompt
    if tc.share_prompt and not tc.gradient_checkpointing:
        return b * (prompt + k * response), b * k * response
    row = prompt + response
    return b * k * row, b * k * row


def estimate_train_memory(
    shape: ModelShape, cfg: PipelineConfig, k: int, processes: int, sharded: bool
) -> MemoryEstimate:
    """Per-GPU bytes of a training step of `cfg` on a model of `shape` with K responses per
    prompt over `processes` processes, sharded (FSDP / ZeRO-3) or replicated (DDP)."""
    tc = cfg.train
    lora = cfg.model.lora is not None
    loaded = weights_dtype(tc.precision, cfg.model.dtype, full_fine_tuning=not lora)
    b_w = 2 if loaded == "bfloat16" else 4
    b_a = 2 if loaded == "bfloat16" or tc.precision == "bf16" else 4
    trainable = shape.lora_params if lora else shape.params
    b_t = 4 if lora else b_w
    # online: + the reference model, except LoRA's own base with the adapters switched off
    second = tc.online and not (lora and cfg.model.reference is None)
    weights = shape.params * b_w * (2 if second else 1)
    gradients = trainable * b_t
    # two fp32 AdamW moments, + fp32 masters of bf16 weights (bf16_weights, full fine-tuning)
    optimizer = trainable * (12.0 if tc.precision == "bf16_weights" and not lora else 8.0)
    if sharded:
        per = 1 / processes
        weights = weights * per + 2 * shape.layer_params * b_w
        gradients, optimizer = gradients * per, optimizer * per
    elif processes > 1:
        gradients *= 2  # DDP's all-reduce buckets beside the gradients
    tokens, scored = micro_batch_tokens(cfg, k)
    per_layer = b_a * (
        6 * shape.hidden + 2 * shape.kv_width + 4 * shape.intermediate + shape.lora_inputs
    )
    if tc.gradient_checkpointing:
        kept = tokens * (shape.layers * b_a * shape.hidden + per_layer)
    else:
        kept = tokens * shape.layers * per_layer
    activations = kept + scored * b_a * 2 * shape.vocab
    return MemoryEstimate(weights, gradients, optimizer, activations)
