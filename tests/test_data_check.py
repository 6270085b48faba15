"""`make data`'s last line: the rebuilt data against data.dvc, in one line that reads as what
it is (a match, or which output differs), on a clone whose DVC cache is empty."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def check(project: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.data_check", "data.dvc"],
        cwd=project,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin", "HOME": str(project)},
        timeout=300,
    )


def test_data_matches_then_a_changed_file_is_named(tmp_path: Path) -> None:
    project = tmp_path / "clone"
    (project / ".dvc").mkdir(parents=True)
    shutil.copy(ROOT / ".dvc" / "config", project / ".dvc" / "config")
    shutil.copy(ROOT / "data.dvc", project / "data.dvc")
    shutil.copytree(ROOT / "data", project / "data")
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)

    ok = check(project)
    assert ok.returncode == 0, ok.stderr
    recorded = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"][0]
    assert ok.stdout == (
        f"data: {recorded['nfiles']} files match data.dvc (md5 {recorded['md5'][:12]})\n"
    )
    assert "not in cache" not in ok.stdout + ok.stderr

    with (project / "data" / "quickstart" / "train.jsonl").open("a") as f:
        f.write("{}\n")
    bad = check(project)
    assert bad.returncode == 1 and bad.stdout == ""
    assert bad.stderr.startswith("error: data: the files differ from data.dvc (md5 ")
    assert bad.stderr.endswith("rebuild with `make data` or record them with `dvc add data`\n")
