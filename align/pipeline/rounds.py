"""Rounds of iterative training (`rounds` in the YAML; docs/rounds.md).

Each run of a pipeline with `rounds` is one round. `begin_round` decides what the round starts
from (the incumbent: the last promoted model, or the base) and turns that into `--set`
overrides (model.policy, model.reference, data.train.window), so every stage of the round is an
ordinary stage of an ordinary pipeline with its own hashes; `close_round` reads the promotion
metric, promotes the new model (kept under rounds/round-<n>/model) or keeps the incumbent, and
records why.

The record is an append-only event log, runs/<name>/rounds/rounds.jsonl:
  started    a round began, with everything needed to redo it exactly (its overrides)
  promoted   the round's model became the incumbent (or `rejected`, with the reason)
  incumbent  a user made an earlier promoted round the incumbent by hand (`align rounds --promote`)
  rewind     `rounds.start=N` dropped rounds >= N: the next run is round N again
A round that started and did not close (a crash) is resumed by the next run with the same
overrides: its finished stages are current, the trainer resumes from its checkpoint.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from align.config import PipelineConfig, load_pipeline
from align.config.rounds import GATE_METRICS
from align.core.errors import AlignError
from align.core.io import atomic_dir, link_or_copy, read_json, sha256_tree
from align.pipeline.folders import claim_run_folder
from align.pipeline.graph import plan, stage_folder

ROUNDS_DIR = "rounds"
EVENTS = "rounds.jsonl"


@dataclass(frozen=True)
class RoundPlan:
    """What one round starts from; `overrides` are added to the run's `--set` list."""

    number: int
    parent: int | None  # the promoted round whose model this round trains from; None: the base
    policy: str
    reference: str | None
    window: dict[str, int] | None
    overrides: list[str]


def rounds_folder(cfg: PipelineConfig) -> Path:
    return Path(cfg.runs_dir) / cfg.name / ROUNDS_DIR


def model_folder(cfg: PipelineConfig, number: int) -> Path:
    """Where a promoted round's model is kept."""
    return rounds_folder(cfg) / f"round-{number}" / "model"


def read_events(cfg: PipelineConfig) -> list[dict]:
    """The event log; a line torn by a kill (the last one) is skipped."""
    path = rounds_folder(cfg) / EVENTS
    if not path.is_file():
        return []
    events = []
    for line in path.read_text().splitlines():
        try:
            events.append(json.loads(line))
        except ValueError:
            continue
    return events


