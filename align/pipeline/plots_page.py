"""`align plots`: a pipeline's DVC plots as one self-contained HTML page, for offline viewing.

`dvc plots show` writes an HTML page whose vega, vega-lite and vega-embed scripts come from a
CDN, so it stays blank without network access (and no copy of those scripts ships in our
environment). This page draws the same data, the `plots:` outputs the stage table gives DVC
(`runs/<name>/train/curves.csv`), with the run report's figures (align/plots.py) inlined as PNG
data URIs: no script, no external reference.
"""

from __future__ import annotations

import csv
import html
import tempfile
from pathlib import Path

from align.config import PipelineConfig
from align.core.errors import AlignError
from align.core.io import atomic_write_text
from align.pipeline import STAGES, active_stages, stage_folder
from align.pipeline.plots import FIGURES, plot_training, png_data_uri

STYLE = "body{font-family:sans-serif;max-width:48rem;margin:2rem auto}img{max-width:100%}"


def plots_files(cfg: PipelineConfig) -> list[Path]:
    """The plots files DVC lists for this pipeline (`plots:` outputs of its stages)."""
    return [
        Path(out.path)
        for name in active_stages(cfg)
        for out in STAGES[name].outs(cfg, str(stage_folder(cfg, name)))
        if out.kind == "plots"
    ]


def _number(cell: str) -> float | None:
    try:
        return float(cell)
    except ValueError:  # 'None': a quantity that step did not log
        return None


def read_rows(path: Path) -> list[dict[str, float | None]]:
    """A plots CSV as rows of numbers (NaN stays NaN, an empty or 'None' cell is None)."""
    with open(path, newline="") as f:
        return [{k: _number(v) for k, v in row.items()} for row in csv.DictReader(f)]


def _figures(rows: list[dict]) -> list[str]:
    """<figure> elements with align/plots.py's training figures of `rows`, inlined."""
    with tempfile.TemporaryDirectory() as tmp:
        return [
            f'<figure><img alt="{html.escape(png.stem)}" src="{png_data_uri(png)}">'
            f"<figcaption>{html.escape(FIGURES[png.name][0])}</figcaption></figure>"
            for png in plot_training(rows, Path(tmp))
        ]


def write_plots_page(cfg: PipelineConfig, output: Path) -> Path:
    """Write the page for `cfg` at `output` and return it; AlignError (one line) when a plots
    file is missing, i.e. its stage has not run."""
    sections = []
    for path in plots_files(cfg):
        if not path.is_file():
            raise AlignError(
                f"{path}: no such file; run the stage that writes it first "
                f"(`align run` or `dvc repro`), then `align plots` again"
            )
        rows = read_rows(path)
        figures = _figures(rows) or ["<p>No quantity of this file has a figure.</p>"]
        sections.append(
            f"<h2>{html.escape(str(path))}</h2><p>{len(rows)} rows</p>\n" + "\n".join(figures)
        )
    title = html.escape(f"{cfg.name}: plots")
    body = "\n".join(sections) or "<p>This pipeline declares no plots.</p>"
    atomic_write_text(
        output,
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head>\n<body><h1>{title}</h1>\n{body}\n</body></html>\n",
    )
    return output
