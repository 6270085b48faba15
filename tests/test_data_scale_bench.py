"""`python -m bench.data_scale` end to end at toy sizes: every phase runs the real stage code in
its own process on the sizes asked for, and the report compares the two sizes phase by phase."""

from __future__ import annotations

import re
import subprocess
import sys

from tests.conftest import REPO

SIZES = ["--small", "40", "--large", "400", "--annotate-max", "80"]
VERDICT = r"^(PASS|FAIL): worst peak-RSS ratio [\d.]+ \(target <= 1.5\)$"


def test_the_data_scale_bench_runs_every_phase_at_both_sizes() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench.data_scale", *SIZES],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    rows = {
        m["phase"]: (int(m["small"].replace(",", "")), int(m["large"].replace(",", "")))
        for m in re.finditer(
            r"^(?P<phase>read|annotate|train)\s+(?P<small>[\d,]+) ->\s+(?P<large>[\d,]+) records"
            r"\s+peak\s+[\d.]+ ->\s+[\d.]+ MiB\s+ratio [\d.]+",
            done.stdout,
            re.M,
        )
    }
    assert rows == {"read": (40, 400), "annotate": (40, 80), "train": (40, 400)}
    assert re.search(VERDICT, done.stdout, re.M)
