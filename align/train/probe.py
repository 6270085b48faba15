"""Likelihood probes (`train.probe`): the policy's log-likelihood of a fixed set of training
records, relative to the reference, before the first step and every `every` steps.

A step's logged `logps/chosen` is measured on that step's fresh batch before its update, so two
steps' values are different prompts and their difference is mostly batch composition. A probe
measures the same records every time, which is what the NCA paper's likelihood figure shows:
whether training raises or lowers the chosen (highest reward) and rejected (lowest) responses.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from align.data.pairing import best_worst_pairs

# summed log-ratio (policy - reference) and the same per response token, averaged over records
PROBE_KEYS = (
    "probe/chosen",
    "probe/rejected",
    "probe/mean",
    "probe/chosen_per_token",
    "probe/rejected_per_token",
    "probe/mean_per_token",
)

# (groups of (prompt ids, [response ids])) -> (log-probs [N], response token counts [N])
LogpsFn = Callable[[list[tuple[list[int], list[list[int]]]]], tuple[Tensor, Tensor]]


def probe_indices(n: int, records: int, seed: int) -> list[int]:
    """A fixed, seeded, sorted sample of min(records, n) indices out of n."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return sorted(order[: min(records, n)].tolist())


def probe_figures(
    policy: Tensor, ref: Tensor, n_tokens: Tensor, rewards: Tensor, mask: Tensor
) -> dict[str, float]:
    """PROBE_KEYS from [B, K] tensors: chosen/rejected are the highest/lowest-reward responses
    of the rows that have a preference (NaN when none has), mean is over every valid response."""
    ratio = torch.where(mask, policy.double() - ref.double(), 0.0)
    per_token = ratio / n_tokens.double().clamp_min(1)
    chosen, rejected, has = best_worst_pairs(rewards, mask)
    out = {}
    for suffix, values in (("", ratio), ("_per_token", per_token)):
        out[f"probe/chosen{suffix}"] = _mean_at(values, chosen, has)
        out[f"probe/rejected{suffix}"] = _mean_at(values, rejected, has)
        out[f"probe/mean{suffix}"] = float(values[mask].mean())
    return out


def _mean_at(values: Tensor, idx: Tensor, rows: Tensor) -> float:
    """Mean of values[b, idx[b]] over the rows b where `rows` is True; NaN when none is."""
    picked = values.gather(-1, idx[:, None]).squeeze(-1)[rows]
    return float(picked.mean()) if len(picked) else float("nan")


@torch.no_grad()
def run_probe(
    model: torch.nn.Module,
    logps: LogpsFn,
    groups: Sequence[tuple[list[int], list[list[int]]]],
    rewards: Tensor,
    ref: Tensor,
    mask: Tensor,
    batch_size: int,
) -> dict[str, float]:
    """PROBE_KEYS of the probe records: `groups` (B records) through `logps` in eval mode
    (no dropout), `batch_size` records at a time; rewards, ref, mask: [B, K]. The model's
    training mode is restored."""
    was_training = model.training
    model.eval()
    try:
        flat, counts = [], []
        for start in range(0, len(groups), batch_size):
            lp, n = logps(list(groups[start : start + batch_size]))
            flat.append(lp.detach().double().cpu())
            counts.append(n.detach().double().cpu())
    finally:
        model.train(was_training)
    policy = torch.zeros(mask.shape, dtype=torch.float64)
    n_tokens = torch.zeros(mask.shape, dtype=torch.float64)
    policy[mask], n_tokens[mask] = torch.cat(flat), torch.cat(counts)
    return probe_figures(policy, ref, n_tokens, rewards, mask)


def probe_metrics(rows: list[dict]) -> dict[str, float]:
    """metrics.json entries of a run's probe rows: each key at the last probe and its change
    since the first (`probe/delta/...`)."""
    if not rows:
        return {}
    first, last = rows[0], rows[-1]
    out = {key: last[key] for key in PROBE_KEYS}
    out.update({f"probe/delta/{key[6:]}": last[key] - first[key] for key in PROBE_KEYS})
    return out
