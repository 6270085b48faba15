"""P6: the whole quickstart again with every stage cached, through the Prefect flow (what a
second `make run` does). Target: <= 15 s wall clock. Runs the pipeline first if needed.

    python -m bench.p6_rerun [--pipeline pipelines/quickstart.yaml] [--smoke]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from bench.common import banner


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pipeline", default="pipelines/quickstart.yaml")
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args()
    banner(f"P6 no-change re-run of {args.pipeline}{' --smoke' if args.smoke else ''}")
    cmd = [sys.executable, "-m", "flows.cli", "run", args.pipeline, *(["--smoke"] * args.smoke)]
    plan = subprocess.run([*cmd[:3], "plan", *cmd[4:]], capture_output=True, text=True)
    if "to run" in plan.stdout:
        print("some stages are not cached yet: running the pipeline once first", flush=True)
        subprocess.run(cmd, check=True, capture_output=True)
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode or " ran in " in proc.stdout + proc.stderr:
        print("the re-run failed or re-ran a stage", file=sys.stderr)
        return 1
    print(
        f"P6 cached re-run {seconds:.1f} s (target <= 15 s) {'met' if seconds <= 15 else 'NOT met'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
