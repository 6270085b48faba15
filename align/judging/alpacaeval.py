"""AlpacaEval 2: model outputs, pairwise annotation against reference
outputs, win rate and the length-controlled win rate.

- Files: JSON lists of dicts with at least `instruction` (and `output` for outputs); `generator`
  and `dataset` are passed through; other keys are ignored. Model outputs are written as
  `{instruction, output, generator, dataset}` in the eval set's order.
- Order: per instruction, the two outputs are swapped when bit 0 of
  sha256(f"{seed}\\0{instruction}") is set; the verdict is un-swapped afterwards.
- Preference in [1, 2], 2 = the model (output_2) wins: soft from the judge's first-token
  log-probs when present, hard (1 or 2) otherwise; 0 would be a draw and counts as 1.5.
- win_rate = 100·mean(pref - 1); discrete_win_rate = 100·(n_wins + n_draws/2) / n_total;
  standard_error = 100·SEM(pref - 1); avg_length = mean characters of the model's outputs.
  Failed annotations are kept with their reason, excluded and counted.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from pathlib import Path
from typing import Any

from align.config.judge import AlpacaEvalConfig
from align.core.errors import AlignError
from align.core.io import atomic_write_json, is_local_file, sha256_text
from align.judging.lc_winrate import length_controlled_win_rate
from align.judging.policy import GenerateFn
from align.judging.prompts import ALPACAEVAL
from align.judging.report import Outcome
from align.llm.backend import Backend, ChatRequest
from align.llm.parsing import label_mass, single_label

log = logging.getLogger("align.judging.alpacaeval")
ANSWER_TOKENS = 1  # AlpacaEval 2's annotator reads one token...
TOP_LOGPROBS = 5  # ...and its top 5 alternatives


def parse_alpaca(
    text: str, top_logprobs: dict[str, float] | None
) -> tuple[float | None, str | None, str]:
    """AlpacaEval preference in [1, 2] of the output shown second (`M`) over the first (`m`):
    soft 2 - P(m) / (P(m) + P(M)) from first-token log-probs when either label is among them,
    else hard (1 or 2) from a reply that is just the label. Returns (pref, error, kind)."""
    p_m, p_big = label_mass(top_logprobs, "m"), label_mass(top_logprobs, "M")
    if p_m + p_big > 0:
        return 2 - p_m / (p_m + p_big), None, "soft"
    label = single_label(text, ("m", "M"))
    if label is None:
        return None, "reply is not the label m or M", "none"
    return (1.0 if label == "m" else 2.0), None, "hard"


def read_outputs(path: Path, need_output: bool) -> list[dict[str, Any]]:
    """A JSON list of dicts; errors name the file and the item."""
    path = Path(path)
    if not is_local_file(path):
        raise AlignError(f"{path}: no such file (AlpacaEval files are not shipped)")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise AlignError(f"{path}: not valid JSON ({exc})") from None
    if not isinstance(data, list):
        raise AlignError(f"{path}: expected a JSON list of {{instruction, output, ...}} objects")
    keys = ("instruction", "output") if need_output else ("instruction",)
    for i, item in enumerate(data):
        if not isinstance(item, dict):
            raise AlignError(f"{path}: item {i} is not an object")
        for key in keys:
            if not isinstance(item.get(key), str):
                raise AlignError(f"{path}: item {i}: '{key}' must be a string")
    return data


def read_difficulty(path: Path) -> tuple[dict[str, float], dict[int, float]]:
    """Per-instruction γ, keyed by instruction text or by position in the eval set.

    CSV with a header: value column `instruction_difficulty` (AlpacaEval's name) or
    `difficulty`; key column `instruction`, else the first column as a 0-based position.
    JSON: a list of {instruction, difficulty} or a {instruction: difficulty} mapping."""
    path = Path(path)
    if not is_local_file(path):
        raise AlignError(f"{path}: no such difficulty file")
    by_text: dict[str, float] = {}
    by_pos: dict[int, float] = {}
    try:
        if path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as f:
                rows = list(csv.DictReader(f))
            if not rows:
                raise ValueError("no rows")
            header = list(rows[0])
            value = next(k for k in ("instruction_difficulty", "difficulty") if k in header)
            for row in rows:
                if "instruction" in header:
                    by_text.setdefault(row["instruction"], float(row[value]))
                else:
                    by_pos.setdefault(int(float(row[header[0]])), float(row[value]))
        else:
            data = json.loads(path.read_text(encoding="utf-8"))
            items = (
                data.items()
                if isinstance(data, dict)
                else (
                    (d["instruction"], d.get("difficulty", d.get("instruction_difficulty")))
                    for d in data
                )
            )
            by_text = {str(k): float(v) for k, v in items}
    except (ValueError, KeyError, TypeError, StopIteration) as exc:
        raise AlignError(
            f"{path}: cannot read per-instruction difficulty ({type(exc).__name__}: {exc}); "
            "expected a CSV with instruction_difficulty (or difficulty) or a JSON list"
        ) from None
    return by_text, by_pos


def is_switched(instruction: str, seed: int) -> bool:
    return int(sha256_text(f"{seed}\0{instruction}")[:8], 16) & 1 == 1


def annotate(
    items: list[dict],
    outputs: list[str],
    references: list[dict],
    backend: Backend,
    names: tuple[str, str],
    seed: int,
    logprobs: bool,
) -> list[dict]:
    """One annotation per instruction; `names` = (model_id, judge_name)."""
    model_id, judge_name = names
    requests, switched = [], []
    for item, out, ref in zip(items, outputs, references, strict=True):
        swap = is_switched(item["instruction"], seed)
        first, second = (out, ref["output"]) if swap else (ref["output"], out)
        text = ALPACAEVAL.render(instruction=item["instruction"], first=first, second=second)
        requests.append(
            ChatRequest.chat(
                ALPACAEVAL.system,
                text,
                ALPACAEVAL.id,
                ANSWER_TOKENS,
                top_logprobs=TOP_LOGPROBS if logprobs else 0,
            )
        )
        switched.append(swap)
    rows = []
    for item, out, ref, swap, res in zip(
        items, outputs, references, switched, backend.complete(requests), strict=True
    ):
        pref, error, kind = (
            parse_alpaca(res.text, res.top_logprobs) if res.ok else (None, res.error, "none")
        )
        rows.append(
            {
                "instruction": item["instruction"],
                "output_1": ref["output"],
                "generator_1": ref.get("generator", "reference"),
                "dataset": item.get("dataset", ref.get("dataset")),
                "output_2": out,
                "generator_2": model_id,
                "annotator": judge_name,
                "preference": (3 - pref if swap else pref) if pref is not None else None,
                "preference_kind": kind,
                "is_switched": swap,
                "raw_completion": res.text,
                "error": error,
                "price_per_example": res.cost_usd,
                "time_per_example": res.seconds,
            }
        )
    return rows


def win_rate_metrics(rows: list[dict]) -> dict[str, float | int | None]:
    prefs = [1.5 if r["preference"] == 0 else r["preference"] for r in rows]
    q = [p - 1 for p in prefs if p is not None]
    n = len(q)
    wins = sum(x > 0.5 for x in q)
    base = sum(x < 0.5 for x in q)
    draws = n - wins - base
    mean = sum(q) / n if n else None
    sem = None
    if n > 1 and mean is not None:
        sem = 100 * math.sqrt(sum((x - mean) ** 2 for x in q) / (n - 1) / n)
    return {
        "alpacaeval/win_rate": 100 * mean if mean is not None else None,
        "alpacaeval/discrete_win_rate": 100 * (wins + 0.5 * draws) / n if n else None,
        "alpacaeval/standard_error": sem,
        "alpacaeval/n_wins": wins,
        "alpacaeval/n_wins_base": base,
        "alpacaeval/n_draws": draws,
        "alpacaeval/n_total": n,
        "alpacaeval/n_failed": len(rows) - n,
        "alpacaeval/avg_length": sum(len(r["output_2"]) for r in rows) / len(rows) if rows else 0,
    }


def _difficulties(cfg: AlpacaEvalConfig, items: list[dict]) -> list[float] | None:
    if not cfg.difficulty:
        return None
    by_text, by_pos = read_difficulty(Path(cfg.difficulty))
    out = []
    for i, item in enumerate(items):
        value = by_text.get(item["instruction"], by_pos.get(i))
        if value is None:
            raise AlignError(
                f"{cfg.difficulty}: no difficulty for instruction {i} "
                f"({item['instruction'][:40]!r}...)"
            )
        out.append(value)
    return out


def _outputs(
    items: list[dict], path: Path, generate_fn: GenerateFn, cfg: AlpacaEvalConfig
) -> list[str]:
    """Outputs from an earlier, interrupted run of the same stage when complete, else fresh."""
    if path.is_file():
        old = read_outputs(path, need_output=True)
        if [o["instruction"] for o in old] == [i["instruction"] for i in items]:
            log.info("alpacaeval: reusing outputs in %s", path)
            return [o["output"] for o in old]
    convs = [[{"role": "user", "content": i["instruction"]}] for i in items]
    texts = generate_fn(convs, [cfg.temperature] * len(items), cfg.max_new_tokens)
    if len(texts) != len(items):
        raise AlignError(f"generate_fn returned {len(texts)} texts for {len(items)} prompts")
    return list(texts)


NO_DIFFICULTY = (
    "no alpacaeval.difficulty file: the length-controlled win rate is reported as "
    "lc_win_rate_no_difficulty (a GLM without the instruction-difficulty term; it can differ "
    "from AlpacaEval's LC by several points); docs/judging.md says how to get the file"
)


def run_alpacaeval(
    cfg: AlpacaEvalConfig,
    backend: Backend,
    generate_fn: GenerateFn,
    out_dir: Path,
    model_id: str,
    judge_name: str,
    logprobs: bool,
) -> Outcome:
    """Generate, annotate and score; writes model_outputs.json, annotations.json and
    lc_glm.json (the fitted weights) under `out_dir`."""
    references = read_outputs(Path(cfg.reference_outputs), need_output=True)
    by_instruction = {r["instruction"]: r for r in references}
    items = read_outputs(Path(cfg.instructions), False) if cfg.instructions else references
    gammas = _difficulties(cfg, items)  # positions refer to the full eval set
    items = items[: cfg.limit]
    gammas = gammas[: cfg.limit] if gammas is not None else None
    missing = [i["instruction"] for i in items if i["instruction"] not in by_instruction]
    if missing:
        raise AlignError(
            f"{cfg.reference_outputs}: no reference output for {len(missing)} instruction(s), "
            f"e.g. {missing[0][:60]!r}"
        )
    refs = [by_instruction[i["instruction"]] for i in items]
    outputs = _outputs(items, out_dir / "model_outputs.json", generate_fn, cfg)
    atomic_write_json(
        out_dir / "model_outputs.json",
        [
            {
                "instruction": i["instruction"],
                "output": o,
                "generator": model_id,
                "dataset": i.get("dataset"),
            }
            for i, o in zip(items, outputs, strict=True)
        ],
    )
    rows = annotate(items, outputs, refs, backend, (model_id, judge_name), cfg.seed, logprobs)
    atomic_write_json(out_dir / "annotations.json", rows)
    metrics = win_rate_metrics(rows)
    lc = length_controlled_win_rate(
        [r["preference"] for r in rows],
        [len(r["output_2"]) for r in rows],
        [len(r["output_1"]) for r in rows],
        gammas,
    )
    # without the difficulty file the GLM is another model: its LC gets a name of its own
    name = "lc_win_rate" if gammas is not None else "lc_win_rate_no_difficulty"
    metrics[f"alpacaeval/{name}"] = lc.lc_win_rate if lc else None
    metrics[f"alpacaeval/{name.replace('win_rate', 'standard_error')}"] = (
        lc.lc_standard_error if lc else None
    )
    metrics["alpacaeval/lc_with_difficulty"] = int(gammas is not None)
    warnings = []
    if gammas is None:
        warnings.append(NO_DIFFICULTY)
        log.warning("alpacaeval: %s", NO_DIFFICULTY)
    if lc is not None:
        atomic_write_json(out_dir / "lc_glm.json", vars(lc))
        if lc.warning:
            log.warning("alpacaeval: %s", lc.warning)
            warnings.append(lc.warning)
    return Outcome(metrics, [r["error"] for r in rows if r["error"]], warnings)
