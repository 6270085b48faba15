"""Online alignment: every step samples a pair per prompt, labels it and updates.

For each prompt x of a step, y and y' are drawn without gradient from `align.generate.mixture`:
online_ipo, online_dpo and online_slic draw both from the policy; ipo_md both from the
geometric mixture with weight `beta` on the reference; nash_md_pg y from the policy and its
opponent y' from the mixture. p = P(y > y') comes from `train.preference`, and
`align.train.losses.online_loss` takes the policy's (with gradient) and the reference's summed
log-probs of the pair. The step's loss is the mean over its prompts.

Same run layout as the offline trainer (which this class extends for checkpoints, resume and
multi-process training): the prompts of step s are `step_indices(s, ...)`, each process takes
its slice of them, and each sampled row has its own generator seeded from (train.seed, s, its
place in the whole step), so the sampler's RNG state is a function of the step a checkpoint
stores: a run resumed from a checkpoint draws exactly the pairs an uninterrupted run draws, and
N processes draw the pairs one process draws. Under `accelerate launch` (`train.distributed`)
every process samples and labels its own prompts; DDP averages the gradients.

The prompts are tokenised once into the stage folder's memory-mapped `examples.arrow`
(`write_rows`, align/train/examples.py) with their messages and dataset columns (the
preference's inputs); a micro-batch reads only its own rows.

With LoRA and no separate `model.reference`, the reference is the policy with its adapters
switched off (`align.model.reference.AdapterDisabled`), not a second copy of the model.

Logged per step: loss, mean p, the win rate P(y > y_ref) of the first training sample against
one reference sample per prompt (seeded by the prompt's index, drawn the first time the prompt
comes up and kept), a KL estimate mean(log pi(y) - log ref(y)) (unbiased when y comes from
the policy; for ipo_md y comes from the mixture), mean log pi(y), mean response length and
samples per second.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import torch
from transformers import PreTrainedTokenizerBase

from align.config import PipelineConfig
from align.config.losses import LossParams
from align.core.errors import AlignError
from align.core.transfer import to_device
from align.data.records import RESERVED
from align.generate.mixture import sample_mixture
from align.model.loading import load_model, load_tokenizer
from align.model.logprobs import shared_prompt_logps
from align.model.reference import AdapterDisabled
from align.model.tokenize import check_prompt_lengths, encode_prompt
from align.rewards.preference import Preference
from align.train.examples import TOKENS, ArrowRows, write_rows
from align.train.losses import online_loss
from align.train.placement import load_device
from align.train.stats import StepStats
from align.train.trainer import Trainer, trainable_policy

ONLINE_LOG_KEYS = (
    "loss",
    "preference/mean",
    "win_rate/vs_reference",
    "kl",
    "logps/policy",
    "length/mean",
    "samples_per_s",
)
# the sums a step accumulates (summed over the processes before they are logged)
STEP_KEYS = (*ONLINE_LOG_KEYS[:-1], "n_seq", "sample_s", "tokens")
MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
# a prompt's row: its token ids, its messages and its dataset columns (a JSON object: any
# column's values come back with the types they were read with)
PROMPT_SCHEMA = pa.schema([("prompt_ids", TOKENS), ("prompt", MESSAGES), ("columns", pa.string())])


def mixture_weights(params: LossParams) -> tuple[float, float]:
    """Weight of the reference in the sampling mixture of (y, y') for an online loss."""
    beta = getattr(params, "beta", 0.0)  # losses without beta sample the policy
    return (0.0, beta) if params.name == "nash_md_pg" else (beta, beta)


def prompt_row(rec: dict, tokenizer: PreTrainedTokenizerBase, max_prompt_length: int) -> dict:
    """What online training reads of a record (a row of PROMPT_SCHEMA); the dataset columns must
    be JSON values, as those of a JSON Lines file are."""
    columns = {k: v for k, v in rec.items() if k not in RESERVED}
    try:
        text = json.dumps(columns)
    except TypeError as exc:
        raise AlignError(
            f"data.train record {rec['id']}: a column is not a JSON value ({exc}); online "
            "training hands the dataset's columns to train.preference as JSON: convert or drop it"
        ) from None
    ids = encode_prompt(tokenizer, rec["prompt"], max_prompt_length)
    return {"prompt_ids": ids, "prompt": rec["prompt"], "columns": text}


class OnlineTrainer(Trainer):
    """Online training of the policy against a frozen reference; `train()` as offline."""

    log_keys = ONLINE_LOG_KEYS
    progress = "train (online)"

    def __init__(
        self,
        cfg: PipelineConfig,
        policy_path: Path,
        ref_path: Path,
        records: Iterable[dict],
        out: Path,
        stage_hash: str,
    ):
        """`records` (a list or a `RecordStream`: read again after the length check when
        `train.prompt_overflow` is 'error') are tokenised into `out/examples.arrow`."""
        self._start(cfg, out, stage_hash)
        self.tokenizer = load_tokenizer(policy_path)
        if self.tc.prompt_overflow == "error":
            check_prompt_lengths(
                self.tokenizer, records, self.tc.max_prompt_length, "data.train (online prompts)"
            )
        rows = (prompt_row(r, self.tokenizer, self.tc.max_prompt_length) for r in records)
        store = self._write_store(
            lambda path: write_rows(rows, PROMPT_SCHEMA, path, "train: data.train (online prompts)")
        )
        self.prompts = ArrowRows(store)
        # prompt indices: the inherited `_micro_batches` then yields index lists
        self.examples = range(len(self.prompts))
        device = load_device(self.acc)
        policy = load_model(policy_path, self.weights_dtype, self.tc.attention, device=device)
        self._optimize(trainable_policy(policy, cfg), [])
        if cfg.model.lora is not None and Path(ref_path).resolve() == Path(policy_path).resolve():
            # the initial policy is the LoRA model's frozen base: no second copy
            self.ref = AdapterDisabled(self.acc.unwrap_model(self.model))
        else:
            self.ref = load_model(ref_path, self.weights_dtype, device=device).requires_grad_(False)
            self.ref.to(self.acc.device)
        self.loss = cfg.train.loss
        self.preference = Preference(cfg.train.preference, device=self.acc.device)
        self.ref_texts: dict[int, str] = {}

    # ---- sampling -----------------------------------------------------------------------
    def _read_prompts(
        self, idx: list[int]
    ) -> tuple[list[list[int]], list[list[dict]], dict[str, list]]:
        """(token ids, messages, dataset columns as lists) of the prompts at `idx`."""
        rows = [self.prompts[i] for i in idx]
        extra = [json.loads(row["columns"]) for row in rows]
        columns = {k: [e.get(k) for e in extra] for k in extra[0]}
        return [row["prompt_ids"] for row in rows], [row["prompt"] for row in rows], columns

    def _sample(self, prompts: list[list[int]], beta: float, seeds: list[int]) -> list[list[int]]:
        """One response (token ids) per prompt (token ids) from the mixture with weight `beta`,
        row i drawn with a generator seeded by seeds[i]."""
        rc = self.tc.rollout
        policy = self.acc.unwrap_model(self.model)
        policy.eval()
        device = self.acc.device
        generators = [torch.Generator(device=device).manual_seed(s) for s in seeds]
        with self.acc.autocast():
            rollout = sample_mixture(
                policy,
                self.ref,
                prompts,
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
            prompts = self._read_prompts(new)[0]
            self.ref_texts.update(
                zip(new, self._decode(self._sample(prompts, 1.0, seeds)), strict=True)
            )
        return [self.ref_texts[i] for i in idx]

    def _decode(self, tokens: list[list[int]]) -> list[str]:
        return self.tokenizer.batch_decode(tokens, skip_special_tokens=True)

    # ---- one optimizer step --------------------------------------------------------------
    def _seeds(self, m: int, b: int) -> list[int]:
        """Generator seeds of micro-batch m's y rows then y' rows on this process: a function of
        (train.seed, step, the row's place in the whole step), so one process and several
        draw the same pairs for the same prompts."""
        w, r = self.acc.num_processes, self.acc.process_index
        base = (self.tc.seed * 1_000_003 + self.step) * 1_009 * 2 * self.per_step
        first = m * b * w + r * b  # the step-wide place of this micro-batch's first row
        return [base + 2 * (first + i) for i in range(b)] + [
            base + 2 * (first + i) + 1 for i in range(b)
        ]

    def train_step(self) -> dict[str, float]:
        local = self.tc.batch_size * self.tc.grad_accum
        w_y, w_opp = mixture_weights(self.loss)
        stats = StepStats(STEP_KEYS, self.acc.device)
        micro_batches = self._micro_batches(self._step_examples())
        for m, idx in enumerate(micro_batches):
            b = len(idx)
            seeds = self._seeds(m, b)
            ids, prompts, columns = self._read_prompts(idx)
            started = time.perf_counter()
            if w_y == w_opp:  # both from one distribution: one batched call
                both = self._sample(ids + ids, w_y, seeds)
                ys, opps = both[:b], both[b:]
            else:
                ys, opps = self._sample(ids, w_y, seeds[:b]), self._sample(ids, w_opp, seeds[b:])
            stats.add("sample_s", time.perf_counter() - started)
            stats.add("n_seq", 2 * b)
            texts_y = self._decode(ys)
            p = self.preference(prompts, texts_y, self._decode(opps), columns)
            label = to_device(torch.tensor(p, dtype=torch.float64), self.acc.device)
            groups = [(x, [y, o]) for x, y, o in zip(ids, ys, opps, strict=True)]
            with torch.no_grad(), self.acc.autocast():  # as the policy's: h = 0 at step 0
                ref = shared_prompt_logps(self.ref, groups, self.tokenizer.pad_token_id)[0]
            ref = ref.view(-1, 2).double()
            with self._accumulating(m == len(micro_batches) - 1), self.acc.autocast():
                policy = self._sequence_logps(groups)[0].view(-1, 2).double()
                losses = online_loss(self.loss, policy, ref, label)
                self.acc.backward(losses.sum() / local)
            lengths = [len(y) + len(o) for y, o in zip(ys, opps, strict=True)]
            stats.add("tokens", sum(lengths) + sum(len(x) for x in ids))
            stats.add("loss", losses.detach().sum())
            stats.add("preference/mean", sum(p))
            stats.add("kl", (policy[:, 0].detach() - ref[:, 0]).sum())
            stats.add("logps/policy", policy[:, 0].detach().sum())
            stats.add("length/mean", sum(lengths) / 2)
            if self.tc.rollout.win_rate:
                wins = self.preference(prompts, texts_y, self._reference_texts(idx), columns)
                stats.add("win_rate/vs_reference", sum(wins))
        total, grad_norm = stats.read(self.acc, self._optimizer_step())
        world = self.acc.num_processes
        row = {k: total[k] / (local * world) for k in ONLINE_LOG_KEYS[:-1]}
        if not self.tc.rollout.win_rate:
            row["win_rate/vs_reference"] = float("nan")
        # every process samples at once: sequences of all over the mean sampling time
        row["samples_per_s"] = total["n_seq"] / (total["sample_s"] / world)
        row.update(
            lr=self.scheduler.get_last_lr()[0], grad_norm=grad_norm, tokens=int(total["tokens"])
        )
        return row

    # ---- the loop: Trainer's, with these hooks -------------------------------------------
    def train(self) -> dict:
        try:
            return super().train()
        finally:
            self.preference.close()

    def _postfix(self, row: dict) -> dict[str, str]:
        return {"loss": f"{row['loss']:.4f}", "p": f"{row['preference/mean']:.3f}"}

    def _run_metrics(self, rows: list[dict]) -> dict:
        metrics: dict = {"prompts": len(self.prompts)}
        if self.tc.rollout.win_rate:
            metrics["first/win_rate/vs_reference"] = rows[0]["win_rate/vs_reference"]
        return metrics
