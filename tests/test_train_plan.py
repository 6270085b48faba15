"""The train stage's figures: `train.global_batch` validated against batch_size x grad_accum x
processes, the 7B recipes running what they state, and `align plan` printing global batch,
tokens per step, the per-GPU memory estimate and each stage's placement."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from transformers import LlamaConfig, MistralConfig

from align.config import load_pipeline
from align.core.errors import AlignError
from align.model.shape import model_shape
from align.train.memory import GIB, estimate_train_memory
from tests.conftest import REPO, venv_env

QS = REPO / "pipelines/quickstart.yaml"
RECIPES = sorted((REPO / "pipelines").glob("*-7b.yaml"))


def _error(*overrides: str) -> str:
    with pytest.raises(AlignError) as info:
        load_pipeline(QS, list(overrides))
    assert "\n" not in str(info.value)
    return str(info.value)


def test_a_global_batch_the_settings_do_not_make_is_refused_with_the_fix() -> None:
    message = _error("train.batch_size=2", "train.grad_accum=1", "train.global_batch=8")
    assert message == (
        f"{QS}: train.global_batch: 8 but train.batch_size 2 x train.grad_accum 1 x 1 process "
        "(no train.distributed) = 2; set train.grad_accum: 4, or change train.global_batch"
    )
    dist = "train.distributed={num_processes: 2, machines: 2, main_address: 10.0.0.1}"
    message = _error("train.batch_size=3", "train.grad_accum=2", dist, "train.global_batch=16")
    assert (
        "train.global_batch: 16 but train.batch_size 3 x train.grad_accum 2 x 4 processes "
        "(train.distributed.num_processes 2 x machines 2) = 24; set train.batch_size: 2"
    ) in message
    ok = load_pipeline(
        QS, ["train.batch_size=2", "train.grad_accum=2", dist, "train.global_batch=16"]
    )
    assert ok.train.effective_global_batch == 16


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_each_7b_recipe_states_the_global_batch_it_runs(recipe: Path) -> None:
    cfg = load_pipeline(recipe)
    stated = {"nca-7b": 32, "bmc-7b": 128, "upo-7b": 32, "online-ipo-7b": 32, "ipo-md-7b": 32}
    assert cfg.train.global_batch == stated[cfg.name] == cfg.train.effective_global_batch
    smoke = load_pipeline(recipe, smoke=True)  # the smoke run is one small process
    assert smoke.train.global_batch is None and smoke.train.distributed is None


def test_model_shape_counts_parameters_exactly() -> None:
    mistral = model_shape(MistralConfig(), 16, "all-linear")
    assert mistral.params == 7_241_732_096  # Mistral-7B
    assert mistral.lora_params == 41_943_040  # r=16 on q,k,v,o,gate,up,down of 32 layers
    assert mistral.lora_inputs == 4 * 4096 + 2 * 4096 + 14336  # q,k,v,o + gate,up + down
    llama3 = model_shape(
        LlamaConfig(
            vocab_size=128_256, intermediate_size=14_336, num_key_value_heads=8, rope_theta=5e5
        )
    )
    assert llama3.params == 8_030_261_248  # Llama-3-8B


def test_the_memory_estimate_follows_the_documented_formula() -> None:
    cfg = load_pipeline(REPO / "pipelines/nca-7b.yaml")
    shape = model_shape(MistralConfig(), 16, "all-linear")
    est = estimate_train_memory(shape, cfg, k=4, processes=8, sharded=False)
    assert est.weights == 7_241_732_096 * 2  # bf16 weights
    assert est.gradients == 41_943_040 * 4 * 2  # fp32 adapter gradients and DDP's buckets
    assert est.optimizer == 41_943_040 * 8  # two fp32 AdamW moments
    tokens = 1 * (512 + 4 * 512)  # batch 1: the prompt once and K=4 responses
    per_layer = 2 * (6 * 4096 + 2 * 1024 + 4 * 14336 + 38912)
    assert est.activations == tokens * 32 * per_layer + 4 * 512 * 2 * 2 * 32000
    assert 32 < est.total / GIB < 34
    sharded = estimate_train_memory(shape, cfg, k=4, processes=8, sharded=True)
    assert sharded.weights == 7_241_732_096 * 2 / 8 + 2 * shape.layer_params * 2


def _hf_cache(root: Path, repo: str, config) -> Path:
    """A Hugging Face hub cache holding only `repo`'s config.json, in the hub's own layout."""
    folder = root / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs/main").write_text(commit)
    (folder / "snapshots" / commit).mkdir(parents=True)
    config.to_json_file(folder / "snapshots" / commit / "config.json")
    return root


def _plan(tmp_path: Path, recipe: str, hub_cache: Path) -> str:
    """`align plan pipelines/<recipe>` as a user runs it, offline, with `hub_cache` as the hub
    cache; its standard output."""
    env = venv_env(tmp_path)
    env.update(HF_HUB_CACHE=str(hub_cache), HF_HUB_OFFLINE="1", COLUMNS="100")
    return subprocess.run(
        ["align", "plan", str(REPO / "pipelines" / recipe)],
        cwd=REPO,  # the recipes name configs/accelerate/ relative to the project
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout


def test_plan_prints_placement_global_batch_tokens_and_memory(tmp_path: Path) -> None:
    hub = _hf_cache(tmp_path / "hub", "HuggingFaceH4/mistral-7B-SFT-beta", MistralConfig())
    out = _plan(tmp_path, "nca-7b.yaml", hub)
    tail = out[out.index("placement") :]
    assert "placement (model.device: auto):" in tail
    assert "  annotate: 8 workers (one GPU each): auto (cpu here) (reference log-probs)" in tail
    assert "  train: 8 processes (8 per machine x 1), one GPU each, DDP" in tail
    assert "global batch 32 (as stated) = batch_size 1 x grad_accum 4 x 8 processes" in tail
    assert "tokens per optimizer step <= 81,920 (K=4, each prompt once, at most)" in tail
    assert "memory per GPU ~ 33.1 GiB (7.24B params, LoRA, replicated; docs/gpu.md)" in tail
    assert "= weights 13.5 + gradients 0.3 + optimizer 0.3 + activations 19.0 GiB" in tail
    assert all(len(line) <= 80 for line in tail.splitlines())


def test_plan_says_when_the_model_shape_is_not_here(tmp_path: Path) -> None:
    out = _plan(tmp_path, "bmc-7b.yaml", tmp_path / "empty")
    assert "train: 4 processes (4 per machine x 1), one GPU each, FSDP" in out
    assert "global batch 128 (as stated) = batch_size 2 x grad_accum 16 x 4 processes" in out
    assert "memory per GPU: no config.json of princeton-nlp/Llama-3-Base-8B-SFT here" in out
