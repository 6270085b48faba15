"""Per-stage code fingerprints (align/pipeline/code.py): an edit changes the code hash of exactly
the stages whose code reaches the edited file, and through the upstream hashes in `plan()` the
stage hashes of everything downstream of them. Hashes are computed over copies in tmp_path; the
real source files are never edited."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import align.pipeline.graph as graph
from align.config import load_pipeline
from align.pipeline.code import runner_unit, stage_code_version, stage_units, units_hash
from align.stages import RUNNERS
from tests.conftest import REPO

STAGES = list(RUNNERS)


def _code_hashes(root: Path) -> dict[str, str]:
    return {s: units_hash(stage_units(s, root), root) for s in STAGES}


def _append(path: Path, text: str = "\n# edited\n") -> None:
    path.write_text(path.read_text() + text)


def _changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    return {s for s in before if before[s] != after[s]}


def _stage_hashes(root: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Stage hashes of the quickstart (smoke) with every stage's code hashed under `root`."""
    monkeypatch.setattr(
        graph, "stage_code_version", lambda s: units_hash(stage_units(s, root), root)
    )
    cfg = load_pipeline(REPO / "pipelines/quickstart.yaml", smoke=True)
    return {p.name: p.stage_hash for p in graph.plan(cfg)}


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """A copy of align/ to edit."""
    root = tmp_path / "align"
    shutil.copytree(REPO / "align", root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


def test_every_runner_module_is_its_stage_unit() -> None:
    for stage, fn in RUNNERS.items():
        assert fn.__module__ == "align." + runner_unit(stage).removesuffix(".py").replace("/", ".")
        assert stage_code_version(stage) == units_hash(stage_units(stage))


def test_the_real_package_graph_keeps_training_out_of_judging_and_back() -> None:
    assert "train" not in stage_units("judge")
    assert "judging" not in stage_units("annotate")
    assert "judging" in stage_units("judge") and "train" in stage_units("train")
    # align/stages/ is hashed file by file: one stage never hashes another stage's module
    for stage in STAGES:
        others = {runner_unit(s) for s in STAGES} - {runner_unit(stage)}
        assert not others & set(stage_units(stage)), stage


def test_a_judging_file_changes_only_the_judge(copy: Path) -> None:
    before = _code_hashes(copy)
    _append(copy / "judging/report.py", '\n"""a docstring edit"""\n')
    assert _changed(before, _code_hashes(copy)) == {"judge"}


def test_a_stage_module_changes_only_its_stage(copy: Path) -> None:
    before = _code_hashes(copy)
    _append(copy / "stages/judge.py")
    assert _changed(before, _code_hashes(copy)) == {"judge"}


def test_a_core_file_changes_every_stage(copy: Path) -> None:
    before = _code_hashes(copy)
    _append(copy / "core/io.py")
    assert _changed(before, _code_hashes(copy)) == set(STAGES)


def test_a_train_file_reruns_train_and_what_reads_its_model(
    copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code_before = _code_hashes(copy)
    before = _stage_hashes(copy, monkeypatch)
    _append(copy / "train/trainer.py")
    code_changed = _changed(code_before, _code_hashes(copy))
    changed = _changed(before, _stage_hashes(copy, monkeypatch))
    assert "train" in code_changed and {"train", "evaluate", "judge"} <= changed
    # nothing else: a stage changes when its own code reaches align/train or an upstream changed
    expect = {s for s in before if s in code_changed}
    for name in before:
        if any(u in expect for u in graph.STAGES[name].upstream):
            expect.add(name)
    assert changed == expect


# A tree shaped like align/ where annotate does not reach align/train: the rule itself, with a
# function-level import, a relative import and a package file nobody imports by name.
TREE = {
    "__init__.py": "",
    "core/__init__.py": "",
    "core/io.py": "X = 1\n",
    "config/__init__.py": "from align.core.io import X\n",
    "model/__init__.py": "",
    "model/loading.py": "from align.config import X\n",
    "model/tokenize.py": "Y = 2\n",
    "rewards/__init__.py": "import align.core.io\n",
    "rewards/arithmetic.py": "Z = 3\n",  # named only in the YAML (function: module:name)
    "train/__init__.py": "",
    "train/trainer.py": "from ..model import loading\n",
    "judging/__init__.py": "",
    "judging/run.py": "from align.model.loading import X\n",
    "stages/__init__.py": "".join(
        f"from align.stages.{m} import run as {m}\n"
        for m in ("prepare_model", "sample", "annotate", "rewrite", "train", "evaluate", "judge")
    ),
    "stages/common.py": "from align.model import loading\n",
    "stages/prepare_model.py": "from align.model.loading import X\n",
    "stages/sample.py": "from align.stages.common import loading\n",
    "stages/annotate.py": "from align.stages import common\nfrom align.rewards import X\n",
    "stages/rewrite.py": "from align.model.loading import X\n",
    "stages/train.py": "def run():\n    from align.train.trainer import loading\n",
    "stages/evaluate.py": "from align.rewards import X\nfrom align.model.loading import X\n",
    "stages/judge.py": "def run():\n    from align.judging.run import X\n",
}


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "align"
    for rel, text in TREE.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_units_follow_imports_at_package_granularity(tree: Path) -> None:
    assert stage_units("judge", tree) == [
        "__init__.py",
        "config",
        "core",
        "judging",
        "model",
        "stages/judge.py",
    ]
    assert stage_units("train", tree) == [
        "__init__.py",
        "config",
        "core",
        "model",
        "stages/train.py",
        "train",
    ]
    assert "stages/common.py" in stage_units("annotate", tree)
    assert "stages/__init__.py" not in stage_units("annotate", tree)


def test_a_train_file_leaves_sample_and_annotate_alone(
    tree: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _stage_hashes(tree, monkeypatch)
    _append(tree / "train/trainer.py")
    assert _changed(before, _stage_hashes(tree, monkeypatch)) == {"train", "evaluate", "judge"}


def test_an_unimported_file_of_a_reached_package_counts(tree: Path) -> None:
    """The reward function `align.rewards.arithmetic:exact_answer` is imported by name at run
    time; the stages that reach align.rewards hash it all the same."""
    before = _code_hashes(tree)
    _append(tree / "rewards/arithmetic.py")
    assert _changed(before, _code_hashes(tree)) == {"annotate", "evaluate"}
