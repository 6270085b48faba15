"""The per-GPU memory estimate of `align plan` (align/train/memory.py) against a measured peak,
on the CPU: the growth of peak RSS over a training run, from just before the trainer loads the
policy to the end of its steps, with every row at the length limits.

Each setting runs in a process of its own (a clean peak). The estimate counts tensors only; the
measured growth also holds allocator slack, autograd bookkeeping and the fp32 softmax chunks, so
a ratio measured/estimate a little above 1 is what a sound estimate gives.

    python -m bench.memory_estimate [--model embedded|tiny] [--steps 3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

SETTINGS = {  # name: (train overrides, LoRA)
    "full fp32": ({}, False),
    "full fp32, checkpointing": ({"gradient_checkpointing": True}, False),
    "LoRA r16 fp32": ({}, True),
    "full bf16_weights": ({"precision": "bf16_weights"}, False),
}
PROMPT, RESPONSE, K, BATCH = 128, 128, 4, 2


def rss_kib(field: str) -> int:
    """VmRSS (now) or VmHWM (peak) of this process, in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def one(model: str, name: str, steps: int) -> dict:
    """Train `steps` steps of setting `name` in this process; estimate and measured bytes."""
    import random

    from transformers import AutoConfig

    from align.config import validate_dict
    from align.core.runtime import prepare_process
    from align.model.shape import model_shape
    from align.train.examples import Example
    from align.train.memory import estimate_train_memory
    from align.train.trainer import Trainer
    from bench.common import model_path

    prepare_process()
    path = model_path(model)
    overrides, lora = SETTINGS[name]
    cfg = validate_dict(
        {
            "name": "bench",
            "model": {"policy": str(path), "device": "cpu"}
            | ({"lora": {"r": 16, "alpha": 16}} if lora else {}),
            "data": {"train": {"path": "unused.jsonl", "format": "kwise"}},
            "annotate": {"reward": {"from_data": True}},
            "train": {
                "loss": {"name": "nca", "beta": 0.01},
                "batch_size": BATCH,
                "max_steps": steps,
                "save_steps": steps,
                "max_length": PROMPT + RESPONSE,
                "max_prompt_length": PROMPT,
                **overrides,
            },
        },
        "bench",
    )
    rng = random.Random(0)
    config = AutoConfig.from_pretrained(path)
    ids = range(10, config.vocab_size)
    groups = [
        ([rng.choice(ids) for _ in range(PROMPT)], [[rng.choice(ids) for _ in range(RESPONSE)]] * K)
        for _ in range(BATCH * steps)
    ]
    rewards = [[float(j) for j in range(K)] for _ in groups]
    refs = [[-400.0] * K for _ in groups]
    records = [
        {
            "id": str(i),
            "prompt": [{"role": "user", "content": "x"}],
            "responses": ["a"] * K,
            "rewards": r,
            "ref_logps": f,
        }
        for i, (r, f) in enumerate(zip(rewards, refs, strict=True))
    ]
    before = rss_kib("VmRSS")
    with tempfile.TemporaryDirectory() as out:
        trainer = Trainer(cfg, path, records, Path(out), "bench")
        trainer.examples = [
            Example(p, rs, r, f) for (p, rs), r, f in zip(groups, rewards, refs, strict=True)
        ]
        trainer.train()
    measured = (rss_kib("VmHWM") - before) * 1024
    shape = model_shape(config, 16 if lora else 0, "all-linear")
    estimate = estimate_train_memory(shape, cfg, K, processes=1, sharded=False)
    return {
        "setting": name,
        "estimate_mib": estimate.total / 2**20,
        "measured_mib": measured / 2**20,
        "ratio": measured / estimate.total,
        "parts_mib": [
            round(x / 2**20, 1)
            for x in (
                estimate.weights,
                estimate.gradients,
                estimate.optimizer,
                estimate.activations,
            )
        ],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="embedded", choices=["embedded", "tiny"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.model, args.one, args.steps)))
        return
    print(
        f"{args.model}: batch {BATCH} x K={K} x ({PROMPT} prompt + {RESPONSE} response tokens), "
        f"{args.steps} steps; MiB"
    )
    print(f"{'setting':28} {'estimate':>9} {'measured':>9} {'ratio':>6}  weights/grads/optim/act")
    for name in SETTINGS:
        cmd = [sys.executable, "-m", "bench.memory_estimate", "--model", args.model]
        cmd += ["--steps", str(args.steps), "--one", name]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        row = json.loads(out.strip().splitlines()[-1])
        print(
            f"{name:28} {row['estimate_mib']:9.0f} {row['measured_mib']:9.0f} "
            f"{row['ratio']:6.2f}  {row['parts_mib']}"
        )


if __name__ == "__main__":
    main()
