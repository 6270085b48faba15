"""`make gpu-check`: does the GPU path do its job? One script, the library called directly (no
Prefect, no DVC), the tiny model and random-weight Mistral-shaped models (no downloads), under
8 minutes on one GPU with no network.

    python -m bench.gpu_check            # on a CUDA machine: every check
    python -m bench.gpu_check --cpu      # the checks that mean something on a CPU (make test)

Each check prints `PASS|FAIL|SKIP <name>: <figures>`; the last line sums them up. The exit
status is 1 when any check failed. Packages a stock CUDA PyTorch image lacks come from the
wheel folder `make gpu-wheels` fills (docs/gpu-check.md).
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import math
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bench.gpu_perf import mistral_shaped, throughput, trl_memory

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Context:
    device: torch.device
    work: Path  # the working directory: a project laid out like the repository

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"


@dataclass
class Check:
    name: str
    run: Callable[[Context], tuple[str, str]]  # -> (PASS | FAIL | SKIP, figures)
    on_cpu: bool  # meaningful on a CPU (run by `--cpu` and `make test`)


CHECKS: list[Check] = []


def check(name: str, on_cpu: bool = True):
    def register(fn: Callable[[Context], tuple[str, str]]):
        CHECKS.append(Check(name, fn, on_cpu))
        return fn

    return register


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


# ---- set-up shared by the checks ------------------------------------------------------------
def _cfg(pipeline: str, *overrides: str):
    from align.config import load_pipeline

    return load_pipeline(f"pipelines/{pipeline}", list(overrides), smoke=True)


def _tiny() -> Path:
    from align.model.loading import resolve_model

    return Path(resolve_model("tiny"))


def _annotated(cfg, n: int = 6) -> list[dict]:
    """n records, K=4 responses each with distinct rewards and reference log-probs."""
    from bench.common import annotated_records

    return annotated_records(
        _tiny(),
        cfg,
        lambda i: [str(i + 3), f"The answer is {i + 3}", "I am not sure", "apples"],
        [1.25, 1.0, 0.0, -0.5],
        n,
    )


def _fresh_accelerator() -> None:
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state()


def _trainer(out: str, *overrides: str):
    from align.train.trainer import Trainer

    _fresh_accelerator()
    torch.manual_seed(0)
    cfg = _cfg("quickstart.yaml", *overrides)
    return Trainer(cfg, _tiny(), _annotated(cfg), Path(out), "gpu-check")


def _peak() -> str:
    """The CUDA allocator's peak since its last reset ('n/a' on a CPU)."""
    if not torch.cuda.is_available():
        return "n/a"
    return f"{torch.cuda.max_memory_allocated() / 2**20:.0f} MiB"


# ---- the checks ---------------------------------------------------------------------------
@check("placement", on_cpu=False)
def placement(ctx: Context) -> tuple[str, str]:
    """Every stage of the quickstart smoke pipeline on `model.device`: each one that loads a
    model allocates CUDA memory and hands it back when it ends."""
    try:
        from align.core.device import resolve_device
    except ImportError:
        return "SKIP", "align.core.device.resolve_device is missing (model.device: issue 20A)"
    from align.pipeline.graph import plan
    from align.pipeline.run import run_stage

    setting = str(resolve_device("auto"))
    cfg = _cfg("quickstart.yaml", f"model.device={setting}", "runs_dir=runs-placement")
    figures, ok = [], True
    for stage in plan(cfg):
        torch.cuda.reset_peak_memory_stats()
        run_stage(cfg, stage.name, force=True)
        peak, left = torch.cuda.max_memory_allocated(), torch.cuda.memory_allocated() / 2**20
        loads_model = stage.name != "prepare-model"
        ok &= (peak > 0 or not loads_model) and left < 64
        figures.append(f"{stage.name} peak {peak / 2**20:.0f} MiB left {left:.0f} MiB")
    return verdict(ok), f"{setting}; " + ", ".join(figures)


