"""Training stops at the first non-finite number, and its log stays valid JSON Lines.

A NaN or infinite loss or gradient poisons every weight it touches; training on would end in
a model of NaNs reported as a success. The trainer checks each step's gradient norm and loss when
the step's figures come back to the host (once per step, align/train/stats.py), before the step
is logged, checkpointed or saved, and stops with one line naming the step: no checkpoint, model
or manifest holds the poisoned update. Log rows are written with non-finite values as
`null`, since bare NaN and Infinity are not JSON.
"""

from __future__ import annotations

import json
import math
from typing import Any

from align.core.errors import AlignError
from align.core.io import json_safe

FIX = (
    "lower train.learning_rate, set train.max_grad_norm, check the rewards and the loss's "
    "parameters; the run stops here and writes no manifest"
)


def _bad(value: float | None) -> bool:
    return value is not None and not math.isfinite(value)


def check_gradients(step: int, grad_norm: float | None) -> None:
    """Raise when the step's gradient norm (before clipping) is not finite."""
    if _bad(grad_norm):
        raise AlignError(f"train: step {step}: the gradient norm is {grad_norm}; {FIX}")


def check_loss(step: int, row: dict[str, Any]) -> None:
    """Raise when the step's logged loss (UPO: also its total objective) is not finite."""
    for key in ("loss", "upo/total"):
        value = row.get(key)
        if isinstance(value, float) and _bad(value):
            raise AlignError(f"train: step {step}: {key} is {value}; {FIX}")


def log_line(row: dict[str, Any]) -> str:
    """One JSON Lines row: NaN and infinities become null (they are not JSON)."""
    return json.dumps(json_safe(row), allow_nan=False) + "\n"
