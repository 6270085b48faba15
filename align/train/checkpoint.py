"""Checkpoints of a training run: save, find the newest of this configuration, load, and trim the
log back to it.

A checkpoint is a folder `<out>/checkpoints/step-NNNNNN/` holding `trainable.safetensors` (the
trainable weights: LoRA adapters or all), `value_head.safetensors` (UPO only), `optimizer.pt`
(optimizer, schedule and torch RNG state) and `state.json` (step and stage hash). Folders appear
only whole (written under a temporary name, then renamed) and go whole (renamed to a hidden name,
then deleted), so every visible one is complete; the oldest beyond `train.keep_checkpoints` are
deleted.
"""

from __future__ import annotations

import contextlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from safetensors.torch import load_file, save_file
from torch import nn

from align.config.accelerate import SHARDED
from align.core.errors import AlignError
from align.core.io import atomic_dir, atomic_write_json, atomic_write_text, read_json
from align.train.precision import MasterWeights

VALUE_HEAD = "value_head.safetensors"  # UPO: beside trainable.safetensors and the final model
SHARDS = "fsdp"  # an FSDP checkpoint's folder of model and optimizer shards


def checkpoint_dir(out: Path, step: int) -> Path:
    return out / "checkpoints" / f"step-{step:06d}"


def trainable_weights(
    acc: Accelerator, model: nn.Module, master: MasterWeights | None
) -> dict[str, torch.Tensor]:
    """The trainable weights, whole on the main process. Every process must call it: FSDP and
    ZeRO-3 shard the weights, and gathering them is collective."""
    if acc.distributed_type in SHARDED:  # full fine-tuning: align.config refuses LoRA
        state = acc.get_state_dict(model)
        if state is None:  # ZeRO-3 hands the gathered weights to the main process only
            if acc.is_main_process:
                raise AlignError(
                    "train: DeepSpeed returned no weights on the main process; set "
                    "zero3_save_16bit_model: true in the accelerate config (configs/accelerate/"
                    "zero3.yaml does)"
                )
            return {}
        return {n: t.contiguous() for n, t in state.items()}
    if master is not None:
        return master.state_dict()
    model = acc.unwrap_model(model)
    return {n: p.detach().contiguous() for n, p in model.named_parameters() if p.requires_grad}


def rng_state() -> dict[str, Any]:
    """The RNG streams a training step draws from: torch's CPU generator and, where CUDA is
    present, every visible GPU's generator (dropout on GPU draws from those)."""
    state: dict[str, Any] = {"rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def process_rng_states(acc: Accelerator) -> dict[str, Any]:
    """`rng_state()` of this process and, when several processes train, every process's in
    rank order under `rng_ranks` (collective: every process calls it). Each process's dropout
    draws as many numbers as its own batches' shapes ask for, so the streams part ways."""
    state = rng_state()
    if acc.num_processes > 1:
        from accelerate.utils import gather_object

        state["rng_ranks"] = gather_object([rng_state()])
    return state


def restore_rng(state: dict[str, Any], rank: int = 0) -> None:
    """Set the generators `process_rng_states` saved, process `rank`'s own when the checkpoint
    has them (else the main process's); a checkpoint written with CUDA restores the GPU
    generators when CUDA is present (a CPU-only resume of a GPU run keeps the CPU stream)."""
    ranks = state.get("rng_ranks") or []
    state = ranks[rank] if rank < len(ranks) else state
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])


def save_value_head(acc: Accelerator, value_head: nn.Module | None, folder: Path) -> None:
    """UPO's value head as `folder/value_head.safetensors`; nothing without one."""
    if value_head is not None:
        head = acc.unwrap_model(value_head)
        save_file(
            {k: v.detach().contiguous() for k, v in head.state_dict().items()}, folder / VALUE_HEAD
        )


def save_checkpoint(
    out: Path,
    step: int,
    stage_hash: str,
    keep: int,
    *,
    acc: Accelerator,
    weights: dict[str, torch.Tensor],
    value_head: nn.Module | None,
    training_state: dict[str, Any],
) -> None:
    """Write the checkpoint of `step` (main process only) and delete all but the newest `keep`.

    weights: `trainable_weights`; training_state: what `optimizer.pt` holds (optimizer and
    scheduler state dicts and `process_rng_states()`)."""
    with atomic_dir(checkpoint_dir(out, step)) as tmp:
        save_file(weights, tmp / "trainable.safetensors")
        save_value_head(acc, value_head, tmp)
        torch.save(training_state, tmp / "optimizer.pt")
        atomic_write_json(tmp / "state.json", {"step": step, "stage_hash": stage_hash})
    kept = sorted((out / "checkpoints").glob("step-*"))
    for old in kept[:-keep]:
        # renamed first, so a kill halfway through the delete leaves a hidden partial folder
        # (removed at resume), never a visible checkpoint with files missing
        doomed = old.with_name(f".{old.name}.deleting")
        old.rename(doomed)
        shutil.rmtree(doomed)


@contextlib.contextmanager
def _shared_atomic_dir(acc: Accelerator, final: Path) -> Iterator[Path]:
    """`atomic_dir` opened by the main process and written by every process: the folder appears
    whole, after all of them finished writing into it."""
    from accelerate.utils import broadcast_object_list

    if acc.is_main_process:
        with atomic_dir(final) as tmp:
            broadcast_object_list([str(tmp)])
            yield tmp
            acc.wait_for_everyone()
    else:
        box: list = [None]
        broadcast_object_list(box)
        yield Path(box[0])
        acc.wait_for_everyone()
    acc.wait_for_everyone()  # nobody reads or prunes before the rename


