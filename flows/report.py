"""The run report, written when the flow `align` finishes: Prefect artifacts and files.

Artifacts (keys derived from the pipeline name, so each run adds a new version of the same key):
  <name>-report       markdown: config, lineage, training-curve summary, evaluation results,
                      the figures embedded as PNG data URIs (with their file paths)
  <name>-train-log    table: the trainer's per-step log
  <name>-<stage>      table: the metrics of each stage after training (evaluate, judge, ...)
  <name>-checkpoint   link: the final checkpoint folder
Files, under runs/<name>/:
  report.md and plots/*.png     the same report, with the figures (align/plots.py)
The model card (train/model/README.md, Hub metadata) is the train stage's own output
(align/stages/model_card.py).

Everything is read back from what the stages left on disk (manifests, log.jsonl, metrics.json,
report.md), so the report describes the files, whichever orchestrator produced them.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml
from prefect.artifacts import (
    create_link_artifact,
    create_markdown_artifact,
    create_table_artifact,
)

from align.config import PipelineConfig
from align.core.io import atomic_write_text
from align.pipeline import stage_folder
from align.pipeline.plots import plot_categories, plot_training, png_data_uri
from align.pipeline.rounds import read_events, round_display, rounds_table

CURVE_KEYS = ("loss", "logps/chosen", "logps/rejected", "rewards/margin", "rewards/accuracy")
LOG_COLUMNS = ("step", *CURVE_KEYS, "rewards/chosen", "rewards/rejected", "lr", "grad_norm")
RESULT_FILES = ("metrics.json", "scores.json")  # flat metrics of evaluate / judge stages
CARD = "README.md"  # the Hub model card inside train/model/, written by the train stage


@dataclass
class RunFacts:
    """What the report says, gathered once from the pipeline config and the stage folders."""

    cfg: PipelineConfig
    manifests: dict[str, dict]
    log: list[dict] = field(default_factory=list)
    results: dict[str, dict] = field(default_factory=dict)  # stage -> flat metrics
    sections: dict[str, str] = field(default_factory=dict)  # stage -> its own report.md

    @property
    def root(self) -> Path:
        return Path(self.cfg.runs_dir) / self.cfg.name

    @property
    def checkpoint(self) -> Path:
        return stage_folder(self.cfg, "train") / "model"


def slug(name: str) -> str:
    """Artifact keys allow lowercase letters, digits and dashes only."""
    return re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-") or "pipeline"


def read_log(path: Path) -> list[dict]:
    """The trainer's `log.jsonl` (one JSON object per optimizer step); [] when absent."""
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def gather(cfg: PipelineConfig, manifests: dict[str, dict]) -> RunFacts:
    """Read the training log and every later stage's metrics and report section."""
    facts = RunFacts(cfg, manifests, read_log(stage_folder(cfg, "train") / "log.jsonl"))
    stages = list(manifests)
    after_train = stages[stages.index("train") + 1 :] if "train" in stages else []
    for stage in after_train:
        folder = stage_folder(cfg, stage)
        for name in RESULT_FILES:
            if (folder / name).is_file():
                facts.results[stage] = json.loads((folder / name).read_text())
                break
        if (folder / "report.md").is_file():
            facts.sections[stage] = (folder / "report.md").read_text()
    return facts


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)


def lineage(facts: RunFacts, upto: str | None = None) -> list[tuple[str, str]]:
    """(what, identity) rows: data, models, reward, code, then the stage hashes (those up to
    and including `upto` when given)."""
    m = facts.manifests
    if upto in m:
        names = list(m)
        m = {k: m[k] for k in names[: names.index(upto) + 1]}
    prep = m.get("prepare-model", {}).get("summary", {})
    train_data = (
        (m.get("sample") or m.get("annotate") or m.get("train") or {}).get("inputs", {}).get("data")
    )  # an online pipeline's train stage reads the prompts itself
    rows = [
        ("training data", train_data),
        ("eval data", m.get("evaluate", {}).get("inputs", {}).get("eval_data")),
        (
            "base model",
            f"{prep['policy']['source']} (weights sha256 {prep['policy']['hash']})"
            if "policy" in prep
            else None,
        ),
        (
            "reference model",
            f"{prep['reference']['source']} (weights sha256 {prep['reference']['hash']})"
            if "reference" in prep
            else None,
        ),
        ("reward", m.get("annotate", {}).get("inputs", {}).get("reward")),
        (  # each stage hashes only the code it runs (align/pipeline/code.py)
            "code versions",
            ", ".join(f"{k} {v['code_version']}" for k, v in m.items() if "code_version" in v)
            or None,
        ),
    ]
    rows += [(f"stage {name}", man.get("stage_hash")) for name, man in m.items()]
    return [(k, str(v)) for k, v in rows if v is not None]


