"""Peak memory of the data path at two dataset sizes (issue: data at scale).

A synthetic K-wise JSON Lines file of N records goes through what a run does with it, each
phase in a fresh process that reports its own peak RSS:
  read      every record read, checked and normalised (`RecordStream`: check pass + one pass),
  annotate  the annotate stage: reference log-probs of a tiny random Llama, rewards from data,
            on the first min(N, --annotate-max) records (a reference forward per response
            makes 1M records hours of CPU),
  train     the train stage on N annotated records (written directly, with random reference
            log-probs): its examples file (every record tokenised) and 4 optimizer steps.
Prints peak RSS per phase for both sizes and the ratio large / small (target: <= 1.5).

    python -m bench.data_scale                      # 10k vs 1M records (annotate: 10k vs 100k)
    python -m bench.data_scale --small 2000 --large 20000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import banner

PHASES = ("read", "annotate", "train")
K = 4
TARGET = 1.5
REPO = Path(__file__).resolve().parents[1]


def write_records(path: Path, n: int, seed: int = 0) -> None:
    """N K-wise records of short arithmetic questions with K answers and 0/1 rewards."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for i in range(n):
            a, b = rng.randrange(100), rng.randrange(100)
            answers = [a + b + rng.choice((0, 0, 1, -1, 10)) for _ in range(K)]
            f.write(
                json.dumps(
                    {
                        "id": f"q{i}",
                        "prompt": f"What is {a} + {b}?",
                        "responses": [f"The answer is {x}." for x in answers],
                        "rewards": [float(x == a + b) for x in answers],
                    }
                )
                + "\n"
            )


def write_annotated(folder: Path, data: Path, shard_size: int = 256, seed: int = 0) -> None:
    """The records of `data` as the annotate stage writes them, with random reference log-probs
    and 6-token counts, `shard_size` records a shard."""
    from align.data.records import batched, shard_path, write_shard

    rng = random.Random(seed)
    with data.open() as f:
        rows = (json.loads(line) for line in f)
        for si, shard in enumerate(batched(rows, shard_size)):
            for rec in shard:
                rec["prompt"] = [{"role": "user", "content": rec["prompt"]}]
                rec["ref_logps"] = [-rng.uniform(2, 12) for _ in range(K)]
                rec["n_tokens"] = [6] * K
            write_shard(shard_path(folder, si), shard)


def config(data: Path, model: Path, name: str = "scale"):
    from align.config import validate_dict

    return validate_dict(
        {
            "name": name,
            "runs_dir": "runs",  # each phase runs in its work folder: outputs stay inside it
            "model": {"policy": str(model), "device": "cpu"},
            "data": {"train": {"path": str(data), "format": "kwise"}},
            "annotate": {"reward": {"from_data": True}, "batch_size": 256},
            "train": {
                "loss": {"name": "nca", "beta": 0.1},
                "max_steps": 4,
                "batch_size": 8,
                "learning_rate": 1e-5,
                "max_length": 64,
                "max_prompt_length": 32,
                "save_steps": 1000,
            },
        },
        "bench/data_scale",
    )


def run_phase(phase: str, work: Path) -> dict:
    """One phase in this process (in `work`); its seconds and this process's peak RSS in MiB."""
    from align.core.runtime import prepare_process

    os.chdir(work)
    prepare_process()
    model = work / "model"
    started = time.perf_counter()
    if phase == "read":
        from align.data.datasets import RecordStream

        cfg = config(work / "data.jsonl", model)
        count = sum(1 for _ in RecordStream(cfg.data.train, None, "data.train"))
    elif phase == "annotate":
        from align.stages.annotate import annotate_stage

        cfg = config(work / "annotate.jsonl", model)
        upstream = {"prepare-model": {"summary": {"reference": {"path": str(model)}}}}
        count = annotate_stage(cfg, work / "runs/scale/annotate", upstream, "bench")[0]["records"]
    else:
        from align.stages.train import train_offline

        cfg = config(work / "data.jsonl", model, name="scale-train")
        count = train_offline(cfg, model, work / "runs/scale-train/train", "bench")["examples"]
    return {
        "records": count,
        "seconds": round(time.perf_counter() - started, 1),
        "peak_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def measure(n: int, annotate_max: int, root: Path) -> dict[str, dict]:
    """Every phase on N records, each in a fresh `python -m bench.data_scale --phase` process."""
    from align.model.tiny import save_tiny_model

    work = root / f"n{n}"
    work.mkdir()
    write_records(work / "data.jsonl", n)
    write_records(work / "annotate.jsonl", min(n, annotate_max))
    write_annotated(work / "runs/scale-train/annotate", work / "data.jsonl")
    save_tiny_model(work / "model")
    out = {}
    for phase in PHASES:
        done = subprocess.run(
            [sys.executable, "-m", "bench.data_scale", "--phase", phase, "--work", str(work)],
            capture_output=True,
            text=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        if done.returncode:
            sys.exit(f"bench.data_scale: phase {phase} on {n} records failed:\n{done.stderr}")
        out[phase] = json.loads(done.stdout.strip().splitlines()[-1])
        print(f"  {n:>9,} records  {phase:<9} {out[phase]}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=1_000_000)
    parser.add_argument("--annotate-max", type=int, default=100_000)
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        print(json.dumps(run_phase(args.phase, args.work)))
        return
    banner(f"data path peak RSS: {args.small:,} vs {args.large:,} K-wise records (K={K})")
    with tempfile.TemporaryDirectory(prefix="align-scale-") as tmp:
        small = measure(args.small, args.annotate_max, Path(tmp))
        large = measure(args.large, args.annotate_max, Path(tmp))
    worst = 0.0
    for phase in PHASES:
        ratio = large[phase]["peak_mib"] / small[phase]["peak_mib"]
        worst = max(worst, ratio)
        print(
            f"{phase:<9} {small[phase]['records']:>9,} -> {large[phase]['records']:>9,} records  "
            f"peak {small[phase]['peak_mib']:>7.1f} -> {large[phase]['peak_mib']:>7.1f} MiB  "
            f"ratio {ratio:.2f}  "
            f"({small[phase]['seconds']} s -> {large[phase]['seconds']} s)"
        )
    verdict = "PASS" if worst <= TARGET else "FAIL"
    print(f"{verdict}: worst peak-RSS ratio {worst:.2f} (target <= {TARGET})")


if __name__ == "__main__":
    main()
