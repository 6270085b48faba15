"""Each stage on the tiny model: outputs, caching, invalidation and resume after a kill."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch

from align.config import load_pipeline
from align.core.io import read_json
from align.data.records import read_shards
from align.model.loading import load_model, load_tokenizer
from align.model.logprobs import token_logps
from align.model.tokenize import encode_record
from align.pipeline import plan, run_stage, stage_folder
from tests.conftest import venv_env

QS = "pipelines/quickstart.yaml"


def _run_all(overrides: list[str] | None = None):
    cfg = load_pipeline(QS, overrides, smoke=True)
    ran = {p.name: run_stage(cfg, p.name)[1] for p in plan(cfg)}
    return cfg, ran


def test_every_stage_writes_its_outputs_and_second_run_is_cached(project: Path) -> None:
    cfg, ran = _run_all(["sample.k=3"])
    assert ran == dict.fromkeys(
        ["prepare-model", "sample", "annotate", "train", "evaluate", "judge"], True
    )

    samples = read_shards(stage_folder(cfg, "sample"))
    assert len(samples) == 4 and all(len(r["responses"]) == 3 for r in samples)

    annotated = read_shards(stage_folder(cfg, "annotate"))
    for rec in annotated:
        assert len(rec["rewards"]) == len(rec["ref_logps"]) == len(rec["n_tokens"]) == 3
        assert all(lp < 0 and math.isfinite(lp) for lp in rec["ref_logps"])
        assert all(n >= 1 for n in rec["n_tokens"])

    train = stage_folder(cfg, "train")
    log = (train / "log.jsonl").read_text().splitlines()
    assert len(log) == 2  # smoke: max_steps 2
    assert (train / "model" / "config.json").is_file()
    assert read_json(train / "metrics.json")["steps"] == 2

    metrics = read_json(stage_folder(cfg, "evaluate") / "metrics.json")
    assert metrics["n_prompts"] == 4 and 0 <= metrics["win_rate/trained_vs_initial"] <= 1

    _, again = _run_all(["sample.k=3"])
    assert not any(again.values())


def test_ref_logps_equal_a_direct_forward_pass(project: Path) -> None:
    cfg, _ = _run_all()
    rec = read_shards(stage_folder(cfg, "annotate"))[0]
    path = read_json(stage_folder(cfg, "prepare-model") / "manifest.json")["summary"]["policy"][
        "path"
    ]
    model, tok = load_model(path, device="cpu"), load_tokenizer(path)
    prompt, responses = encode_record(tok, rec, cfg.train.max_length, cfg.train.max_prompt_length)
    ids = torch.tensor([prompt + responses[1]])
    mask = torch.zeros_like(ids, dtype=torch.bool)
    mask[0, len(prompt) :] = True
    with torch.no_grad():
        direct = token_logps(model(ids).logits, ids, mask).sum().item()
    # the stored value came from a padded batch of several sequences
    assert abs(direct - rec["ref_logps"][1]) < 1e-4
    assert rec["n_tokens"][1] == len(responses[1])


def test_changing_a_train_param_reruns_only_downstream(project: Path) -> None:
    _run_all()
    cfg = load_pipeline(QS, ["train.learning_rate=3e-4"], smoke=True)
    status = {p.name: p.cached for p in plan(cfg)}
    assert status == {
        "prepare-model": True,
        "sample": True,
        "annotate": True,
        "train": False,
        "evaluate": False,
        "judge": False,
    }


def test_output_of_another_config_is_wiped_not_resumed(project: Path) -> None:
    cfg, _ = _run_all()
    old = read_shards(stage_folder(cfg, "sample"))
    cfg2 = load_pipeline(QS, ["sample.seed=7"], smoke=True)
    assert run_stage(cfg2, "sample")[1]
    new = read_shards(stage_folder(cfg2, "sample"))
    assert [r["id"] for r in new] == [r["id"] for r in old]
    assert [r["responses"] for r in new] != [r["responses"] for r in old]


def test_partial_folder_without_manifest_is_not_current(project: Path) -> None:
    cfg, _ = _run_all()
    (stage_folder(cfg, "annotate") / "manifest.json").unlink()
    status = {p.name: p.cached for p in plan(cfg)}
    assert status["annotate"] is False and status["sample"] is True


def test_sampling_resumes_after_sigkill(project: Path) -> None:
    """Kill `align stage ... sample` after its first shard; the re-run keeps that shard as it
    is, writes the rest, and the records equal an uninterrupted run."""
    common = [
        "--smoke",
        "--set",
        "data.train.limit=12",
        "--set",
        "sample.shard_size=2",
        "--set",
        "sample.batch_prompts=1",
        "--set",
        "sample.max_new_tokens=48",
    ]
    env = venv_env(project)
    stage = [sys.executable, "-m", "flows.cli", "stage", QS]
    subprocess.run([*stage, "prepare-model", *common], check=True, env=env, capture_output=True)
    folder = project / "runs" / "quickstart-smoke" / "sample"
    proc = subprocess.Popen(
        [*stage, "sample", *common], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    first = folder / "shard-00000.parquet"
    deadline = time.time() + 120
    while not first.exists() and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert first.exists(), "the first shard never appeared"
    shards_at_kill = sorted(folder.glob("shard-*.parquet"))
    assert len(shards_at_kill) < 6 and not (folder / "manifest.json").exists()
    first_mtime = first.stat().st_mtime_ns

    subprocess.run([*stage, "sample", *common], check=True, env=env, capture_output=True)
    assert first.stat().st_mtime_ns == first_mtime  # completed work is not redone
    resumed = read_shards(folder)

    fresh = [*common, "--set", "runs_dir=fresh"]
    for name in ("prepare-model", "sample"):
        subprocess.run([*stage, name, *fresh], check=True, env=env, capture_output=True)
    uninterrupted = read_shards(project / "fresh" / "quickstart-smoke" / "sample")
    assert [r["id"] for r in resumed] == [r["id"] for r in uninterrupted]
    assert [r["responses"] for r in resumed] == [r["responses"] for r in uninterrupted]


def test_annotate_with_a_reward_model_scores_every_response(project: Path) -> None:
    """An HF sequence-classification reward model (a random tiny one) as the reward source:
    the stored rewards equal the model's logit on the chat-formatted (prompt, response)."""
    from align.model.loading import resolve_model
    from align.rewards import RewardModel

    cfg, _ = _run_all(["annotate.reward={model: tiny-reward}", "evaluate=null", "judge=null"])
    rec = read_shards(stage_folder(cfg, "annotate"))[0]
    assert len(set(rec["rewards"])) > 1  # a random head still tells responses apart
    direct = RewardModel(str(resolve_model("tiny-reward")))(
        [rec["prompt"]], rec["responses"][:1], 1
    )
    assert abs(direct[0] - rec["rewards"][0]) < 1e-4
