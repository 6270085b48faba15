"""Training-curve PNGs for the run report, from the trainer's per-step log (`log.jsonl` rows).

Pure matplotlib through its object API (a `Figure` with an Agg canvas): no pyplot state, no
display, safe in worker threads. Each quantity is drawn raw (faint) and smoothed (an
exponential moving average over all logged steps: one step is one random batch, so the raw
trend of a short run is mostly noise), on integer step ticks; a quantity missing or NaN at some
or all steps is named on its figure with the reason. Three figures:
  loss.png    the training loss per optimizer step
  logps.png   summed log-likelihood of the chosen (highest-reward) and rejected (lowest-reward)
              responses: the NCA paper's figure, where DPO-style losses push both down and NCA
              keeps the chosen one up
  margin.png  implicit reward margin (beta * log-ratio, chosen minus rejected) and accuracy
and, when a judge stage reports MT-Bench scores per category, `judge-categories.png`.
"""

from __future__ import annotations

import base64
import math
from collections.abc import Sequence
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

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
# quantities of the step's chosen and rejected responses: absent when every response tied
PAIR_KEYS = frozenset(("logps/chosen", "logps/rejected", "rewards/margin", "rewards/accuracy"))
TIE_REASON = "every response of the step's prompts tied: no chosen or rejected one"


def series(rows: Sequence[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one logged quantity, skipping rows that lack it or log NaN (a batch
    whose responses all tie has no chosen or rejected one)."""
    pairs = [
        (r["step"], r[key])
        for r in rows
        if "step" in r and r.get(key) is not None and not math.isnan(r[key])
    ]
    return [float(s) for s, _ in pairs], [float(v) for _, v in pairs]


def smooth(values: Sequence[float], span: int | None = None) -> list[float]:
    """Debiased exponential moving average: s_t = sum_i<=t a (1-a)^(t-i) v_i / (1 - (1-a)^t)
    with a = 2 / (span + 1); span defaults to a tenth of the points (at least 1: no smoothing)."""
    span = span or max(1, len(values) // 10)
    a, acc, norm, out = 2.0 / (span + 1), 0.0, 0.0, []
    for v in values:
        acc, norm = (1 - a) * acc + a * v, (1 - a) * norm + a
        out.append(acc / norm)
    return out


def missing_note(rows: Sequence[dict], key: str, label: str) -> str | None:
    """Why a quantity has no point, or how many steps it lacks; None when every step has one."""
    steps = [r for r in rows if "step" in r]
    if not any(key in r for r in steps):
        return f"{label}: not logged by this run ({key!r} is absent from the log)"
    kept = len(series(rows, key)[0])
    if kept == len(steps):
        return None
    why = TIE_REASON if key in PAIR_KEYS else "NaN or empty"
    if kept == 0:
        return f"{label}: no value at any of {len(steps)} steps ({why})"
    return f"{label}: {len(steps) - kept} of {len(steps)} steps left out ({why})"


def _line_plot(
    title: str, ylabel: str, lines: list[tuple[str, list, list]], notes: list[str]
) -> Figure:
    """Each line raw (faint) and smoothed (solid) over its steps; integer step ticks; `notes`
    written on the figure."""
    fig = Figure(figsize=(6.4, 3.6), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    for n, (label, steps, values) in enumerate(lines):
        color = f"C{n}"
        few = len(steps) <= 30  # markers only when few points, so a 2-step run shows something
        ax.plot(steps, values, color=color, alpha=0.3, lw=1, marker="o" if few else None)
        ax.plot(steps, smooth(values), color=color, lw=1.8, label=f"{label} (smoothed)")
    ax.set(title=title, xlabel="optimizer step", ylabel=ylabel)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if lines:
        ax.legend(fontsize="small")
    if notes:
        ax.text(
            0.01,
            0.02,
            "\n".join(notes),
            transform=ax.transAxes,
            fontsize="small",
            va="bottom",
            color="tab:red",
        )
    return fig


def plot_training(rows: Sequence[dict], out_dir: Path) -> list[Path]:
    """Write every training figure for `rows` under `out_dir` and return the files: each
    quantity raw and smoothed; a quantity that is missing or NaN at some or all steps is
    named on its figure with the reason, never silently dropped."""
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for name, (title, ylabel, keys) in FIGURES.items():
        lines = [(label, *series(rows, key)) for key, label in keys]
        notes = [n for key, label in keys if (n := missing_note(rows, key, label))]
        fig = _line_plot(title, ylabel, [line for line in lines if line[1]], notes)
        if name == "margin.png":
            steps, acc = series(rows, "rewards/accuracy")
            if steps:  # accuracy on its own axis: a fraction, unlike the margin
                twin = fig.axes[0].twinx()
                twin.plot(steps, acc, color="tab:gray", alpha=0.3, lw=1)
                twin.plot(steps, smooth(acc), color="tab:gray", ls="--", lw=1.2, label="accuracy")
                twin.set(ylabel="reward accuracy", ylim=(-0.05, 1.05))
                twin.legend(loc="lower right", fontsize="small")
        fig.savefig(out_dir / name)
        written.append(out_dir / name)
    return written


def png_data_uri(path: Path) -> str:
    """A PNG file as a `data:` URI, for pages and artifacts that must not point at files."""
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()


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
