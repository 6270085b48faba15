"""The bad-input corpus (tests/bad_inputs/cases.yaml) through the real CLI.

Every case must exit non-zero with exactly one `error:` line on stderr that names the file,
field or record and says how to fix it, and must leave nothing that looks complete. Cases run
in a fresh project folder each; the few that need a model folder or a checkpoint get it from a
setup function below.
"""

from __future__ import annotations

import contextlib
import functools
import json
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import save_file

from align.config import load_pipeline
from align.core.io import atomic_write_text
from align.model.tiny import build_tiny_model, build_tiny_tokenizer
from align.pipeline import MARKER, plan, run_stage, stage_folder
from tests.bad_inputs.harness import (
    CORPUS,
    assert_nothing_looks_complete,
    cli_env,
    error_line,
    files_containing,
    make_judged_project,
    make_project,
    run_align,
    run_stages_here,
)
from tests.bad_inputs.hostile import KEY, KEY_ENV, HostileServer, leaked_forms

CASES = yaml.safe_load((CORPUS / "cases.yaml").read_text())
COMMANDS = {
    "validate": ["validate", "pipeline.yaml"],
    "run": ["run", "--no-prefect", "pipeline.yaml", "--smoke"],
}


# ---- setup functions named by cases.yaml ----------------------------------------------------
def _save_tiny(folder: Path, vocab_size: int = 600, chat_template: bool = True) -> None:
    tokenizer = build_tiny_tokenizer(vocab_size)
    if not chat_template:
        tokenizer.chat_template = None
    build_tiny_model(tokenizer).save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def no_chat_template(project: Path) -> None:
    _save_tiny(project / "models" / "nochat", chat_template=False)


def other_vocab(project: Path) -> None:
    _save_tiny(project / "models" / "other-vocab", vocab_size=400)


def remote_code(project: Path) -> None:
    """A model folder whose config asks for its own code; the code would leave a file behind."""
    folder = project / "models" / "remote"
    _save_tiny(folder)
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel", "AutoConfig": "evil.Cfg"}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "evil.py").write_text("open('PWNED', 'w').close()\n")


def pickled_weights(project: Path) -> None:
    folder = project / "models" / "pickled"
    tokenizer = build_tiny_tokenizer()
    model = build_tiny_model(tokenizer)
    model.config.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    torch.save(model.state_dict(), folder / "pytorch_model.bin")


def _checkpoint_dir(project: Path) -> tuple[Path, str]:
    """Run prepare-model and annotate in-process; return the train checkpoint folder to fake
    and the train stage hash (its marker written, as a started run leaves it)."""
    with contextlib.chdir(project):
        cfg = load_pipeline("pipeline.yaml", smoke=True)
        for name in ("prepare-model", "annotate"):
            run_stage(cfg, name)
        train_hash = {p.name: p for p in plan(cfg)}["train"].stage_hash
        folder = project / stage_folder(cfg, "train")
    atomic_write_text(folder / MARKER, train_hash)
    ckpt = folder / "checkpoints" / "step-000001"
    ckpt.mkdir(parents=True)
    return ckpt, train_hash


def foreign_checkpoint(project: Path) -> None:
    ckpt, _ = _checkpoint_dir(project)
    (ckpt / "state.json").write_text(json.dumps({"step": 1, "stage_hash": "f" * 64}))
    save_file({"w": torch.zeros(2)}, ckpt / "trainable.safetensors")


def damaged_checkpoint(project: Path) -> None:
    ckpt, train_hash = _checkpoint_dir(project)
    (ckpt / "state.json").write_text(json.dumps({"step": 1, "stage_hash": train_hash}))
    (ckpt / "trainable.safetensors").write_bytes(b"\x08\x00\x00\x00\x00\x00\x00\x00{}")
    (ckpt / "optimizer.pt").write_bytes(b"not a checkpoint")


def judge_ready(project: Path) -> None:
    """The judged pipeline with its upstream stages done, so `align stage ... judge` runs."""
    make_judged_project(project)
    run_stages_here(project, [], "prepare-model", "annotate", "train")


def _link_outside(project: Path, name: str) -> None:
    """`project/name` as a symbolic link to a folder beside the project (outside it)."""
    outside = project.parent / "outside"
    outside.mkdir(exist_ok=True)
    link = project / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(outside, target_is_directory=True)


def runs_link_outside(project: Path) -> None:
    _link_outside(project, "runs")


def cache_link_outside(project: Path) -> None:
    _link_outside(project, "cachelink")


def stage_link_outside(project: Path) -> None:
    """An align run folder whose prepare-model folder is a link out of the project."""
    (project / "runs" / "corpus-smoke").mkdir(parents=True)
    (project / "runs" / "corpus-smoke" / ".align-run").write_text("made by align\n")
    _link_outside(project, "runs/corpus-smoke/prepare-model")


def oversize_pipeline(project: Path) -> None:
    """The base pipeline padded with comments past 1 MiB."""
    with open(project / "pipeline.yaml", "a") as f:
        f.write(("# padding " + "x" * 90 + "\n") * 12_000)


SERVERS: list[HostileServer] = []  # live until the test process ends (daemon threads)


