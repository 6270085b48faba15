"""The Python API: docs/python-api.md's example runs as written, and `import align` stays light."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

import align
from align.core.errors import AlignError
from tests.conftest import REPO


def _example() -> str:
    text = (REPO / "docs/python-api.md").read_text()
    (block,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    return block


def test_the_documented_example_runs(project: Path) -> None:
    scope: dict = {}
    exec(compile(_example(), "docs/python-api.md", "exec"), scope)
    res = scope["res"]
    assert list(scope["manifests"]) == [
        "prepare-model",
        "sample",
        "annotate",
        "train",
        "evaluate",
        "judge",
    ]
    assert all(res.current.values())
    assert scope["steps"] == [1.0, 2.0] and len(scope["loss"]) == 2  # smoke: max_steps 2
    assert 0 <= res.metrics["evaluate"]["win_rate/trained_vs_initial"] <= 1
    assert (res.model / "README.md").is_file()
    # the second ask for train found it current: its manifest was read, nothing re-ran
    assert scope["train"]["seconds"] == scope["manifests"]["train"]["seconds"]


def test_overrides_belong_to_a_path_not_a_config(project: Path) -> None:
    cfg = align.load_pipeline("pipelines/quickstart.yaml", smoke=True)
    with pytest.raises(AlignError, match="overrides and smoke apply to a YAML path"):
        align.run(cfg, ["train.max_steps=1"])
    assert align.results(cfg).current["train"] is False


def test_importing_align_loads_no_stage_code() -> None:
    code = (
        "import sys, align, align.core.errors; "
        "print(sorted(m for m in ('torch', 'transformers', 'align.pipeline', 'prefect', 'dvc') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    assert sorted(align.__all__) == ["load_pipeline", "results", "run", "run_stage"]
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        _ = align.nope
