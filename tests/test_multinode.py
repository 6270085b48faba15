"""Training over several machines through accelerate's multi-node launch: two gloo processes
started as two machines on loopback (machine_rank 0 and 1, machines 2), each the way a user
starts it, follow the one-process trajectory and end on the same weights."""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
from pathlib import Path

import pytest
import torch

from align.config import load_pipeline
from align.core.io import read_json
from align.data.records import shard_path, write_shard
from align.pipeline import plan, run_stage, stage_folder
from align.stages.train import train_offline
from align.train.launch import launch_command
from tests.conftest import REPO, venv_env
from tests.test_distributed import _weights
from tests.test_trainer import _log, _records

QS = "pipelines/quickstart.yaml"
COMMON = ["train.loss.beta=1.0", "train.learning_rate=3e-3", "train.max_steps=3"]
COMMON += ["train.warmup_ratio=0", "train.lr_scheduler=constant", "train.save_steps=3"]


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _two_machines(port: int) -> list[str]:
    return [
        "train.batch_size=2",
        "train.grad_accum=1",
        "train.global_batch=4",
        "train.distributed={num_processes: 1, machines: 2, main_address: 127.0.0.1, "
        f"main_port: {port}, config: configs/accelerate/ddp.yaml}}",
    ]


@pytest.mark.slow
def test_two_machines_on_loopback_train_as_one(project: Path) -> None:
    shutil.copytree(REPO / "configs", project / "configs")
    two = _two_machines(_port())
    cfg = load_pipeline(QS, [*COMMON, *two], smoke=True)
    for p in plan(cfg)[:3]:  # prepare-model, sample, annotate: machine 0's run folder
        run_stage(cfg, p.name)
    # records whose rewards differ, so every step has a gradient to agree on (as test_distributed)
    annotate = stage_folder(cfg, "annotate")
    for shard in annotate.glob("shard-*"):
        shard.unlink()
    write_shard(shard_path(annotate, 0), _records(cfg, n=8))
    joined: dict = {}

    def machine_1() -> None:  # as a user starts it on the second machine
        joined["run"] = subprocess.run(
            ["align", "stage", QS, "train", "--smoke"]
            + [f"--set={o}" for o in [*COMMON, *two, "train.distributed.machine_rank=1"]],
            cwd=project,
            env=venv_env(project),
            capture_output=True,
            text=True,
            timeout=600,
        )

    thread = threading.Thread(target=machine_1)
    thread.start()
    manifest, ran = run_stage(cfg, "train")  # machine 0
    thread.join()
    assert joined["run"].returncode == 0, joined["run"].stderr[-2000:]
    assert "train: done in" in joined["run"].stdout  # machine 1 took part, and wrote nothing
    assert ran and manifest["summary"]["steps"] == 3

    one = load_pipeline(QS, [*COMMON, "train.batch_size=4"], smoke=True)
    models = read_json(stage_folder(one, "prepare-model") / "manifest.json")["summary"]
    train_offline(one, Path(models["policy"]["path"]), project / "one", "h")
    single, double = _log(project / "one"), _log(stage_folder(cfg, "train"))
    assert [r["step"] for r in double] == [1, 2, 3]
    for a, b in zip(single, double, strict=True):
        for key in ("loss", "grad_norm"):
            assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (b["step"], key)
        assert b["tokens"] == a["tokens"]  # both machines' prompts counted in every step
    w1, w2 = _weights(project / "one/model"), _weights(stage_folder(cfg, "train") / "model")
    for name in w1:
        torch.testing.assert_close(w2[name], w1[name], rtol=0, atol=1e-4, msg=name)


def test_every_machine_gets_accelerates_multi_node_settings(project: Path) -> None:
    port = _port()
    cfg = load_pipeline(QS, [*_two_machines(port), "train.distributed.machine_rank=1"])
    cmd = launch_command(cfg, Path("job.json"))
    flag = {cmd[i]: cmd[i + 1] for i in range(len(cmd) - 1) if cmd[i].startswith("--")}
    assert flag["--num_processes"] == "2"  # over both machines
    assert flag["--num_machines"] == "2" and flag["--machine_rank"] == "1"
    assert flag["--main_process_ip"] == "127.0.0.1"
    assert flag["--main_process_port"] == str(port)
    rank0 = load_pipeline(QS, _two_machines(port))
    hashes = {p.name: p.stage_hash for p in plan(rank0)}
    assert {p.name: p.stage_hash for p in plan(cfg)} == hashes  # the same job on each machine


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        (
            "train.distributed={num_processes: 1, machines: 2}",
            "main_address: required with machines: 2",
        ),
        (
            "train.distributed={num_processes: 1, machines: 2, machine_rank: 2, main_address: h}",
            "machine_rank 2 must be below machines (2)",
        ),
    ],
)
def test_multi_node_settings_are_checked(override: str, expected: str) -> None:
    from align.core.errors import AlignError

    with pytest.raises(AlignError, match=expected.replace("(", r"\(").replace(")", r"\)")):
        load_pipeline(REPO / QS, [override])