def _append(cfg: PipelineConfig, event: dict) -> None:
    claim_run_folder(cfg)  # the rounds live in the run folder: align's own, or refused
    path = rounds_folder(cfg) / EVENTS
    path.parent.mkdir(parents=True, exist_ok=True)
    event = {**event, "time": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")}
    with open(path, "a") as f:
        f.write(json.dumps(event, sort_keys=True) + "\n")
        f.flush()


def effective(events: list[dict]) -> list[dict]:
    """The events still in force: a `rewind` to N drops the earlier events of rounds >= N."""
    kept: list[dict] = []
    for e in events:
        if e["event"] == "rewind":
            kept = [k for k in kept if k["round"] < e["round"]]
        kept.append(e)
    return [e for e in kept if e["event"] != "rewind"]


def rounds_table(events: list[dict]) -> list[dict]:
    """One row per round in force: its start event merged with its decision (if any)."""
    rows: dict[int, dict] = {}
    for e in effective(events):
        if e["event"] == "started":
            rows[e["round"]] = {**e, "decision": None}
        elif e["event"] in ("promoted", "rejected") and e["round"] in rows:
            rows[e["round"]].update({k: v for k, v in e.items() if k not in ("event", "time")})
            rows[e["round"]]["decision"] = e["event"]
    incumbent = current_incumbent(events)
    for number, row in rows.items():
        row["incumbent"] = number == incumbent
    return [rows[n] for n in sorted(rows)]


def current_incumbent(events: list[dict]) -> int | None:
    """The round whose model is the incumbent: the latest promotion, by the gate or by hand."""
    found = None
    for e in effective(events):
        if e["event"] in ("promoted", "incumbent"):
            found = e["round"]
    return found


def begin_round(cfg: PipelineConfig) -> RoundPlan:
    """The round this run is: a started round that did not close (resumed), else the next one
    (or `rounds.start`, which first drops that round and later ones); its start is recorded."""
    rc = cfg.rounds
    assert rc is not None
    events = read_events(cfg)
    table = rounds_table(events)
    open_round = next((r for r in table if r["decision"] is None), None)
    last = table[-1]["round"] if table else 0
    if rc.start is not None and rc.start > last + 1:
        raise AlignError(
            f"rounds.start: {rc.start} does not exist yet (the next round is {last + 1}); "
            f"rounds so far: {', '.join(str(r['round']) for r in table) or 'none'}"
        )
    if open_round is not None and rc.start in (None, open_round["round"]):
        return _plan_of(open_round)
    if rc.start is not None and rc.start <= last:
        _append(cfg, {"event": "rewind", "round": rc.start})
        events = read_events(cfg)
    number = rc.start or last + 1
    parent = current_incumbent(events) if rc.policy_from == "promoted" else None
    if parent is not None and not (model_folder(cfg, parent) / "config.json").is_file():
        raise AlignError(
            f"{model_folder(cfg, parent)}: the model of round {parent} (the incumbent) is "
            f"missing; restore it (dvc pull / dvc checkout) or roll back with "
            f"--set rounds.start=N"
        )
    base_policy = cfg.model.policy
    base_reference = cfg.model.reference or cfg.model.policy
    policy = str(model_folder(cfg, parent)) if parent is not None else base_policy
    reference = base_reference if rc.reference == "base" else None
    window = None
    overrides = [f"model.policy={json.dumps(policy)}", f"model.reference={json.dumps(reference)}"]
    if rc.prompts_per_round is not None:
        seed = cfg.sample.seed if cfg.sample else 0
        window = {"size": rc.prompts_per_round, "index": number - 1, "seed": seed}
        overrides.append(f"data.train.window={json.dumps(window)}")
    _append(
        cfg,
        {
            "event": "started",
            "round": number,
            "parent": parent,
            "policy": policy,
            "reference": reference,
            "window": window,
            "overrides": overrides,
        },
    )
    return RoundPlan(number, parent, policy, reference, window, overrides)


def _plan_of(row: dict) -> RoundPlan:
    return RoundPlan(
        row["round"],
        row["parent"],
        row["policy"],
        row["reference"],
        row["window"],
        row["overrides"],
    )


def _finite(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and math.isfinite(value) else None


def gate(cfg: PipelineConfig, events: list[dict]) -> tuple[bool, float | None, float | None, str]:
    """(promote?, new value, incumbent's value, reason) from this round's metrics file."""
    rc = cfg.rounds
    assert rc is not None
    name, min_delta = rc.promote.metric, rc.promote.min_delta
    spec = GATE_METRICS[name]
    path = stage_folder(cfg, spec.stage) / spec.file
    figures = read_json(path) if path.is_file() else {}
    value = _finite(figures.get(spec.key))
    if isinstance(spec.baseline, str):
        baseline = _finite(figures.get(spec.baseline))
    elif isinstance(spec.baseline, float):
        baseline = spec.baseline
    else:  # the figure recorded when the incumbent was promoted
        incumbent = current_incumbent(events)
        rows = {r["round"]: r for r in rounds_table(events)}
        baseline = _finite(rows.get(incumbent, {}).get("value")) if incumbent else None
    if value is None:
        return False, None, baseline, f"{name} is missing or not a number in {path}"
    if baseline is None:
        return True, value, None, f"{name} = {value:.4g}; no incumbent figure to beat"
    ok = value >= baseline + min_delta
    verb = ">=" if ok else "<"
    return ok, value, baseline, f"{name} {value:.4g} {verb} {baseline:.4g} + {min_delta:g}"


def close_round(cfg: PipelineConfig, round_plan: RoundPlan) -> dict:
    """Decide the round (`gate`), keep a promoted model under rounds/round-<n>/model, record
    the decision with the stage hashes and the model's hash; returns the record. A round that
    is already closed is returned as recorded."""
    events = read_events(cfg)
    for row in rounds_table(events):
        if row["round"] == round_plan.number and row["decision"] is not None:
            return row
    promote, value, baseline, reason = gate(cfg, events)
    model = stage_folder(cfg, "train") / "model"
    model_hash = sha256_tree(model) if model.is_dir() else None
    if promote:
        with atomic_dir(model_folder(cfg, round_plan.number)) as tmp:
            for src in sorted(model.rglob("*")):
                if src.is_file():
                    link_or_copy(src, tmp / src.relative_to(model))
    record = {
        "event": "promoted" if promote else "rejected",
        "round": round_plan.number,
        "metric": cfg.rounds.promote.metric if cfg.rounds else None,
        "value": value,
        "baseline": baseline,
        "reason": reason,
        "model_hash": model_hash,
        "stage_hashes": {p.name: p.stage_hash for p in plan(cfg)},
    }
    _append(cfg, record)
    return next(r for r in rounds_table(read_events(cfg)) if r["round"] == round_plan.number)


def promote_by_hand(cfg: PipelineConfig, number: int) -> dict:
    """Make round `number` (a promoted round whose model is kept) the incumbent."""
    rows = {r["round"]: r for r in rounds_table(read_events(cfg))}
    row = rows.get(number)
    if row is None:
        valid = ", ".join(str(n) for n in rows) or "none yet"
        raise AlignError(f"--promote {number}: no such round; rounds: {valid}")
    if row["decision"] != "promoted" or not (model_folder(cfg, number) / "config.json").is_file():
        raise AlignError(
            f"--promote {number}: round {number} was {row['decision'] or 'not finished'}; only a "
            "promoted round's model is kept (pick a promoted round)"
        )
    _append(cfg, {"event": "incumbent", "round": number, "reason": "promoted by hand"})
    return row


def round_display(row: dict) -> dict[str, Any]:
    """A round as a table row of plain values (the CLI table and the Prefect artifact)."""
    window = row.get("window")
    hashes = row.get("stage_hashes") or {}
    return {
        "round": row["round"],
        "parent": "base" if row.get("parent") is None else row["parent"],
        "data": f"window {window['index']} x {window['size']}" if window else "all",
        "train hash": (hashes.get("train") or "")[:12] or "-",
        "model hash": (row.get("model_hash") or "")[:12] or "-",
        "metric": row.get("metric") or "-",
        "value": row.get("value"),
        "incumbent value": row.get("baseline"),
        "decision": (row.get("decision") or "running") + (" *" if row.get("incumbent") else ""),
        "reason": row.get("reason") or "",
    }


def prepare_run(
    pipeline: str, overrides: list[str], smoke: bool
) -> tuple[PipelineConfig, list[str], RoundPlan | None]:
    """The config a run executes: with `rounds`, this run's round added to the overrides
    (`begin_round`); returns (config, overrides, round plan or None)."""
    cfg = load_pipeline(pipeline, overrides, smoke)
    if cfg.rounds is None:
        return cfg, overrides, None
    round_plan = begin_round(cfg)
    overrides = [*overrides, *round_plan.overrides]
    return load_pipeline(pipeline, overrides, smoke), overrides, round_plan