def curve_summary(log: list[dict]) -> list[dict]:
    """First, last, min and max of each logged curve, one row per quantity."""
    rows = []
    for key in CURVE_KEYS:
        values = [r[key] for r in log if r.get(key) is not None and not math.isnan(r[key])]
        if values:
            rows.append(
                {
                    "quantity": key,
                    "first": values[0],
                    "last": values[-1],
                    "min": min(values),
                    "max": max(values),
                }
            )
    return rows


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _demote(markdown: str, top: int = 3) -> str:
    """A stage's own report nested under our `##` headings: its highest heading becomes `top`
    hashes deep, the others keep their depth below it."""
    levels = [len(h) for h in re.findall(r"^(#+) ", markdown, flags=re.MULTILINE)]
    shift = top - min(levels) if levels else 0
    return re.sub(r"^(#+) ", lambda h: "#" * (len(h[1]) + shift) + " ", markdown, flags=re.M)


def render(facts: RunFacts, plots: list[Path] | None = None, run_id: str | None = None) -> str:
    """The report as markdown; `plots` (paths relative to the report) are embedded when given."""
    cfg, m = facts.cfg, facts.manifests
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    out = [
        f"# {cfg.name}: run report",
        "",
        f"{cfg.description}".strip(),
        "",
        f"Finished {when}"
        + (f" · flow run `{run_id}`" if run_id else "")
        + f" · stages: {' -> '.join(m)}",
        "",
        "## Lineage",
        "",
        _table(["what", "identity"], [list(r) for r in lineage(facts)]),
        "",
        "## Training",
        "",
    ]
    train = m.get("train", {}).get("summary", {})
    out.append(
        _table(["figure", "value"], [[k, v] for k, v in train.items()]) if train else "No training."
    )
    summary = curve_summary(facts.log)
    if summary:
        out += ["", f"Curves over {len(facts.log)} logged steps:", ""]
        out.append(_table(list(summary[0]), [list(r.values()) for r in summary]))
    for plot in plots or []:
        out += ["", f"![{plot.stem}]({plot.as_posix()})"]
    for stage, metrics in facts.results.items():
        out += ["", f"## Results: {stage}", ""]
        if stage in facts.sections:
            out += [_demote(facts.sections[stage]).strip(), ""]
        out.append(_table(["metric", "value"], [[k, v] for k, v in metrics.items()]))
    out += [
        "",
        "## Checkpoint",
        "",
        f"`{facts.checkpoint}` (model card: `{facts.checkpoint / CARD}`)",
        "",
        "## Config",
        "",
        "```yaml",
        yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).rstrip(),
        "```",
        "",
    ]
    return "\n".join(out)


def _cell(value: Any) -> Any:
    """A JSON-safe table cell: floats rounded, NaN (a step where every response tied) empty."""
    if isinstance(value, float):
        return None if math.isnan(value) else round(value, 6)
    return value


def write_files(facts: RunFacts, run_id: str | None = None) -> tuple[Path, list[Path]]:
    """runs/<name>/report.md with its PNG figures; returns (report, plots)."""
    plots = plot_training(facts.log, facts.root / "plots") if facts.log else []
    for metrics in facts.results.values():
        bars = plot_categories(metrics, facts.root / "plots")
        if bars:
            plots.append(bars)
    report = facts.root / "report.md"
    rel = [p.relative_to(facts.root) for p in plots]
    atomic_write_text(report, render(facts, rel, run_id))
    return report, plots


def artifact_markdown(
    facts: RunFacts, report: Path, plots: list[Path], run_id: str | None = None
) -> str:
    """The report artifact: the report with its figures embedded as PNG data URIs (the
    Prefect UI cannot open local files), each with the path of its file."""
    figures = ["", "## Figures", ""]
    for plot in plots:
        figures += [f"![{plot.stem}]({png_data_uri(plot)})", "", f"`{plot.resolve()}`", ""]
    return (
        render(facts, run_id=run_id)
        + "\n".join(figures if plots else [])
        + f"\nReport with figures: `{report.resolve()}`\n"
    )


def publish(cfg: PipelineConfig, manifests: dict[str, dict], run_id: str | None = None) -> Path:
    """Write the report files and create the artifacts of this flow run; returns report.md."""
    facts = gather(cfg, manifests)
    report, plots = write_files(facts, run_id)
    key = slug(cfg.name)
    create_markdown_artifact(
        key=f"{key}-report",
        markdown=artifact_markdown(facts, report, plots, run_id),
        description=f"{cfg.name}: config, lineage, training and evaluation",
    )
    if facts.log:
        create_table_artifact(
            key=f"{key}-train-log",
            table=[{c: _cell(r[c]) for c in LOG_COLUMNS if c in r} for r in facts.log],
            description=f"{cfg.name}: training log, one row per optimizer step",
        )
    for stage, metrics in facts.results.items():
        create_table_artifact(
            key=f"{key}-{slug(stage)}",
            table=[{"metric": k, "value": _cell(v)} for k, v in metrics.items()],
            description=f"{cfg.name}: {stage} results",
        )
    if cfg.rounds is not None:
        create_table_artifact(
            key=f"{key}-rounds",
            table=[
                {k: _cell(v) for k, v in round_display(r).items()}
                for r in rounds_table(read_events(cfg))
            ],
            description=f"{cfg.name}: rounds (* = the incumbent)",
        )
    if facts.checkpoint.is_dir():
        create_link_artifact(
            key=f"{key}-checkpoint",
            link=facts.checkpoint.resolve().as_uri(),
            link_text=str(facts.checkpoint),
            description=f"{cfg.name}: final checkpoint (model card: {CARD} inside it)",
        )
    return report
