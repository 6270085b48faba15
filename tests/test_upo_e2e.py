"""UPO end to end: auxiliary rewards by hand, annotate storing them, gamma=0 is exactly the
preference loss, and the value head's checkpoint round trip with a bit-exact resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align.config import load_pipeline
from align.core.io import read_json
from align.data.records import read_shards
from align.model.loading import load_tokenizer, resolve_model
from align.pipeline import run_stage, stage_folder
from align.rewards.aux import brevity, combined_aux_rewards, readability, safety, sentence_end
from align.train.checkpoint import VALUE_HEAD
from align.train.trainer import Trainer
from align.train.upo import ValueHead

PIPELINE = """
name: upo-tiny
model: {policy: tiny}
data:
  train: {path: data/kwise.jsonl, format: kwise}
annotate:
  reward: {from_data: true}
train:
  loss: {name: upo, preference: dpo, beta: 0.1, aux_warmup_steps: 1, value_lr: 1.0e-3}
  aux_rewards: [{fn: readability, weight: 0.5}, {fn: brevity, weight: 0.5}]
  max_steps: 3
  save_steps: 1
  batch_size: 2
  max_length: 128
  max_prompt_length: 64
"""
RESPONSES = [
    "The answer is 7.",
    "To compute this we first multiply the quantities and then subtract the remainder, "
    "obtaining seven.",
    "There are 20 shells in a box and 30 in a bag so the total number of shells is 50 shells "
    "altogether.",
]


def _project(project: Path) -> None:
    rows = [
        {
            "id": f"r{i}",
            "prompt": f"What is {i} plus 4?",
            "responses": RESPONSES,
            "rewards": [1.0, 0.0, 0.5],
        }
        for i in range(4)
    ]
    (project / "data" / "kwise.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (project / "pipelines" / "upo-tiny.yaml").write_text(PIPELINE)


def test_readability_is_the_papers_grade_mapping() -> None:
    # textstat's consensus grades for these: 1, 14 and 7 -> (9 - g) / 5 clipped to [0, 1]
    assert readability([*RESPONSES, "", "..."]) == pytest.approx([1.0, 0.0, 0.4, 0.0, 0.0])


def test_brevity_is_linear_between_5_and_25_words() -> None:
    texts = ["7", " ".join(["w"] * 5), " ".join(["w"] * 15), " ".join(["w"] * 30)]
    assert brevity(texts) == pytest.approx([1.0, 1.0, 0.5, 0.0])


def test_sentence_end_scores_finished_sentences() -> None:
    texts = ["64.", "64", 'The answer is "22".', "cut off mid", "Yes!  \n", "ok.)", "", "1. The"]
    assert sentence_end(texts) == [1.0, 0.0, 1.0, 0.0, 1.0, 1.0, 0.0, 0.0]


def test_combined_rewards_are_the_weighted_sum() -> None:
    from align.config import AuxRewardConfig

    specs = [AuxRewardConfig(fn="readability", weight=0.2), AuxRewardConfig(fn="brevity")]
    total, means = combined_aux_rewards(specs, RESPONSES)
    # brevity: 4 words -> 1; 15 words -> 0.5; 22 words -> 0.15
    assert total == pytest.approx([0.2 * 1.0 + 1.0, 0.2 * 0.0 + 0.5, 0.2 * 0.4 + 0.15])
    assert means == pytest.approx({"readability": 1.4 / 3, "brevity": 1.65 / 3})


@torch.no_grad()
def test_safety_is_one_minus_the_worst_category() -> None:
    from transformers import AutoModelForSequenceClassification

    path = resolve_model("tiny-reward")
    tok, clf = load_tokenizer(path), AutoModelForSequenceClassification.from_pretrained(path)
    logits = [clf(**tok([t], return_tensors="pt")).logits[0, 0].item() for t in RESPONSES[:2]]
    expected = [1 - torch.sigmoid(torch.tensor(x)).item() for x in logits]
    assert safety(RESPONSES[:2], "tiny-reward") == pytest.approx(expected, abs=1e-5)


def _annotated(project: Path):
    _project(project)
    cfg = load_pipeline("pipelines/upo-tiny.yaml")
    for name in ("prepare-model", "annotate"):
        run_stage(cfg, name)
    path = read_json(stage_folder(cfg, "prepare-model") / "manifest.json")["summary"]["policy"]
    return cfg, Path(path["path"]), read_shards(stage_folder(cfg, "annotate"))


def test_annotate_stores_the_combined_aux_reward_of_every_response(project: Path) -> None:
    cfg, _, records = _annotated(project)
    expected = [0.5 * 1.0 + 0.5 * 1.0, 0.5 * 0.0 + 0.5 * 0.5, 0.5 * 0.4 + 0.5 * 0.15]
    for rec in records:
        assert rec["aux_rewards"] == pytest.approx(expected)
    summary = read_json(stage_folder(cfg, "annotate") / "manifest.json")["summary"]
    assert summary["aux_reward_mean"] == pytest.approx(sum(expected) / 3)


def _trainer(cfg_overrides: list[str], model: Path, records: list[dict], out: Path) -> Trainer:
    torch.manual_seed(0)
    cfg = load_pipeline("pipelines/upo-tiny.yaml", cfg_overrides)
    return Trainer(cfg, model, records, out, "h")


def test_upo_with_gamma_zero_is_exactly_its_preference_loss(project: Path) -> None:
    _, model, records = _annotated(project)
    upo = _trainer(
        ["train.loss.gamma=0", "train.loss.aux_warmup_steps=0"], model, records, project / "upo"
    )
    dpo = _trainer(["train.loss={name: dpo, beta: 0.1}"], model, records, project / "dpo")
    head_before = [p.detach().clone() for p in upo.value_head.parameters()]
    for _ in range(2):
        row_upo, row_dpo = upo.train_step(), dpo.train_step()
        upo.step += 1
        dpo.step += 1
        assert row_upo["loss"] == row_dpo["loss"]
        assert row_upo["grad_norm"] == row_dpo["grad_norm"]
        assert row_upo["upo/actor"] != 0.0  # the term exists; gamma=0 keeps it out
    for (name, a), b in zip(upo.model.named_parameters(), dpo.model.parameters(), strict=True):
        assert torch.equal(a, b), name
    # the value loss still trains the head (and only the head)
    assert any(
        not torch.equal(a, b) for a, b in zip(head_before, upo.value_head.parameters(), strict=True)
    )


def test_actor_term_changes_the_policy_once_warm(project: Path) -> None:
    _, model, records = _annotated(project)
    upo = _trainer(["train.loss.aux_warmup_steps=0"], model, records, project / "upo")
    dpo = _trainer(["train.loss={name: dpo, beta: 0.1}"], model, records, project / "dpo")
    row, plain = upo.train_step(), dpo.train_step()
    assert row["loss"] == plain["loss"]  # the same preference term ...
    assert row["upo/actor"] > 0 and row["upo/total"] > row["loss"]
    assert row["grad_norm"] > 2 * plain["grad_norm"]  # ... plus the actor's gradient


def test_value_head_checkpoint_round_trip_and_bit_exact_resume(project: Path) -> None:
    _, model, records = _annotated(project)
    whole = _trainer([], model, records, project / "whole")
    whole.train()

    first = _trainer([], model, records, project / "resumed")
    first.out.mkdir(parents=True, exist_ok=True)
    with open(first.out / "log.jsonl", "a") as f:
        f.write(json.dumps({"step": 1, **first.train_step(), "tokens_per_s": 0.0}) + "\n")
    first.step = 1
    first.save_checkpoint()
    saved = load_file(project / "resumed" / "checkpoints" / "step-000001" / VALUE_HEAD)
    for key, value in first.value_head.state_dict().items():
        assert torch.equal(saved[key], value), key

    second = _trainer([], model, records, project / "resumed")
    second.try_resume()
    for key, value in second.value_head.state_dict().items():
        assert torch.equal(saved[key], value), key
    second.train()

    logs = [
        [json.loads(x) for x in (project / run / "log.jsonl").read_text().splitlines()]
        for run in ("whole", "resumed")
    ]
    keys = ("loss", "upo/total", "upo/actor", "upo/value", "grad_norm")
    assert [[r[k] for k in keys] for r in logs[0]] == [[r[k] for k in keys] for r in logs[1]]
    assert [r["upo/actor_on"] for r in logs[0]] == [False, True, True]
    heads = [load_file(project / run / "model" / VALUE_HEAD) for run in ("whole", "resumed")]
    assert heads[0].keys() == heads[1].keys()
    assert all(torch.equal(heads[0][k], heads[1][k]) for k in heads[0])
    # the saved head loads into a fresh ValueHead of the model's hidden size
    fresh = ValueHead(64)
    fresh.load_state_dict(heads[0])
