"""BMC end to end: rewrite parsing and guard rails, the rewrite stage on canned rewriter
replies (diff masks, fallbacks, resume), DPO-BMC = DPO with empty masks, and `align run`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from align.config import load_pipeline
from align.config.losses import loss_config
from align.core.io import read_json
from align.data.records import read_shards, shard_path
from align.llm.backend import ChatResult
from align.llm.fake import ScriptedBackend
from align.model.tiny import build_tiny_tokenizer
from align.model.tokenize import encode_response
from align.pipeline import plan, run_stage, stage_folder
from align.rewrite.masks import bmc_diff_masks, stopword_token_ids
from align.rewrite.rewriter import (
    LENGTH_SLACK,
    check_rewrite,
    limit_length,
    parse_rewrite,
    preference_pairs,
    rewrite_request,
)
from align.train.bmc import bmc_batch_logps
from align.train.losses import kwise_loss
from align.train.trainer import Trainer
from tests.conftest import venv_env

PIPELINE = """
name: bmc-tiny
model: {policy: tiny}
data:
  train: {path: data/pairs.jsonl, format: kwise}
annotate:
  reward: {from_data: true}
rewrite:
  backend: {kind: local, model: tiny, max_new_tokens: 40}
  shard_size: 2
train:
  loss: {name: dpo_bmc, beta: 0.1, delta: 2.0}
  max_steps: 2
  save_steps: 1
  batch_size: 2
  max_length: 128
  max_prompt_length: 64
"""
# winner, loser, reward gap; the last record is a tie and must be skipped
ROWS = [
    ("The sum is 7 apples", "The sum is 9 apples"),
    ("Half of 10 is 5", "Half of 10 is 4"),
    ("There are 12 shells", "There are 11 shells"),
    ("It is 3", "It is 8"),
]


def _write_project(project: Path) -> None:
    rows = [
        {"id": f"p{i}", "prompt": f"Question {i}?", "responses": [w, lo], "rewards": [1.0, 0.0]}
        for i, (w, lo) in enumerate(ROWS)
    ]
    rows.append({"id": "tie", "prompt": "Tie?", "responses": ["a", "b"], "rewards": [0.5, 0.5]})
    (project / "data" / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (project / "pipelines" / "bmc-tiny.yaml").write_text(PIPELINE)


def _reply(request) -> str | None:
    """Canned rewriter: fix the number in the draft to the reference's, one per outcome."""
    user = request.messages[-1][1]
    draft = user.split("[Draft answer]\n", 1)[1]
    reference = user.split("[Reference answer]\n", 1)[1].split("\n\n[Draft answer]")[0]
    canned = {
        "The sum is 9 apples": "Revised draft: The sum is 7 apples",  # label stripped
        "Half of 10 is 4": "```\nHalf of 10 is 5\n```",  # fence stripped
        "There are 11 shells": "There are 11 shells",  # unchanged: falls back
        "It is 8": None,  # failed call: falls back
    }
    assert reference  # the winner is shown as the reference
    return canned[draft]


@pytest.fixture
def scripted(monkeypatch: pytest.MonkeyPatch) -> list[ScriptedBackend]:
    made: list[ScriptedBackend] = []

    def make(cfg, device):
        made.append(ScriptedBackend(_reply, judge_id="canned-rewriter"))
        return made[-1]

    monkeypatch.setattr("align.llm.open.make_backend", make)
    return made


# ---- parsing and guard rails ---------------------------------------------------------------
def test_parse_rewrite_strips_labels_fences_and_whitespace() -> None:
    assert parse_rewrite("  Revised draft:  It is 7.\n") == "It is 7."
    assert parse_rewrite("```text\nIt is 7.\n```") == "It is 7."
    assert parse_rewrite("answer: 7") == "7"
    assert parse_rewrite("The answer: 7") == "The answer: 7"  # a label only at the start


def test_check_rewrite_guard_rails() -> None:
    ok = ChatResult(text="It is 7.", output_tokens=5)
    assert check_rewrite(ok, "It is 8.", max_tokens=40) == ("It is 7.", "ok")
    assert check_rewrite(ChatResult(error="timeout"), "x", 40) == (None, "failed")
    assert check_rewrite(ChatResult(text="  \n", output_tokens=2), "x", 40) == (None, "empty")
    assert check_rewrite(ChatResult(text="Revised:", output_tokens=2), "x", 40) == (None, "empty")
    cut = ChatResult(text="It is 7 because", output_tokens=40)
    assert check_rewrite(cut, "It is 8.", 40) == (None, "truncated")
    same = ChatResult(text="It  is\n8.", output_tokens=4)
    assert check_rewrite(same, "It is 8.", 40) == (None, "unchanged")


