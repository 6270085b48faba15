"""Every command README.md shows is executed: the quick ones here (and their output checked
against what the README quotes), the long ones by the test named for them below or by
`make test` itself. A command added to the README without either fails this test."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from flows.cli import main

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()

# Commands that take minutes or a server, and where they run.
RUN_ELSEWHERE = {
    "make run": "Makefile: `make test` runs its set-up (`make data`); the quickstart flow: "
    "tests/test_orchestration.py::test_prefect_flow_runs_then_caches_every_stage",
    "make test": "CI",
    "align run pipelines/nca-7b.yaml --smoke": "tests/test_orchestration.py::"
    "test_flagship_smoke_runs_its_stage_structure_under_prefect",
    "source .venv/bin/activate": "tests/test_orchestration.py (the venv on PATH)",
    "dvc repro": "tests/test_orchestration.py::"
    "test_dvc_repro_skips_unchanged_and_reruns_downstream",
    "dvc exp run -S 'pipelines/quickstart.yaml:train.loss.beta=0.2'": "tests/test_dvc_experiments"
    ".py::test_exp_run_with_another_loss_then_exp_show_compares_them",
    "make serve": "tests/test_ops_prefect.py (python -m flows.serve start)",
    "source .prefect/serve/env.sh": "tests/test_ops_prefect.py (PREFECT_API_URL)",
    "prefect deployment run align/quickstart -p smoke=true --watch": "tests/test_ops_prefect.py::"
    "test_quickstart_smoke_through_a_deployment_completes_with_artifacts",
    "make stop": "tests/test_ops_prefect.py (python -m flows.serve stop)",
}


def readme_commands() -> list[str]:
    """Shell commands of the README's ```bash blocks (comments dropped, `a && b` split) and the
    `$ ...` lines of its other blocks."""
    commands = []
    for lang, body in re.findall(r"```(\w*)\n(.*?)```", README, re.S):
        for line in body.splitlines():
            if lang == "bash":
                line = line.split("  #")[0].split(" # ")[0].strip()
                if line and not line.startswith("#"):
                    commands.extend(part.strip() for part in line.split("&&"))
            elif line.startswith("$ "):
                commands.append(line[2:].strip())
    return commands


def run_here(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of one README `align ...` command, run in-process."""
    monkeypatch.chdir(ROOT)
    argv = shlex.split(command)
    assert argv[0] == "align"
    code = main(argv[1:])
    out, err = capsys.readouterr()
    return code, out, err


def test_every_readme_command_is_run_somewhere() -> None:
    commands = readme_commands()
    assert "make run" in commands and "align validate pipelines/quickstart.yaml" in commands
    here = [c for c in commands if c not in RUN_ELSEWHERE]
    assert all(c.startswith("align ") and " run " not in f" {c} " for c in here), here
    assert set(RUN_ELSEWHERE) <= set(commands), set(RUN_ELSEWHERE) - set(commands)


@pytest.mark.parametrize(
    "command", [c for c in readme_commands() if c not in RUN_ELSEWHERE], ids=lambda c: c[:60]
)
def test_readme_command_runs_and_prints_what_the_readme_quotes(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_here(command, monkeypatch, capsys)
    quoted = README.split(f"$ {command}\n", 1)
    if len(quoted) == 2:  # a `$ command` line: the README shows its (shortened) output
        shown = quoted[1].splitlines()[0].removesuffix("...").rstrip()
        assert code != 0 and err.startswith(shown), (shown, err)
        return
    assert code == 0, err
    if "train.loss.name=dpo" in command:
        note = (
            "--set train.loss.name=dpo: dropped pipelines/quickstart.yaml's alpha (not a "
            "parameter of dpo); kept beta"
        )
        assert err == note + "\n"
        assert " ".join(note.split()) in " ".join(README.split())


def test_readme_quotes_the_data_check_line() -> None:
    """The `make data` line the README quotes is the one data.dvc gives (flows/data_check)."""
    import yaml

    recorded = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]
    line = f"data: {recorded['nfiles']} files match data.dvc (md5 {recorded['md5'][:12]})"
    assert " ".join(line.split()) in " ".join(README.split())