@check("stage_workers")
def stage_workers(ctx: Context) -> tuple[str, str]:
    """annotate.processes: two spawned workers (on one GPU both are given GPU 0) each place the
    reference on the device they were given and write the log-probs the one-process run does."""
    from unittest import mock

    from align.data.records import read_shards
    from align.pipeline.graph import plan, stage_folder
    from align.pipeline.run import run_stage

    device = "cuda" if ctx.cuda else "cpu"
    runs = []
    # one GPU listed twice: the worker machinery (spawn, CUDA_VISIBLE_DEVICES) on one card
    with mock.patch("align.core.device.visible_gpus", return_value=["0", "0"]):
        for workers in (1, 2):
            cfg = _cfg(
                "quickstart.yaml",
                f"model.device={device}",
                f"runs_dir=runs-workers-{workers}",
                "sample.shard_size=1",
                f"annotate.processes={workers}",
            )
            manifests = {p.name: run_stage(cfg, p.name)[0] for p in plan(cfg)[:3]}
            runs.append((read_shards(stage_folder(cfg, "annotate")), manifests["annotate"]))
    (one, _), (two, manifest) = runs
    if [(r["id"], r["responses"]) for r in one] != [(r["id"], r["responses"]) for r in two]:
        return "FAIL", "the two runs sampled different responses (sampling is not deterministic)"
    pairs = [(a["ref_logps"], b["ref_logps"]) for a, b in zip(one, two, strict=True)]
    gap = max(abs(x - y) for a, b in pairs for x, y in zip(a, b, strict=True))
    where = manifest["summary"]["device"]
    ok = len(one) == 4 and gap < 1e-5 and where.startswith("2 workers")
    return verdict(ok), f"{where}; largest log-prob gap to one process {gap:.1e}, peak {_peak()}"


@check("bf16_fp32_masters")
def bf16_masters(ctx: Context) -> tuple[str, str]:
    """model.dtype bfloat16 without LoRA at lr 5e-7: fp32 weights and AdamW state, and 3 steps
    move (nearly) every weight; bf16 weights stepped in place would keep ~99 % of them."""
    trainer = _trainer(
        "bf16-masters",
        "model.dtype=bfloat16",
        "train.precision=bf16",
        "train.learning_rate=5e-7",
        "train.lr_scheduler=constant",
        "train.warmup_ratio=0",
        "train.max_steps=3",
        "train.batch_size=3",
    )
    named = [(n, p) for n, p in trainer.model.named_parameters() if p.requires_grad]
    start = {n: p.detach().clone() for n, p in named}
    if ctx.cuda:
        torch.cuda.reset_peak_memory_stats()
    for _ in range(3):
        trainer.train_step()
        trainer.step += 1
    moved = sum((p.detach() != start[n]).sum().item() for n, p in named)
    total = sum(p.numel() for _, p in named)
    dtypes = {p.dtype for _, p in named}
    states = {s["exp_avg"].dtype for s in trainer.optimizer.state_dict()["state"].values()}
    on = {p.device.type for _, p in named}
    ok = dtypes == states == {torch.float32} and moved / total > 0.9 and on == {ctx.device.type}
    return verdict(ok), (
        f"weights {sorted(map(str, dtypes))} on {sorted(on)}, AdamW state "
        f"{sorted(map(str, states))}, moved {100 * moved / total:.1f} % in 3 steps at lr 5e-7, "
        f"peak {_peak()}"
    )


