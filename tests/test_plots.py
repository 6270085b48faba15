"""Training figures: smoothed over all steps, integer step ticks, missing series named with the
reason; the Prefect report artifact carries them embedded."""

from __future__ import annotations

import base64
import re
from pathlib import Path

import pytest

from align.config import load_pipeline
from align.pipeline.plots import _line_plot, missing_note, plot_training, series, smooth
from flows.report import RunFacts, artifact_markdown, write_files


def _rows(n: int, tied: bool = False) -> list[dict]:
    nan = float("nan")
    return [
        {
            "step": s,
            "loss": 1.0 / s,
            "logps/chosen": nan if tied else -10.0 - s,
            "logps/rejected": nan if tied or s == 2 else -12.0 - s,
            "rewards/margin": nan if tied else 0.1 * s,
            "rewards/accuracy": nan if tied else 0.5,
        }
        for s in range(1, n + 1)
    ]


def test_smooth_is_a_debiased_moving_average() -> None:
    assert smooth([3.0] * 7, span=3) == pytest.approx([3.0] * 7)  # no pull towards 0 at the start
    # a = 2 / (3 + 1) = 0.5: s2 = (0.5 * 0.5 * 0 + 0.5 * 2) / (1 - 0.5**2)
    assert smooth([0.0, 2.0], span=3) == pytest.approx([0.0, 1.0 / 0.75])
    assert smooth([1.0, 5.0, 2.0]) == [1.0, 5.0, 2.0]  # under 20 points: span 1, unchanged
    noisy = [(-1.0) ** i for i in range(200)]
    assert max(abs(v) for v in smooth(noisy)[50:]) < 0.1  # span 20 flattens step-to-step noise


def test_missing_and_nan_series_are_named_with_the_reason() -> None:
    rows = _rows(4)
    assert missing_note(rows, "loss", "loss") is None
    assert missing_note(rows, "logps/rejected", "rejected") == (
        "rejected: 1 of 4 steps left out (every response of the step's prompts tied: "
        "no chosen or rejected one)"
    )
    tied = _rows(4, tied=True)
    assert missing_note(tied, "logps/chosen", "chosen").startswith(
        "chosen: no value at any of 4 steps (every response"
    )
    assert missing_note(rows, "upo/value", "value") == (
        "value: not logged by this run ('upo/value' is absent from the log)"
    )


def test_all_nan_figures_are_still_written_with_a_note(tmp_path: Path) -> None:
    written = plot_training(_rows(3, tied=True), tmp_path)
    assert [p.name for p in written] == ["loss.png", "logps.png", "margin.png"]
    assert all(p.read_bytes()[:4] == b"\x89PNG" for p in written)
    fig = _line_plot("t", "y", [], [missing_note(_rows(3, tied=True), "logps/chosen", "chosen")])
    (note,) = fig.axes[0].texts
    assert note.get_text().startswith("chosen: no value at any of 3 steps")


def test_step_ticks_are_integers() -> None:
    steps, values = series(_rows(3), "loss")
    fig = _line_plot("loss", "loss", [("loss", steps, values)], [])
    fig.canvas.draw()
    ticks = [t for t in fig.axes[0].get_xticks() if 1 <= t <= 3]
    assert ticks and all(t == int(t) for t in ticks)
    raw, smoothed = fig.axes[0].lines
    assert list(raw.get_ydata()) == values and raw.get_alpha() == 0.3
    assert smoothed.get_label() == "loss (smoothed)"


def test_report_artifact_embeds_the_figures(project: Path) -> None:
    cfg = load_pipeline("pipelines/quickstart.yaml", smoke=True)
    facts = RunFacts(cfg, {}, _rows(5))
    report, plots = write_files(facts)
    text = artifact_markdown(facts, report, plots)
    images = re.findall(r"!\[(\w+)\]\(data:image/png;base64,([A-Za-z0-9+/=]+)\)", text)
    assert [alt for alt, _ in images] == ["loss", "logps", "margin"]
    assert [base64.b64decode(data) for _, data in images] == [p.read_bytes() for p in plots]
    assert str(plots[0].resolve()) in text and str(report.resolve()) in text
