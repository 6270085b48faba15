"""Reliability on the Prefect side.

- A judged pipeline runs through a real deployment (`python -m flows.serve start`: a server and
  a process worker holding the API key in its environment; `prefect deployment run`) against a
  loopback judge that injects faults and writes encodings of the key into its verdicts. After
  the server stops, every file of the project is scanned for the key in any of its forms: the
  Prefect SQLite database, its logs and results, the run folder, the caches.
- Two `align run` (through Prefect, not --no-prefect) of the same pipeline start together from
  nothing, with the same Prefect home: one trains, the other waits at the stage lock and finds
  the output current; both succeed and the outputs are whole.
"""

from __future__ import annotations

import base64
import json
import shutil
import socket
import subprocess
from pathlib import Path

import pytest
import yaml

from flows.deployments import discover, render
from tests.bad_inputs.harness import (
    align_cmd,
    cli_env,
    files_containing,
    make_judged_project,
    make_project,
    openai_backend,
    read_jsonl,
)
from tests.bad_inputs.hostile import leaked_forms
from tests.test_judging_http import ENV, KEY, FaultyServer, alpaca_and_rating_reply
from tests.test_ops_prefect import _run_deployment, _serve

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def echoing_reply(user: str, body: dict) -> tuple[str, dict | None]:
    """The judge's verdicts, with the key written into the rating explanations in three
    encodings (JSON-escaped, base64 of `user:key`, a prefix): what a compromised or buggy
    proxy might send back. None of it may be stored."""
    text, logprobs = alpaca_and_rating_reply(user, body)
    if "Rating:" in text:
        basic = base64.b64encode(f"user:{KEY}".encode()).decode()
        echo = f"(auth {json.dumps(KEY)[1:-1]} / Basic {basic} / {KEY[:16]}...)"
        text = text.replace("Fair answer.", f"Fair answer. {echo}")
    return text, logprobs


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_judged_run_through_a_deployment_leaks_no_key(tmp_path: Path) -> None:
    project = make_judged_project(tmp_path / "p")
    (project / "pipelines").mkdir()
    shutil.move(project / "pipeline.yaml", project / "pipelines" / "judged.yaml")
    (project / "prefect.yaml").write_text(render(discover(project)))
    server = FaultyServer(fault_rate=0.3, reply=echoing_reply)
    env = cli_env(project, **{ENV: KEY, "ALIGN_CACHE": str(project / ".cache")})
    env.update(PREFECT_WORKER_QUERY_SECONDS="1", PREFECT_LOGGING_LEVEL="DEBUG")
    started = _serve(project, "start", "--port", str(_free_port()), "--no-ui", env=env)
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        api_url = json.loads((project / ".prefect/serve/state.json").read_text())["api_url"]
        backend = openai_backend(server.url, ENV, max_retries=8)

        class Served:  # what tests/test_ops_prefect.py's helper reads
            def __init__(self) -> None:
                self.project = project

            def env(self) -> dict[str, str]:
                return {**env, "PREFECT_API_URL": api_url}

        run_id, out, seconds = _run_deployment(
            Served(), "align/judged", "smoke=true", f"overrides={json.dumps([backend])}"
        )
    finally:
        stopped = _serve(project, "stop", env=env)
        server.close()
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert "Completed" in out, out[-3000:]
    assert server.injected["none"] > 0 and sum(server.injected.values()) > server.injected["none"]
    scores = json.loads((project / "runs/judged-smoke/judge/scores.json").read_text())
    assert scores["judge/failed"] == 0
    assert list((project / ".prefect").rglob("*.db")), "Prefect's database is not in the scan"
    assert len([p for p in project.rglob("*") if p.is_file()]) > 50
    for form in leaked_forms(KEY):
        assert files_containing(project, form.encode()) == [], form
        assert form not in out + started.stdout + started.stderr
    print(f"judged run through the deployment: {seconds:.1f}s, flow run {run_id}")


def test_same_pipeline_twice_at_once_through_prefect(tmp_path: Path) -> None:
    project = make_project(tmp_path / "p")
    env = cli_env(project, ALIGN_CACHE=str(project / ".cache"))  # real work: an empty cache too
    procs = [
        subprocess.Popen(
            align_cmd("run", "pipeline.yaml", "--smoke"),
            cwd=project,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outs, strict=True):
        assert proc.returncode == 0, (out + err)[-3000:]
    runs = project / "runs" / "corpus-smoke"
    done = {p.parent.name for p in runs.glob("*/manifest.json")}
    assert done == {"prepare-model", "annotate", "train"}
    assert [r["step"] for r in read_jsonl(runs / "train" / "log.jsonl")] == [1, 2]
    manifest = json.loads((runs / "train" / "manifest.json").read_text())
    assert manifest["summary"]["steps"] == 2
    assert not [p for p in runs.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]
    # each run prints "train: done in ..." or "train: up to date": training ran once
    everything = "".join(o + e for o, e in outs)
    assert everything.count("train: done in") == 1, everything[-5000:]
    assert everything.count("train: up to date") == 1, everything[-5000:]
    assert yaml.safe_load((project / "pipeline.yaml").read_text())["name"] == "corpus"
