"""Which dtype the trained weights live in, and `train.precision: bf16_weights`.

Trained weights always have an fp32 copy that the optimizer steps: AdamW's update at a 7B
recipe's learning rate (5e-7) is far below bf16's resolution (2^-8 relative), so bf16 weights
stepped in place keep their value almost everywhere. With `precision: bf16` (or fp32) a fully
fine-tuned policy is therefore loaded in fp32 whatever `model.dtype` says, and bf16 autocast
runs the matmuls; with LoRA the frozen base stays in `model.dtype` and the adapters are fp32.

`bf16_weights`: the model holds bf16 weights, the optimizer fp32 masters.

Forward and backward run in bf16 with no per-op casts (autocast re-casts every fp32 weight on
every use, which costs a 135M model more than its matmuls save on a CPU). The optimizer steps
fp32 master copies, so updates smaller than bf16's resolution (2^-8 relative) accumulate
instead of rounding away; after each step the masters are rounded into the model.
"""

from __future__ import annotations

import torch
from torch import nn


def weights_dtype(precision: str, model_dtype: str, full_fine_tuning: bool) -> str:
    """The dtype the trained policy is loaded in: bf16 for `bf16_weights`; fp32 when every
    weight is trained (those weights are the optimizer's masters); else (LoRA: frozen base
    weights) `model.dtype`."""
    if precision == "bf16_weights":
        return "bfloat16"
    return "float32" if full_fine_tuning else model_dtype


class MasterWeights:
    """fp32 masters of a model's trainable parameters, by name. A parameter that already is
    fp32 (LoRA adapters, which PEFT keeps in fp32) is its own master."""

    def __init__(self, named: list[tuple[str, nn.Parameter]]):
        self.names = [n for n, _ in named]
        self.params = [p for _, p in named]
        self.masters = [
            p if p.dtype == torch.float32 else nn.Parameter(p.detach().float().clone())
            for p in self.params
        ]

    def grads_to_masters(self) -> None:
        """master.grad = float(param.grad) [same shape]; the bf16 gradient is released."""
        for p, m in zip(self.params, self.masters, strict=True):
            if m is not p:
                m.grad = None if p.grad is None else p.grad.float()
                p.grad = None

    @torch.no_grad()
    def masters_to_model(self) -> None:
        """param <- master, rounded to the param's dtype."""
        for p, m in zip(self.params, self.masters, strict=True):
            if m is not p:
                p.copy_(m)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The fp32 masters by parameter name (what a checkpoint stores)."""
        return {n: m.detach().contiguous() for n, m in zip(self.names, self.masters, strict=True)}

    @torch.no_grad()
    def load_state_dict(self, weights: dict[str, torch.Tensor]) -> None:
        """Masters from a checkpoint's weights, then rounded into the model."""
        for n, m in zip(self.names, self.masters, strict=True):
            m.copy_(weights[n])
        self.masters_to_model()
