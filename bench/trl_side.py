"""TRL's DPOTrainer on the benchmark rows: per-step times from a callback, first-step metrics."""

from __future__ import annotations

import time
from pathlib import Path


def trl_run(
    path: Path,
    rows: list[dict],
    batch: int,
    steps: int,
    out: Path,
    *,
    precompute: bool,
    bf16: bool,
    defaults: bool = False,
    warmup: int = 1,
) -> tuple[float, float]:
    """(median seconds per timed optimizer step after `warmup` untimed ones, first step's
    logps/chosen). `defaults` keeps TRL's own choices (gradient checkpointing on); otherwise
    checkpointing is off."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import DPOConfig, DPOTrainer

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []

        def on_step_begin(self, args, state, control, **kw):
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kw):
            self.times.append(time.perf_counter() - self.start)

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    config = DPOConfig(
        output_dir=str(out),
        per_device_train_batch_size=batch,
        max_steps=warmup + steps,
        learning_rate=1e-6,
        lr_scheduler_type="constant",
        warmup_steps=0,
        max_grad_norm=0.0,
        beta=0.1,
        max_length=4096,
        precompute_ref_log_probs=precompute,
        bf16=bf16,
        use_cpu=True,
        report_to=[],
        logging_steps=1,
        save_strategy="no",
        seed=0,
        dataloader_num_workers=0,
        disable_tqdm=True,
        **({} if defaults else {"gradient_checkpointing": False}),
    )
    timer = StepTimer()
    trainer = DPOTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        callbacks=[timer],
    )
    trainer.train()
    first = next(h for h in trainer.state.log_history if "logps/chosen" in h)
    timed = sorted(timer.times[warmup:])
    return timed[len(timed) // 2], first["logps/chosen"]