@check("lora_gradient_checkpointing")
def lora_gc(ctx: Context) -> tuple[str, str]:
    """LoRA with gradient checkpointing in bf16: every adapter tensor trains (B from the first
    step, A once B is no longer 0), the base stays put, the loss moves."""
    trainer = _trainer(
        "lora-gc",
        "model.lora={r: 8, alpha: 16, dropout: 0.05}",
        "train.gradient_checkpointing=true",
        "train.precision=bf16",
        "train.learning_rate=1e-2",
        "train.lr_scheduler=constant",
        "train.warmup_ratio=0",
        "train.max_steps=3",
        "train.batch_size=3",
    )
    policy = trainer.acc.unwrap_model(trainer.model)
    params = dict(policy.named_parameters())
    start = {n: p.detach().clone() for n, p in params.items()}
    rows = []
    for _ in range(3):
        rows.append(trainer.train_step())
        trainer.step += 1
    adapters = [n for n in params if "lora_" in n]
    moved = sum(not torch.equal(params[n], start[n]) for n in adapters)
    base_moved = sum(not torch.equal(p, start[n]) for n, p in params.items() if "lora_" not in n)
    losses = [r["loss"] for r in rows]
    checkpointing = getattr(policy, "is_activation_checkpointing", None)
    if checkpointing is None:  # transformers releases before the rename
        checkpointing = policy.is_gradient_checkpointing
    ok = (
        checkpointing
        and all(math.isfinite(x) for x in losses)
        and losses[-1] != losses[0]
        and moved == len(adapters) > 0
        and base_moved == 0
    )
    return verdict(ok), (
        f"losses {[round(x, 4) for x in losses]}, {moved}/{len(adapters)} adapter tensors "
        f"moved, {base_moved} base tensors moved"
    )


@check("shared_prompt_bf16")
def shared_prompt(ctx: Context) -> tuple[str, str]:
    """Each prompt once with its K responses on its KV cache vs K full rows, in bf16 on a
    Mistral-shaped model: the summed log-probs agree within bf16 noise per token."""
    from align.model.logprobs import model_sequence_logps, shared_prompt_logps

    model = mistral_shaped(ctx.device, 2, full=ctx.cuda)
    g = torch.Generator().manual_seed(0)
    vocab = model.config.vocab_size

    def ids(n: int) -> list[int]:
        return torch.randint(1, vocab, (n,), generator=g).tolist()

    groups = [(ids(37), [ids(n) for n in (5, 19, 64, 30)]), (ids(12), [ids(n) for n in (40, 3)])]
    with torch.no_grad():
        shared, counts = shared_prompt_logps(model, groups, 0)
        full, _ = model_sequence_logps(model, [(p, r) for p, rs in groups for r in rs], 0)
    per_token = ((shared - full).abs() / counts).max().item()
    scale = (full.abs() / counts).mean().item()
    return verdict(per_token < 0.02 * scale + 1e-3), (
        f"max |shared - full| {per_token:.4f} nats/token (log-prob scale {scale:.2f} "
        f"nats/token), {len(counts)} rows"
    )


def _launch(ctx: Context, name: str, config: str) -> tuple[str, str]:
    """Offline training under `accelerate launch` with one process and `config`: 2 steps, a
    checkpoint after each, the final model; then the same run asked for 3 steps resumes from
    the step-2 checkpoint (FSDP: its shards) and adds one."""
    import json

    from align.data.records import shard_path, write_shard
    from align.pipeline.graph import stage_folder
    from align.train.launch import launch_training

    dist = f"train.distributed={{num_processes: 1, config: configs/accelerate/{config}}}"
    common = ["train.save_steps=1", "train.batch_size=2", dist, f"runs_dir=runs-{name}"]
    if config == "fsdp.yaml":
        common += ["train.precision=bf16", "train.grad_accum=2"]
    cfg = _cfg("quickstart.yaml", "train.max_steps=2", *common)
    write_shard(shard_path(stage_folder(cfg, "annotate"), 0), _annotated(cfg))
    out = Path(f"{name}-out")
    started = time.perf_counter()
    metrics = launch_training(cfg, _tiny(), out, "gpu-check")
    saved = sorted(p.name for p in (out / "model").glob("*.safetensors"))
    ckpts = sorted(p.name for p in (out / "checkpoints").glob("step-*"))
    first = time.perf_counter() - started
    resumed = launch_training(
        _cfg("quickstart.yaml", "train.max_steps=3", *common), _tiny(), out, "gpu-check"
    )
    steps = [json.loads(ln)["step"] for ln in (out / "log.jsonl").read_text().splitlines()]
    ok = metrics.get("steps") == 2 and bool(saved) and bool(ckpts) and steps == [1, 2, 3]
    return verdict(ok and resumed.get("steps") == 3), (
        f"steps {metrics.get('steps')}, checkpoints {ckpts}, model {saved} in {first:.0f} s; "
        f"resumed to step {resumed.get('steps')}, log steps {steps}"
    )


