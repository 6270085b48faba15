"""How many MT-Bench answers get a rating from the quickstart's embedded judge (SmolLM2-135M),
with the parsed [[N]] (FastChat's rule) and with the expected rating from the judge's token
probabilities (`judge.mtbench.rating: expected`). The answers come from the embedded model.

    python -m bench.judge_ratings [--pipeline pipelines/quickstart.yaml]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from align.config import load_pipeline
from align.judging.mtbench import run_mtbench
from align.judging.policy import hf_generate_fn
from align.llm.open import open_backend
from align.model.loading import resolve_model
from bench.common import banner


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="pipelines/quickstart.yaml")
    args = parser.parse_args()
    cfg = load_pipeline(args.pipeline)
    assert cfg.judge is not None and cfg.judge.mtbench is not None, "the pipeline has no mtbench"
    banner(f"MT-Bench ratings from the {cfg.judge.backend.model} judge of {args.pipeline}")
    policy = hf_generate_fn(resolve_model(cfg.model.policy), cfg.model.dtype)
    with tempfile.TemporaryDirectory() as tmp:
        for mode in ("parsed", "expected"):
            mt = cfg.judge.mtbench.model_copy(update={"rating": mode})
            backend = open_backend(cfg.judge.backend, Path(tmp) / "cache")
            try:
                outcome = run_mtbench(
                    mt,
                    backend,
                    policy,
                    Path(tmp) / "mtbench",  # the second mode reuses the answers
                    cfg.model.policy,
                    cfg.judge.backend.model,
                    cfg.judge.backend.max_new_tokens,
                )
            finally:
                backend.cache.close()
            m = outcome.metrics
            rated = m["mtbench/n_judgments"] - m["mtbench/n_failed"]
            overall = m["mtbench/overall"]
            print(
                f"rating: {mode:8s} rated {rated}/{m['mtbench/n_judgments']} answers, "
                f"overall {'-' if overall is None else f'{overall:.2f}'}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
