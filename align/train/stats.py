"""A training step's logged figures, accumulated on the training device and read back once.

Every micro-batch adds its sums to one float64 vector on the device (tensor additions only: no
`.item()`, no boolean-mask indexing, nothing that waits for the GPU); `StepStats.read` sums the
vector over the processes and copies it to the host, gradient norm included, in one transfer:
one host sync per optimizer step however many micro-batches it has.
"""

from __future__ import annotations

import torch
from accelerate import Accelerator
from torch import Tensor

from align.train.losses import LossOutput

# the sums `pair_sums` returns, in its order
PAIR_KEYS = (
    "logps/chosen",
    "logps/rejected",
    "rewards/chosen",
    "rewards/rejected",
    "rewards/margin",
    "rewards/accuracy",
    "n_pref",
)


class StepStats:
    """Named float64 sums on `device`, one slot per key."""

    def __init__(self, keys: tuple[str, ...], device: torch.device):
        self.index = {k: i for i, k in enumerate(keys)}
        self.values = torch.zeros(len(keys), dtype=torch.float64, device=device)

    def add(self, key: str, value: Tensor | float) -> None:
        """sums[key] += value (a Python number or a 0-d tensor on the stats' device)."""
        self.values[self.index[key]] += value

    def add_many(self, keys: tuple[str, ...], values: Tensor) -> None:
        """sums[keys[i]] += values[i] for a [len(keys)] tensor on the stats' device."""
        start = self.index[keys[0]]
        self.values[start : start + len(keys)] += values.to(torch.float64)

    def read(
        self, acc: Accelerator, grad_norm: Tensor | float | None
    ) -> tuple[dict[str, float], float | None]:
        """(each sum over all processes, the gradient norm) on the host, in one transfer."""
        summed = acc.reduce(self.values, reduction="sum")
        if isinstance(grad_norm, Tensor):
            norm = grad_norm.detach().reshape(1).to(summed)
            *values, norm_value = torch.cat([summed, norm]).tolist()
        else:
            values, norm_value = summed.tolist(), grad_norm
        return dict(zip(self.index, values, strict=True)), norm_value


def pair_sums(out: LossOutput, policy: Tensor) -> Tensor:
    """[7] sums over the rows that have a preference (chosen = highest reward, rejected =
    lowest, as `best_worst_pairs` pairs them), in PAIR_KEYS order: policy log-probs of chosen
    and rejected (`policy` [B, K]), the loss's implicit rewards of both, their margin, the
    accuracy count (chosen reward > rejected) and the number of such rows."""
    rc, rr = out.chosen_rewards, out.rejected_rewards
    terms = torch.stack(
        [
            policy.gather(1, out.chosen[:, None]).squeeze(1).to(rc.dtype),
            policy.gather(1, out.rejected[:, None]).squeeze(1).to(rc.dtype),
            rc,
            rr,
            rc - rr,
            (rc > rr).to(rc.dtype),
            torch.ones_like(rc),
        ]
    )
    return torch.where(out.has_preference, terms, 0.0).sum(-1)
