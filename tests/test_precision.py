"""`train.precision: bf16_weights`: bf16 model weights, fp32 masters in the optimizer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file
from torch import nn

from align.config import load_pipeline
from align.model.loading import resolve_model
from align.train.precision import MasterWeights
from align.train.trainer import Trainer
from tests.test_trainer import _records


def _sgd_steps(param: nn.Parameter, master: MasterWeights | None, steps: int) -> None:
    """`steps` SGD steps of lr 1e-4 on gradient 1, through the masters when given."""
    opt = torch.optim.SGD(master.masters if master else [param], lr=1e-4)
    for _ in range(steps):
        param.grad = torch.ones_like(param)
        if master:
            master.grads_to_masters()
        opt.step()
        if master:
            master.masters_to_model()


def test_masters_accumulate_updates_bf16_rounds_away() -> None:
    # bf16 spacing just below 1.0 is 2^-8 = 0.0039: 1 - 1e-4 rounds back to 1.0 every step
    plain = nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    _sgd_steps(plain, None, 50)
    assert plain.tolist() == [1.0, 1.0, 1.0]
    # the fp32 master reaches 1 - 50e-4 = 0.995; the model holds its bf16 rounding 0.99609375
    param = nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    master = MasterWeights([("w", param)])
    _sgd_steps(param, master, 1)
    assert param.tolist() == [1.0, 1.0, 1.0]
    assert master.masters[0].tolist() == pytest.approx([0.9999] * 3, abs=1e-7)
    _sgd_steps(param, master, 49)
    assert master.state_dict()["w"].tolist() == pytest.approx([0.995] * 3, abs=1e-6)
    assert param.tolist() == [0.99609375] * 3
    assert param.grad is None and param.dtype == torch.bfloat16


def test_an_fp32_parameter_is_its_own_master() -> None:
    lora = nn.Parameter(torch.ones(2))  # PEFT keeps adapters in fp32
    master = MasterWeights([("lora", lora)])
    assert master.masters[0] is lora
    lora.grad = torch.full((2,), 3.0)
    master.grads_to_masters()
    assert lora.grad.tolist() == [3.0, 3.0]


def _cfg(precision: str):
    return load_pipeline(
        "pipelines/quickstart.yaml",
        [
            "train.warmup_ratio=0",
            "train.lr_scheduler=constant",
            "train.loss={name: dpo, beta: 1.0}",
            "train.learning_rate=3e-3",
            "train.max_steps=8",
            "train.save_steps=100",
            "train.batch_size=3",
            f"train.precision={precision}",
        ],
        smoke=True,
    )


def _log(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]


def test_bf16_weights_trains_like_autocast_and_saves_fp32(project: Path) -> None:
    model = Path(resolve_model("tiny"))
    recs = _records(_cfg("bf16"))
    for precision in ("bf16", "bf16_weights"):
        AcceleratorState._reset_state()  # one process, two mixed-precision settings
        torch.manual_seed(0)
        Trainer(_cfg(precision), model, recs, project / precision, "h").train()
    auto, pure = _log(project / "bf16"), _log(project / "bf16_weights")
    # step 1: the same weights up to bf16 rounding, so nearly the same log-probs
    assert pure[0]["logps/chosen"] == pytest.approx(auto[0]["logps/chosen"], rel=2e-2)
    assert pure[-1]["rewards/margin"] > pure[0]["rewards/margin"] + 1.0
    saved = load_file(project / "bf16_weights" / "model" / "model.safetensors")
    assert {t.dtype for t in saved.values()} == {torch.float32}  # the masters, not bf16
    start = load_file(model / "model.safetensors")
    key = next(k for k in saved if "q_proj" in k)
    # an fp32 master moved off the bf16 grid: the saved weights are not bf16 roundings
    assert not torch.equal(saved[key], saved[key].bfloat16().float())
    assert not torch.equal(saved[key], start[key].float())


def _full_bf16_cfg(*overrides: str):
    return load_pipeline(
        "pipelines/quickstart.yaml",
        [
            "model.dtype=bfloat16",
            "train.precision=bf16",
            "train.learning_rate=5e-7",  # bmc-7b / upo-7b
            "train.lr_scheduler=constant",
            "train.warmup_ratio=0",
            "train.max_steps=3",
            "train.batch_size=3",
            "train.loss={name: dpo, beta: 0.1}",
            *overrides,
        ],
        smoke=True,
    )


def test_bf16_full_fine_tuning_steps_fp32_masters(project: Path) -> None:
    """model.dtype bfloat16 without LoRA (bmc-7b, upo-7b): the trained weights and AdamW's
    state are fp32 and bf16 autocast runs the matmuls, so updates at lr 5e-7 accumulate. The
    old loading (bf16 weights stepped in place) moved ~1 % of them in 10 steps
    (bench/bf16_masters.py)."""
    cfg = _full_bf16_cfg()
    assert cfg.model.dtype == "bfloat16" and cfg.model.lora is None
    trainer = Trainer(cfg, Path(resolve_model("tiny")), _records(cfg), project / "out", "h")
    named = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
    assert {p.dtype for _, p in named} == {torch.float32}
    start = {n: p.detach().clone() for n, p in named}
    for _ in range(3):
        trainer.train_step()
        trainer.step += 1
    states = [s for s in trainer.optimizer.state_dict()["state"].values()]
    assert {s["exp_avg"].dtype for s in states} == {torch.float32}
    moved = sum((p.detach() != start[n]).sum().item() for n, p in named)
    total = sum(p.numel() for _, p in named)
    assert moved / total > 0.9
    # what the old loading did to the same updates: bf16 weights keep almost all their values
    kept = sum(
        (start[n].bfloat16() == (start[n] + (p.detach() - start[n])).bfloat16()).sum().item()
        for n, p in named
    )
    assert kept / total > 0.5


def test_lora_keeps_the_frozen_base_in_model_dtype(project: Path) -> None:
    cfg = _full_bf16_cfg("model.lora={r: 4, alpha: 8, dropout: 0.0}")
    trainer = Trainer(cfg, Path(resolve_model("tiny")), _records(cfg), project / "out", "h")
    params = list(trainer.model.named_parameters())
    assert {p.dtype for _, p in params if p.requires_grad} == {torch.float32}  # the adapters
    assert {p.dtype for n, p in params if "lora_" not in n} == {torch.bfloat16}