def test_limit_length_cuts_to_the_rule_and_a_sentence_end() -> None:
    tok = build_tiny_tokenizer()
    short = "It is 7."
    assert limit_length(short, tok, loser_tokens=10, ratio=2.0) == (short, False)
    long = "It is 7. " * 30
    text, cut = limit_length(long, tok, loser_tokens=4, ratio=2.0)
    n = len(tok(text, add_special_tokens=False).input_ids)
    assert cut and n <= 2 * 4 + LENGTH_SLACK
    assert text.endswith("7.")  # cut back to the last full sentence


def test_preference_pairs_best_vs_worst_and_ties_skipped() -> None:
    records = [
        {"rewards": [0.2, 1.0, -1.0, 1.0]},
        {"rewards": [0.5, 0.5, 0.5]},
        {"rewards": [0.0, 3.0]},
    ]
    pairs, skipped = preference_pairs(records)
    assert [(w, lo) for _, w, lo in pairs] == [(1, 2), (1, 0)]
    assert skipped == 1


def test_request_shows_winner_as_reference_and_loser_as_draft() -> None:
    req = rewrite_request([{"role": "user", "content": "What is 3+4?"}], "7", "8", 64)
    user = req.messages[-1][1]
    assert req.max_tokens == 64 and req.template == "bmc-rewrite@1"
    assert user.index("What is 3+4?") < user.index("[Reference answer]\n7")
    assert user.index("[Reference answer]\n7") < user.index("[Draft answer]\n8")


# ---- the stage on canned replies -------------------------------------------------------------
def _run_to_rewrite(project: Path):
    _write_project(project)
    cfg = load_pipeline("pipelines/bmc-tiny.yaml")
    for name in ("prepare-model", "annotate", "rewrite"):
        run_stage(cfg, name)
    return cfg


def test_rewrite_stage_pairs_masks_and_fallbacks(project: Path, scripted) -> None:
    cfg = _run_to_rewrite(project)
    rows = {r["id"]: r for r in read_shards(stage_folder(cfg, "rewrite"))}
    summary = read_json(stage_folder(cfg, "rewrite") / "manifest.json")["summary"]
    assert summary["pairs"] == 4 and summary["skipped_ties"] == 1
    assert summary["modified"] == 2 and summary["modified_share"] == 0.5
    assert summary["fallback_unchanged"] == 1 and summary["fallback_failed"] == 1
    assert [rows[i]["rewrite"] for i in ("p0", "p1", "p2", "p3")] == [
        "ok",
        "ok",
        "unchanged",
        "failed",
    ]
    assert rows["p0"]["responses"] == ["The sum is 7 apples", "The sum is 9 apples"]
    assert rows["p0"]["winner"] == "The sum is 7 apples"
    assert rows["p2"]["responses"] == ["There are 12 shells", "There are 11 shells"]

    tok = build_tiny_tokenizer()
    stop = stopword_token_ids(tok)
    for row in rows.values():
        chosen, rejected = (encode_response(tok, t, 64) for t in row["responses"])
        assert row["diff_masks"] == list(bmc_diff_masks(chosen, rejected, stop))
        assert row["n_tokens"] == [len(chosen), len(rejected)]
        assert [len(x) for x in row["ref_token_logps"]] == row["n_tokens"]
        assert row["ref_logps"] == pytest.approx([sum(x) for x in row["ref_token_logps"]])
    # only the edited number (and what the diff groups with it) is marked, not the shared text
    marked = [
        t
        for t, m in zip(
            encode_response(tok, "The sum is 7 apples", 64),
            rows["p0"]["diff_masks"][0],
            strict=True,
        )
        if m
    ]
    assert 0 < len(marked) < rows["p0"]["n_tokens"][0] - 2
    assert "7" in tok.decode(marked)


def test_rewrite_stage_resumes_at_the_missing_shard(project: Path, scripted) -> None:
    cfg = _run_to_rewrite(project)
    folder = stage_folder(cfg, "rewrite")
    first, second = shard_path(folder, 0), shard_path(folder, 1)
    kept = first.stat().st_mtime_ns
    second.unlink()
    (folder / "manifest.json").unlink()
    run_stage(cfg, "rewrite")
    assert first.stat().st_mtime_ns == kept  # the finished shard was not redone
    assert second.is_file() and len(read_shards(folder)) == 4
    # the redone shard's successful reply came from the rewrite cache; only the failed call
    # (failures are never cached) was sent again
    assert [r.messages[-1][1].endswith("It is 8") for r in scripted[-1].sent] == [True]


