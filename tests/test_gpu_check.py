"""`make gpu-check` (bench/gpu_check.py): its CPU-degradable checks pass here, through the
script's own command line, and without CUDA the full check refuses to pretend."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
import torch

from bench.gpu_check import CHECKS, main
from tests.conftest import REPO

# accelerate_ddp launches `accelerate launch` (~40 s of imports on 2 cores): tests/test_distributed
# runs that path; every other check that means something on a CPU runs here
FAST = [c.name for c in CHECKS if c.on_cpu and c.name != "accelerate_ddp"]


def test_cpu_checks_pass_through_the_command_line() -> None:
    run = subprocess.run(
        [sys.executable, "-m", "bench.gpu_check", "--cpu", "--only", *FAST],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [ln for ln in run.stdout.splitlines() if re.match(r"(PASS|FAIL|SKIP) ", ln)]
    status = {ln.split()[1].rstrip(":"): ln.split()[0] for ln in lines}
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert set(status) == set(FAST)
    assert status.pop("throughput_mfu") == "SKIP"  # its target is for a GPU; figures printed
    assert set(status.values()) == {"PASS"}, lines
    summary = run.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"gpu-check: {len(FAST) - 1} PASS, 0 FAIL, 1 SKIP on CPU, .*", summary)
    masters = next(ln for ln in lines if "bf16_fp32_masters" in ln)
    assert "moved 100.0 %" in masters or float(re.search(r"moved ([\d.]+) %", masters)[1]) > 90


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present")
def test_without_cuda_the_full_check_refuses(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert (
        "torch sees no CUDA device; run `python -m bench.gpu_check --cpu`"
        in capsys.readouterr().out
    )


def test_every_check_of_the_issue_is_there() -> None:
    names = {c.name for c in CHECKS}
    assert names == {
        "placement",
        "stage_workers",
        "bf16_fp32_masters",
        "lora_gradient_checkpointing",
        "shared_prompt_bf16",
        "accelerate_ddp",
        "accelerate_fsdp",
        "vllm",
        "online_ipo_md_kl0",
        "resume_bit_exact",
        "throughput_mfu",
        "memory_vs_trl",
    }
