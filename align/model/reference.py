"""The reference of a LoRA run without a second copy of the model: the policy's frozen base,
reached by switching its adapters off for the length of a call.

LoRA adds B A x to each adapted layer with B = 0 at the start, so the base alone is exactly the
initial policy: the usual SFT reference (`model.reference` unset). Keeping a separate frozen
copy would double the weights in memory (a 7B model: 14 GB more in bf16 per process).
"""

from __future__ import annotations

import torch
from torch import nn


class AdapterDisabled(nn.Module):
    """`peft_model` with its adapters disabled, callable like a causal LM (forward keywords,
    `.device`, `.config`). It holds no parameters of its own, so nothing here trains or is
    saved twice."""

    def __init__(self, peft_model: nn.Module):
        super().__init__()
        object.__setattr__(self, "peft_model", peft_model)  # not a submodule: no shared params

    @property
    def device(self) -> torch.device:
        return self.peft_model.device

    @property
    def config(self):
        return self.peft_model.config

    def forward(self, **kwargs):
        """The base model's output for `kwargs` (no gradient reaches the adapters)."""
        with self.peft_model.disable_adapter():
            return self.peft_model(**kwargs)
