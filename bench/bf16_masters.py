"""Do bf16 full fine-tuning updates survive? 10 AdamW steps at a 7B recipe's learning rate
(5e-7, constant, no warm-up) on the same data, three ways side by side:

- before: weights and AdamW state in bf16 (`model.dtype: bfloat16`, no LoRA, the old loading);
- bf16: fp32 weights (the optimizer's masters) under bf16 autocast, what `precision: bf16` does;
- bf16_weights: bf16 weights, fp32 masters in the optimizer (`precision: bf16_weights`).

Printed per way: the fraction of weight elements whose saved value differs from the value
training began with (the start in that way's weight dtype), and the fraction whose bf16 rounding
differs from the start's (what a bf16 copy of the result would see).

    python -m bench.bf16_masters --model embedded
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from unittest import mock

import torch
from accelerate.state import AcceleratorState
from safetensors.torch import load_file

from align.config import load_pipeline
from align.train.trainer import Trainer
from bench.common import annotated_records, banner, model_path

STEPS, LR = 10, 5e-7


def _config(precision: str):
    return load_pipeline(
        "pipelines/quickstart.yaml",
        [
            "model.dtype=bfloat16",
            f"train.precision={precision}",
            f"train.learning_rate={LR}",
            "train.lr_scheduler=constant",
            "train.warmup_ratio=0",
            f"train.max_steps={STEPS}",
            "train.save_steps=1000",
            "train.batch_size=2",
            "train.loss={name: dpo, beta: 0.1}",
        ],
        smoke=True,
    )


def _records(path: Path, cfg, n: int = 8) -> list[dict]:
    return annotated_records(
        path, cfg, lambda i: [f"The answer is {i + 3}.", "I do not know, sorry."], [1.0, 0.0], n
    )


def changed(
    start: dict[str, torch.Tensor], end: dict[str, torch.Tensor], began: torch.dtype
) -> tuple[float, float]:
    """(fraction of elements that moved from the start as training began with it, in `began`;
    fraction whose bf16 rounding moved)."""
    total = moved = moved_bf16 = 0
    for name, a in start.items():
        b = end[name]
        total += a.numel()
        moved += (a.to(began).to(b.dtype) != b).sum().item()
        moved_bf16 += (a.bfloat16() != b.bfloat16()).sum().item()
    return moved / total, moved_bf16 / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="embedded", choices=["embedded", "tiny"])
    args = parser.parse_args()
    banner(f"bf16 full fine-tuning: {STEPS} AdamW steps at lr {LR}, {args.model}")
    path = model_path(args.model)
    start = load_file(path / "model.safetensors")
    records = _records(path, _config("bf16"))
    bf16, fp32 = torch.bfloat16, torch.float32
    ways = {  # label: (train.precision, the old bf16 loading, the weights training began with)
        "before (bf16 weights + bf16 AdamW)": ("bf16", True, bf16),
        "bf16 (fp32 masters, autocast)": ("bf16", False, fp32),
        "bf16_weights (fp32 optimizer masters)": ("bf16_weights", False, bf16),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for label, (precision, old, began) in ways.items():
            AcceleratorState._reset_state()
            torch.manual_seed(0)
            out = Path(tmp) / precision / str(old)
            patch = mock.patch("align.train.trainer.weights_dtype", lambda *a, **k: "bfloat16")
            with patch if old else mock.patch.dict({}):
                Trainer(_config(precision), path, records, out, "h").train()
            end = load_file(out / "model" / "model.safetensors")
            dtype = next(iter(end.values())).dtype
            frac, frac_bf16 = changed(start, end, began)
            print(
                f"{label:40s} saved {dtype!s:15s} changed {100 * frac:6.2f} %  "
                f"bf16 rounding changed {100 * frac_bf16:6.2f} %"
            )


if __name__ == "__main__":
    main()
