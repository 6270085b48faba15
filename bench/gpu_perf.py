"""The GPU check's performance figures (bench/gpu_check.py): tokens/s and achieved TFLOP/s of
the NCA LoRA step on a Mistral-7B-shaped layer stack against this GPU's own bf16 matmul peak,
and peak memory of our trainer against TRL's DPOTrainer on the same model and texts.

The layer stack has random weights (7B's layer shape, 32k vocabulary); the step is measured at
two depths and extrapolated linearly to 32 layers, so a 7B model's weights are never needed.
"""

from __future__ import annotations

import math
import statistics
import tempfile
import time
from pathlib import Path

import torch

# Mistral-7B's layer shape, and the small one a CPU run uses to exercise the same code
FULL = {"hidden_size": 4096, "intermediate_size": 14336, "heads": 32, "kv_heads": 8, "vocab": 32000}
SMALL = {"hidden_size": 256, "intermediate_size": 896, "heads": 8, "kv_heads": 2, "vocab": 4000}
TARGET_MFU, TARGET_MEMORY = 0.45, 0.5


def mistral_shaped(device: torch.device, layers: int, *, full: bool) -> torch.nn.Module:
    """A random-weight MistralForCausalLM in bf16 on `device`: 7B's shapes (`full`) or SMALL."""
    from transformers import MistralConfig, MistralForCausalLM

    s = FULL if full else SMALL
    config = MistralConfig(
        hidden_size=s["hidden_size"],
        intermediate_size=s["intermediate_size"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv_heads"],
        vocab_size=s["vocab"],
        num_hidden_layers=layers,
        max_position_embeddings=4096,
        attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    with torch.device(device):
        return MistralForCausalLM(config).to(torch.bfloat16).eval()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device: torch.device, n: int) -> float:
    """bf16 matmul FLOP/s of this device now: the best of 10 n x n x n products."""
    a = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    b = torch.randn(n, n, dtype=torch.bfloat16, device=device)
    best = math.inf
    for i in range(12):
        _sync(device)
        t0 = time.perf_counter()
        a @ b
        _sync(device)
        if i >= 2:  # warm-up
            best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def step_flops(s: dict, layers: int, prompt: int, response: int, k: int) -> float:
    """FLOPs of one LoRA step over a prompt run once and its k responses on its cache: per
    layer 4 x linear params x tokens (forward and the input gradient; frozen weights get no
    weight gradient) + 3 x attention (forward, backward twice it), plus the LM head on the
    scored positions (forward and input gradient)."""
    h, kv = s["hidden_size"], s["hidden_size"] // s["heads"] * s["kv_heads"]
    linear = 2 * h * h + 2 * h * kv + 3 * h * s["intermediate_size"]
    tokens = prompt + k * response
    attention = 2 * prompt**2 * h + k * 4 * h * (response * prompt + response**2 / 2)
    head = 4 * s["vocab"] * h * (k * response + 1)
    return layers * (4 * linear * tokens + 3 * attention) + head


def _lora_step_seconds(device, layers: int, full: bool, prompt: int, response: int, k: int):
    """Median seconds of forward + backward of the shared-prompt log-probs (the NCA step's
    model work) with LoRA r=16 on every linear layer, under bf16 autocast."""
    from peft import LoraConfig, get_peft_model

    from align.model.logprobs import shared_prompt_logps

    model = get_peft_model(
        mistral_shaped(device, layers, full=full),
        LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"),
    ).train()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(0)
    groups = [
        (
            torch.randint(1, vocab, (prompt,), generator=g).tolist(),
            [torch.randint(1, vocab, (response,), generator=g).tolist() for _ in range(k)],
        )
    ]

    def step() -> None:
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logps, _ = shared_prompt_logps(model, groups, 0)
        logps.sum().backward()
        model.zero_grad(set_to_none=True)

    times = []
    for i in range(4):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        if i:
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def throughput(ctx) -> tuple[str, str]:
    """NCA LoRA step at K=4 x (512 prompt + 512 response) on 7B-shaped layers, extrapolated to
    32 layers from two depths; achieved TFLOP/s against this device's bf16 matmul peak."""
    full = ctx.cuda
    prompt, response, k = (512, 512, 4) if full else (32, 32, 4)
    shallow, deep = (2, 4) if full else (1, 2)
    t = {n: _lora_step_seconds(ctx.device, n, full, prompt, response, k) for n in (shallow, deep)}
    per_layer = (t[deep] - t[shallow]) / (deep - shallow)
    t32 = t[shallow] + (32 - shallow) * per_layer
    s = FULL if full else SMALL
    flops = step_flops(s, 32, prompt, response, k)
    peak = matmul_peak(ctx.device, 8192 if full else 1024)
    achieved = flops / t32
    mfu = achieved / peak
    figures = (
        f"{(prompt + k * response) / t32:,.0f} tokens/s ({k * (prompt + response) / t32:,.0f} "
        f"full-row tokens/s), {achieved / 1e12:.1f} TFLOP/s = {100 * mfu:.1f} % of the measured "
        f"bf16 matmul peak {peak / 1e12:.1f} TFLOP/s (32 layers extrapolated from "
        f"{shallow}/{deep}: {t[shallow] * 1e3:.1f}/{t[deep] * 1e3:.1f} ms; target "
        f">= {100 * TARGET_MFU:.0f} %)"
    )
    if not full:
        return "SKIP", "CPU, small shapes (the target is for a GPU): " + figures
    return ("PASS" if mfu >= TARGET_MFU else "FAIL"), figures


def _words(tokenizer, n: int, seed: int) -> str:
    """Text of about n tokens from words of the tokenizer's own vocabulary."""
    g = torch.Generator().manual_seed(seed)
    vocab = [w for w, i in tokenizer.get_vocab().items() if w.isalpha() and len(w) > 2]
    picks = torch.randint(len(vocab), (n,), generator=g).tolist()
    return " ".join(vocab[i] for i in picks)


def trl_memory(ctx) -> tuple[str, str]:
    """Peak GPU memory of one DPO step, ours (align's Trainer, shared prompt, precomputed
    reference) against TRL's DPOTrainer (precomputed reference too), LoRA r=16 in bf16 on a
    4-layer 7B-shaped model and the same texts: target ours <= 0.5 x TRL's."""
    from align.core.packages import installed

    if not ctx.cuda:
        return "SKIP", "needs CUDA"
    if not (installed("trl") and installed("datasets")):
        return "SKIP", "trl or datasets is not installed"
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from align.config import load_pipeline
    from align.model.loading import load_tokenizer, resolve_model
    from align.stages.annotate import _ref_logps
    from align.train.trainer import Trainer

    folder = Path(tempfile.mkdtemp(prefix="mistral-shaped-", dir=".")).resolve()
    model = mistral_shaped(ctx.device, 4, full=True)
    model.save_pretrained(folder)
    tokenizer = load_tokenizer(resolve_model("tiny"))
    tokenizer.save_pretrained(folder)
    del model
    rows = [
        {
            "prompt": _words(tokenizer, 150, 3 * i),
            "chosen": _words(tokenizer, 150, 3 * i + 1),
            "rejected": _words(tokenizer, 150, 3 * i + 2),
        }
        for i in range(4)
    ]
    lora = "model.lora={r: 16, alpha: 16, dropout: 0.0}"
    cfg = load_pipeline(
        "pipelines/quickstart.yaml",
        [
            lora,
            "train.precision=bf16",
            "model.dtype=bfloat16",
            "train.batch_size=1",
            "train.max_steps=2",
            "train.max_length=2048",
            "train.max_prompt_length=1024",
            "train.loss={name: dpo, beta: 0.1}",
        ],
        smoke=True,
    )
    records = [
        {
            "id": f"r{i}",
            "prompt": [{"role": "user", "content": r["prompt"]}],
            "responses": [r["chosen"], r["rejected"]],
            "rewards": [1.0, 0.0],
        }
        for i, r in enumerate(rows)
    ]
    from accelerate.state import AcceleratorState

    from align.model.loading import load_model

    AcceleratorState._reset_state()  # our Trainer and TRL's both set bf16, after other checks
    ref = load_model(folder, "bfloat16", device=ctx.device)
    for rec, (lp, n) in zip(records, _ref_logps(ref, tokenizer, records, cfg), strict=True):
        rec["ref_logps"], rec["n_tokens"] = lp, n
    del ref
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    Trainer(cfg, folder, records, Path("ours-memory"), "gpu-check").train()
    ours = torch.cuda.max_memory_allocated()
    torch.cuda.empty_cache()
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM

    torch.cuda.reset_peak_memory_stats()
    policy = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.bfloat16).to(ctx.device)
    trainer = DPOTrainer(
        model=policy,
        args=DPOConfig(
            output_dir="trl-memory",
            per_device_train_batch_size=1,
            max_steps=2,
            bf16=True,
            precompute_ref_log_probs=True,
            max_length=2048,
            gradient_checkpointing=False,
            report_to=[],
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
        ),
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(r=16, lora_alpha=16, lora_dropout=0.0, target_modules="all-linear"),
    )
    trainer.train()
    theirs = torch.cuda.max_memory_allocated()
    ratio = ours / theirs
    return ("PASS" if ratio <= TARGET_MEMORY else "FAIL"), (
        f"peak ours {ours / 2**30:.2f} GiB vs TRL DPOTrainer {theirs / 2**30:.2f} GiB = "
        f"{ratio:.2f}x (target <= {TARGET_MEMORY}x)"
    )
