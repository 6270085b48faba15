"""Online alignment: loss values by hand, preference sources and ties, config errors, the stage
table, resume to identical weights, and a tiny online pipeline through `align run`."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align.config import PreferenceConfig, load_pipeline
from align.config.losses import loss_config
from align.core.errors import AlignError
from align.data.datasets import load_records
from align.model.loading import resolve_model
from align.pipeline import plan
from align.rewards.preference import Preference, bradley_terry
from align.train.losses import online_loss
from align.train.online import OnlineTrainer, mixture_weights
from flows.cli import main

IPO_MD = "pipelines/ipo-md-quickstart.yaml"
ONLINE_IPO = "pipelines/online-ipo-quickstart.yaml"
# a random one-logit reward model: a Bradley-Terry preference with real, varied p on the tiny model
TINY_BT = "train.preference={reward: {model: tiny-reward}, scale: 20.0}"

# y: policy -3, ref -4 (log-ratio +1); y': policy -5, ref -4 (log-ratio -1); h = 2
POLICY = torch.tensor([[-3.0, -5.0]], dtype=torch.float64)
REF = torch.tensor([[-4.0, -4.0]], dtype=torch.float64)


def test_online_ipo_loss_by_hand() -> None:
    policy = POLICY.clone().requires_grad_(True)
    # tau 0.5: target 1; p 0.8: 0.8 (2 - 1)^2 + 0.2 (2 + 1)^2 = 0.8 + 1.8
    loss = online_loss(loss_config("online_ipo", tau=0.5), policy, REF, torch.tensor([0.8]))
    assert loss.tolist() == pytest.approx([2.6])
    loss.sum().backward()
    # d/dh = 0.8 * 2 * 1 + 0.2 * 2 * 3 = 2.8; h = s(y) - s(y')
    assert policy.grad[0].tolist() == pytest.approx([2.8, -2.8])


def test_a_tie_pulls_h_to_zero() -> None:
    policy = POLICY.clone().requires_grad_(True)
    # p = 1/2: (h - 1)^2 / 2 + (h + 1)^2 / 2 = h^2 + 1 = 5, gradient 2h = 4
    loss = online_loss(loss_config("ipo_md", tau=0.5, beta=0.3), policy, REF, torch.tensor([0.5]))
    assert loss.tolist() == pytest.approx([5.0])
    loss.sum().backward()
    assert policy.grad[0].tolist() == pytest.approx([4.0, -4.0])


def test_nash_md_pg_loss_by_hand() -> None:
    policy = POLICY.clone().requires_grad_(True)
    # advantage = p - 1/2 - tau (log pi(y) - log ref(y)) = 0.9 - 0.5 - 0.1 * 1 = 0.3
    # surrogate = -0.3 * log pi(y) = 0.9; gradient -0.3 on y, none on the opponent
    loss = online_loss(
        loss_config("nash_md_pg", tau=0.1, beta=0.125), policy, REF, torch.tensor([0.9])
    )
    assert loss.tolist() == pytest.approx([0.9])
    loss.sum().backward()
    assert policy.grad[0].tolist() == pytest.approx([-0.3, 0.0])
    # a tie with the policy at the reference: no push either way
    tie = online_loss(loss_config("nash_md_pg", tau=0.1), REF, REF, torch.tensor([0.5]))
    assert tie.tolist() == [0.0]


def test_online_dpo_and_slic_by_hand() -> None:
    dpo = online_loss(loss_config("online_dpo", tau=2.0), POLICY, REF, torch.tensor([1.0]))
    assert dpo.tolist() == pytest.approx([math.log1p(math.exp(-4.0))])  # -log sigmoid(2 * 2)
    # 0.8 max(0, 1 - 0.5) + 0.2 max(0, 1 + 0.5)
    slic = online_loss(loss_config("online_slic", tau=0.25), POLICY, REF, torch.tensor([0.8]))
    assert slic.tolist() == pytest.approx([0.7])


def test_offline_entry_point_refuses_online_losses() -> None:
    from align.train.losses import kwise_loss

    with pytest.raises(ValueError, match=r"needs train\.online: true"):
        kwise_loss(loss_config("online_ipo"), POLICY, REF, torch.tensor([[1.0, 0.0]]))


def test_which_samples_come_from_the_mixture() -> None:
    assert mixture_weights(loss_config("online_ipo", tau=1.0)) == (0.0, 0.0)
    assert mixture_weights(loss_config("ipo_md", tau=1.0, beta=0.125)) == (0.125, 0.125)
    assert mixture_weights(loss_config("nash_md_pg", tau=1.0, beta=0.25)) == (0.0, 0.25)


def test_bradley_terry_ties_give_one_half() -> None:
    assert bradley_terry([1.0, 0.0, 1.25, 0.0], [0.0, 1.0, 1.25, 0.0], 1.0) == pytest.approx(
        [0.7310586, 0.2689414, 0.5, 0.5]
    )
    pref = Preference(
        PreferenceConfig(reward={"function": "align.rewards.arithmetic:exact_answer"}, scale=4.0)
    )
    prompts = [[{"role": "user", "content": "2+2?"}]] * 3
    p = pref(prompts, ["4", "5", "4"], ["7", "4", "4"], {"answer": [4, 4, 4]})
    # right and bare (1.25) vs wrong (0): sigmoid(5); the reverse; equal answers: a tie
    assert p == pytest.approx([1 / (1 + math.exp(-5.0)), 1 / (1 + math.exp(5.0)), 0.5])


def test_preference_function_results_are_checked() -> None:
    pref = Preference(PreferenceConfig(function="align.rewards.arithmetic:exact_answer"))
    prompts, a, b = [[{"role": "user", "content": "x"}]] * 2, ["a", "b"], ["c", "d"]
    pref.fn = lambda prompts, a, b, **cols: [0.25, 0.5]
    assert pref(prompts, a, b, {}) == [0.25, 0.5]
    pref.fn = lambda prompts, a, b, **cols: [0.25, 1.5]
    with pytest.raises(AlignError, match=r"pair 1 got 1.5; return probabilities in \[0, 1\]"):
        pref(prompts, a, b, {})
    pref.fn = lambda prompts, a, b, **cols: [0.25]
    with pytest.raises(AlignError, match="returned 1 values for 2 pairs"):
        pref(prompts, a, b, {})


@pytest.mark.parametrize(
    ("pipeline", "override", "message"),
    [
        (ONLINE_IPO, "train.online=false", "train.loss: 'online_ipo' is an online loss; set "),
        (ONLINE_IPO, "train.loss={name: nca}", "train.loss: 'nca' is an offline loss but train.o"),
        (ONLINE_IPO, "train.preference=null", "train.preference: required with train.online"),
        (IPO_MD, "train.loss.beta=1.5", "train.loss.beta: must be in [0, 1] (the reference's weig"),
        (ONLINE_IPO, "train.preference.judge={backend: {kind: local, model: tiny}}", "exactly one"),
        (ONLINE_IPO, "annotate={reward: {from_data: true}}", "annotate: an online pipeline"),
        (ONLINE_IPO, "train.rollout.max_new_tokens=64", "train.rollout.max_new_tokens (64)"),
    ],
)
def test_online_config_errors_name_the_field(pipeline, override, message, project: Path) -> None:
    with pytest.raises(AlignError) as err:
        load_pipeline(pipeline, [override])
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_online_stage_table_has_no_sample_or_annotate(project: Path) -> None:
    cfg = load_pipeline(IPO_MD, smoke=True)
    plans = {p.name: p for p in plan(cfg)}
    assert list(plans) == ["prepare-model", "train", "evaluate"]
    assert plans["train"].inputs["preference"].startswith("bt:4.0:align.rewards.arithmetic")
    assert plans["train"].data_deps == ["data/quickstart/train.jsonl"]
    other = {p.name: p for p in plan(load_pipeline(IPO_MD, ["train.preference.scale=2"], True))}
    assert other["train"].stage_hash != plans["train"].stage_hash
    assert other["prepare-model"].stage_hash == plans["prepare-model"].stage_hash


class _Crash(Exception):
    pass


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def test_resume_gives_identical_weights_and_log(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """nash_md_pg (two sampling calls a step, one of them from the mixture): crash right after
    the step-2 checkpoint, resume in a process with another RNG state: same weights, same log."""
    cfg = load_pipeline(
        IPO_MD,
        [
            TINY_BT,
            "train.loss={name: nash_md_pg, tau: 0.1, beta: 0.5}",
            "train.max_steps=4",
            "train.save_steps=2",
            "train.batch_size=2",
            "train.grad_accum=2",
            "train.learning_rate=1e-2",
            "train.keep_checkpoints=3",
        ],
        smoke=True,
    )
    records = load_records(cfg.data.train, None, "data.train")
    tiny = Path(resolve_model("tiny"))

    def trainer(folder: str) -> OnlineTrainer:
        return OnlineTrainer(cfg, tiny, tiny, records, project / folder, "h")

    torch.manual_seed(0)
    trainer("straight").train()
    original = OnlineTrainer.save_checkpoint

    def crash_after_step_2(self: OnlineTrainer) -> None:
        original(self)
        if self.step == 2:
            raise _Crash

    monkeypatch.setattr(OnlineTrainer, "save_checkpoint", crash_after_step_2)
    torch.manual_seed(0)
    with pytest.raises(_Crash):
        trainer("crashed").train()
    monkeypatch.setattr(OnlineTrainer, "save_checkpoint", original)
    torch.manual_seed(123)
    trainer("crashed").train()

    a = load_file(project / "straight" / "model" / "model.safetensors")
    b = load_file(project / "crashed" / "model" / "model.safetensors")
    assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6
    la, lb = _log(project / "straight"), _log(project / "crashed")
    assert [r["step"] for r in lb] == [1, 2, 3, 4]
    for key in ("loss", "preference/mean", "kl", "length/mean"):
        assert [r[key] for r in la] == pytest.approx([r[key] for r in lb], abs=1e-9), key
    # the labels were real: not all ties, and training moved the policy off the reference
    assert any(abs(r["preference/mean"] - 0.5) > 0.01 for r in la)
    assert abs(la[-1]["kl"]) > 1e-3
    initial = load_file(tiny / "model.safetensors")
    assert max((a[k] - initial[k]).abs().max().item() for k in a) > 1e-3


@pytest.mark.parametrize("attention", ["sdpa", "matmul"])
def test_tiny_online_pipeline_end_to_end(
    project: Path, capsys: pytest.CaptureFixture[str], attention: str
) -> None:
    """Mixture sampling on a KV cache and training, with either attention of the policy."""
    assert main(["validate", IPO_MD, "--smoke"]) == 0
    assert (
        capsys.readouterr()
        .out.splitlines()[0]
        .endswith("stages: prepare-model -> train -> evaluate")
    )
    sets = ["--set", TINY_BT, "--set", "train.rollout.win_rate=true"]
    sets += ["--set", f"train.attention={attention}"]
    assert main(["run", "--no-prefect", IPO_MD, "--smoke", *sets]) == 0
    out = capsys.readouterr().out
    assert "train: done" in out and "evaluate: done" in out
    train = project / "runs" / "ipo-md-quickstart-smoke" / "train"
    rows = _log(train)
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert 0 <= r["preference/mean"] <= 1 and 0 <= r["win_rate/vs_reference"] <= 1
        assert 1 <= r["length/mean"] <= 8 and r["samples_per_s"] > 0 and r["loss"] > 0
    metrics = json.loads((train / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["prompts"] == 4
    assert (train / "curves.csv").read_text().startswith("step,loss,preference/mean,")
    assert not (project / "runs" / "ipo-md-quickstart-smoke" / "annotate").exists()
    assert main(["run", "--no-prefect", IPO_MD, "--smoke", *sets]) == 0
    assert "train: up to date" in capsys.readouterr().out


def test_lora_reference_is_the_policy_with_its_adapters_off(project: Path) -> None:
    """With LoRA and the initial policy as reference, no second model is loaded: the reference
    runs the policy with its adapters disabled. B = 0 at the start, so kl is exactly 0 at
    step 1; after an update the policy has moved and the reference has not."""
    from align.model.reference import AdapterDisabled

    cfg = load_pipeline(
        IPO_MD,
        [
            TINY_BT,
            "model.lora={r: 4, alpha: 8, dropout: 0.0}",
            "train.batch_size=2",
            "train.max_steps=2",
            "train.learning_rate=5e-2",
        ],
        smoke=True,
    )
    tiny = Path(resolve_model("tiny"))
    records = load_records(cfg.data.train, None, "data.train")
    trainer = OnlineTrainer(cfg, tiny, tiny, records, project / "out", "h")
    assert isinstance(trainer.ref, AdapterDisabled)
    assert list(trainer.ref.parameters()) == []  # no weights of its own
    first = trainer.train_step()
    assert first["kl"] == 0.0
    trainer.step += 1
    second = trainer.train_step()
    assert abs(second["kl"]) > 1e-4
    base = load_file(tiny / "model.safetensors")
    policy = trainer.acc.unwrap_model(trainer.model)
    with policy.disable_adapter():
        weight = policy.get_base_model().model.layers[0].self_attn.q_proj.base_layer.weight
    assert torch.equal(weight, base["model.layers.0.self_attn.q_proj.weight"])