@contextlib.contextmanager
def _sharded_state_dicts(acc: Accelerator) -> Iterator[object]:
    """accelerate's FSDP plugin switched to sharded state dicts for the duration (the final
    model keeps the config's full, gathered state dict)."""
    plugin = acc.state.fsdp_plugin
    kept = plugin.state_dict_type
    plugin.set_state_dict_type("SHARDED_STATE_DICT")
    try:
        yield plugin
    finally:
        plugin.set_state_dict_type(kept)


def save_fsdp_checkpoint(
    out: Path,
    step: int,
    stage_hash: str,
    keep: int,
    *,
    acc: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    training_state: dict[str, Any],
) -> None:
    """The checkpoint of `step` under FSDP, written by every process (collective): model and
    optimizer shards in `fsdp/`, `optimizer.pt` with the schedule and RNG state (main process).
    The weights are never gathered whole."""
    from accelerate.utils import save_fsdp_model, save_fsdp_optimizer

    with _shared_atomic_dir(acc, checkpoint_dir(out, step)) as tmp:
        with _sharded_state_dicts(acc) as plugin:
            save_fsdp_model(plugin, acc, model, tmp / SHARDS)
            save_fsdp_optimizer(plugin, acc, optimizer, model, tmp / SHARDS)
        if acc.is_main_process:
            torch.save(training_state, tmp / "optimizer.pt")
            atomic_write_json(tmp / "state.json", {"step": step, "stage_hash": stage_hash})
    if acc.is_main_process:
        for old in sorted((out / "checkpoints").glob("step-*"))[:-keep]:
            shutil.rmtree(old)


def load_fsdp_checkpoint(
    ckpt: Path,
    acc: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> None:
    """Every process loads its shards of an FSDP checkpoint, then the schedule and RNG state;
    a checkpoint without shards (or damaged) is refused in one line."""
    from accelerate.utils import load_fsdp_model, load_fsdp_optimizer

    if not (ckpt / SHARDS).is_dir():
        raise AlignError(
            f"{ckpt}: not an FSDP checkpoint (no {SHARDS}/ shards); delete {ckpt.parent} to "
            "train from scratch"
        )
    with _sharded_state_dicts(acc) as plugin:
        load_fsdp_model(plugin, acc, model, ckpt / SHARDS)
        load_fsdp_optimizer(plugin, acc, optimizer, model, ckpt / SHARDS)
    state = torch.load(ckpt / "optimizer.pt", weights_only=True)
    scheduler.load_state_dict(state["scheduler"])
    restore_rng(state, acc.process_index)


def checkpoint_step(ckpt: Path, stage_hash: str) -> int:
    """The step of a complete checkpoint folder of this configuration; a foreign or unreadable one
    is refused in one line (never resumed from, never silently skipped)."""
    try:
        state = read_json(ckpt / "state.json")
        step, saved_hash = int(state["step"]), state["stage_hash"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise AlignError(
            f"{ckpt}: unreadable checkpoint ({type(exc).__name__}); delete this folder to "
            "resume from an earlier checkpoint or start over"
        ) from None
    if saved_hash != stage_hash:
        raise AlignError(
            f"{ckpt}: checkpoint of another configuration (stage hash {str(saved_hash)[:12]}, "
            f"this run {stage_hash[:12]}); delete {ckpt.parent} to train from scratch"
        )
    return step


def latest_checkpoint(out: Path, stage_hash: str) -> tuple[Path, int] | None:
    """The newest checkpoint folder and its step, None without one. Half-written folders of a
    killed run are removed; every folder must belong to this configuration."""
    for partial in (out / "checkpoints").glob(".step-*"):
        shutil.rmtree(partial, ignore_errors=True)
    ckpts = sorted((out / "checkpoints").glob("step-*"))
    steps = [checkpoint_step(c, stage_hash) for c in ckpts]
    return (ckpts[-1], steps[-1]) if ckpts else None


def load_checkpoint(
    ckpt: Path,
    acc: Accelerator,
    model: nn.Module,
    master: MasterWeights | None,
    value_head: nn.Module | None,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
) -> None:
    """Load weights, value head, optimizer, schedule and RNG state from `ckpt`; a checkpoint that
    does not fit the model or is damaged is refused in one line."""
    model = acc.unwrap_model(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    try:
        weights = load_file(ckpt / "trainable.safetensors")
        missing = model.load_state_dict(weights, strict=False)
        if missing.unexpected_keys or trainable - set(weights):
            raise ValueError("its parameter names differ from this model's")
        if master is not None:
            master.load_state_dict(weights)
        if value_head is not None:
            acc.unwrap_model(value_head).load_state_dict(load_file(ckpt / VALUE_HEAD))
        # weights_only: tensors and plain containers, never arbitrary pickled objects
        state = torch.load(ckpt / "optimizer.pt", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng(state, acc.process_index)
    except Exception as exc:  # safetensors, pickle and shape errors all mean: unusable
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise AlignError(
            f"{ckpt}: checkpoint does not fit this model or is damaged "
            f"({type(exc).__name__}: {first}); delete {ckpt.parent} to train from scratch"
        ) from None


def trim_log(log: Path, step: int) -> None:
    """Keep the log lines of steps up to `step`: a step that ran after the checkpoint but was not
    saved, or a line torn by the kill, is dropped, so the resumed log has no gap and no
    duplicate."""
    if not log.exists():
        return
    kept = []
    for line in log.read_text().splitlines():
        try:
            row = json.loads(line)
        except ValueError:
            continue  # torn by the kill
        row_step = row.get("step") if isinstance(row, dict) else None
        if isinstance(row_step, int) and row_step <= step:
            kept.append(line)
    atomic_write_text(log, "".join(ln + "\n" for ln in kept))
