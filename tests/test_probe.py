"""train.probe: fixed records measured before training and every N steps, relative to the
reference; NCA raises the chosen response's likelihood on them, DPO lowers it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from align.config import load_pipeline
from align.core.errors import AlignError
from align.model.loading import resolve_model
from align.train.probe import PROBE_KEYS, probe_figures, probe_indices, probe_metrics
from align.train.trainer import Trainer
from tests.test_trainer import _records

QS = "pipelines/quickstart.yaml"


def test_probe_figures_by_hand() -> None:
    # row 0: rewards pick chosen = 1, rejected = 2; row 1 ties (no chosen/rejected); row 2 has
    # one padded entry.
    policy = torch.tensor([[-3.0, -2.0, -5.0], [-1.0, -1.0, -1.0], [-2.5, -1.5, 9.0]])
    ref = torch.tensor([[-3.0, -4.0, -4.0], [-2.0, -2.0, -2.0], [-3.0, -3.0, 0.0]])
    n_tok = torch.tensor([[1.0, 2.0, 4.0], [1.0, 1.0, 1.0], [5.0, 3.0, 1.0]])
    rewards = torch.tensor([[1.0, 9.0, 0.0], [2.0, 2.0, 2.0], [5.0, 1.0, 9.0]])
    mask = torch.tensor([[True, True, True], [True, True, True], [True, True, False]])
    out = probe_figures(policy, ref, n_tok, rewards, mask)
    # log-ratios: row 0 [0, 2, -1], row 1 [1, 1, 1], row 2 [0.5, 1.5, -]
    assert out["probe/chosen"] == pytest.approx((2.0 + 0.5) / 2)
    assert out["probe/rejected"] == pytest.approx((-1.0 + 1.5) / 2)
    assert out["probe/mean"] == pytest.approx((0 + 2 - 1 + 1 + 1 + 1 + 0.5 + 1.5) / 8)
    assert out["probe/chosen_per_token"] == pytest.approx((2.0 / 2 + 0.5 / 5) / 2)
    assert out["probe/rejected_per_token"] == pytest.approx((-1.0 / 4 + 1.5 / 3) / 2)


def test_probe_indices_are_fixed_and_bounded() -> None:
    assert probe_indices(10, 4, seed=1) == probe_indices(10, 4, seed=1)
    assert probe_indices(10, 4, seed=1) != probe_indices(10, 4, seed=2)
    assert probe_indices(3, 8, seed=0) == [0, 1, 2]


def test_probe_metrics_are_last_and_change() -> None:
    rows = [dict.fromkeys(PROBE_KEYS, 1.0), dict.fromkeys(PROBE_KEYS, 3.5)]
    out = probe_metrics(rows)
    assert out["probe/chosen"] == 3.5 and out["probe/delta/chosen"] == 2.5
    assert probe_metrics([]) == {}


def _train(project: Path, loss: str, *extra: str) -> Path:
    cfg = load_pipeline(
        QS,
        [
            "train.warmup_ratio=0",
            "train.lr_scheduler=constant",
            f"train.loss={{name: {loss}, beta: 1.0}}",
            "train.learning_rate=3e-3",
            "train.max_steps=6",
            "train.save_steps=3",
            "train.batch_size=3",
            "train.probe={every: 2, records: 4}",
            *extra,
        ],
        smoke=True,
    )
    out = project / loss
    Trainer(cfg, Path(resolve_model("tiny")), _records(cfg), out, "h").train()
    return out


def test_probe_rows_and_metrics(tmp_path: Path) -> None:
    out = _train(tmp_path, "nca")
    rows = [json.loads(ln) for ln in (out / "probe.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4, 6]
    # before the first step the policy is the reference: every log-ratio is 0
    assert all(abs(rows[0][k]) < 1e-4 for k in PROBE_KEYS)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["probe/chosen"] == pytest.approx(rows[-1]["probe/chosen"])
    # NCA raises the best response's likelihood on the fixed records; the worst falls further
    assert metrics["probe/delta/chosen"] > 0
    assert metrics["probe/delta/rejected"] < metrics["probe/delta/chosen"]


class _Crash(Exception):
    pass


def test_probe_survives_a_crash_between_checkpoints(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Checkpoints at 3 and 6, probes at 0, 2, 4, 6: a crash after step 4's probe resumes at
    step 3, drops the probe of step 4 and measures it again: the same rows as a straight run."""
    straight = _train(tmp_path / "straight", "dpo")
    original = Trainer._probe

    def crash_after_step_4(self: Trainer) -> None:
        original(self)
        if self.step == 4:
            raise _Crash

    monkeypatch.setattr(Trainer, "_probe", crash_after_step_4)
    with pytest.raises(_Crash):
        _train(tmp_path / "crashed", "dpo")
    monkeypatch.setattr(Trainer, "_probe", original)
    crashed = _train(tmp_path / "crashed", "dpo")
    rows = [json.loads(ln) for ln in (crashed / "probe.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 2, 4, 6]
    want = [json.loads(ln) for ln in (straight / "probe.jsonl").read_text().splitlines()]
    for a, b in zip(rows, want, strict=True):
        assert a == pytest.approx(b, abs=1e-6)


def test_probe_is_refused_for_online_training() -> None:
    with pytest.raises((AlignError, ValueError), match=r"train\.probe"):
        load_pipeline(
            "pipelines/online-ipo-quickstart.yaml", ["train.probe={every: 2}"], smoke=True
        )
