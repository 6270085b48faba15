"""Several runs' training curves on shared figures, as one self-contained HTML page.

`align plots PIPELINE --exp a b ...` reads each DVC experiment's `curves.csv` (flows/dvc_exps.py)
and hands the rows here: one figure per quantity of align/pipeline/plots.py's FIGURES, a line per
run (and per quantity where a figure holds two), inlined as PNG data URIs, so the page needs no
script and no network, unlike `dvc plots diff`'s HTML.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from align.core.io import atomic_write_text
from align.pipeline.plots import FIGURES, series
from align.pipeline.plots_page import STYLE

LINE_STYLES = ("-", "--")  # the two quantities of one figure (chosen, rejected)


def overlay_png(
    title: str, ylabel: str, keys: Sequence[tuple[str, str]], runs: dict[str, list[dict]]
) -> bytes | None:
    """PNG of `keys` ((log key, label) pairs) for every run in `runs` (name -> curves rows),
    one colour per run; None when no run logged any of the keys."""
    fig = Figure(figsize=(7.2, 4.0), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    drawn = 0
    for i, (name, rows) in enumerate(runs.items()):
        for (key, label), style in zip(keys, LINE_STYLES, strict=False):
            steps, values = series(rows, key)
            if not steps:
                continue
            legend = name if len(keys) == 1 else f"{name}: {label}"
            ax.plot(
                steps,
                values,
                ls=style,
                color=f"C{i % 10}",
                lw=1.2,
                label=legend,
                marker="o" if len(steps) <= 30 else None,
            )
            drawn += 1
    if not drawn:
        return None
    ax.set(title=title, xlabel="optimizer step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def write_compare_page(runs: dict[str, list[dict]], output: Path, title: str) -> Path:
    """Write the overlay page for `runs` (name -> rows of its curves.csv) at `output`."""
    figures = []
    for fig_title, ylabel, keys in FIGURES.values():
        png = overlay_png(fig_title, ylabel, keys, runs)
        if png is not None:
            figures.append(
                f'<figure><img alt="{html.escape(fig_title)}" src="data:image/png;base64,'
                f'{base64.b64encode(png).decode()}"><figcaption>{html.escape(fig_title)}'
                "</figcaption></figure>"
            )
    names = ", ".join(f"{html.escape(n)} ({len(rows)} steps)" for n, rows in runs.items())
    body = "\n".join(figures) or "<p>No run logged a quantity that has a figure.</p>"
    title = html.escape(title)
    atomic_write_text(
        output,
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
        f"<style>{STYLE}</style></head>\n<body><h1>{title}</h1>\n<p>{names}</p>\n{body}\n"
        "</body></html>\n",
    )
    return output
