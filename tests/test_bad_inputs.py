"""The bad-input corpus (tests/bad_inputs/cases.yaml) through the real CLI.

Every case must exit non-zero with exactly one `error:` line on stderr that names the file,
field or record and says how to fix it, and must leave nothing that looks complete. Cases run
in a fresh project folder each; the few that need a model folder or a checkpoint get it from a
setup function below.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
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
    make_judged_project,
    make_project,
    run_align,
    run_stages_here,
)

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
    )
}


# ---- the runner --------------------------------------------------------------------------------
WORKERS = 3  # CLI runs at once: each spends most of its time importing torch and transformers


def _run_case(case: dict, project: Path) -> subprocess.CompletedProcess:
    cmd = case.get("cmd", "run")
    argv = [*(COMMANDS[cmd] if isinstance(cmd, str) else cmd), *case.get("args", [])]
    return run_align(project, *argv, env=cli_env(project, case.get("faults")))


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


def test_corpus_is_large_and_well_formed() -> None:
    names = [c["name"] for c in CASES]
    assert len(names) >= 25 and len(set(names)) == len(names)
    for case in CASES:
        assert case["expect"], case["name"]
        assert not case.get("files") or (CORPUS / case["files"]).is_dir(), case["name"]
        assert not case.get("setup") or case["setup"] in SETUPS, case["name"]


@pytest.mark.parametrize("case", CASES, ids=[c["name"] for c in CASES])
def test_bad_input_is_refused_in_one_line(case: dict, outcomes: dict) -> None:
    project, res = outcomes[case["name"]]
    assert res.returncode == 2, f"exit {res.returncode}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    line = error_line(res.stderr)
    for expected in case["expect"]:
        assert expected in line, f"{expected!r} not in {line!r}"
    for secret in case.get("absent", []):
        assert secret not in res.stdout + res.stderr
    for name in case.get("created", []):
        assert not (project / name).exists(), f"{name} was created: code from input ran"
    assert_nothing_looks_complete(project, case.get("fails_at"))
