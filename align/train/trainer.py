"""Offline trainer over annotated K-wise records, with any loss from the registry.

One optimizer step consumes `batch_size * grad_accum * world_size` prompts (each with all its
responses) from a stream of seeded per-epoch permutations, so a step's data depends only on its
index: resume = load the checkpoint and continue at the next index. The loss of a step is the
mean of the per-prompt losses over the step's prompts that take part (`counting_rows`: for pair
and listwise losses the prompts whose rewards do not all tie), so a pair loss's step does not
shrink with the tie rate of K-wise data (TRL's pairs never tie; this is its mean over pairs).
Under `accelerate launch` each process takes an equal slice of the step's prompts and scales its
sum by processes / step count; DDP's mean over processes then gives the same global mean, and the
logged figures are summed over the processes. Reference log-probs come
precomputed from annotate. A step's figures stay on the device until the step ends and are
read back once (align/train/stats.py); under FSDP every micro-batch reduce-scatters its
gradients (no `no_sync`) and checkpoints hold shards (align/train/checkpoint.py).

Two losses change the step (docs/bmc-upo.md):
- BMC (`dpo_bmc`, `ipo_bmc`, `nca_pair_bmc`): per-token policy log-probs are weighted by the
  rewrite stage's diff masks (`align.train.bmc.bmc_batch_logps`) before the pair loss.
- UPO (`upo`): the wrapped preference loss plus the advantage-weighted auxiliary term and the
  expectile loss of a value head (`align.train.upo`); the head is trained with its own learning rate
  and saved in every checkpoint (`value_head.safetensors`) and beside the final model.

Checkpoints and resume are align/train/checkpoint.py; the loss and its parameters are
`train.loss` (align/config/losses.py) run by `align.train.losses.kwise_loss`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import torch
from accelerate import DistributedType
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_scheduler

from align.config import PipelineConfig
from align.config.accelerate import SHARDED
from align.config.losses import UPOParams
from align.core.errors import AlignError
from align.core.io import atomic_dir, atomic_write_json, atomic_write_text
from align.core.transfer import to_device
from align.model.loading import load_model, load_tokenizer
from align.model.logprobs import (
    model_sequence_logps,
    packed_token_logps,
    shared_prompt_logps,
    shared_prompt_token_logps,
)
from align.train import checkpoint, finite, trackers
from align.train.bmc import bmc_batch_logps
from align.train.examples import EXAMPLES_FILE, Example, ExampleStore, write_examples
from align.train.losses import counting_rows, kwise_loss
from align.train.placement import load_device, make_accelerator
from align.train.precision import MasterWeights, weights_dtype
from align.train.probe import probe_indices, probe_metrics, run_probe
from align.train.stats import PAIR_KEYS, StepStats, pair_sums
from align.train.upo import ValueHead, prompt_hidden, upo_loss

UPO_KEYS = (
    "upo/total",
    "upo/actor",
    "upo/value",
    "upo/aux_reward",
)  # "loss" is the preference term
# the step's loss and the pair figures, averaged over the prompts with a preference (n_pref)
LOG_KEYS = ("loss", *(k for k in PAIR_KEYS if k != "n_pref"))
STEP_KEYS = ("loss", "counted", *PAIR_KEYS, "tokens", *UPO_KEYS)  # the sums a step accumulates


@functools.lru_cache(maxsize=2)  # this epoch's and the next: a step may straddle them
def _epoch_order(n: int, seed: int) -> torch.Tensor:
    """The seeded permutation [n] of one epoch (8 bytes per example, drawn once per epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))


def step_indices(step: int, n: int, per_step: int, seed: int) -> list[int]:
    """Dataset indices of optimizer step `step`: a window on the stream of seeded permutations
    (epoch e's is `randperm(n)` seeded by seed + e)."""
    start, out = step * per_step, []
    while len(out) < per_step:
        epoch, offset = divmod(start + len(out), n)
        perm = _epoch_order(n, seed + epoch)
        out.extend(perm[offset : offset + per_step - len(out)].tolist())
    return out