@check("accelerate_ddp")
def accelerate_ddp(ctx: Context) -> tuple[str, str]:
    return _launch(ctx, "ddp", "ddp.yaml")


@check("accelerate_fsdp", on_cpu=False)
def accelerate_fsdp(ctx: Context) -> tuple[str, str]:
    return _launch(ctx, "fsdp", "fsdp.yaml")


@check("vllm", on_cpu=False)
def vllm(ctx: Context) -> tuple[str, str]:
    """vLLM samples a small random Llama in bf16 and answers as the judge's policy, then hands
    the GPU back on close."""
    from align.core.packages import installed

    if not installed("vllm"):
        return "SKIP", "vllm is not installed"
    from transformers import LlamaConfig, LlamaForCausalLM

    from align.generate.vllm_engine import VLLMSampler
    from align.judging.policy import vllm_generate_fn
    from align.model.loading import load_tokenizer

    # the tiny model's tokenizer on a random Llama with a head size vLLM's kernels take (128)
    tokenizer, path = load_tokenizer(_tiny()), Path("vllm-model").resolve()
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        hidden_size=256,
        intermediate_size=512,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=1024,
    )
    LlamaForCausalLM(config).to(torch.bfloat16).save_pretrained(path)
    tokenizer.save_pretrained(path)
    prompts = [[{"role": "user", "content": "What is 2 plus 3?"}]] * 2
    free_before, total = torch.cuda.mem_get_info()
    with VLLMSampler(path, "bfloat16", seed=0) as engine:
        texts, _ = engine.generate(tokenizer, prompts, k=2, max_new_tokens=8)
        # the judge's answers (judge.policy_backend: vllm): greedy twice is the same text
        answers = vllm_generate_fn(engine, tokenizer)(prompts, [0.0, 0.0], 8)
        free_during, _ = torch.cuda.mem_get_info()
    free_after, _ = torch.cuda.mem_get_info()
    ok = [len(t) for t in texts] == [2, 2] and answers[0] == answers[1]
    ok &= free_after > free_before - 2**30
    return verdict(ok), (
        f"engine held {(free_before - free_during) / 2**30:.1f} GiB, "
        f"{(free_before - free_after) / 2**30:.2f} GiB not returned after close "
        f"(of {total / 2**30:.0f} GiB)"
    )


@check("online_ipo_md_kl0")
def online_kl0(ctx: Context) -> tuple[str, str]:
    """IPO-MD with LoRA in bf16: the reference is the policy with its adapters off, so the KL
    estimate is exactly 0 at step 1."""
    from align.data.datasets import load_records
    from align.train.online import OnlineTrainer

    _fresh_accelerator()
    torch.manual_seed(0)
    cfg = _cfg(
        "ipo-md-quickstart.yaml",
        "train.preference={reward: {model: tiny-reward}, scale: 20.0}",
        "model.lora={r: 8, alpha: 16, dropout: 0.0}",
        "train.precision=bf16",
        "train.batch_size=2",
        "train.max_steps=1",
    )
    records = load_records(cfg.data.train, None, "data.train")
    trainer = OnlineTrainer(cfg, _tiny(), _tiny(), records, Path("online-out"), "gpu-check")
    row = trainer.train_step()
    return verdict(row["kl"] == 0.0 and math.isfinite(row["loss"])), (
        f"kl {row['kl']!r}, loss {row['loss']:.4f}, p {row['preference/mean']:.3f}, "
        f"{row['samples_per_s']:.1f} samples/s"
    )


class _Crash(Exception):
    pass


