"""The offline trainer on the tiny model: it moves the metric it should, and resumes exactly."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align.config import load_pipeline
from align.config.losses import loss_config
from align.data.pairing import best_worst_pairs
from align.model.loading import load_model, load_tokenizer, resolve_model
from align.stages.annotate import _ref_logps
from align.train.losses import kwise_loss
from align.train.stats import PAIR_KEYS, pair_sums
from align.train.trainer import Trainer, step_indices

QS = "pipelines/quickstart.yaml"


def _records(cfg, n: int = 6) -> list[dict]:
    """K=4 responses per prompt with distinct rewards, and their reference log-probs."""
    path = resolve_model("tiny")
    recs = [
        {
            "id": f"r{i}",
            "prompt": [{"role": "user", "content": f"What is {i} plus 3?"}],
            "responses": [str(i + 3), f"The answer is {i + 3}", "I am not sure", "apples"],
            "rewards": [1.25, 1.0, 0.0, -0.5],
        }
        for i in range(n)
    ]
    ref = _ref_logps(load_model(path, device="cpu"), load_tokenizer(path), recs, cfg)
    for rec, (lp, cnt) in zip(recs, ref, strict=True):
        rec["ref_logps"], rec["n_tokens"] = lp, cnt
    return recs


def _cfg(*overrides: str):
    return load_pipeline(
        QS, ["train.warmup_ratio=0", "train.lr_scheduler=constant", *overrides], smoke=True
    )


def _pair_stats(loss, policy, ref, rewards, mask) -> tuple[dict[str, float], int]:
    values = pair_sums(kwise_loss(loss, policy, ref, rewards, mask), policy).tolist()
    sums = dict(zip(PAIR_KEYS, values, strict=True))
    return sums, int(sums["n_pref"])


# row 0: best index 1 (reward 9), worst index 2 (reward 0): log-ratios 2 and -1, margin 3.
# row 1: all rewards tied, not logged. row 2: best index 0, worst index 1 (index 2 is padding):
# log-ratios 0.5 and 1.5, margin -1.
POLICY = torch.tensor([[-3.0, -2.0, -5.0], [-1.0, -1.0, -1.0], [-2.5, -1.5, 7.0]]).double()
REF = torch.tensor([[-3.0, -4.0, -4.0], [-2.0, -2.0, -2.0], [-3.0, -3.0, 0.0]]).double()
REWARDS = torch.tensor([[1.0, 9.0, 0.0], [2.0, 2.0, 2.0], [5.0, 1.0, 9.0]]).double()
MASK = torch.tensor([[True, True, True], [True, True, True], [True, True, False]])


def test_logged_ipo_rewards_are_tau_times_the_log_ratios() -> None:
    sums, n = _pair_stats(loss_config("ipo", tau=0.25), POLICY, REF, REWARDS, MASK)
    assert n == 2
    assert sums["rewards/chosen"] == pytest.approx(0.25 * (2.0 + 0.5))
    assert sums["rewards/rejected"] == pytest.approx(0.25 * (-1.0 + 1.5))
    assert sums["rewards/margin"] == pytest.approx(0.25 * (3.0 - 1.0))
    assert sums["rewards/accuracy"] == 1.0
    assert (sums["logps/chosen"], sums["logps/rejected"]) == (-2.0 - 2.5, -5.0 - 1.5)


def test_logged_dpo_rewards_are_unchanged() -> None:
    # what the trainer logged before the loss returned its rewards: beta * (policy - ref) at
    # the best and worst responses, computed beside the loss
    beta = 0.1
    sums, n = _pair_stats(loss_config("dpo", beta=beta), POLICY, REF, REWARDS, MASK)
    best, worst, has = best_worst_pairs(REWARDS, MASK)
    rows = torch.arange(3)[has]
    implicit = beta * (POLICY - REF)
    rc, rr = implicit[rows, best[has]], implicit[rows, worst[has]]
    assert n == 2
    assert sums["rewards/chosen"] == rc.sum().item()  # bit for bit
    assert sums["rewards/rejected"] == rr.sum().item()
    assert sums["rewards/margin"] == (rc - rr).sum().item()
    assert sums["rewards/margin"] == pytest.approx(beta * (3.0 - 1.0))
    assert sums["rewards/chosen"] == pytest.approx(beta * (2.0 + 0.5))


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("loss", ["nca", "infonca", "dpo", "plackett_luce", "lipo"])
def test_training_increases_the_margin(project: Path, loss: str) -> None:
    cfg = _cfg(
        f"train.loss={{name: {loss}, beta: 1.0}}",
        "train.learning_rate=3e-3",
        "train.max_steps=12",
        "train.save_steps=100",
        "train.batch_size=3",
    )
    rows_in = _records(cfg)
    Trainer(cfg, Path(resolve_model("tiny")), rows_in, project / loss, "h").train()
    log = _log(project / loss)
    assert log[-1]["rewards/margin"] > log[0]["rewards/margin"] + 1.0
    assert log[-1]["loss"] < log[0]["loss"]
    assert log[-1]["rewards/accuracy"] == 1.0


def test_nca_raises_the_best_response_while_infonca_may_not(project: Path) -> None:
    """The NCA paper's observation, in miniature: NCA pushes the chosen likelihood up."""
    cfg = _cfg(
        "train.loss.beta=1.0",
        "train.learning_rate=3e-3",
        "train.max_steps=12",
        "train.save_steps=100",
        "train.batch_size=3",
    )
    Trainer(cfg, Path(resolve_model("tiny")), _records(cfg), project / "nca", "h").train()
    log = _log(project / "nca")
    assert log[-1]["rewards/chosen"] > 0 > log[-1]["rewards/rejected"]


