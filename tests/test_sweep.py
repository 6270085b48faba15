"""align sweep: the grid, shared upstream stages, the paired statistics and the report."""

from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest

from align.core.errors import AlignError
from align.pipeline.sweep import grid_cells, parse_grid
from align.pipeline.sweep_stats import mean_and_se, paired_difference
from tests.conftest import venv_env


def test_parse_grid_and_cells() -> None:
    grid = parse_grid(["train.loss.name=[nca, dpo]", "train.seed=[0, 1]"])
    assert grid == {"train.loss.name": ["nca", "dpo"], "train.seed": [0, 1]}
    cells = grid_cells(grid)
    assert [c.id for c in cells] == ["nca_0", "nca_1", "dpo_0", "dpo_1"]
    assert cells[2].overrides() == ['train.loss.name="dpo"', "train.seed=0"]


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (["train.seed=3"], "expected key.path=\\[value, ...\\]"),
        (["train.seed=[]"], "expected key.path"),
        (["train.seed=[1, 1]"], "listed twice"),
        (["train.seed=[1]", "train.seed=[2]"], "given twice"),
        ([], "at least one --grid"),
    ],
)
def test_bad_grids_are_one_line_errors(texts: list[str], message: str) -> None:
    with pytest.raises(AlignError, match=message):
        parse_grid(texts)


def test_paired_difference_two_by_two_by_hand() -> None:
    # d = [[1, 3], [2, 6]]: mean 3; seed means 2, 4; prompt means 1.5, 4.5
    # MS_seed = 2 * ((2-3)^2 + (4-3)^2) / 1 = 4; MS_prompt = 2 * (1.5^2 + 1.5^2) / 1 = 9
    # residuals +-0.5 -> MS_res = 4 * 0.25 / 1 = 1; Var = (4 + 9 - 1) / 4 = 3
    a = np.array([[1.0, 3.0], [2.0, 6.0]])
    out = paired_difference(a, np.zeros_like(a))
    assert out.mean == 3.0 and out.se == pytest.approx(math.sqrt(3.0))
    assert (out.n_seeds, out.n_prompts) == (2, 2)


def test_paired_difference_one_seed_is_the_paired_t_se() -> None:
    d = np.array([[0.0, 1.0, 1.0, 0.0, 1.0]])
    out = paired_difference(d, np.zeros_like(d))
    assert out.se == pytest.approx(np.std(d, ddof=1) / math.sqrt(5))


def test_seed_noise_widens_the_se() -> None:
    """The same prompt-level noise with and without a per-seed shift: seeds that disagree
    must make the mean less certain (a paired-over-prompts SE would not notice)."""
    rng = np.random.default_rng(0)
    prompts = rng.normal(size=(3, 40))
    shifted = prompts + np.array([[-1.0], [0.0], [1.0]])
    zeros = np.zeros_like(prompts)
    assert paired_difference(shifted, zeros).se > 2 * paired_difference(prompts, zeros).se


def test_mean_and_se() -> None:
    assert mean_and_se([1.0, 3.0]) == (2.0, 1.0)
    assert math.isnan(mean_and_se([1.0])[1])


def test_sweep_shares_upstream_stages_and_reports(project: Path) -> None:
    """Two losses on the smoke pipeline: sample, annotate and prepare-model run once in the
    pipeline's own folder and every cell links to them; each cell trains and evaluates."""
    cmd = [
        "align",
        "sweep",
        "pipelines/quickstart.yaml",
        "--smoke",
        "--grid",
        "train.loss.name=[nca, infonca]",
        "--until",
        "evaluate",
        "--set",
        "train.probe={every: 1, records: 2}",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=venv_env(project))
    assert done.returncode == 0, done.stderr[-2000:]
    run = project / "runs" / "quickstart-smoke"
    root = run / "sweep"
    for cell in ("nca", "infonca"):
        for stage in ("prepare-model", "sample", "annotate"):
            link = root / cell / stage
            assert link.is_symlink() and link.resolve() == (run / stage).resolve()
    # infonca differs from the pipeline (nca) from train on: its own folders
    assert not (root / "infonca" / "train").is_symlink()
    assert (root / "infonca" / "evaluate" / "metrics.json").is_file()
    assert len(list((root / "infonca" / "train").glob("probe.jsonl"))) == 1
    summary = json.loads((root / "summary.json").read_text())
    assert [c["arm"] for c in summary["cells"]] == ["name=nca", "name=infonca"]
    (pair,) = summary["pairs"]
    assert (pair["seeds"], pair["prompts"]) == (1, 4)
    assert "| name=nca | name=infonca |" in (root / "summary.md").read_text()
    assert (root / "probes.png").stat().st_size > 1000
    assert "summary: runs/quickstart-smoke/sweep/summary.md" in done.stdout