@check("resume_bit_exact")
def resume(ctx: Context) -> tuple[str, str]:
    """LoRA with dropout (it draws from the device's RNG): crash after the step-2 checkpoint,
    resume from a different RNG state, and end with the weights of an uninterrupted run."""
    overrides = (
        "model.lora={r: 8, alpha: 16, dropout: 0.1}",
        "train.max_steps=4",
        "train.save_steps=2",
        "train.batch_size=2",
        "train.grad_accum=2",
        "train.learning_rate=1e-2",
        "train.keep_checkpoints=3",
    )
    # bit-exact needs deterministic kernels as well as the same random draws
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        return _resume(ctx, overrides)
    finally:
        torch.use_deterministic_algorithms(False)


def _resume(ctx: Context, overrides: tuple[str, ...]) -> tuple[str, str]:
    from safetensors.torch import load_file

    _trainer("resume-straight", *overrides).train()
    crashing = _trainer("resume-crashed", *overrides)
    original = type(crashing).save_checkpoint

    def crash_after_step_2(self) -> None:
        original(self)
        if self.step == 2:
            raise _Crash

    crashing.save_checkpoint = crash_after_step_2.__get__(crashing)
    with contextlib.suppress(_Crash):
        crashing.train()
    resumed = _trainer("resume-crashed", *overrides)
    torch.manual_seed(123)
    if ctx.cuda:
        torch.cuda.manual_seed_all(123)
    resumed.train()
    a = load_file("resume-straight/model/model.safetensors")
    b = load_file("resume-crashed/model/model.safetensors")
    diff = max((a[k] - b[k]).abs().max().item() for k in a)
    return verdict(diff == 0.0), f"max |straight - resumed| {diff:.3g} over {len(a)} tensors"


check("throughput_mfu", on_cpu=True)(throughput)
check("memory_vs_trl", on_cpu=False)(trl_memory)


def _run(check_: Check, ctx: Context) -> tuple[str, str]:
    try:
        return check_.run(ctx)
    except Exception as exc:  # a check that crashes is a failed check, with its reason
        where = traceback.extract_tb(exc.__traceback__)[-1]
        return "FAIL", f"{type(exc).__name__}: {str(exc)[:300]} ({where.filename}:{where.lineno})"


def _project(work: Path) -> None:
    """A working directory laid out like the repository: pipelines, accelerate configs, data."""
    from align.data.quickstart import write_quickstart_data

    for folder in ("pipelines", "configs"):
        shutil.copytree(REPO / folder, work / folder)
    write_quickstart_data(work / "data")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="The project's GPU check (docs/gpu-check.md)")
    parser.add_argument("--cpu", action="store_true", help="only the checks that run on a CPU")
    parser.add_argument("--only", nargs="*", help="run these checks only")
    args = parser.parse_args(argv)
    if not args.cpu and not torch.cuda.is_available():
        print("error: torch sees no CUDA device; run `python -m bench.gpu_check --cpu` here")
        return 2
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS (resume)
    device = torch.device("cpu") if args.cpu else torch.device("cuda", 0)
    name = "CPU" if args.cpu else torch.cuda.get_device_name(device)
    selected = [c for c in CHECKS if (c.on_cpu or not args.cpu)]
    if args.only:
        selected = [c for c in selected if c.name in args.only]
    started, counts = time.perf_counter(), {"PASS": 0, "FAIL": 0, "SKIP": 0}
    here = Path.cwd()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        work = Path(tmp)
        os.environ.setdefault("ALIGN_CACHE", str(work / "cache"))
        _project(work)
        os.chdir(work)
        try:
            ctx = Context(device, work)
            for c in selected:
                t0 = time.perf_counter()
                status, figures = _run(c, ctx)
                counts[status] += 1
                print(f"{status} {c.name}: {figures} [{time.perf_counter() - t0:.0f} s]")
                sys.stdout.flush()
                gc.collect()  # what the check held, before the next one measures memory
                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
        finally:
            os.chdir(here)
    print(
        f"gpu-check: {counts['PASS']} PASS, {counts['FAIL']} FAIL, {counts['SKIP']} SKIP on "
        f"{name}, torch {torch.__version__}, {time.perf_counter() - started:.0f} s"
    )
    return 1 if counts["FAIL"] else 0


if __name__ == "__main__":
    sys.exit(main())
