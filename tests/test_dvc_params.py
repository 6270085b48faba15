"""Every shipped pipeline survives DVC's `-S` edit: DVC's own code path (`apply_overrides`,
what `dvc exp run -S file:key=value` calls) changes any scalar key and the file still reads back
as the same pipeline with only that key changed; a file DVC would corrupt is refused by
`align dvc` with its line."""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import pytest
import yaml
from dvc.utils.hydra import apply_overrides
from dvc.utils.serialize import YAMLFileCorruptedError, parse_yaml

from flows.cli import main
from flows.dvc_params import check_param_round_trip
from tests.conftest import REPO

PIPELINES = sorted((REPO / "pipelines").glob("*.yaml"))


def _scalar_keys(node: object, prefix: str = "") -> list[tuple[str, object]]:
    """(dotted key, value) of every scalar a `-S` key can name (mappings only, no dotted names)."""
    if not isinstance(node, dict):
        return []
    found = []
    for key, value in node.items():
        if "." in str(key):
            continue
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            found += _scalar_keys(value, path + ".")
        elif isinstance(value, bool | int | float | str):
            found.append((path, value))
    return found


def _new_value(value: object) -> tuple[str, object]:
    """(the override's right-hand side, the value it must give) for another value of the type."""
    if isinstance(value, bool):
        return str(not value).lower(), not value
    if isinstance(value, int):
        return str(value + 1), value + 1
    if isinstance(value, float):
        return repr(value * 2 + 1), value * 2 + 1
    new = f"{value}-x"
    return "'" + new.replace("\\", "\\\\").replace("'", "\\'") + "'", new


def _set(data: dict, key: str, value: object) -> None:
    *parents, last = key.split(".")
    for part in parents:
        data = data[part]
    data[last] = value


@pytest.mark.parametrize("pipeline", PIPELINES, ids=lambda p: p.stem)
def test_dvc_set_param_edits_every_scalar_key_and_nothing_else(
    pipeline: Path, tmp_path: Path
) -> None:
    original = yaml.safe_load(pipeline.read_text())
    keys = _scalar_keys(original)
    assert len(keys) >= 15, keys  # the walk reaches the nested sections
    for key, value in keys:
        copied = tmp_path / pipeline.name
        shutil.copy(pipeline, copied)
        text, new = _new_value(value)
        apply_overrides(copied, [f"{key}={text}"])
        expected = copy.deepcopy(original)
        _set(expected, key, new)
        assert yaml.safe_load(copied.read_text()) == expected, key


def test_a_flow_mapping_dvc_would_corrupt_is_refused_with_its_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    text = (REPO / "pipelines/quickstart.yaml").read_text()
    block = '  reward:  # 1 if right, +0.25 if only the number\n    function: "align.rewards.'
    assert block in text
    flow = text.replace(block, '  reward: {function: "align.rewards.').replace(
        'arithmetic:exact_answer"\n', 'arithmetic:exact_answer"}\n', 1
    )
    line = flow.splitlines().index('  reward: {function: "align.rewards.arithmetic:exact_answer"}')
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines/mine.yaml").write_text(flow)
    shutil.copytree(REPO / "data", tmp_path / "data")
    monkeypatch.chdir(tmp_path)

    assert main(["dvc", "pipelines/mine.yaml"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith(f"error: pipelines/mine.yaml:{line + 1}: `annotate.reward` would not")
    assert not (tmp_path / "dvc").exists()  # nothing written
    assert (tmp_path / "pipelines/mine.yaml").read_text() == flow

    # the same file in block style passes, and DVC's edit really broke the flow form
    check_param_round_trip(REPO / "pipelines/quickstart.yaml")
    apply_overrides(tmp_path / "pipelines/mine.yaml", ["train.loss.beta=0.2"])
    with pytest.raises(YAMLFileCorruptedError):  # DVC cannot read back what it wrote
        parse_yaml((tmp_path / "pipelines/mine.yaml").read_text(), "pipelines/mine.yaml")
