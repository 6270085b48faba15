"""An API key reaches the judge server and nothing else.

A judged pipeline runs through `align run` with Prefect (ephemeral, PREFECT_HOME and the model
and judgment caches inside the project) against a loopback OpenAI-compatible server; its key
is a sentinel held in an environment variable. Afterwards every file under the project (runs/,
.prefect/ with its SQLite database and results, .cache/, logs) is scanned: the sentinel
appears in none of them, nor in the command's output.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.bad_inputs.harness import (
    cli_env,
    files_containing,
    make_judged_project,
    openai_backend,
    run_align,
)
from tests.test_judging_http import ENV, KEY, FaultyServer, alpaca_and_rating_reply

pytestmark = pytest.mark.integration


def test_judged_pipeline_under_prefect_leaks_no_key(tmp_path: Path) -> None:
    project = make_judged_project(tmp_path / "p")
    server = FaultyServer(fault_rate=0.3, reply=alpaca_and_rating_reply)  # retries log too
    try:
        env = cli_env(project, **{ENV: KEY, "ALIGN_CACHE": str(project / ".cache")})
        env["PREFECT_LOGGING_LEVEL"] = "DEBUG"  # the most a log could ever hold
        res = run_align(
            project,
            *("run", "pipeline.yaml", "--smoke", "--set"),
            openai_backend(server.url, ENV, max_retries=8),
            env=env,
            timeout=600,
        )
    finally:
        server.close()
    assert res.returncode == 0, res.stderr[-3000:]
    assert sum(server.attempts.values()) > 0 and server.bad_auth == 0  # the key was used
    assert sum(server.injected[f] for f in server.injected if f != "none") > 0

    scores = json.loads((project / "runs/judged-smoke/judge/scores.json").read_text())
    assert scores["judge/failed"] == 0
    assert list((project / ".prefect").rglob("*.db")), "Prefect's database is not in the scan"
    scanned = [p for p in project.rglob("*") if p.is_file()]
    assert len(scanned) > 50
    assert files_containing(project, KEY.encode()) == []
    assert KEY not in res.stdout + res.stderr