def _hostile_judge(mode: str, project: Path, where: str = "annotate.reward.judge") -> None:
    """Point the pipeline's judge (kept under --smoke by smoke.set) at a hostile server."""
    server = HostileServer(mode)
    SERVERS.append(server)
    pipeline = yaml.safe_load((project / "pipeline.yaml").read_text())
    backend = {
        "kind": "openai",
        "model": "judge",
        "base_url": server.url,
        "api_key_env": KEY_ENV,
        "max_retries": 0,
        "timeout_s": 1 if mode == "trickle" else 10,
        "concurrency": 4,
    }
    if where == "annotate.reward.judge":
        pipeline["annotate"] = {"reward": {"judge": {"backend": backend, "cache_dir": "jcache"}}}
    pipeline["smoke"] = {"set": {f"{where}.backend": backend}}
    (project / "pipeline.yaml").write_text(yaml.safe_dump(pipeline))


def judge_ready_hostile(project: Path) -> None:
    """The judged pipeline with its upstream stages done, its judge an echoing server."""
    judge_ready(project)
    _hostile_judge("json-escaped", project, where="judge")


HOSTILE_MODES = (
    "json-escaped",
    "unicode-escaped",
    "url-encoded",
    "base64",
    "partial",
    "in-answer",
    "trickle",
)
SETUPS: dict[str, Callable[[Path], None]] = {
    f.__name__: f
    for f in (
        no_chat_template,
        other_vocab,
        remote_code,
        pickled_weights,
        foreign_checkpoint,
        damaged_checkpoint,
        judge_ready,
        judge_ready_hostile,
        runs_link_outside,
        cache_link_outside,
        stage_link_outside,
        oversize_pipeline,
    )
} | {f"judge_{m.replace('-', '_')}": functools.partial(_hostile_judge, m) for m in HOSTILE_MODES}


# ---- the runner --------------------------------------------------------------------------------
WORKERS = 3  # CLI runs at once: each spends most of its time importing torch and transformers


def _run_case(case: dict, project: Path) -> tuple[subprocess.CompletedProcess, float]:
    cmd = case.get("cmd", "run")
    argv = [*(COMMANDS[cmd] if isinstance(cmd, str) else cmd), *case.get("args", [])]
    env = cli_env(project, case.get("faults"), **{KEY_ENV: KEY}, **case.get("env", {}))
    started = time.monotonic()
    res = run_align(project, *argv, env=env)
    return res, time.monotonic() - started


@pytest.fixture(scope="module")
def outcomes(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[Path, subprocess.CompletedProcess]]:
    """Run every selected case's command, a few at a time, before the first check: the corpus
    costs its slowest third instead of its sum. Setups run first, in this process, one by one."""
    selected = [
        item.callspec.params["case"]
        for item in request.session.items
        if item.originalname == "test_bad_input_is_refused_in_one_line"
    ]
    projects = {}
    for case in selected:
        project = make_project(tmp_path_factory.mktemp(case["name"]) / "p", case.get("files"))
        if case.get("setup"):
            SETUPS[case["setup"]](project)
        projects[case["name"]] = project
    with ThreadPoolExecutor(WORKERS) as pool:
        runs = pool.map(lambda c: _run_case(c, projects[c["name"]]), selected)
        return {
            c["name"]: (projects[c["name"]], res) for c, res in zip(selected, runs, strict=True)
        }


def _unchanged_input(project: Path, path: Path, overlay: str | None) -> bool:
    """Whether `path` is one of the case's own input files, as the case gave it (a pasted key
    in the user's YAML is the input, not a leak)."""
    if not path.is_relative_to(project):
        return False
    rel = path.relative_to(project)
    sources = [CORPUS / overlay / rel] if overlay else []
    source = next((s for s in [*sources, CORPUS / "_base" / rel] if s.is_file()), None)
    return source is not None and source.read_bytes() == path.read_bytes()


def test_corpus_is_large_and_well_formed() -> None:
    names = [c["name"] for c in CASES]
    assert len(names) >= 25 and len(set(names)) == len(names)
    for case in CASES:
        assert case["expect"], case["name"]
        assert not case.get("files") or (CORPUS / case["files"]).is_dir(), case["name"]
        assert not case.get("setup") or case["setup"] in SETUPS, case["name"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_input_is_refused_in_one_line(case: dict, outcomes: dict) -> None:
    project, (res, seconds) = outcomes[case["name"]]
    assert res.returncode == 2, f"exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    line = error_line(res.stderr)
    for expected in case["expect"]:
        assert expected in line, f"{expected!r} not in {line!r}"
    absent = [*case.get("absent", []), *(leaked_forms() if case.get("key_absent") else [])]
    for secret in absent:
        assert secret not in res.stdout + res.stderr, secret
        written = [
            hit
            for hit in files_containing(project.parent, secret.encode())
            if not _unchanged_input(project, hit, case.get("files"))
        ]
        assert written == [], secret
    for name in case.get("created", []):
        assert not (project / name).exists(), f"{name} was created: code from input ran"
    for name in case.get("kept", []):
        assert (project / name).read_text() == "the user's own file\n", f"{name} was changed"
    assert seconds <= case.get("max_seconds", 300), f"took {seconds:.0f}s"
    assert_nothing_looks_complete(project, case.get("fails_at"), case.get("kept", []))
