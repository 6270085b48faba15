"""What `align` prints: a verbosity level for the whole run, and one human line per stage.

Levels: -1 (`-q`: errors and the final result only), 0 (default: a progress bar per long step
and one line per finished stage), 1 (`-v`: Prefect's logs, library warnings and loading bars
too). `verbosity` writes the level into the environment before Prefect, transformers or
torch are imported, so the stage worker processes the flow spawns inherit it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import warnings
from collections.abc import Iterator
from typing import Any

QUIET, NORMAL, VERBOSE = -1, 0, 1
LINES = logging.getLogger("align.run")  # the per-stage lines; the CLI gives it a plain handler

# Environment for each level: the libraries read these at import, in every process.
_QUIET_LIBRARIES = {
    "TRANSFORMERS_VERBOSITY": "error",  # "`past_key_values` is deprecated" and the like
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",  # "Loading weights", "Writing model shards"
    "PYTHONWARNINGS": "ignore::FutureWarning,ignore::DeprecationWarning",
    "PREFECT_LOGGING_HANDLERS_CONSOLE_LEVEL": "WARNING",  # run logs still reach the UI
}
ENVIRONMENT = {
    QUIET: {**_QUIET_LIBRARIES, "TQDM_DISABLE": "1"},
    NORMAL: _QUIET_LIBRARIES,
    VERBOSE: {},
}


class _StdoutHandler(logging.StreamHandler):
    """Writes to whatever sys.stdout is at the time (a test's capture, a redirected stream)."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stdout

    @stream.setter
    def stream(self, _value) -> None:
        pass


@contextlib.contextmanager
def verbosity(level: int) -> Iterator[None]:
    """Within: the libraries quiet (or not) in this process and in every process it starts; a
    value the user set in the environment wins. The environment is restored on leaving, so a
    caller of the CLI's `main` in-process keeps its own."""
    saved = {key: os.environ.get(key) for key in ENVIRONMENT[level]}
    for key, value in ENVIRONMENT[level].items():
        os.environ.setdefault(key, value)
    try:
        _configure(level)
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def _configure(level: int) -> None:
    if level < VERBOSE:
        warnings.simplefilter("ignore", FutureWarning)
        warnings.simplefilter("ignore", DeprecationWarning)
    LINES.handlers.clear()
    if level > QUIET:
        handler = _StdoutHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        LINES.addHandler(handler)
    LINES.setLevel(logging.INFO)
    LINES.propagate = False


# The figures worth a glance, per stage: (label, summary key, format).
KEY_FIGURES: dict[str, list[tuple[str, str, str]]] = {
    "sample": [
        ("prompts", "prompts", "d"),
        ("x", "k", "d"),
        ("tokens/s", "tokens_per_s", ".0f"),
    ],
    "annotate": [
        ("records", "records", "d"),
        ("reward mean", "reward_mean", ".3g"),
        ("min", "reward_min", ".3g"),
        ("max", "reward_max", ".3g"),
    ],
    "rewrite": [("pairs", "pairs", "d"), ("modified", "modified", "d")],
    "train": [
        ("steps", "steps", "d"),
        ("loss", "first/loss", ".4g"),
        ("->", "final/loss", ".4g"),
        ("reward accuracy", "final/rewards/accuracy", ".2f"),
    ],
    "evaluate": [
        ("reward", "reward/initial", ".3f"),
        ("->", "reward/trained", ".3f"),
        ("win rate", "win_rate/trained_vs_initial", ".3f"),
    ],
    "judge": [
        ("MT-Bench", "mtbench/overall", ".2f"),
        ("AlpacaEval win rate", "alpacaeval/win_rate", ".1f"),
        ("LC", "alpacaeval/lc_win_rate", ".1f"),
        ("failed judgments", "judge/failed", "d"),
    ],
}


def _figure(value: Any, fmt: str) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return format(int(value) if fmt == "d" else value, fmt)


def key_figures(stage: str, summary: dict) -> str:
    """`summary`'s figures a user reads first, e.g. 'prompts 64 x 4 tokens/s 97'; missing or
    undefined ones are left out. prepare-model names its models."""
    if stage == "prepare-model":
        roles = [(r, summary.get(r)) for r in ("policy", "reference")]
        return ", ".join(f"{r} {m['source']}" for r, m in roles if isinstance(m, dict))
    shown = []
    for label, key, fmt in KEY_FIGURES.get(stage, []):
        text = _figure(summary.get(key), fmt)
        if text is not None:
            shown.append(f"{label} {text}")
    return " ".join(shown)


def stage_line(stage: str, manifest: dict, ran: bool, folder: str) -> str:
    """One line for a finished stage: what it did, its key figures, where its output is."""
    what = f"done in {manifest['seconds']:.0f}s" if ran else "up to date"
    figures = key_figures(stage, manifest.get("summary") or {})
    return f"{stage}: {what}" + (f", {figures}" if figures else "") + f" -> {folder}"
