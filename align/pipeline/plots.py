"""Training-curve PNGs for the run report, from the trainer's per-step log (`log.jsonl` rows).

Pure matplotlib through its object API (a `Figure` with an Agg canvas): no pyplot state, no
display, safe in worker threads. Three figures:
  loss.png    the training loss per optimizer step
  logps.png   summed log-likelihood of the chosen (highest-reward) and rejected (lowest-reward)
              responses: the NCA paper's figure, where DPO-style losses push both down and NCA
              keeps the chosen one up
  margin.png  implicit reward margin (beta * log-ratio, chosen minus rejected) and accuracy
and, when a judge stage reports MT-Bench scores per category, `judge-categories.png`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

# file name -> (title, y label, [(log key, legend label)])
FIGURES: dict[str, tuple[str, str, list[tuple[str, str]]]] = {
    "loss.png": ("Training loss", "loss", [("loss", "loss")]),
    "logps.png": (
        "Log-likelihood of chosen and rejected responses",
        "summed log-prob",
        [("logps/chosen", "chosen"), ("logps/rejected", "rejected")],
    ),
    "margin.png": (
        "Implicit reward margin (chosen - rejected)",
        "reward margin",
        [("rewards/margin", "margin")],
    ),
}


def series(rows: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one logged quantity, skipping rows that lack it or log NaN (a batch
    whose responses all tie has no chosen or rejected one)."""
    pairs = [
        (r["step"], r[key])
        for r in rows
        if "step" in r and r.get(key) is not None and not math.isnan(r[key])
    ]
    return [float(s) for s, _ in pairs], [float(v) for _, v in pairs]


def _line_plot(title: str, ylabel: str, lines: list[tuple[str, list, list]]) -> Figure:
    fig = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for label, steps, values in lines:
        # Markers only when there are few points, so a 2-step smoke run still shows something.
        ax.plot(steps, values, label=label, marker="o" if len(steps) <= 30 else None, lw=1.2)
    ax.set(title=title, xlabel="optimizer step", ylabel=ylabel)
    ax.grid(alpha=0.3)
    if len(lines) > 1:
        ax.legend()
    return fig


def plot_training(rows: Sequence[dict], out_dir: Path) -> list[Path]:
    """Write the training figures for `rows` under `out_dir`; returns the files written
    (a figure whose quantities were never logged is skipped)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (title, ylabel, keys) in FIGURES.items():
        lines = [(label, *series(rows, key)) for key, label in keys]
        lines = [line for line in lines if line[1]]
        if not lines:
            continue
        fig = _line_plot(title, ylabel, lines)
        if name == "margin.png":
            steps, acc = series(rows, "rewards/accuracy")
            if steps:  # accuracy on its own axis: a fraction, unlike the margin
                twin = fig.axes[0].twinx()
                twin.plot(steps, acc, color="tab:gray", ls="--", lw=1, label="accuracy")
                twin.set(ylabel="reward accuracy", ylim=(-0.05, 1.05))
                twin.legend(loc="lower right")
        fig.savefig(out_dir / name)
        written.append(out_dir / name)
    return written


def plot_categories(metrics: dict, out_dir: Path, prefix: str = "mtbench/category/") -> Path | None:
    """Bar chart of the judge's mean score per category (`<prefix><category>` keys); None when
    the metrics hold no scored category."""
    scores = {
        k.removeprefix(prefix): float(v)
        for k, v in sorted(metrics.items())
        if k.startswith(prefix) and isinstance(v, int | float)
    }
    if not scores:
        return None
    fig = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    ax.barh(list(scores), list(scores.values()), color="tab:blue")
    ax.set(title="Judge score by category", xlabel="mean score (1-10)", xlim=(0, 10))
    ax.invert_yaxis()  # categories read top to bottom in alphabetical order
    ax.grid(axis="x", alpha=0.3)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "judge-categories.png"
    fig.savefig(path)
    return path
