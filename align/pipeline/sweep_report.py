"""The comparison of a sweep's cells (align/pipeline/sweep.py): per cell its held-out figures and
probe changes, per arm (the cells that differ only in a seed key) the mean and SE over seeds,
per pair of arms the paired held-out reward difference with its SE over seeds and prompts
(align/pipeline/sweep_stats.py), and one figure of the probe trends.

Writes runs/<name>/sweep/summary.json, summary.md and probes.png.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from align.core.errors import AlignError
from align.core.io import atomic_write_json, atomic_write_text, read_json
from align.pipeline.sweep import describe
from align.pipeline.sweep_stats import mean_and_se, paired_difference

# per-cell figures: (file under the cell folder, key) -> column name
CELL_FIGURES = {
    ("evaluate/metrics.json", "reward/trained"): "reward",
    ("evaluate/metrics.json", "win_rate/trained_vs_initial"): "win_rate",
    ("train/metrics.json", "probe/delta/chosen"): "probe_chosen",
    ("train/metrics.json", "probe/delta/rejected"): "probe_rejected",
}


def _is_seed(key: str) -> bool:
    return "seed" in key.rsplit(".", 1)[-1]


def _read(path: Path) -> dict:
    return read_json(path) if path.is_file() else {}


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.is_file() else []


def _label(settings: dict[str, Any]) -> str:
    return ", ".join(f"{k.rsplit('.', 1)[-1]}={describe(v)}" for k, v in settings.items()) or "all"


def collect(root: Path) -> list[dict]:
    """Each cell of cells.json with its figures, per-prompt held-out rewards and probe rows."""
    index = root / "cells.json"
    if not index.is_file():
        raise AlignError(f"{index}: no sweep here; run `align sweep` first")
    out = []
    for rec in read_json(index)["cells"]:
        folder = root / rec["id"]
        figures = {
            column: _finite_or_none(_read(folder / file).get(key))
            for (file, key), column in CELL_FIGURES.items()
        }
        answers = _jsonl(folder / "evaluate" / "answers-trained.jsonl")
        out.append(
            {
                **rec,
                "figures": figures,
                "rewards": {a["id"]: a["reward"] for a in answers},
                "probe": _jsonl(folder / "train" / "probe.jsonl"),
            }
        )
    return out


def compare(cells: list[dict]) -> dict:
    """Arms (settings without seed keys) with mean/SE over their cells, and the paired held-out
    reward difference of every pair of arms over the seeds and prompts they share."""
    arms: dict[str, list[dict]] = {}
    for cell in cells:
        arm = {k: v for k, v in cell["settings"].items() if not _is_seed(k)}
        cell["arm"] = _label(arm)
        arms.setdefault(cell["arm"], []).append(cell)
    arm_rows = []
    for name, members in arms.items():
        row: dict[str, Any] = {"arm": name, "cells": len(members)}
        for column in CELL_FIGURES.values():
            values = [c["figures"][column] for c in members if c["figures"][column] is not None]
            mean, se = mean_and_se(values) if values else (math.nan, math.nan)
            row[column], row[f"{column}_se"] = _finite(mean), _finite(se)
        arm_rows.append(row)
    pairs = []
    for a, b in itertools.combinations(arms, 2):
        table = _difference_table(arms[a], arms[b])
        if table is None:
            continue
        diff = paired_difference(*table)
        pairs.append(
            {
                "a": a,
                "b": b,
                "reward_diff": diff.mean,
                "se": _finite(diff.se),
                "z": _finite(diff.z),
                "seeds": diff.n_seeds,
                "prompts": diff.n_prompts,
            }
        )
    return {"arms": arm_rows, "pairs": pairs}


def _finite(value: float) -> float | None:
    """None for NaN and infinity: JSON has no such numbers."""
    return value if math.isfinite(value) else None


def _finite_or_none(value: Any) -> float | None:
    return _finite(float(value)) if isinstance(value, int | float) else None


def _seed_of(cell: dict) -> str:
    return json.dumps({k: v for k, v in cell["settings"].items() if _is_seed(k)}, sort_keys=True)


def _difference_table(a: list[dict], b: list[dict]) -> tuple[np.ndarray, np.ndarray] | None:
    """[seeds, prompts] held-out rewards of two arms on the seeds and prompt ids both have."""
    by_seed_a, by_seed_b = {_seed_of(c): c for c in a}, {_seed_of(c): c for c in b}
    seeds = sorted(by_seed_a.keys() & by_seed_b.keys())
    if not seeds:
        return None
    prompts = set.intersection(
        *(set(by_seed_a[s]["rewards"]) & set(by_seed_b[s]["rewards"]) for s in seeds)
    )
    if not prompts:
        return None
    ids = sorted(prompts)
    ta = np.array([[by_seed_a[s]["rewards"][i] for i in ids] for s in seeds], dtype=np.float64)
    tb = np.array([[by_seed_b[s]["rewards"][i] for i in ids] for s in seeds], dtype=np.float64)
    return ta, tb


def _fmt(value: Any, se: Any = None) -> str:
    if value is None:
        return "-"
    text = f"{value:.3f}" if isinstance(value, float) else str(value)
    return text if se is None else f"{text} ± {se:.3f}"


def render_markdown(cells: list[dict], comparison: dict) -> str:
    """The summary tables: cells, arms (mean ± SE over seeds), paired differences."""
    columns = list(CELL_FIGURES.values())
    lines = ["# Sweep", "", "## Cells", ""]
    lines += ["| cell | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for c in cells:
        values = " | ".join(_fmt(c["figures"][col]) for col in columns)
        lines.append(f"| {_label(c['settings'])} | {values} |")
    lines += ["", "## Arms (mean ± SE over seeds)", ""]
    lines += ["| arm | cells | " + " | ".join(columns) + " |", "|---" * (len(columns) + 2) + "|"]
    for row in comparison["arms"]:
        values = " | ".join(_fmt(row[col], row[f"{col}_se"]) for col in columns)
        lines.append(f"| {row['arm']} | {row['cells']} | {values} |")
    lines += [
        "",
        "## Paired held-out reward differences (A - B; SE over seeds and prompts)",
        "",
        "| A | B | difference | SE | z | seeds x prompts |",
        "|---|---|---|---|---|---|",
    ]
    for p in comparison["pairs"]:
        lines.append(
            f"| {p['a']} | {p['b']} | {_fmt(p['reward_diff'])} | {_fmt(p['se'])} | "
            f"{_fmt(p['z'])} | {p['seeds']} x {p['prompts']} |"
        )
    return "\n".join(lines) + "\n"


def probe_figure(cells: list[dict], path: Path) -> Path | None:
    """probes.png: the probe's chosen and rejected log-likelihood change over steps, one line
    per arm (mean over its seeds); None when no cell logged a probe."""
    arms: dict[str, list[list[dict]]] = {}
    for c in cells:
        if c["probe"]:
            arms.setdefault(c["arm"], []).append(c["probe"])
    if not arms:
        return None
    fig = Figure(figsize=(10, 4), layout="constrained")
    FigureCanvasAgg(fig)
    for ax, key, title in zip(
        fig.subplots(1, 2),
        ("probe/chosen", "probe/rejected"),
        ("chosen (highest reward)", "rejected (lowest reward)"),
        strict=True,
    ):
        for arm, runs in arms.items():
            steps = sorted(set.intersection(*({r["step"] for r in run} for run in runs)))
            by_step = [{r["step"]: r[key] for r in run} for run in runs]
            ax.plot(steps, [np.mean([b[s] for b in by_step]) for s in steps], marker="o", label=arm)
        ax.axhline(0.0, color="grey", linewidth=0.8)
        ax.set_title(f"{title}: log-likelihood vs reference")
        ax.set_xlabel("optimizer step")
        ax.set_ylabel("summed log-ratio (fixed records)")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize="small")
    fig.savefig(path, dpi=110)
    return path


def write_report(root: Path) -> dict:
    """Collect, compare and write summary.json, summary.md and probes.png under `root`."""
    cells = collect(root)
    comparison = compare(cells)
    figure = probe_figure(cells, root / "probes.png")
    summary = {
        "cells": [
            {"id": c["id"], "settings": c["settings"], "arm": c["arm"], **c["figures"]}
            for c in cells
        ],
        **comparison,
        "figure": str(figure) if figure else None,
    }
    atomic_write_json(root / "summary.json", summary)
    atomic_write_text(root / "summary.md", render_markdown(cells, comparison))
    return summary
