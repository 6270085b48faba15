"""`align plots`: the DVC plots of a pipeline as one HTML page that needs no network."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from align.train.trainer import LOG_KEYS
from flows.cli import main

CURVES = Path("runs/quickstart-smoke/train/curves.csv")


def _write_curves(steps: int) -> None:
    """curves.csv as the trainer writes it: step, the logged quantities, lr; 'None' where a
    step logged nothing (every response tied) for the pair figures."""
    keys = ["step", *LOG_KEYS, "lr"]
    lines = [",".join(keys)]
    for step in range(1, steps + 1):
        values = [step, 1.0 / step, -10.0 - step, -12.0 - 2 * step, 0.1, -0.2, 0.3, 0.75, 1e-5]
        if step == 2:
            values[2:8] = ["None"] * 6
        lines.append(",".join(str(v) for v in values))
    CURVES.parent.mkdir(parents=True)
    CURVES.write_text("\n".join(lines) + "\n")


def test_plots_page_is_self_contained_with_the_training_figures(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _write_curves(steps=4)
    assert main(["plots", "pipelines/quickstart.yaml", "--smoke"]) == 0
    page = project / "runs/quickstart-smoke/plots.html"
    assert f"wrote {page.relative_to(project)}" in capsys.readouterr().out
    text = page.read_text()
    assert "http://" not in text and "https://" not in text and "<script" not in text
    assert str(CURVES) in text and "4 rows" in text
    images = re.findall(r'<img alt="(\w+)" src="data:image/png;base64,([^"]+)">', text)
    assert [alt for alt, _ in images] == ["loss", "logps", "margin"]
    assert all(base64.b64decode(data)[:8] == b"\x89PNG\r\n\x1a\n" for _, data in images)
    assert "Log-likelihood of chosen and rejected responses" in text


def test_plots_before_training_fails_in_one_line(
    project: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plots", "pipelines/quickstart.yaml", "--smoke"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0
    assert err.startswith(f"error: {CURVES}: no such file; run the stage that writes it first")
