"""Online alignment: every step samples a pair per prompt, labels it and updates (spec section 2).

For each prompt x of a step, y and y' are drawn without gradient from `align.mixture`:
online_ipo, online_dpo and online_slic draw both from the policy; ipo_md both from the
geometric mixture with weight `beta` on the reference; nash_md_pg y from the policy and its
opponent y' from the mixture. p = P(y > y') comes from `train.preference`, and
`align.losses.online_loss` takes the policy's (with gradient) and the reference's summed
log-probs of the pair. The step's loss is the mean over its prompts.

Same run layout as the offline trainer (which this class extends for checkpoints and resume):
the prompts of step s are `step_indices(s, ...)`, and each sampled row has its own generator
seeded from (train.seed, s, its place in the step), so the sampler's RNG state is a function of
the step a checkpoint stores: a run resumed from a checkpoint draws exactly the pairs an
uninterrupted run draws.

Logged per step: loss, mean p, the win rate P(y > y_ref) of the first training sample against
one reference sample per prompt (seeded by the prompt's index, drawn the first time the prompt
comes up and kept), a KL estimate mean(log pi(y) - log ref(y)) (unbiased when y comes from
the policy; for ipo_md y comes from the mixture), mean log pi(y), mean response length and
samples per second.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm
from transformers import get_scheduler

from align.config import PipelineConfig
from align.evaluate import RESERVED
from align.io import atomic_dir, atomic_write_json, atomic_write_text
from align.logprobs import model_sequence_logps, shared_prompt_logps
from align.losses import online_loss
from align.mixture import sample_mixture
from align.models import load_model, load_tokenizer
from align.preference import Preference
from align.tokenize import check_prompt_lengths, encode_prompt
from align.trainer import Trainer, _nanmean

ONLINE_LOG_KEYS = (
    "loss",
    "preference/mean",
    "win_rate/vs_reference",
    "kl",
    "logps/policy",
    "length/mean",
    "samples_per_s",
)


def mixture_weights(loss: str, params: dict) -> tuple[float, float]:
    """Weight of the reference in the sampling mixture of (y, y') for an online loss."""
    beta = float(params.get("beta", 0.0))  # losses without beta sample the policy
    return (0.0, beta) if loss == "nash_md_pg" else (beta, beta)


class OnlineTrainer(Trainer):
    """Online training of the policy against a frozen reference; `train()` as offline."""

    def __init__(
        self,
        cfg: PipelineConfig,
        policy_path: Path,
        ref_path: Path,
        records: list[dict],
        out: Path,
        stage_hash: str,
    ):
        self.cfg, self.tc, self.out, self.stage_hash = cfg, cfg.train, out, stage_hash
        self.acc = Accelerator(
            mixed_precision="bf16" if self.tc.precision == "bf16" else "no",
            cpu=not torch.cuda.is_available(),
        )
        self.tokenizer = load_tokenizer(policy_path)
        if self.tc.prompt_overflow == "error":
            check_prompt_lengths(
                self.tokenizer, records, self.tc.max_prompt_length, "data.train (online prompts)"
            )
        self.records = records
        self.prompts = [
            encode_prompt(self.tokenizer, r["prompt"], self.tc.max_prompt_length) for r in records
        ]
        # prompt indices: the inherited `_micro_batches` then yields index lists
        self.examples = list(range(len(records)))
        self.ref = load_model(ref_path, cfg.model.dtype).requires_grad_(False)
        model = _trainable(load_model(policy_path, cfg.model.dtype), cfg)
        self.per_step = self.tc.batch_size * self.tc.grad_accum * self.acc.num_processes
        self.total_steps = self.tc.max_steps or math.ceil(
            self.tc.epochs * len(records) / self.per_step
        )
        optimizer = torch.optim.AdamW(
            [p for p in model.parameters() if p.requires_grad],
            lr=self.tc.learning_rate,
            weight_decay=self.tc.weight_decay,
        )
        self.scheduler = get_scheduler(
            self.tc.lr_scheduler,
            optimizer,
            num_warmup_steps=math.ceil(self.tc.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
        self.model, self.optimizer = self.acc.prepare(model, optimizer)
        self.ref.to(self.acc.device)
        self.loss_name, self.loss_params = cfg.train.loss.name, cfg.train.loss.params()
        self.preference = Preference(cfg.train.preference)
        self.ref_texts: dict[int, str] = {}
        self.value_head = None  # the inherited checkpointing saves one for UPO only
        self.step = 0

    # ---- sampling -----------------------------------------------------------------------
    def _sample(self, idx: list[int], beta: float, seeds: list[int]) -> list[list[int]]:
        """One response (token ids) per prompt index from the mixture with weight `beta`, row i
        drawn with a generator seeded by seeds[i]."""
        rc = self.tc.rollout
        policy = self.acc.unwrap_model(self.model)
        policy.eval()
        device = self.acc.device
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        with self.acc.autocast():
            rollout = sample_mixture(
                policy,
                self.ref,
                [self.prompts[i] for i in idx],
                beta=beta,
                max_new_tokens=rc.max_new_tokens,
                temperature=rc.temperature,
                top_p=rc.top_p,
                eos_id=self.tokenizer.eos_token_id,
                pad_id=self.tokenizer.pad_token_id,
                generators=generators,
            )
        policy.train()
        return rollout.tokens

    def _reference_texts(self, idx: list[int]) -> list[str]:
        """A reference sample per prompt, seeded by the prompt's index and drawn the first time
        the prompt comes up: the same text whatever the step order or a resume."""
        new = sorted({i for i in idx if i not in self.ref_texts})
        if new:
            seeds = [(self.tc.seed + 1) * 7_919_993 + i for i in new]
            self.ref_texts.update(
                zip(new, self._decode(self._sample(new, 1.0, seeds)), strict=True)
            )
        return [self.ref_texts[i] for i in idx]

    def _decode(self, tokens: list[list[int]]) -> list[str]:
        return self.tokenizer.batch_decode(tokens, skip_special_tokens=True)

    # ---- one optimizer step --------------------------------------------------------------
    def _pair_logps(self, groups: list[tuple[list[int], list[list[int]]]]) -> torch.Tensor:
        """Policy log-probs [B, 2] of each prompt's (y, y'), with gradient."""
        pad = self.tokenizer.pad_token_id
        if self.tc.gradient_checkpointing:
            pairs = [(p, r) for p, rs in groups for r in rs]
            return model_sequence_logps(self.model, pairs, pad)[0].view(-1, 2)
        return shared_prompt_logps(self.model, groups, pad)[0].view(-1, 2)

    def train_step(self) -> dict[str, float]:
        local = self.tc.batch_size * self.tc.grad_accum
        w_y, w_opp = mixture_weights(self.loss_name, self.loss_params)
        sums = dict.fromkeys(ONLINE_LOG_KEYS, 0.0)
        sample_s = tokens = n_seq = 0
        micro_batches = self._micro_batches()
        for m, idx in enumerate(micro_batches):
            b = len(idx)
            first = ((self.tc.seed * 1_000_003 + self.step) * 1_009 + m) * 2 * b
            seeds = list(range(first, first + 2 * b))  # y rows, then y' rows
            started = time.perf_counter()
            if w_y == w_opp:  # both from one distribution: one batched call
                both = self._sample(idx + idx, w_y, seeds)
                ys, opps = both[:b], both[b:]
            else:
                ys, opps = self._sample(idx, w_y, seeds[:b]), self._sample(idx, w_opp, seeds[b:])
            sample_s += time.perf_counter() - started
            n_seq += 2 * b
            prompts = [self.records[i]["prompt"] for i in idx]
            columns = {
                k: [self.records[i].get(k) for i in idx]
                for k in self.records[idx[0]]
                if k not in RESERVED
            }
            texts_y = self._decode(ys)
            p = self.preference(prompts, texts_y, self._decode(opps), columns)
            label = torch.tensor(p, dtype=torch.float64, device=self.acc.device)
            groups = [(self.prompts[i], [y, o]) for i, y, o in zip(idx, ys, opps, strict=True)]
            with torch.no_grad(), self.acc.autocast():  # as the policy's: h = 0 at step 0
                ref = shared_prompt_logps(self.ref, groups, self.tokenizer.pad_token_id)[0]
            ref = ref.view(-1, 2).double()
            sync = m == len(micro_batches) - 1
            ctx = contextlib.nullcontext() if sync else self.acc.no_sync(self.model)
            with ctx, self.acc.autocast():
                policy = self._pair_logps(groups).double()
                losses = online_loss(self.loss_name, policy, ref, label, **self.loss_params)
                self.acc.backward(losses.sum() / local)
            lengths = [len(y) + len(o) for y, o in zip(ys, opps, strict=True)]
            tokens += sum(lengths) + sum(len(self.prompts[i]) for i in idx)
            sums["loss"] += losses.detach().sum().item()
            sums["preference/mean"] += sum(p)
            sums["kl"] += (policy[:, 0].detach() - ref[:, 0]).sum().item()
            sums["logps/policy"] += policy[:, 0].detach().sum().item()
            sums["length/mean"] += sum(lengths) / 2
            if self.tc.rollout.win_rate:
                wins = self.preference(prompts, texts_y, self._reference_texts(idx), columns)
                sums["win_rate/vs_reference"] += sum(wins)
        grad_norm = None
        if self.tc.max_grad_norm is not None:
            grad_norm = float(
                self.acc.clip_grad_norm_(self.model.parameters(), self.tc.max_grad_norm)
            )
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        row = {k: sums[k] / local for k in ONLINE_LOG_KEYS}
        if not self.tc.rollout.win_rate:
            row["win_rate/vs_reference"] = float("nan")
        row["samples_per_s"] = n_seq / sample_s
        row.update(lr=self.scheduler.get_last_lr()[0], grad_norm=grad_norm, tokens=tokens)
        return row

    # ---- the loop -----------------------------------------------------------------------
    def train(self, log_every: int = 1) -> dict:
        self.out.mkdir(parents=True, exist_ok=True)
        self.try_resume()
        bar = tqdm(total=self.total_steps, initial=self.step, desc="train (online)", unit="step")
        log = self.out / "log.jsonl"
        while self.step < self.total_steps:
            row = self.train_step()
            self.step += 1
            if self.acc.is_main_process:
                with open(log, "a") as f:
                    f.write(json.dumps({"step": self.step, **row}) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{row['loss']:.4f}", p=f"{row['preference/mean']:.3f}")
            if self.step % self.tc.save_steps == 0 or self.step == self.total_steps:
                self.save_checkpoint()
        bar.close()
        self.preference.close()
        return self.finish()

    def finish(self) -> dict:
        """Save the final model (LoRA merged), metrics.json and curves.csv."""
        self.acc.wait_for_everyone()
        if not self.acc.is_main_process:
            return {}
        rows = [json.loads(ln) for ln in (self.out / "log.jsonl").read_text().splitlines()]
        model = self.acc.unwrap_model(self.model)
        if self.cfg.model.lora is not None:
            model = model.merge_and_unload()
        with atomic_dir(self.out / "model") as tmp:
            model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
        keys = ["step", *ONLINE_LOG_KEYS, "lr"]
        lines = [",".join(keys)] + [",".join(str(r.get(k)) for k in keys) for r in rows]
        atomic_write_text(self.out / "curves.csv", "\n".join(lines) + "\n")
        tail = rows[-max(1, len(rows) // 10) :]
        metrics = {
            "steps": self.step,
            "prompts": len(self.records),
            **{f"final/{k}": _nanmean([r[k] for r in tail]) for k in ONLINE_LOG_KEYS},
            "first/loss": rows[0]["loss"],
        }
        if self.tc.rollout.win_rate:
            metrics["first/win_rate/vs_reference"] = rows[0]["win_rate/vs_reference"]
        atomic_write_json(self.out / "metrics.json", metrics)
        return metrics


def _trainable(model, cfg: PipelineConfig):
    """The policy in training mode, with LoRA adapters and gradient checkpointing if set."""
    if cfg.model.lora is not None:
        from peft import LoraConfig, get_peft_model

        lc = cfg.model.lora
        model = get_peft_model(
            model,
            LoraConfig(
                r=lc.r,
                lora_alpha=lc.alpha,
                lora_dropout=lc.dropout,
                target_modules=lc.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    model.train()
    return model
