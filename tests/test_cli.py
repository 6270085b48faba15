"""The `align` command line, run in-process: exit codes, and one `error: ...` line for bad input."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from flows.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "pipelines" / "quickstart.yaml"
NCA_7B = ROOT / "pipelines" / "nca-7b.yaml"


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The single stderr line of a failed command (nothing on stdout)."""
    out, err = capsys.readouterr()
    assert out == ""
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    return lines[0]


def first_column(table: str) -> list[str]:
    """The non-empty cells of the first column of a rich table's body (the header uses ┃)."""
    cells = [line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│")]
    return [c for c in cells if c]


def test_validate_quickstart(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(QUICKSTART)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert out.startswith(f"{QUICKSTART}: ok")
    assert "pipeline 'quickstart', loss nca" in out
    assert out.splitlines()[0].endswith(
        "stages: prepare-model -> sample -> annotate -> train -> evaluate -> judge"
    )


def test_validate_lists_the_loss_parameters(capsys: pytest.CaptureFixture[str]) -> None:
    """Each parameter of the chosen loss with its value, its default and the default's reason."""
    assert main(["validate", str(QUICKSTART), "--set", "train.loss.tie_break_first=true"]) == 0
    out = capsys.readouterr().out
    assert "  train.loss.beta = 0.1  (default 0.01; " in out  # the quickstart sets beta 0.1
    assert "  train.loss.tie_break_first = true  (default false; " in out
    assert main(["validate", str(QUICKSTART), "--set", "train.loss={name: dpo}"]) == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("  train.loss.")]
    assert lines == ["  train.loss.beta = 0.1  (default; TRL DPOConfig default)"]


def test_validate_smoke_renames_and_drops_absent_stages(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["validate", str(NCA_7B), "--smoke"]) == 0
    out = capsys.readouterr().out
    assert "pipeline 'nca-7b-smoke'" in out
    assert out.splitlines()[0].endswith("stages: prepare-model -> annotate -> train -> judge")


def test_validate_with_overrides(capsys: pytest.CaptureFixture[str]) -> None:
    overrides = [
        "--set",
        "train.loss={name: dpo, beta: 0.2}",
        "--set",
        "evaluate=null",
        "--set",
        "judge=null",
    ]
    code = main(["validate", str(QUICKSTART), *overrides])
    assert code == 0
    out = capsys.readouterr().out
    assert "loss dpo" in out
    assert out.splitlines()[0].endswith("stages: prepare-model -> sample -> annotate -> train")


def test_missing_pipeline_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "missing.yaml"
    assert main(["validate", str(path)]) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: {path}: no such pipeline file")


def test_switching_the_loss_keeps_shared_parameters_and_names_dropped_ones(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # quickstart sets nca's beta 0.1 and alpha 0.25: dpo takes beta, not alpha
    assert main(["validate", str(QUICKSTART), "--set", "train.loss.name=dpo"]) == 0
    out, err = capsys.readouterr()
    assert err == (
        f"--set train.loss.name=dpo: dropped {QUICKSTART}'s alpha (not a parameter of dpo); "
        "kept beta\n"
    )
    assert "loss dpo" in out and "  train.loss.beta = 0.1  (default; " in out
    # ipo takes neither: tau and length_norm fall back to their defaults
    assert main(["validate", str(QUICKSTART), "--set", "train.loss.name=ipo"]) == 0
    out, err = capsys.readouterr()
    assert "dropped" in err and "beta, alpha (not parameters of ipo)" in err
    assert "kept" not in err
    assert "  train.loss.tau = 0.1  (default; " in out
    # a parameter given with --set is the user's own: it is validated, never dropped
    args = ["--set", "train.loss.name=dpo", "--set", "train.loss.alpha=0.5"]
    assert main(["validate", str(QUICKSTART), *args]) == 2
    assert error_line(capsys) == (
        f"error: {QUICKSTART}: train.loss.alpha: unknown key; valid keys here: name, beta"
    )
    # -q: the note is left out with everything else
    assert main(["validate", "-q", str(QUICKSTART), "--set", "train.loss.name=dpo"]) == 0
    assert capsys.readouterr() == ("", "")


def test_format_typo_gets_did_you_mean(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    override = "data.train.format=kwsie"
    assert main(["validate", str(QUICKSTART), "--set", override]) == 2
    line = error_line(capsys)
    assert "data.train.format: 'kwsie' is not one of" in line
    assert line.endswith("(did you mean 'kwise'?)")


@pytest.mark.parametrize(
    ("rows", "fmt", "column", "looks_like"),
    [
        ([{"prompt": "2+2?", "rejected": "5"}], "pairs", "chosen", None),  # pairs without chosen
        (
            [{"prompt": "2+2?", "responses": ["4", "5"], "rewards": [1, 0]}] * 3,
            "pairs",
            "chosen",
            "kwise",
        ),
        ([{"prompt": "2+2?", "chosen": "4", "rejected": "5"}] * 3, "kwise", "responses", "pairs"),
        ([{"question": "2+2?"}], "prompts", "prompt", None),
    ],
)
def test_validate_reads_the_data_and_names_the_missing_column(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    rows: list,
    fmt: str,
    column: str,
    looks_like: str | None,
) -> None:
    """Before any model loads: the column the format needs is named, with the file."""
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["--set", f"data.train={{path: {data}, format: {fmt}}}"]
    if fmt != "prompts":  # train on the file's own responses
        args += ["--set", "sample=null"]
    assert main(["validate", str(QUICKSTART), *args]) == 2
    line = error_line(capsys)
    assert line.startswith(f"error: data.train: {data}")
    assert f"no column {column!r}" in line
    if looks_like:
        assert line.endswith(
            f"the file looks like format {looks_like!r}: set data.*.format: {looks_like}"
        )


def test_validate_reports_what_it_read(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(QUICKSTART)]) == 0
    out = capsys.readouterr().out
    assert "  data.train: data/quickstart/train.jsonl ok (prompts, first 8 records read)" in out
    assert "  data.eval: data/quickstart/heldout.jsonl ok (prompts, first 8 records read)" in out


def test_unknown_loss_from_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["validate", str(QUICKSTART), "--set", "train.loss.name=ncaa"]) == 2
    line = error_line(capsys)
    assert line.startswith(
        f"error: {QUICKSTART}: train.loss.name: unknown loss 'ncaa' (did you mean 'nca'?); valid: "
    )


def test_malformed_set(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", str(QUICKSTART), "--set", "train.loss.beta"]) == 2
    assert error_line(capsys) == (
        "error: --set 'train.loss.beta': expected key.path=value, e.g. train.loss.beta=0.1"
    )


def test_schema_error_in_a_written_pipeline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "typo.yaml"
    text = QUICKSTART.read_text()
    assert "  temperature: 0.7" in text
    path.write_text(text.replace("  temperature: 0.7", "  temprature: 0.7", 1))
    assert main(["validate", str(path)]) == 2
    line = error_line(capsys)
    assert line.startswith(
        f"error: {path}: sample.temprature: unknown key (did you mean 'sample.temperature'?)"
    )


@pytest.mark.parametrize(
    ("pipeline", "stages"),
    [
        (QUICKSTART, ["prepare-model", "sample", "annotate", "train", "evaluate", "judge"]),
        (NCA_7B, ["prepare-model", "annotate", "train", "judge"]),
    ],
    ids=["quickstart", "nca-7b"],
)
def test_plan_smoke_lists_every_stage(
    pipeline: Path,
    stages: list[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)  # an empty runs/ folder: nothing is cached
    monkeypatch.setenv("COLUMNS", "200")
    assert main(["plan", "--smoke", str(pipeline)]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert f"{pipeline.stem}-smoke: {pipeline}" in out
    assert first_column(out) == stages
    assert out.count("to run") == len(stages)
    assert "cached" not in out


def test_dvc_check_on_the_committed_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """The repository commits the quickstart's dvc.yaml only (the other pipelines' files are
    written by `align dvc` when used), it has not drifted, and DVC's metrics are the
    quickstart's alone: `dvc metrics show` has no rows of other pipelines' absent files."""
    monkeypatch.chdir(ROOT)
    assert main(["dvc", "--check", "--all"]) == 0
    assert not list((ROOT / "dvc").glob("*/dvc.yaml"))
    shown = subprocess.run(
        [str(ROOT / ".venv/bin/dvc"), "metrics", "show", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    files = {path for rev in json.loads(shown).values() for path in rev.get("data", {})}
    assert files == {
        "runs/quickstart/train/metrics.json",
        "runs/quickstart/evaluate/metrics.json",
        "runs/quickstart/judge/scores.json",
    }


def test_dvc_all_reports_a_stray_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copytree(ROOT / "pipelines", tmp_path / "pipelines")
    shutil.copytree(ROOT / "data", tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert main(["dvc", "--all"]) == 0
    nested = tmp_path / "dvc/nca-7b/dvc.yaml"
    assert "wdir: ../..\n    cmd: align stage pipelines/nca-7b.yaml train" in nested.read_text()
    assert main(["dvc", "--check", "--all"]) == 0
    subprocess.run([str(ROOT / ".venv/bin/dvc"), "init", "--no-scm", "-q"], check=True)
    listed = subprocess.run(
        [str(ROOT / ".venv/bin/dvc"), "stage", "list", "--all", "--fail", "--name-only"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()  # DVC itself parses every generated file
    assert "train" in listed and "dvc/nca-7b/dvc.yaml:train" in listed
    (tmp_path / "pipelines/nca-7b.yaml").unlink()
    capsys.readouterr()
    assert main(["dvc", "--check", "--all"]) == 1
    assert "dvc/nca-7b/dvc.yaml has no pipeline in pipelines/; delete it" in capsys.readouterr().out


def test_dvc_writes_then_checks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(ROOT)
    output = tmp_path / "dvc.yaml"
    assert main(["dvc", "pipelines/quickstart.yaml", "--output", str(output)]) == 0
    assert capsys.readouterr().out == f"wrote {output}\n"
    text = output.read_text()
    assert text.startswith("# Generated by `align dvc pipelines/quickstart.yaml`")
    assert "cmd: align stage pipelines/quickstart.yaml train" in text
    assert main(["dvc", "--check", "pipelines/quickstart.yaml", "--output", str(output)]) == 0

    output.write_text("stages: {}\n")
    assert main(["dvc", "--check", "pipelines/quickstart.yaml", "--output", str(output)]) == 1
    assert "out of date" in capsys.readouterr().out
    assert output.read_text() == "stages: {}\n"  # --check never writes


def test_dvc_deps_are_each_stages_own_code() -> None:
    """dvc.yaml lists the code units the stage hash covers, so `dvc repro` after an edit in
    align/judging/ re-runs judge only, as `align run` does."""
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]  # the quickstart judges
    code = {name: {d for d in s["deps"] if d.startswith("align")} for name, s in stages.items()}
    assert "align/judging" in code["judge"] and "align/stages/judge.py" in code["judge"]
    assert not any("judging" in d for name in ("sample", "annotate", "train") for d in code[name])
    assert "align/train" in code["train"] and "align/train" not in code["annotate"]
    assert all("align/core" in deps and "align/__init__.py" in deps for deps in code.values())


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    assert capsys.readouterr().out == f"align {version('align')}\n"


def test_plan_fits_80_columns_and_verbose_shows_hashes(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """At 80 columns nothing is cut (no '…'), no hash or dict repr is shown, each stage's
    output folder is named; -v and --json carry the full hashes and paths."""
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("COLUMNS", "80")
    assert main(["plan", str(QUICKSTART)]) == 0
    out = capsys.readouterr().out
    assert max(len(line) for line in out.splitlines()) <= 80
    assert "…" not in out and not re.search(r"[0-9a-f]{12}", out) and "{" not in out
    stages = ["prepare-model", "sample", "annotate", "train", "evaluate", "judge"]
    assert first_column(out) == stages
    assert all(f"{s}/" in out for s in stages) and "outputs under runs/quickstart/" in out

    assert main(["plan", "--json", str(QUICKSTART)]) == 0
    planned = json.loads(capsys.readouterr().out)
    assert [p["stage"] for p in planned] == stages
    assert all(re.fullmatch(r"[0-9a-f]{64}", p["stage_hash"]) for p in planned)
    assert "runs/quickstart/train/model" in planned[3]["outputs"]

    assert main(["plan", "-v", str(QUICKSTART)]) == 0
    verbose = capsys.readouterr().out
    for p in planned:
        assert f"stage hash {p['stage_hash']}" in verbose
        assert all(f"output {o}" in verbose for o in p["outputs"])
    assert f"input sample: {planned[1]['stage_hash']}" in verbose


def test_quiet_validate_prints_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["-q", "validate", str(QUICKSTART)]) == 0
    assert capsys.readouterr() == ("", "")


def test_stage_lines_name_the_key_figures_and_the_folder() -> None:
    from flows.output import stage_line

    manifest = {
        "seconds": 12.4,
        "summary": {"prompts": 64, "k": 4, "shards": 2, "new_tokens": 3000, "tokens_per_s": 97.3},
    }
    assert stage_line("sample", manifest, True, "runs/q/sample") == (
        "sample: done in 12s, prompts 64 x 4 tokens/s 97 -> runs/q/sample"
    )
    train = {
        "seconds": 3,
        "summary": {
            "steps": 8,
            "first/loss": 1.386,
            "final/loss": 0.91,
            "final/rewards/accuracy": None,
        },
    }
    assert stage_line("train", train, False, "runs/q/train") == (
        "train: up to date, steps 8 loss 1.386 -> 0.91 -> runs/q/train"
    )
    hashes = {"policy": {"source": "embedded", "path": ".cache/x", "hash": "ab" * 32}}
    assert stage_line("prepare-model", {"seconds": 1, "summary": hashes}, True, "r/p") == (
        "prepare-model: done in 1s, policy embedded -> r/p"
    )
