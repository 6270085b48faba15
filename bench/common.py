"""Shared set-up for the benchmarks: models, fixed-length synthetic data, timing, peaks.

Every benchmark measures the things it compares side by side in one process run (this machine
is noisy) and prints ratios; absolute times are context only.
"""

from __future__ import annotations

import random
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from align.core.runtime import set_threads
from align.model.loading import load_tokenizer, resolve_model

WORDS = [
    " the",
    " cat",
    " dog",
    " sun",
    " tree",
    " house",
    " blue",
    " red",
    " run",
    " sky",
    " water",
    " stone",
    " book",
    " light",
    " city",
    " river",
    " green",
    " small",
    " old",
    " apples",
    " books",
    " coins",
    " eggs",
    " has",
    " and",
    " more",
    " many",
    " is",
]


def model_path(which: str) -> Path:
    """'embedded' (SmolLM2-135M-Instruct) or 'tiny', built into the cache if needed."""
    return Path(resolve_model(which))


def words_text(tokenizer, n_tokens: int, rng: random.Random) -> str:
    """Text of exactly `n_tokens` tokens (words that are one token in this tokenizer)."""
    words = [w for w in WORDS if len(tokenizer(w, add_special_tokens=False).input_ids) == 1]
    text = "".join(rng.choice(words) for _ in range(n_tokens))
    if len(tokenizer(text, add_special_tokens=False).input_ids) != n_tokens:
        raise RuntimeError("benchmark words do not tokenize to one token each")
    return text


def pair_rows(path: Path, n: int, prompt_len: int, response_len: int, seed: int = 0) -> list[dict]:
    """n (prompt, chosen, rejected) texts: prompt_len prompt tokens, response_len - 1 response
    tokens (+ the end-of-turn token both trainers append = response_len)."""
    tok, rng = load_tokenizer(path), random.Random(seed)
    return [
        {
            "prompt": words_text(tok, prompt_len, rng),
            "chosen": words_text(tok, response_len - 1, rng),
            "rejected": words_text(tok, response_len - 1, rng),
        }
        for _ in range(n)
    ]


def run_times(fn: Callable[[], object], repeats: int, warmup: int = 1) -> list[float]:
    """Seconds of each of `repeats` calls of fn, after `warmup` untimed ones."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median seconds of `run_times`."""
    return statistics.median(run_times(fn, repeats, warmup))


def matmul_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 20) -> float:
    """This machine's matmul FLOP/s in `dtype` now: the best of `repeats` n x n matmuls (a peak
    is what the hardware can do; a median of a few would drop with any passing contention)."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    return 2 * n**3 / min(run_times(lambda: a @ b, repeats))


def threads() -> int:
    """Every core for torch (align's own `set_threads`); the count."""
    set_threads()
    return torch.get_num_threads()


def banner(title: str) -> None:
    print(f"# {title}")
    print(f"# {time.strftime('%Y-%m-%d %H:%M')} · torch {torch.__version__} · {threads()} threads")


def annotated_records(
    model_path: Path, cfg, responses: Callable[[int], list[str]], rewards: list[float], n: int
) -> list[dict]:
    """n arithmetic records ('What is i plus 3?') answered by `responses(i)` with `rewards`, and
    their reference log-probs under the model at `model_path` (on the CPU), as annotate writes
    them."""
    from align.model.loading import load_model, load_tokenizer
    from align.stages.annotate import _ref_logps

    recs = [
        {
            "id": f"r{i}",
            "prompt": [{"role": "user", "content": f"What is {i} plus 3?"}],
            "responses": responses(i),
            "rewards": list(rewards),
        }
        for i in range(n)
    ]
    model, tokenizer = load_model(model_path, device="cpu"), load_tokenizer(model_path)
    for rec, (lp, cnt) in zip(recs, _ref_logps(model, tokenizer, recs, cfg), strict=True):
        rec["ref_logps"], rec["n_tokens"] = lp, cnt
    return recs
