"""Reward sources for annotate and evaluate: Python functions and HF reward models.

A reward function has TRL's signature: `fn(prompts, completions, **columns) -> list[float]`,
where `prompts` are message lists, `completions` strings and `columns` the dataset's other
fields (e.g. `answer`), each a list aligned with `completions`.
"""

from __future__ import annotations

import importlib
import math
import numbers
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from align.config import RewardConfig
from align.core.errors import AlignError
from align.core.io import sha256_file
from align.core.usercode import first_line, user_code

RewardFn = Callable[..., list[float]]


def _import(module_name: str):
    if os.getcwd() not in sys.path:  # `align` is a console script: its sys.path[0] is .venv/bin
        sys.path.append(os.getcwd())
    try:
        with user_code(f"reward.function: importing {module_name!r}", "fix the module"):
            return importlib.import_module(module_name)
    except AlignError as exc:
        cause = exc.__context__
        missing = getattr(cause, "name", None) if isinstance(cause, ImportError) else None
        if missing and (module_name == missing or module_name.startswith(f"{missing}.")):
            raise AlignError(
                f"reward.function: cannot import {module_name!r} ({cause}); check the module "
                "name and that it is importable from the project folder"
            ) from None
        raise


def numbers_returned(value: Any, where: str, what: str) -> list:
    """What a user's function returned as a plain list: a list or tuple, or a 1-D numpy array or
    torch tensor; anything else (a dict, whose keys would pass for scores, a string, a set, a
    generator, a scalar) is refused."""
    if isinstance(value, torch.Tensor) or type(value).__module__ == "numpy":
        if getattr(value, "ndim", None) == 1:
            return value.tolist()
    elif isinstance(value, list | tuple):
        return list(value)
    raise AlignError(
        f"{where}: returned a {type(value).__name__}; it must return a list of {what}, one per "
        "item, in order"
    )


def checked_numbers(
    values: list,
    labels: list[str],
    where: str,
    count_error: str,
    valid: Callable[[float], bool],
    rule: str,
) -> list[float]:
    """What a user's function returned, as floats: one per label (else `count_error`), each a
    real number (not a bool) for which `valid` holds (else "where: label got value; rule")."""
    if len(values) != len(labels):
        raise AlignError(count_error)
    for label, value in zip(labels, values, strict=True):
        real = isinstance(value, numbers.Real) and not _is_bool(value)
        if not real or not valid(value):
            raise AlignError(f"{where}: {label} got {value!r}; {rule}")
    return [float(v) for v in values]


def _is_bool(value: Any) -> bool:
    return isinstance(value, bool) or type(value).__name__ in ("bool_", "bool")


def load_function(spec: str) -> RewardFn:
    module_name, _, attr = spec.partition(":")
    fn = getattr(_import(module_name), attr, None)
    if not callable(fn):
        raise AlignError(f"reward.function: {module_name!r} has no function {attr!r}")
    return fn


def reward_fingerprint(cfg: RewardConfig) -> str:
    """What identifies the reward for caching: the function's source file hash, the judge and
    its template, or the model id."""
    if cfg.judge:
        from align.llm.backend import judge_fingerprint

        return f"judge:{judge_fingerprint(cfg.judge.backend)}:{cfg.judge.template}"
    if cfg.function:
        module = _import(cfg.function.partition(":")[0])
        return f"{cfg.function}@{sha256_file(Path(module.__file__))[:16]}"
    return cfg.model or "from_data"


class RewardModel:
    """An HF sequence-classification model scoring the chat-formatted (prompt, response), on
    `device` (its inputs follow it)."""

    def __init__(self, source: str, device: torch.device | str = "cpu"):
        from transformers import AutoModelForSequenceClassification

        from align.model.loading import load_tokenizer, resolve_model

        path = resolve_model(source)
        self.tokenizer = load_tokenizer(path)
        self.tokenizer.padding_side = "right"
        self.model = (
            AutoModelForSequenceClassification.from_pretrained(
                path, use_safetensors=True, trust_remote_code=False
            )
            .to(device)
            .eval()
        )

    @torch.no_grad()
    def __call__(
        self, prompts: list[list[dict]], completions: list[str], batch_size: int
    ) -> list[float]:
        texts = [
            self.tokenizer.apply_chat_template(
                [*p, {"role": "assistant", "content": c}], tokenize=False
            )
            for p, c in zip(prompts, completions, strict=True)
        ]
        scores: list[float] = []
        for i in range(0, len(texts), batch_size):
            enc = self.tokenizer(
                texts[i : i + batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=False,
            ).to(self.model.device)
            scores.extend(self.model(**enc).logits[:, 0].float().tolist())
        return scores


class Scorer:
    """Scores (prompt, completion) pairs with the configured reward; checks every value.

    `field` names the YAML section in errors (e.g. 'annotate.reward'); a reward model or a
    local judge runs on `device`."""

    def __init__(
        self, cfg: RewardConfig, field: str = "reward", *, device: torch.device | str = "cpu"
    ):
        self.field = field
        if cfg.from_data:
            raise AlignError("reward.from_data cannot score new responses; set function or model")
        self.cfg = cfg
        self.fn = load_function(cfg.function) if cfg.function else None
        self.rm = RewardModel(cfg.model, device) if cfg.model else None
        self.judge = None
        if cfg.judge:
            from align.model.loading import cache_root
            from align.rewards.judge import RewardJudge

            self.judge = RewardJudge(cfg.judge, cache_root() / "judgments", device=device)

    def __call__(
        self,
        prompts: list[list[dict]],
        completions: list[str],
        columns: dict[str, list],
        labels: list[str] | None = None,
    ) -> list[float]:
        """One finite float per completion; `labels` name the completions in errors
        (e.g. "record 'q1' response 2"), else their position."""
        name = self.cfg.function or self.cfg.model
        where = f"{self.field}: {name}" if name else f"{self.field}.judge"
        if self.cfg.judge and self.cfg.judge.backend.base_url:
            where += f" ({self.cfg.judge.backend.base_url})"
        fix = f"fix the reward function (it got {len(completions)} completions)"
        if self.fn is not None:
            with user_code(where, fix):
                scores = self.fn(prompts, completions, **columns)
            scores = numbers_returned(scores, where, "floats")
        else:
            try:
                if self.judge is not None:
                    scores = self.judge.rewards(prompts, completions)
                else:
                    scores = self.rm(prompts, completions, self.cfg.batch_size)
            except AlignError as exc:
                raise AlignError(f"{where}: {exc}") from None
            except Exception as exc:  # a judge or model failure: one line, not a traceback
                raise AlignError(
                    f"{where} raised {type(exc).__name__}: {first_line(exc)}"
                ) from None
        return checked_numbers(
            scores,
            labels or [f"completion {i}" for i in range(len(completions))],
            where,
            f"{where}: returned {len(scores)} scores for {len(completions)} completions; "
            "it must return one float per completion, in order",
            math.isfinite,
            "rewards must be finite numbers, fix the reward",
        )