# ---- training -------------------------------------------------------------------------------
def test_bmc_weights_with_empty_masks_are_plain_sums() -> None:
    torch.manual_seed(0)
    tok = -torch.rand(4, 6, dtype=torch.float64) * 3
    mask = torch.tensor([[1] * 6, [1] * 4 + [0] * 2, [1] * 5 + [0], [1] * 3 + [0] * 3]).bool()
    tok = tok * mask
    ref = [(-torch.rand(int(n), dtype=torch.float64)).tolist() for n in mask.sum(-1)]
    zeros = [[0] * int(n) for n in mask.sum(-1)]
    policy, ref_seq = bmc_batch_logps(tok, mask, zeros, ref, delta=2.0)
    assert torch.allclose(policy, tok.sum(-1))
    assert ref_seq.tolist() == pytest.approx([sum(r) for r in ref])
    rewards = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    bmc = kwise_loss(
        loss_config("dpo_bmc", beta=0.1), policy.view(2, 2), ref_seq.view(2, 2), rewards
    ).losses
    ref_sums = torch.tensor([sum(r) for r in ref], dtype=torch.float64).view(2, 2)
    dpo = kwise_loss(loss_config("dpo", beta=0.1), tok.sum(-1).view(2, 2), ref_sums, rewards)
    dpo = dpo.losses
    assert torch.allclose(bmc, dpo, atol=1e-12)
    # a marked token changes the loss: the test above can fail
    ones = [[1] * int(n) for n in mask.sum(-1)]
    weighted, _ = bmc_batch_logps(tok, mask, ones, ref, delta=2.0)
    assert not torch.allclose(weighted, policy)


def test_dpo_bmc_step_equals_dpo_step_when_masks_are_empty(project: Path, scripted) -> None:
    cfg = _run_to_rewrite(project)
    records = read_shards(stage_folder(cfg, "rewrite"))
    summary = read_json(stage_folder(cfg, "prepare-model") / "manifest.json")["summary"]
    model = Path(summary["policy"]["path"])

    def first_step(name: str, mark: int) -> dict:
        rows = [{**r, "diff_masks": [[mark] * n for n in r["n_tokens"]]} for r in records]
        run_cfg = load_pipeline("pipelines/bmc-tiny.yaml", [f"train.loss={{name: {name}}}"])
        return Trainer(run_cfg, model, rows, project / name, "h").train_step()

    dpo, bmc, marked = first_step("dpo", 0), first_step("dpo_bmc", 0), first_step("dpo_bmc", 1)
    # at step 1 policy = reference, so every loss is log 2 (float32 sums vs float64 sums)
    assert bmc["loss"] == pytest.approx(dpo["loss"], abs=1e-6)
    assert dpo["loss"] == pytest.approx(0.693147, abs=1e-5)
    # the gradient is where the weights act: equal with empty masks, larger with full ones
    assert bmc["grad_norm"] == pytest.approx(dpo["grad_norm"], rel=1e-5)
    assert marked["grad_norm"] > 1.5 * dpo["grad_norm"]


def test_align_run_with_the_rewrite_stage(project: Path) -> None:
    """The whole BMC pipeline through the CLI (tiny model as the rewriter: every rewrite of a
    random model hits the token cap and falls back, which the manifest must say)."""
    _write_project(project)
    subprocess.run(
        ["align", "run", "pipelines/bmc-tiny.yaml", "--no-prefect"],
        check=True,
        env=venv_env(project),
        capture_output=True,
    )
    cfg = load_pipeline("pipelines/bmc-tiny.yaml")
    assert [p.name for p in plan(cfg)] == ["prepare-model", "annotate", "rewrite", "train"]
    assert all(p.cached for p in plan(cfg))
    summary = read_json(stage_folder(cfg, "rewrite") / "manifest.json")["summary"]
    fallbacks = sum(summary[f"fallback_{r}"] for r in ("failed", "empty", "truncated", "unchanged"))
    assert summary["pairs"] == 4 and summary["modified"] + fallbacks == 4
    log = (stage_folder(cfg, "train") / "log.jsonl").read_text().splitlines()
    assert len(log) == 2
    assert json.loads(log[0])["loss"] == pytest.approx(0.6931, abs=1e-3)
