"""`rounds`: each run of the pipeline is one round of iterative training. Round n samples from
the current (promoted) policy, trains from it, evaluates, and promotes the new model or keeps
the incumbent (align/pipeline/rounds.py runs the bookkeeping; docs/rounds.md).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from pydantic import Field

from align.config.base import Strict


class GateMetric(NamedTuple):
    """Where a promotion metric is read, and what the new model is compared against."""

    stage: str  # the stage whose metrics file holds it
    file: str  # that file, in the stage folder
    key: str  # the new model's figure
    baseline: str | float | None  # the incumbent's figure in the same file, a constant, or
    # None: the value recorded when the incumbent was promoted
    needs: str  # the config key the pipeline must set to produce it


# `rounds.promote.metric` -> where it is and what it is compared with (higher is better)
GATE_METRICS: dict[str, GateMetric] = {
    "evaluate.reward": GateMetric(
        "evaluate", "metrics.json", "reward/trained", "reward/initial", "evaluate"
    ),
    "evaluate.win_rate": GateMetric(
        "evaluate", "metrics.json", "win_rate/trained_vs_initial", 0.5, "evaluate"
    ),
    "judge.mtbench.score": GateMetric(
        "judge", "scores.json", "mtbench/overall", None, "judge.mtbench"
    ),
    "judge.alpacaeval.win_rate": GateMetric(
        "judge", "scores.json", "alpacaeval/win_rate", None, "judge.alpacaeval"
    ),
    "judge.alpacaeval.lc_win_rate": GateMetric(
        "judge", "scores.json", "alpacaeval/lc_win_rate", None, "judge.alpacaeval"
    ),
}


class PromoteConfig(Strict):
    # evaluate.reward: held-out mean reward of the new model against the incumbent's, both
    # measured in this round's evaluate stage
    metric: Literal[tuple(GATE_METRICS)] = "evaluate.reward"  # type: ignore[valid-type]
    # promoted when new >= incumbent + min_delta (metric units)
    min_delta: float = Field(0.0, allow_inf_nan=False)


class RoundsConfig(Strict):
    # where a round's policy comes from: the last promoted model (round 1: model.policy), or
    # always model.policy (independent re-runs on fresh prompts)
    policy_from: Literal["promoted", "base"] = "promoted"
    # the frozen reference: the base model, or the round's starting policy (iterative DPO)
    reference: Literal["base", "previous"] = "base"
    # fresh prompts per round: a seeded window of data.train (all of it when unset)
    prompts_per_round: int | None = Field(None, gt=0)
    promote: PromoteConfig = PromoteConfig()
    # the next run is this round, from the incumbent as it stood before it (roll back by hand:
    # --set rounds.start=N); None: the round after the last finished one
    start: int | None = Field(None, gt=0)
