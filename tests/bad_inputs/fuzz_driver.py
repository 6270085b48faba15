"""Run many `align validate` commands in one process, for tests/test_fuzz.py.

Usage: python -m tests.bad_inputs.fuzz_driver CASES.jsonl RESULTS.jsonl PROJECT
Each case is {"pipeline": text, "sets": [...]}; the driver writes it to PROJECT/pipeline.yaml
and calls the CLI's `main` as `align validate pipeline.yaml --set ...` would, under a per-case
alarm. Each result line: {"i", "code", "stderr", "escaped"} where `escaped` names an exception
that left `main` (what a user would see as a traceback) or the alarm (a hang). The test sets the
memory cap (RLIMIT_AS) before this starts.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import signal
import sys
from pathlib import Path

CASE_SECONDS = 10


class Hang(BaseException):
    pass


def _alarm(signum: int, frame: object) -> None:
    raise Hang


def main() -> None:
    cases, results, project = (Path(a).resolve() for a in sys.argv[1:4])
    os.chdir(project)
    from flows.cli import main as align_main

    signal.signal(signal.SIGALRM, _alarm)
    with open(results, "w") as out:
        for i, line in enumerate(cases.read_text().splitlines()):
            case = json.loads(line)
            Path("pipeline.yaml").write_text(case["pipeline"], encoding="utf-8", errors="replace")
            argv = ["validate", "pipeline.yaml", *[a for s in case["sets"] for a in ("--set", s)]]
            err, escaped, code = io.StringIO(), None, None
            signal.alarm(CASE_SECONDS)
            try:
                with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                    code = align_main(argv)
            except SystemExit as exc:  # argparse refusing the arguments
                code = exc.code
            except Hang:
                escaped = f"no answer within {CASE_SECONDS}s"
            except BaseException as exc:
                escaped = f"{type(exc).__name__}: {str(exc)[:300]}"
            finally:
                signal.alarm(0)
            row = {"i": i, "code": code, "stderr": err.getvalue()[-100_000:], "escaped": escaped}
            out.write(json.dumps(row) + "\n")
            out.flush()


if __name__ == "__main__":
    main()
