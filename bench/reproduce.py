"""Re-run every pipeline whose figures README.md and BENCHMARKS.md record (bench/recorded.yaml)
and compare the figures it prints now with the recorded ones, to the recorded precision (3
decimals).

    python -m bench.reproduce [--only quickstart] [--set KEY=VALUE ...] [--smoke]

Runs `align run PIPELINE --no-prefect` (stages already current are reused, so a second call is
quick), reads runs/<name>/evaluate/metrics.json, prints recorded vs measured, exits 1 when any
figure differs. bf16 kernels round differently from one CPU to another: a figure recorded on
another machine may differ in the last digits; the table says by how much.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

from align.config import load_pipeline
from align.pipeline import stage_folder
from bench.common import banner

RECORDED = Path(__file__).with_name("recorded.yaml")


def recorded() -> list[dict]:
    """The entries of bench/recorded.yaml: {pipeline, metrics: {key: value}}."""
    return yaml.safe_load(RECORDED.read_text())


def measure(pipeline: str, overrides: list[str], smoke: bool) -> dict:
    """Run the pipeline (cached stages reused) and return its evaluate metrics."""
    sets = [a for o in overrides for a in ("--set", o)]
    cmd = [sys.executable, "-m", "flows.cli", "run", pipeline, "--no-prefect", *sets]
    subprocess.run([*cmd, *(["--smoke"] * smoke)], check=True)
    cfg = load_pipeline(pipeline, overrides, smoke)
    return json.loads((stage_folder(cfg, "evaluate") / "metrics.json").read_text())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", action="append", default=[], help="a pipeline name (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument(
        "--smoke", action="store_true", help="the machinery only, on the tiny model"
    )
    args = parser.parse_args()
    banner("recorded figures, re-measured")
    rows, differ = [], 0
    for entry in recorded():
        name = Path(entry["pipeline"]).stem
        if args.only and name not in args.only:
            continue
        got = measure(entry["pipeline"], args.overrides, args.smoke)
        for key, want in entry["metrics"].items():
            value = got.get(key)
            same = isinstance(value, float | int) and round(value, 3) == want
            differ += not same
            rows.append((name, key, want, value, same))
    print(f"{'pipeline':<24} {'metric':<30} {'recorded':>9} {'measured':>9}")
    for name, key, want, value, same in rows:
        shown = f"{value:.3f}" if isinstance(value, float | int) else "missing"
        print(f"{name:<24} {key:<30} {want:>9.3f} {shown:>9} {'' if same else '  DIFFERS'}")
    print(f"{len(rows) - differ} of {len(rows)} figures reproduce")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(main())
