"""What a protocol hands back, and the `## Judge` section of the run report."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from align.config.judge import BackendConfig

Metrics = dict[str, float | int | None]
SMOKE_JUDGES = ("embedded", "tiny")


@dataclass
class Outcome:
    metrics: Metrics
    errors: list[str] = field(default_factory=list)  # reason of every failed judgment
    warnings: list[str] = field(default_factory=list)


def _fmt(value: float | int | None, digits: int = 2) -> str:
    if value is None:
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _judge_line(cfg: BackendConfig) -> str:
    if cfg.kind == "openai":
        return f"Judge: `{cfg.model}` at {cfg.base_url} (OpenAI-compatible)."
    line = f"Judge: local HF model `{cfg.model}` ({cfg.dtype}, greedy)."
    if cfg.model in SMOKE_JUDGES:
        line += (
            " **Smoke-level judge**: a model this small exercises the protocol but its verdicts "
            "carry little signal; point `judge.backend` at a strong model for real numbers."
        )
    return line


def _mtbench(m: Metrics) -> list[str]:
    if "mtbench/overall" in m:
        lines = [
            "### MT-Bench (single-answer grading, 1–10)",
            "",
            "| turn 1 | turn 2 | overall | judgments | failed | reference missing |",
            "|---|---|---|---|---|---|",
            f"| {_fmt(m['mtbench/turn1'])} | {_fmt(m['mtbench/turn2'])} | "
            f"{_fmt(m['mtbench/overall'])} | {m['mtbench/n_judgments']} | "
            f"{m['mtbench/n_failed']} | {m['mtbench/n_reference_missing']} |",
            "",
        ]
        cats = sorted(k for k in m if k.startswith("mtbench/category/"))
        if cats:
            lines += ["| category | score |", "|---|---|"]
            lines += [f"| {k.rsplit('/', 1)[1]} | {_fmt(m[k])} |" for k in cats]
            lines.append("")
        return lines
    return [
        "### MT-Bench (pairwise vs baseline, both orders)",
        "",
        "| win rate | loss rate | adjusted win rate | wins | losses | ties | failed |",
        "|---|---|---|---|---|---|---|",
        f"| {_fmt(m['mtbench/win_rate'], 3)} | {_fmt(m['mtbench/loss_rate'], 3)} | "
        f"{_fmt(m['mtbench/win_rate_adjusted'], 3)} | {m['mtbench/n_wins']} | "
        f"{m['mtbench/n_losses']} | {m['mtbench/n_ties']} | {m['mtbench/n_failed']} |",
        "",
    ]


def _alpacaeval(m: Metrics) -> list[str]:
    with_gamma = m["alpacaeval/lc_with_difficulty"]
    lc_note = "" if with_gamma else " without the difficulty file (GLM without γ)"
    lc_key = "alpacaeval/lc_win_rate" if with_gamma else "alpacaeval/lc_win_rate_no_difficulty"
    lc_head = "LC win rate" if with_gamma else "LC win rate (no difficulty)"
    return [
        "### AlpacaEval 2",
        "",
        f"| win rate | {lc_head} | SE | wins | base wins | draws | total | failed | avg length |",
        "|---|---|---|---|---|---|---|---|---|",
        f"| {_fmt(m['alpacaeval/win_rate'])} | {_fmt(m[lc_key])} | "
        f"{_fmt(m['alpacaeval/standard_error'])} | {m['alpacaeval/n_wins']} | "
        f"{m['alpacaeval/n_wins_base']} | {m['alpacaeval/n_draws']} | "
        f"{m['alpacaeval/n_total']} | {m['alpacaeval/n_failed']} | "
        f"{_fmt(m['alpacaeval/avg_length'], 0)} |",
        "",
        f"LC win rate{lc_note}: the GLM's prediction with the length difference set to 0.",
        "",
    ]


def render_section(cfg: BackendConfig, model_id: str, outcome: Outcome) -> str:
    m = outcome.metrics
    lines = ["## Judge", "", f"Model judged: `{model_id}`. {_judge_line(cfg)}", ""]
    if any(k.startswith("mtbench/") for k in m):
        lines += _mtbench(m)
    if any(k.startswith("alpacaeval/") for k in m):
        lines += _alpacaeval(m)
    cost = m.get("judge/cost_usd")
    lines.append(
        f"Judge calls: {_fmt(m.get('judge/cache_misses'))} sent, "
        f"{_fmt(m.get('judge/cache_hits'))} from cache, {_fmt(m.get('judge/failed'))} failed "
        f"judgments; tokens in/out {_fmt(m.get('judge/input_tokens'))}/"
        f"{_fmt(m.get('judge/output_tokens'))}" + (f"; cost ${cost:.4f}" if cost else "") + "."
    )
    if outcome.errors:
        lines += ["", "Most frequent failure reasons:", ""]
        lines += [f"- {n} × {reason[:160]}" for reason, n in Counter(outcome.errors).most_common(3)]
    if outcome.warnings:
        lines += ["", *[f"> **Warning:** {w}" for w in outcome.warnings]]
    return "\n".join(lines) + "\n"
