"""Multi-process training (`train.distributed`): two gloo processes on CPU, half the batch each,
follow the one-process trajectory; the validator refuses what cannot launch, in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from align.config import load_pipeline
from align.core.errors import AlignError
from align.core.packages import installed
from align.data.records import shard_path, write_shard
from align.model.loading import resolve_model
from align.pipeline import stage_folder
from align.stages.train import train_here, train_offline
from align.train.launch import launch_command, launch_training
from tests.conftest import REPO
from tests.test_trainer import _cfg, _log, _records

CONFIGS = REPO / "configs/accelerate"
DDP = "train.distributed={num_processes: 2, config: configs/accelerate/ddp.yaml}"


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}


def test_two_processes_follow_the_one_process_trajectory(project: Path) -> None:
    """Global batch 4: one process x 4 prompts vs two gloo processes x 2 prompts, through the
    shipped configs/accelerate/ddp.yaml. Same per-step loss and figures, same final weights."""
    shutil.copytree(CONFIGS, project / "configs/accelerate")
    common = ["train.loss.beta=1.0", "train.learning_rate=3e-3", "train.max_steps=3"]
    one = _cfg(*common, "train.batch_size=4")
    two = _cfg(*common, "train.batch_size=2", DDP)
    write_shard(shard_path(stage_folder(one, "annotate"), 0), _records(one, n=8))
    policy = Path(resolve_model("tiny"))

    train_offline(one, policy, project / "one", "h")
    metrics = launch_training(two, policy, project / "two", "h")

    single, double = _log(project / "one"), _log(project / "two")
    assert [r["step"] for r in double] == [1, 2, 3]
    assert abs(single[-1]["loss"] - single[0]["loss"]) > 0.01 * abs(single[0]["loss"])
    for a, b in zip(single, double, strict=True):
        for key in ("loss", "logps/chosen", "logps/rejected", "rewards/margin", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (b["step"], key)
        assert (b["tokens"], b["rewards/accuracy"]) == (a["tokens"], a["rewards/accuracy"])
    initial, w1, w2 = (
        _weights(policy),
        _weights(project / "one/model"),
        _weights(project / "two/model"),
    )
    assert max((w1[k] - initial[k]).abs().max().item() for k in initial) > 1e-3  # it trained
    # AdamW turns float-rounding differences in near-zero gradients into updates of ~1e-5;
    # three steps at lr 3e-3 move weights by up to ~1e-2, so 1e-4 still pins the trajectory
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=0, atol=1e-4, msg=name)
    assert metrics == json.loads((project / "two/metrics.json").read_text())
    assert not (project / "two/.launch.json").exists()
    assert not (project / "two/examples.arrow").exists()  # the tokenised examples are scratch
    last = sorted((project / "two/checkpoints").glob("step-*"))[-1]
    saved = torch.load(last / "optimizer.pt", weights_only=True)
    assert len(saved["rng_ranks"]) == 2  # each process resumes its own generator


def test_bad_input_in_a_launched_process_fails_here_in_one_line(project: Path) -> None:
    cfg = _cfg("train.batch_size=2", DDP.replace("configs/accelerate", str(CONFIGS)))
    stage_folder(cfg, "annotate").mkdir(parents=True)  # annotate left no records
    with pytest.raises(AlignError, match=r"^train: the annotated data holds no records$"):
        launch_training(cfg, Path(resolve_model("tiny")), project / "out", "h")


def test_launch_command_defaults_to_ddp_through_torchrun(project: Path) -> None:
    cfg = _cfg("train.distributed.num_processes=2", "train.precision=bf16")
    cmd = launch_command(cfg, Path("job.json"))
    assert cmd[1:3] == ["-m", "accelerate.commands.launch"]
    assert "--multi_gpu" in cmd and "--config_file" not in cmd
    assert cmd[cmd.index("--num_processes") + 1] == "2"
    assert cmd[cmd.index("--mixed_precision") + 1] == "bf16"
    assert cmd[-3:] == ["-m", "align.stages.train", "job.json"]


def test_nca_7b_launches_eight_processes_but_its_smoke_run_one() -> None:
    full = load_pipeline(REPO / "pipelines/nca-7b.yaml")
    assert full.train.distributed.num_processes == 8
    assert full.train.distributed.config == "configs/accelerate/ddp.yaml"
    assert load_pipeline(REPO / "pipelines/nca-7b.yaml", smoke=True).train.distributed is None


def _error(pipeline: str, *overrides: str) -> str:
    with pytest.raises(AlignError) as info:
        load_pipeline(REPO / "pipelines" / pipeline, list(overrides))
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.skipif(installed("deepspeed"), reason="deepspeed is installed here")
def test_deepspeed_config_without_deepspeed_names_the_field() -> None:
    zero3 = f"train.distributed={{num_processes: 2, config: {CONFIGS / 'zero3.yaml'}}}"
    message = _error("quickstart.yaml", zero3)
    assert "train.distributed.config:" in message
    assert "uses DeepSpeed, which is not installed here" in message


def test_sharded_training_refuses_bf16_weights() -> None:
    fsdp = f"train.distributed={{num_processes: 2, config: {CONFIGS / 'fsdp.yaml'}}}"
    message = _error("quickstart.yaml", fsdp, "train.precision=bf16_weights")
    assert "quickstart.yaml: train.precision: bf16_weights keeps fp32 master weights" in message
    assert "(FSDP) replaces; use precision bf16 or configs/accelerate/ddp.yaml" in message
    load_pipeline(REPO / "pipelines/quickstart.yaml", [fsdp, "train.precision=bf16"])


def test_deepspeed_needs_grad_accum_1(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("align.config.accelerate.installed", lambda name: True)
    zero3 = f"train.distributed={{num_processes: 2, config: {CONFIGS / 'zero3.yaml'}}}"
    assert "train.grad_accum: must be 1 with DeepSpeed" in _error("quickstart.yaml", zero3)
    load_pipeline(REPO / "pipelines/quickstart.yaml", [zero3, "train.grad_accum=1"])


@pytest.mark.parametrize(
    ("pipeline", "override", "expected"),
    [
        (
            "nca-7b.yaml",
            f"train.distributed.config={CONFIGS / 'fsdp.yaml'}",
            "shards the model (FSDP) but model.lora is set; use configs/accelerate/ddp.yaml",
        ),
        (
            "online-ipo-quickstart.yaml",
            f"train.distributed={{num_processes: 2, config: {CONFIGS / 'fsdp.yaml'}}}",
            "but online training samples with the whole policy on every process; use",
        ),
        (
            "quickstart.yaml",
            "train.distributed={num_processes: 0}",
            "train.distributed.num_processes: Input should be greater than 0",
        ),
        (
            "quickstart.yaml",
            f"train.distributed={{num_processes: 2, config: {REPO / 'pyproject.toml'}}}",
            "is not an accelerate config",
        ),
    ],
    ids=["fsdp-with-lora", "online-fsdp", "zero-processes", "not-a-config"],
)
def test_unlaunchable_settings_are_refused(pipeline: str, override: str, expected: str) -> None:
    assert expected in _error(pipeline, override)


def test_a_missing_config_is_refused_before_launching(project: Path) -> None:
    cfg = _cfg("train.distributed={num_processes: 2, config: configs/accelerate/dpp.yaml}")
    with pytest.raises(AlignError, match=r"^train.distributed.config: 'configs/accelerate/dpp"):
        launch_training(cfg, Path(resolve_model("tiny")), project / "out", "h")


def test_online_training_on_two_processes_follows_one(project: Path) -> None:
    """IPO-MD with a Bradley-Terry preference, global batch 4: two gloo processes each sample,
    label and train on their 2 prompts; the pairs, the labels, the logged figures and the
    final weights are those of one process with 4 prompts (the rows' generators are seeded by
    their place in the whole step, and DDP averages the gradients)."""
    from align.data.datasets import load_records
    from tests.test_online import IPO_MD, TINY_BT

    shutil.copytree(CONFIGS, project / "configs/accelerate")
    common = [TINY_BT, "train.max_steps=2", "train.learning_rate=1e-2", "train.save_steps=100"]
    one = load_pipeline(IPO_MD, [*common, "train.batch_size=4"], smoke=True)
    two = load_pipeline(IPO_MD, [*common, "train.batch_size=2", DDP], smoke=True)
    tiny = Path(resolve_model("tiny"))
    train_here(one, tiny, tiny, project / "one", "h")
    assert load_records(one.data.train, None, "data.train")  # prompts to sample from
    metrics = launch_training(two, tiny, project / "two", "h", reference=tiny)

    single, double = _log(project / "one"), _log(project / "two")
    assert [r["step"] for r in double] == [1, 2]
    for a, b in zip(single, double, strict=True):
        assert b["length/mean"] == a["length/mean"] and b["tokens"] == a["tokens"]
        for key in ("loss", "preference/mean", "kl", "logps/policy", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (b["step"], key)
    assert abs(single[1]["kl"]) > 1e-4  # step 1 moved the policy off the reference
    w1, w2 = _weights(project / "one/model"), _weights(project / "two/model")
    initial = _weights(tiny)
    assert max((w1[k] - initial[k]).abs().max().item() for k in initial) > 1e-3
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=0, atol=1e-4, msg=name)
    assert metrics["steps"] == 2 and metrics["prompts"] == 4


@pytest.mark.parametrize("arch", ["llama", "mistral"])
def test_fsdp_config_wraps_each_models_own_decoder_layer(arch: str) -> None:
    """configs/accelerate/fsdp.yaml names no layer class: accelerate wraps the classes in the
    model's `_no_split_modules`, so the Mistral recipes shard per MistralDecoderLayer."""
    import yaml
    from accelerate.utils import FullyShardedDataParallelPlugin
    from transformers import AutoConfig, AutoModelForCausalLM

    fsdp = yaml.safe_load((CONFIGS / "fsdp.yaml").read_text())["fsdp_config"]
    assert "fsdp_transformer_layer_cls_to_wrap" not in fsdp
    plugin = FullyShardedDataParallelPlugin(
        auto_wrap_policy=fsdp["fsdp_auto_wrap_policy"].lower(),
        state_dict_type=fsdp["fsdp_state_dict_type"],
    )
    config = AutoConfig.for_model(
        arch,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=64,
    )
    plugin.set_auto_wrap_policy(AutoModelForCausalLM.from_config(config))
    expected = {"llama": "LlamaDecoderLayer", "mistral": "MistralDecoderLayer"}[arch]
    assert plugin.transformer_cls_names_to_wrap == [expected]
    assert {c.__name__ for c in plugin.auto_wrap_policy.keywords["transformer_layer_cls"]} == {
        expected
    }
