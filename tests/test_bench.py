"""The benchmarks' own plumbing on the tiny model: our side runs a real step, and every call
into the TRL side binds to `trl_run`'s signature (TRL itself is only installed by `make bench`,
so its trainer is replaced by a signature-checking stand-in here)."""

from __future__ import annotations

import argparse
import inspect
import math
from pathlib import Path

import pytest
from accelerate.state import AcceleratorState

import bench.trl_side
from bench import p1_train_throughput, p2_kwise_cost
from bench.common import model_path


@pytest.fixture
def trl_calls(monkeypatch: pytest.MonkeyPatch) -> list[inspect.BoundArguments]:
    """Replace `trl_run` by a stand-in that binds its arguments to the real signature."""
    calls: list[inspect.BoundArguments] = []
    signature = inspect.signature(bench.trl_side.trl_run)

    def stand_in(*args, **kwargs) -> tuple[float, float]:
        calls.append(signature.bind(*args, **kwargs))
        return 1.0, -1.0

    monkeypatch.setattr(bench.trl_side, "trl_run", stand_in)
    return calls


def test_p1_every_setting_runs_or_binds(trl_calls: list) -> None:
    args = argparse.Namespace(
        model="tiny", steps=1, warmup=2, batch=2, prompt_len=8, response_len=8
    )
    for name, (side, _) in p1_train_throughput.SETTINGS.items():
        AcceleratorState._reset_state()  # the bench runs each setting in its own process
        result = p1_train_throughput.one(name, args)
        if side == "ours":
            assert result["seconds"] > 0 and math.isfinite(result["logps"]) and result["logps"] < 0
            # P4 side by side: one matmul peak per timed step, a plausible FLOP/s
            assert len(result["times"]) == len(result["peaks"]) == args.steps
            assert all(1e9 < p < 1e14 for p in result["peaks"])
    assert len(trl_calls) == sum(side == "trl" for side, _ in p1_train_throughput.SETTINGS.values())


def test_p2_both_sides_run_or_bind(trl_calls: list, tmp_path: Path) -> None:
    args = argparse.Namespace(model="tiny", prompts=2, steps=1, prompt_len=8, response_len=8)
    path = model_path("tiny")
    data = p2_kwise_cost.rows(path, args.prompts, args.prompt_len, args.response_len)
    assert p2_kwise_cost.run_trl(path, data, args, tmp_path / "trl") == 1.0
    (bound,) = trl_calls
    assert bound.arguments["batch"] == (p2_kwise_cost.K - 1) * args.prompts
    assert bound.arguments["precompute"] is True and bound.arguments["bf16"] is False
    assert p2_kwise_cost.run_ours(path, data, args, tmp_path / "ours") > 0
