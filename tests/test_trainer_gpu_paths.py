"""What the GPU path of the trainer depends on, pinned on the CPU: one host read per optimizer
step, ZeRO-3's missing state dict on processes other than the main one, the CUDA RNG state in
checkpoints, and no `no_sync` under FSDP."""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import torch
from accelerate import DistributedType

from align.core.errors import AlignError
from align.model.loading import resolve_model
from align.train import checkpoint
from align.train.trainer import Trainer
from tests.host_reads import LibraryCalls
from tests.test_trainer import _cfg, _records


def _trainer(project: Path, *overrides: str) -> Trainer:
    cfg = _cfg("train.max_steps=3", "train.batch_size=2", *overrides)
    return Trainer(cfg, Path(resolve_model("tiny")), _records(cfg, n=4), project / "out", "h")


@pytest.mark.parametrize(
    "overrides",
    [
        ("train.grad_accum=3",),
        ("train.grad_accum=2", "train.share_prompt=false"),
        ("train.grad_accum=2", "train.loss={name: ipo, tau: 0.1, length_norm: true}"),
    ],
    ids=["shared-prompt", "full-rows", "ipo-length-norm"],
)
def test_one_host_read_per_optimizer_step(project: Path, overrides: tuple[str, ...]) -> None:
    """Every micro-batch's figures stay on the device; the step reads them back once, the
    gradient norm with them (before: ~8 reads per micro-batch)."""
    trainer = _trainer(project, *overrides)
    with LibraryCalls() as calls:
        row = trainer.train_step()
    # step_indices reads a permutation drawn on the host by a CPU generator: never on a GPU
    host_data = calls.reads.pop("train/trainer.py:step_indices")
    assert dict(calls.reads) == {"train/stats.py:read": 1}
    assert host_data >= 1
    assert row["grad_norm"] > 0 and row["tokens"] > 0 and row["rewards/accuracy"] >= 0


def test_zero3_checkpoint_on_a_process_without_the_state_dict(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Under ZeRO-3 `get_state_dict` gathers collectively but returns None on every process but
    the main one: that process contributes nothing to the checkpoint and goes on."""
    trainer = _trainer(project)
    acc = trainer.acc
    monkeypatch.setattr(type(acc), "distributed_type", DistributedType.DEEPSPEED)
    monkeypatch.setattr(type(acc), "is_main_process", False)
    monkeypatch.setattr(acc, "get_state_dict", lambda model: None)
    assert checkpoint.trainable_weights(acc, trainer.model, None) == {}
    trainer.step = 1
    trainer.save_checkpoint()  # before: AttributeError: 'NoneType' has no attribute 'items'
    assert not (project / "out" / "checkpoints").exists()  # the main process writes it
    monkeypatch.setattr(type(acc), "is_main_process", True)
    with pytest.raises(AlignError, match="set zero3_save_16bit_model: true"):
        checkpoint.trainable_weights(acc, trainer.model, None)


def test_checkpoints_carry_the_cuda_rng_where_cuda_is_present(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CUDA is simulated (no GPU here): the checkpoint stores every GPU's generator state and
    resume hands exactly that back to torch.cuda."""
    gpu_states = [torch.tensor([1, 2, 3], dtype=torch.uint8), torch.tensor([4], dtype=torch.uint8)]
    restored: list = []
    trainer = _trainer(project)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_rng_state_all", lambda: gpu_states)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", restored.append)
    trainer.step = 1
    trainer.save_checkpoint()
    saved = torch.load(checkpoint.checkpoint_dir(trainer.out, 1) / "optimizer.pt")
    assert [t.tolist() for t in saved["cuda_rng"]] == [[1, 2, 3], [4]]
    trainer.try_resume()
    assert trainer.step == 1
    assert [[t.tolist() for t in r] for r in restored] == [[[1, 2, 3], [4]]]