def test_step_indices_cover_each_epoch_once() -> None:
    n, per_step = 6, 4
    stream = [i for s in range(3) for i in step_indices(s, n, per_step, seed=0)]
    assert sorted(stream[:6]) == list(range(6)) and sorted(stream[6:12]) == list(range(6))


class _Crash(Exception):
    pass


@pytest.mark.parametrize("precision", ["bf16", "bf16_weights"])
def test_resume_gives_identical_weights_and_log(
    project: Path, monkeypatch: pytest.MonkeyPatch, precision: str
) -> None:
    """Batch 2 x grad_accum 2 over 6 records (does not divide), crash right after the step-2
    checkpoint, resume: the same final weights and a gap-free log as an uninterrupted run
    (bf16_weights: the checkpoint's fp32 masters restore the optimizer's view exactly)."""
    cfg = _cfg(
        f"train.precision={precision}",
        "train.max_steps=5",
        "train.save_steps=2",
        "train.batch_size=2",
        "train.grad_accum=2",
        "train.learning_rate=1e-3",
        "train.keep_checkpoints=3",
    )
    recs, model = _records(cfg), Path(resolve_model("tiny"))
    torch.manual_seed(0)
    Trainer(cfg, model, recs, project / "straight", "h").train()

    original = Trainer.save_checkpoint

    def crash_after_step_2(self: Trainer) -> None:
        original(self)
        if self.step == 2:
            # a partial line for step 3 must not survive the resume either
            with open(self.out / "log.jsonl", "a") as f:
                f.write(json.dumps({"step": 3, "loss": 0.0}) + "\n")
            raise _Crash

    monkeypatch.setattr(Trainer, "save_checkpoint", crash_after_step_2)
    torch.manual_seed(0)
    with pytest.raises(_Crash):
        Trainer(cfg, model, recs, project / "crashed", "h").train()
    monkeypatch.setattr(Trainer, "save_checkpoint", original)
    torch.manual_seed(123)  # the resumed process starts from a different RNG state
    Trainer(cfg, model, recs, project / "crashed", "h").train()

    a = load_file(project / "straight" / "model" / "model.safetensors")
    b = load_file(project / "crashed" / "model" / "model.safetensors")
    assert a.keys() == b.keys()
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    la, lb = _log(project / "straight"), _log(project / "crashed")
    assert [r["step"] for r in lb] == [1, 2, 3, 4, 5]
    assert [r["loss"] for r in la] == pytest.approx([r["loss"] for r in lb], abs=1e-9)


@pytest.mark.parametrize("loss", ["dpo", "plackett_luce"])
def test_step_loss_is_the_mean_over_prompts_with_a_preference(project: Path, loss: str) -> None:
    """Half the prompts tie (no preference): at step 1 the policy is the reference, so each
    counting prompt's loss is ln 2 (DPO; Plackett-Luce over K=4 distinct rewards:
    ln 4 + ln 3 + ln 2), and the step's loss is that, not diluted by the tied prompts."""
    cfg = _cfg(
        f"train.loss={{name: {loss}, beta: 1.0}}",
        "train.max_steps=1",
        "train.batch_size=3",
        "train.grad_accum=2",
    )
    recs = _records(cfg)
    for rec in recs[::2]:
        rec["rewards"] = [0.5] * 4
    Trainer(cfg, Path(resolve_model("tiny")), recs, project / loss, "h").train()
    expected = math.log(2) if loss == "dpo" else math.log(24)
    assert _log(project / loss)[0]["loss"] == pytest.approx(expected, abs=1e-4)