def collate(
    examples: list[Example],
) -> tuple[list[tuple[list[int], list[int]]], torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flatten B prompts x K responses into rows.

    Returns (pairs, rewards [B, K], ref_logps [B, K], mask [B, K])."""
    k = max(len(e.responses) for e in examples)
    rewards = torch.zeros(len(examples), k, dtype=torch.float64)
    ref = torch.zeros(len(examples), k, dtype=torch.float64)
    mask = torch.zeros(len(examples), k, dtype=torch.bool)
    pairs = []
    for b, e in enumerate(examples):
        for j, resp in enumerate(e.responses):
            pairs.append((e.prompt, resp))
            rewards[b, j], ref[b, j], mask[b, j] = e.rewards[j], e.ref_logps[j], True
    return pairs, rewards, ref, mask


def _slots(examples: list[Example], k: int) -> torch.Tensor:
    """Flat positions [N] in the [B, k] grid of `collate` of every response, in the order
    `collate` flattens them (built from lengths alone: nothing is read back from a tensor)."""
    return torch.tensor(
        [b * k + j for b, e in enumerate(examples) for j in range(len(e.responses))]
    )


def _scatter(flat: torch.Tensor, slots: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    """flat [N] placed at `slots` of a zero [B, K] grid (differentiable; no host sync, unlike
    boolean-mask assignment)."""
    out = flat.new_zeros(shape[0] * shape[1])
    return out.index_copy(0, slots, flat).view(shape)


def trainable_policy(model: PreTrainedModel, cfg: PipelineConfig) -> PreTrainedModel:
    """The policy in training mode, with LoRA adapters (`model.lora`) and gradient
    checkpointing (`train.gradient_checkpointing`) when the config asks for them."""
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


class Trainer:
    """Offline training on annotated records. Subclasses (align/train/online.py) share the run
    layout: `_start`, `_optimize`, checkpoints and resume, the loop and `finish`; they set
    `log_keys` and `progress` and supply `train_step`, `_postfix` and `_run_metrics`."""

    log_keys: tuple[str, ...] = LOG_KEYS  # per-step quantities: curves.csv and final/* metrics
    progress = "train"  # the progress bar's label

    def __init__(
        self,
        cfg: PipelineConfig,
        model_path: Path,
        records: Iterable[dict],
        out: Path,
        stage_hash: str,
    ):
        self._start(cfg, out, stage_hash)
        self.tokenizer = load_tokenizer(model_path)
        store = self._write_store(lambda path: write_examples(records, self.tokenizer, cfg, path))
        self.examples: ExampleStore | list[Example] = ExampleStore(store)
        model = trainable_policy(
            load_model(
                model_path, self.weights_dtype, self.tc.attention, device=load_device(self.acc)
            ),
            cfg,
        )
        self.loss = cfg.train.loss
        value_groups: list[dict] = []
        if isinstance(self.loss, UPOParams):
            self.value_head = ValueHead(model.config.hidden_size).to(model.device).train()
            value_groups.append(
                {
                    "params": list(self.value_head.parameters()),
                    "lr": self.loss.value_lr,
                    "weight_decay": 0.0,
                }
            )
        self._optimize(model, value_groups)
        if (pc := self.tc.probe) is not None:
            picked = probe_indices(len(self.examples), pc.records, self.tc.seed)
            self.probe_set = [self.examples[i] for i in picked]
        # what `kwise_loss` runs: the configured loss, or for UPO the wrapped preference loss
        self.pref_loss = (
            self.loss.preference_params() if isinstance(self.loss, UPOParams) else self.loss
        )

    def _write_store(self, write: Callable[[Path], object]) -> Path:
        """`write(path)` the stage folder's examples file in one process per machine (the others
        wait for it, then map it); the file's path."""
        store = self.out / EXAMPLES_FILE
        with self.acc.local_main_process_first():
            if self.acc.is_local_main_process:
                write(store)
        return store

    def _start(self, cfg: PipelineConfig, out: Path, stage_hash: str) -> None:
        """The run's settings, its `Accelerator` (bf16 autocast when `train.precision` says so,
        on `model.device`: align/train/placement.py) and step 0."""
        self.cfg, self.tc, self.out, self.stage_hash = cfg, cfg.train, out, stage_hash
        self.weights_dtype = weights_dtype(
            self.tc.precision, cfg.model.dtype, full_fine_tuning=cfg.model.lora is None
        )
        self.master: MasterWeights | None = None  # bf16_weights only: the optimizer's fp32 copy
        self.acc = make_accelerator(cfg, **trackers.accelerator_kwargs(cfg, out))  # report_to
        self.value_head: ValueHead | None = None  # UPO only; saved with every checkpoint
        self.probe_set: list[Example] = []  # train.probe's fixed records (offline only)
        self.step = 0

    def _optimize(self, model: PreTrainedModel, extra_groups: list[dict]) -> None:
        """Steps of the run (`train.max_steps`, else `epochs` over `self.examples` at
        batch_size x grad_accum x processes per step), fused AdamW over the model's trainable
        parameters plus `extra_groups`, the learning-rate schedule; prepared by accelerate."""
        self.per_step = self.tc.batch_size * self.tc.grad_accum * self.acc.num_processes
        self.total_steps = self.tc.max_steps or math.ceil(
            self.tc.epochs * len(self.examples) / self.per_step
        )
        params = [p for p in model.parameters() if p.requires_grad]
        if self.tc.precision == "bf16_weights":
            model.to(self.acc.device)  # the masters live beside their parameters
            self.master = MasterWeights(
                [(n, p) for n, p in model.named_parameters() if p.requires_grad]
            )
            params = self.master.masters
        optimizer = torch.optim.AdamW(
            [{"params": params}, *extra_groups],
            lr=self.tc.learning_rate,
            weight_decay=self.tc.weight_decay,
            fused=True,  # one kernel over all tensors: 0.1x the default step's time on CPU
        )
        self.scheduler = get_scheduler(
            self.tc.lr_scheduler,
            optimizer,
            num_warmup_steps=math.ceil(self.tc.warmup_ratio * self.total_steps),
            num_training_steps=self.total_steps,
        )
        if self.value_head is not None:
            self.model, self.value_head, self.optimizer = self.acc.prepare(
                model, self.value_head, optimizer
            )
        else:
            self.model, self.optimizer = self.acc.prepare(model, optimizer)

    # ---- checkpoints (align/train/checkpoint.py) ----------------------------------------
    def save_checkpoint(self) -> None:
        if self.acc.distributed_type == DistributedType.FSDP:  # shards, never gathered here
            checkpoint.save_fsdp_checkpoint(
                self.out,
                self.step,
                self.stage_hash,
                self.tc.keep_checkpoints,
                acc=self.acc,
                model=self.model,
                optimizer=self.optimizer,
                training_state={
                    "scheduler": self.scheduler.state_dict(),
                    **checkpoint.process_rng_states(self.acc),
                },
            )
            return
        weights = checkpoint.trainable_weights(self.acc, self.model, self.master)
        rng = checkpoint.process_rng_states(self.acc)  # collective: before the others return
        if not self.acc.is_main_process:
            return
        checkpoint.save_checkpoint(
            self.out,
            self.step,
            self.stage_hash,
            self.tc.keep_checkpoints,
            acc=self.acc,
            weights=weights,
            value_head=self.value_head,
            training_state={
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                **rng,
            },
        )

    def try_resume(self) -> None:
        """Continue from the newest complete checkpoint of this exact configuration, if any;
        log lines after its step are dropped: the log has no gap and no duplicate."""
        found = checkpoint.latest_checkpoint(self.out, self.stage_hash)
        if found is None:  # killed before its first checkpoint: its logged steps re-run
            checkpoint.trim_log(self.out / "log.jsonl", 0)
            return
        latest, step = found
        if self.acc.distributed_type == DistributedType.FSDP:
            checkpoint.load_fsdp_checkpoint(
                latest, self.acc, self.model, self.optimizer, self.scheduler
            )
        elif self.acc.distributed_type in SHARDED:
            raise AlignError(
                f"{latest}: resuming a DeepSpeed run is not supported (its optimizer state is "
                f"partitioned); delete {latest.parent} to train from scratch"
            )
        else:
            self._load_checkpoint(latest)
        self.step = step
        checkpoint.trim_log(self.out / "log.jsonl", self.step)
        checkpoint.trim_log(self.out / "probe.jsonl", self.step)
        tqdm.write(f"resuming from {latest} (step {self.step}/{self.total_steps})")

    def _load_checkpoint(self, latest: Path) -> None:
        """Weights (and masters), value head, optimizer, schedule and RNG from `latest`."""
        checkpoint.load_checkpoint(
            latest,
            self.acc,
            self.model,
            self.master,
            self.value_head,
            self.optimizer,
            self.scheduler,
        )

    # ---- one optimizer step --------------------------------------------------------------
    def _step_examples(self) -> list:
        """The examples of this optimizer step, every process's, read once per step."""
        idx = step_indices(self.step, len(self.examples), self.per_step, self.tc.seed)
        return [self.examples[i] for i in idx]

    def _micro_batches(self, step: list) -> list[list]:
        """This process's micro-batches of the step's examples `step` (`_step_examples`)."""
        b, w, r = self.tc.batch_size, self.acc.num_processes, self.acc.process_index
        return [step[m * b * w :][r * b : (r + 1) * b] for m in range(self.tc.grad_accum)]

    def _counted_rows(self, step: list[Example]) -> torch.Tensor:
        """How many prompts of the step's examples `step` (all processes) take part in the
        loss, at least 1: a 0-d tensor on the CPU, from the rewards alone (no device read)."""
        _, rewards, _, mask = collate(step)
        return counting_rows(self.pref_loss, rewards, mask).sum().clamp_min(1).double()

    @property
    def _share_prompt(self) -> bool:
        """Run each prompt once for all its responses (`train.share_prompt`); gradient
        checkpointing needs the plain full-sequence forward."""
        return self.tc.share_prompt and not self.tc.gradient_checkpointing

    def _sequence_logps(
        self, groups: list[tuple[list[int], list[list[int]]]]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Policy log-probs [N] and token counts [N] of every response of the (prompt,
        [responses]) groups, flattened in group order."""
        pad = self.tokenizer.pad_token_id
        if self._share_prompt:
            return shared_prompt_logps(self.model, groups, pad)
        return model_sequence_logps(self.model, [(p, r) for p, rs in groups for r in rs], pad)

    def _policy_logps(
        self, batch: list[Example], pairs: list[tuple[list[int], list[int]]]
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(policy log-probs [N], BMC-weighted reference log-probs [N] or None, token counts
        [N]) of every row, flattened in example order."""
        groups = [(e.prompt, e.responses) for e in batch]
        if self.loss.token_weights != "bmc":
            logps, counts = self._sequence_logps(groups)
            return logps, None, counts
        if self._share_prompt:
            tok, r_mask = shared_prompt_token_logps(self.model, groups, self.tokenizer.pad_token_id)
        else:
            tok, r_mask = packed_token_logps(self.model, pairs, self.tokenizer.pad_token_id)
        policy, ref = bmc_batch_logps(
            tok,
            r_mask,
            [m for e in batch for m in e.diff_masks],
            [lp for e in batch for lp in e.ref_token_logps],
            delta=self.loss.delta,
            ref_weights=self.loss.ref_weights,
        )
        return policy, ref, r_mask.sum(-1)

    def _upo_terms(
        self,
        batch: list[Example],
        policy: torch.Tensor,
        n_tok: torch.Tensor,
        slots: torch.Tensor,
        pref_losses: torch.Tensor,
    ):
        """UPO's objective for one micro-batch: `upo_loss` over every valid response (at the
        flat `slots` of the [B, K] grid), the value head reading each prompt's last hidden
        state. policy, n_tok: [B, K]."""
        p = self.loss
        hidden = prompt_hidden(self.model, [e.prompt for e in batch], self.tokenizer.pad_token_id)
        values = self.value_head(hidden.float())  # [B]
        aux = torch.tensor(
            [r for e in batch for r in e.aux_rewards], dtype=torch.float64
        )  # valid responses in slot order
        aux = to_device(aux, policy.device)
        return upo_loss(
            pref_losses,
            (policy / n_tok.clamp_min(1)).reshape(-1)[slots],
            aux,
            values.unsqueeze(1).expand(policy.shape).reshape(-1)[slots],
            step=self.step,
            gamma=p.gamma,
            lam=p.lambda_,
            value_coef=p.value_coef,
            expectile=p.expectile,
            aux_warmup_steps=p.aux_warmup_steps,
            max_weight=p.max_weight or None,  # 0: no clip
        ), aux

    def _accumulating(self, last: bool):
        """The context of one micro-batch's backward: gradients are synchronised on the last
        micro-batch only (`no_sync` before it), except under FSDP, where `no_sync` would keep
        a full unsharded gradient per process: there every micro-batch reduce-scatters."""
        if last or self.acc.distributed_type == DistributedType.FSDP:
            return contextlib.nullcontext()
        return self.acc.no_sync(self.model)

    def train_step(self) -> dict[str, float]:
        local = self.tc.batch_size * self.tc.grad_accum
        world = self.acc.num_processes
        step = self._step_examples()
        counted = to_device(self._counted_rows(step), self.acc.device)
        stats = StepStats(STEP_KEYS, self.acc.device)
        stats.add("counted", counted / world)  # every process adds its share of the same count
        micro_batches = self._micro_batches(step)
        for m, batch in enumerate(micro_batches):
            pairs, rewards, ref, mask = collate(batch)
            with self._accumulating(m == len(micro_batches) - 1), self.acc.autocast():
                logps, weighted_ref, counts = self._policy_logps(batch, pairs)
                device = logps.device
                slots = to_device(_slots(batch, mask.shape[1]), device)
                mask_d = to_device(mask, device)
                policy = _scatter(logps.double(), slots, mask.shape)
                n_tok = _scatter(counts.double(), slots, mask.shape)
                if weighted_ref is None:
                    ref_d = to_device(ref, device)
                else:
                    ref_d = _scatter(weighted_ref.double(), slots, mask.shape)
                out = kwise_loss(
                    self.pref_loss, policy, ref_d, to_device(rewards, device), mask_d, n_tok
                )
                losses = out.losses
                objective = losses.sum() * world / counted
                if self.value_head is not None:
                    terms, aux = self._upo_terms(batch, policy, n_tok, slots, losses)
                    objective = terms.total * len(batch) / local
                    share = len(batch) / local
                    values = (terms.total, terms.actor, terms.value, aux.mean())
                    for key, value in zip(UPO_KEYS, values, strict=True):
                        stats.add(key, value.detach() * share)
                self.acc.backward(objective)
            stats.add("tokens", sum(len(p) + len(r) for p, r in pairs))
            stats.add("loss", losses.detach().sum())
            stats.add_many(PAIR_KEYS, pair_sums(out, policy.detach()))
        total, grad_norm = stats.read(self.acc, self._optimizer_step())
        row = {"loss": total["loss"] / total["counted"]}
        for key in LOG_KEYS[1:]:
            row[key] = total[key] / total["n_pref"] if total["n_pref"] else float("nan")
        row.update(
            lr=self.scheduler.get_last_lr()[0], grad_norm=grad_norm, tokens=int(total["tokens"])
        )
        if self.value_head is not None:
            row.update(
                {k: total[k] / world for k in UPO_KEYS},
                **{"upo/actor_on": self.step >= self.loss.aux_warmup_steps},
            )
        return row

    def _optimizer_step(self) -> torch.Tensor | float | None:
        """Clip (`train.max_grad_norm`), step the optimizer and the schedule, clear the
        gradients; returns the gradient norm before clipping (measured without clipping when
        `max_grad_norm` is unset), left on the device; None when DeepSpeed clips inside its
        engine."""
        grad_norm = None
        params = list(self.model.parameters())
        if self.master is not None:
            self.master.grads_to_masters()
            params = self.master.masters
        if self.tc.max_grad_norm is not None:
            grad_norm = self.acc.clip_grad_norm_(params, self.tc.max_grad_norm)
        else:  # not clipped, still measured (on the device): a NaN gradient must be caught
            grads = [p.grad for p in params if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads) if grads else None
        self.optimizer.step()
        if self.master is not None:
            self.master.masters_to_model()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    # ---- the loop -----------------------------------------------------------------------
    def train(self) -> dict:
        """Resume from the newest checkpoint if any, run the remaining steps (one log.jsonl
        row each, checkpoints every `save_steps` and at the end), then `finish`."""
        self.out.mkdir(parents=True, exist_ok=True)
        self.try_resume()
        trackers.start(self.acc, self.cfg, self.out)
        bar = tqdm(
            total=self.total_steps,
            initial=self.step,
            desc=self.progress,
            unit="step",
            disable=not self.acc.is_main_process,
        )
        log = self.out / "log.jsonl"
        if self.step == 0:
            (self.out / "probe.jsonl").unlink(missing_ok=True)
            self._probe()
        while self.step < self.total_steps:
            t0 = time.perf_counter()
            row = self.train_step()
            self.step += 1
            row = {
                "step": self.step,
                **row,
                "tokens_per_s": row["tokens"] / (time.perf_counter() - t0),
            }
            # read back with the step's figures (one host read), before it is logged or saved
            finite.check_gradients(self.step, row.get("grad_norm"))
            finite.check_loss(self.step, row)
            if self.acc.is_main_process:
                with open(log, "a") as f:
                    f.write(finite.log_line(row))
            trackers.log(self.acc, self.cfg, row, self.step)
            bar.update(1)
            bar.set_postfix(self._postfix(row))
            if self.tc.probe and (
                self.step % self.tc.probe.every == 0 or self.step == self.total_steps
            ):
                self._probe()
            if self.step % self.tc.save_steps == 0 or self.step == self.total_steps:
                self.save_checkpoint()
        bar.close()
        trackers.end(self.acc, self.cfg)
        return self.finish()

    def _probe(self) -> None:
        """Append the probe records' likelihoods at this step to probe.jsonl (train.probe)."""
        if not self.probe_set:
            return
        _, rewards, ref, mask = collate(self.probe_set)
        row = run_probe(
            self.model,
            self._sequence_logps,
            [(e.prompt, e.responses) for e in self.probe_set],
            rewards,
            ref,
            mask,
            self.tc.batch_size,
        )
        if self.acc.is_main_process:
            with open(self.out / "probe.jsonl", "a") as f:
                f.write(json.dumps({"step": self.step, **row}) + "\n")

    def _postfix(self, row: dict) -> dict[str, str]:
        """What the progress bar shows of a step's log row."""
        return {"loss": f"{row['loss']:.4f}", "margin": f"{row['rewards/margin']:.3f}"}

    def _run_metrics(self, rows: list[dict]) -> dict:
        """metrics.json entries besides steps, final/* and first/loss."""
        return {"examples": len(self.examples)}

    def finish(self) -> dict:
        """Save the final model (LoRA merged), metrics.json and curves.csv."""
        self.acc.wait_for_everyone()
        if self.acc.is_local_main_process:  # the tokenised examples were only for training
            (self.out / EXAMPLES_FILE).unlink(missing_ok=True)
        # sharded weights are gathered by every process; LoRA is never sharded (align.config)
        sharded = self.acc.distributed_type in SHARDED
        weights = self.acc.get_state_dict(self.model) if sharded else None
        rows = _read_jsonl(self.out / "log.jsonl")
        if not self.acc.is_main_process:
            return {}
        model = self.acc.unwrap_model(self.model)
        if self.master is not None:  # save the fp32 masters, not their bf16 rounding
            model.float()
            self.master.masters_to_model()
        if self.cfg.model.lora is not None:
            model = model.merge_and_unload()
        with atomic_dir(self.out / "model") as tmp:
            model.save_pretrained(tmp, state_dict=weights)
            self.tokenizer.save_pretrained(tmp)
            checkpoint.save_value_head(self.acc, self.value_head, tmp)
        keys = ["step", *self.log_keys, "lr"]
        csv = (
            ",".join(keys)
            + "\n"
            + "".join(",".join(str(r.get(k)) for k in keys) + "\n" for r in rows)
        )
        atomic_write_text(self.out / "curves.csv", csv)
        tail = rows[-max(1, len(rows) // 10) :]
        metrics = {
            "steps": self.step,
            **{f"final/{k}": _nanmean([r[k] for r in tail]) for k in self.log_keys},
            "first/loss": rows[0]["loss"],
            "tokens_per_s": _nanmean([r["tokens_per_s"] for r in rows]),
            **self._run_metrics(rows),
            **probe_metrics(_read_jsonl(self.out / "probe.jsonl")),
        }
        atomic_write_json(self.out / "metrics.json", metrics)
        return metrics


def _read_jsonl(path: Path) -> list[dict]:
    """The rows of a JSON Lines file; none when it does not exist."""
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def _nanmean(values: list[float]) -> float | None:
    good = [v for v in values if v is not None and not math.isnan(v)]
    return sum(good) / len(good) if good else None
