"""`align plots --exp`'s page: one figure per quantity with a line per run, self-contained."""

from __future__ import annotations

import base64
import io
import re
from pathlib import Path

from matplotlib.image import imread

from align.pipeline.plots_compare import overlay_png, write_compare_page


def _rows(scale: float, steps: int) -> list[dict]:
    return [
        {
            "step": float(s),
            "loss": scale / s,
            "logps/chosen": -scale * s,
            "logps/rejected": -2 * scale * s,
            "rewards/margin": None if s == 1 else scale * s,  # not logged at step 1
        }
        for s in range(1, steps + 1)
    ]


def test_page_overlays_every_run_without_network(tmp_path: Path) -> None:
    runs = {"nca": _rows(1.0, 4), "infonca": _rows(2.0, 3)}
    page = write_compare_page(runs, tmp_path / "compare.html", "tiny: nca vs infonca")
    text = page.read_text()
    assert "nca (4 steps), infonca (3 steps)" in text
    images = re.findall(r'src="data:image/png;base64,([^"]+)"', text)
    assert len(images) == 3  # loss, chosen/rejected log-likelihood, margin
    assert "<script" not in text and "http" not in text
    width = imread(io.BytesIO(base64.b64decode(images[0])), format="png").shape[1]
    assert width == 720


def test_a_quantity_no_run_logged_has_no_figure() -> None:
    runs = {"a": [{"step": 1.0, "loss": 0.5}]}
    assert overlay_png("margin", "m", [("rewards/margin", "margin")], runs) is None
    assert overlay_png("loss", "loss", [("loss", "loss")], runs) is not None