def test_each_process_resumes_its_own_rng_stream() -> None:
    torch.manual_seed(1)
    first = torch.get_rng_state()
    torch.manual_seed(2)
    second = torch.get_rng_state()
    state = {"rng": first, "rng_ranks": [{"rng": first}, {"rng": second}]}
    checkpoint.restore_rng(state, 1)
    assert torch.equal(torch.get_rng_state(), second)
    checkpoint.restore_rng(state, 0)
    assert torch.equal(torch.get_rng_state(), first)
    checkpoint.restore_rng({"rng": second}, 3)  # one process's checkpoint: the main stream
    assert torch.equal(torch.get_rng_state(), second)


def test_without_cuda_the_checkpoint_has_no_gpu_state(project: Path) -> None:
    trainer = _trainer(project)
    trainer.step = 1
    trainer.save_checkpoint()
    saved = torch.load(checkpoint.checkpoint_dir(trainer.out, 1) / "optimizer.pt")
    assert set(saved) == {"optimizer", "scheduler", "rng"}


def test_fsdp_never_accumulates_under_no_sync(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """no_sync under FSDP keeps a full unsharded gradient on every process: each micro-batch
    reduce-scatters instead. DDP skips the all-reduce on all but the last micro-batch."""
    trainer = _trainer(project)
    entered: list[str] = []
    monkeypatch.setattr(
        trainer.acc, "no_sync", lambda model: entered.append("no_sync") or contextlib.nullcontext()
    )
    assert [trainer._accumulating(last) for last in (False, True)] and entered == ["no_sync"]
    entered.clear()
    monkeypatch.setattr(type(trainer.acc), "distributed_type", DistributedType.FSDP)
    trainer._accumulating(False)
    assert entered == []


def test_fsdp_checkpoints_hold_shards_and_the_final_save_stays_gathered(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FSDP needs a GPU, so accelerate's FSDP save and load functions are stood in for: every
    checkpoint is written through them with sharded state dicts (the plugin is switched back to
    the config's full state dict afterwards, for the final model), and resume loads the shards,
    the schedule and the step. On a GPU, `make gpu-check` runs the real thing."""
    import accelerate.utils

    trainer = _trainer(project)
    acc = trainer.acc
    calls: list[tuple[str, str]] = []

    class Plugin:
        state_dict_type = "FULL_STATE_DICT"

        def set_state_dict_type(self, kind: str) -> None:
            self.state_dict_type = kind

    def recorder(what: str):
        def record(plugin, accelerator, *args) -> None:
            folder = Path(args[-1])
            calls.append((what, plugin.state_dict_type))
            if what.startswith("save"):
                folder.mkdir(parents=True, exist_ok=True)
                (folder / f"{what}.bin").write_text("shard")
            else:
                assert (folder / f"save_{what.split('_')[1]}.bin").is_file()

        return record

    for what in ("save_model", "save_optimizer", "load_model", "load_optimizer"):
        verb, thing = what.split("_")
        monkeypatch.setattr(accelerate.utils, f"{verb}_fsdp_{thing}", recorder(what))
    trainer.train_step()  # optimizer state to save
    acc.state.fsdp_plugin = Plugin()
    monkeypatch.setattr(type(acc), "distributed_type", DistributedType.FSDP)
    trainer.step = 1
    trainer.save_checkpoint()
    folder = checkpoint.checkpoint_dir(trainer.out, 1)
    assert sorted(p.name for p in folder.iterdir()) == ["fsdp", "optimizer.pt", "state.json"]
    assert calls == [("save_model", "SHARDED_STATE_DICT"), ("save_optimizer", "SHARDED_STATE_DICT")]
    assert acc.state.fsdp_plugin.state_dict_type == "FULL_STATE_DICT"
    lr = trainer.scheduler.get_last_lr()
    calls.clear()
    trainer.step = 0
    trainer.scheduler.step()
    trainer.try_resume()
    assert calls == [("load_model", "SHARDED_STATE_DICT"), ("load_optimizer", "SHARDED_STATE_DICT")]
    assert trainer.step == 1 and trainer.scheduler.get_last_lr() == lr
