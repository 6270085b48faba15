"""Operations with real Prefect: prefect.yaml agrees with pipelines/, and `python -m flows.serve`
(what `make serve` runs) starts a server and a process worker on loopback in a throw-away
project, deploys every pipeline, runs `align/quickstart` in smoke mode through
`prefect deployment run`, turns a CPU run of `align/nca-7b` into a fast one-line failure, and
lets a pipeline's cron schedule create runs. Everything is read back through the Prefect client.
"""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC
from pathlib import Path

import pytest
import yaml

import flows  # noqa: F401  (project-local PREFECT_HOME and telemetry off before Prefect loads)
from align.core.errors import AlignError
from align.data.quickstart import write_quickstart_data
from flows.deployments import ENTRYPOINT, WORK_POOL, discover, read_schedule, render
from flows.serve import alive
from tests.conftest import REPO, venv_env

pytestmark = pytest.mark.integration

PREFECT = str(REPO / ".venv" / "bin" / "prefect")
NIGHTLY_CRON = "0 2 * * *"


def test_prefect_yaml_has_one_deployment_per_pipeline_and_nothing_else() -> None:
    spec = yaml.safe_load((REPO / "prefect.yaml").read_text())
    pipelines = {
        yaml.safe_load(p.read_text())["name"]: p.relative_to(REPO).as_posix()
        for p in (REPO / "pipelines").glob("*.yaml")
    }
    deployed = {d["name"]: d for d in spec["deployments"]}
    hint = "prefect.yaml disagrees with pipelines/: run `python -m flows.deployments`"
    assert set(deployed) == set(pipelines), hint
    for name, d in deployed.items():
        assert d["parameters"] == {
            "pipeline": pipelines[name],
            "overrides": [],
            "smoke": False,
            "record_dvc": True,
        }
        assert d["entrypoint"] == ENTRYPOINT
        assert d["work_pool"]["name"] == WORK_POOL
    steps = [next(iter(step)) for step in spec["pull"]]
    assert steps == ["prefect.deployments.steps.set_working_directory"]
    assert not spec.get("build") and not spec.get("push")
    # Byte for byte what the generator writes: `python -m flows.deployments --check` passes.
    assert (REPO / "prefect.yaml").read_text() == render(discover(REPO)), hint


def test_schedule_key_becomes_a_cron_schedule(tmp_path: Path) -> None:
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "pipelines/a.yaml").write_text(f'name: a\nschedule: {{cron: "{NIGHTLY_CRON}"}}\n')
    (tmp_path / "pipelines/b.yaml").write_text("name: b\n")
    spec = yaml.safe_load(render(discover(tmp_path)))
    by_name = {d["name"]: d for d in spec["deployments"]}
    assert by_name["a"]["schedules"] == [{"cron": NIGHTLY_CRON, "timezone": "UTC"}]
    assert by_name["b"]["schedules"] == []
    with pytest.raises(AlignError, match=r"x.yaml: schedule: expected \{cron"):
        read_schedule({"schedule": "nightly"}, "x.yaml")
    with pytest.raises(AlignError, match=r"x.yaml: schedule: "):
        read_schedule({"schedule": {"cron": "every night"}}, "x.yaml")


@dataclass
class Served:
    """A throw-away project with a running server and worker."""

    project: Path
    api_url: str
    start_output: str

    def env(self) -> dict[str, str]:
        return {**venv_env(self.project), "PREFECT_API_URL": self.api_url}


def _client(api_url: str):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        return get_client(sync_client=True)


def _nightly_pipeline(project: Path) -> None:
    """A quickstart on the tiny model that opts into the nightly schedule: harmless (seconds)
    should the worker ever pick up one of its runs while the test runs."""
    raw = yaml.safe_load((project / "pipelines/quickstart.yaml").read_text())
    raw.pop("judge", None)
    raw.update(name="nightly", model={"policy": "tiny"}, schedule={"cron": NIGHTLY_CRON})
    raw["data"]["train"]["limit"] = 4
    raw["data"]["eval"]["limit"] = 2
    raw["train"].update(max_steps=1, max_length=96, max_prompt_length=64, precision="fp32")
    (project / "pipelines/nightly.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))


def _serve(project: Path, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "flows.serve", *args],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, model_cache: Path) -> Iterator[Served]:
    """`python -m flows.serve start` in a temp copy of the project; `stop` afterwards."""
    project = tmp_path_factory.mktemp("served")
    write_quickstart_data(project / "data")
    shutil.copytree(REPO / "pipelines", project / "pipelines")
    _nightly_pipeline(project)
    (project / "prefect.yaml").write_text(render(discover(project)))
    env = {
        **venv_env(project),
        "PREFECT_WORKER_QUERY_SECONDS": "1",  # pick runs up within a second, not ten
        "PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS": "5",
    }
    with socket.socket() as sock:  # any free port: never collide with a developer's `make serve`
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = _serve(project, "start", "--port", str(port), "--no-ui", env=env)
    state_dir = project / ".prefect/serve"
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        state = json.loads((state_dir / "state.json").read_text())
        assert state["api_url"] == f"http://127.0.0.1:{port}/api"
        yield Served(project, state["api_url"], started.stdout)
    finally:
        pids = [int(p.read_text()) for p in state_dir.glob("*.pid")]
        stopped = _serve(project, "stop", env=env)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr
        assert pids and not any(alive(pid) for pid in pids), stopped.stdout
        assert not (state_dir / "state.json").exists()


def _run_deployment(served: Served, name: str, *params: str) -> tuple[str, str, float]:
    """`prefect deployment run NAME --watch`; returns (flow run id, output, seconds)."""
    args = [PREFECT, "deployment", "run", name, "--watch", "--watch-timeout", "240"]
    for p in params:
        args += ["--param", p]
    t0 = time.monotonic()
    res = subprocess.run(
        args, cwd=served.project, env=served.env(), capture_output=True, text=True, timeout=300
    )
    out = res.stdout + res.stderr
    match = re.search(r"UUID: ([0-9a-f-]{36})", out)
    assert match, out[-3000:]
    return match[1], out, time.monotonic() - t0


@pytest.mark.slow
def test_serve_deploys_every_pipeline_on_a_process_pool(served: Served) -> None:
    with _client(served.api_url) as client:
        pool = client.read_work_pool(WORK_POOL)
        workers = client.read_workers_for_work_pool(WORK_POOL)
        for name in ("quickstart", "nca-7b", "nightly"):
            d = client.read_deployment_by_name(f"align/{name}")
            assert d.work_pool_name == WORK_POOL
            assert d.entrypoint == ENTRYPOINT
            assert d.parameters["pipeline"] == f"pipelines/{name}.yaml"
    assert pool.type == "process"
    assert [w.name for w in workers] and str(workers[0].status).upper().endswith("ONLINE")
    names = [f"align/{d.name}" for d in discover(served.project)]
    assert "align/nightly" in names and len(names) > 3
    assert f"deployed: {', '.join(names)}" in served.start_output


@pytest.mark.slow
def test_quickstart_smoke_through_a_deployment_completes_with_artifacts(served: Served) -> None:
    run_id, out, seconds = _run_deployment(served, "align/quickstart", "smoke=true")
    assert "Completed" in out, out[-3000:]
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with _client(served.api_url) as client:
        flow_run = client.read_flow_run(run_id)
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run_id]))
        )
    assert flow_run.state.is_completed(), flow_run.state
    assert flow_run.parameters["smoke"] is True
    by_key = {a.key: a for a in artifacts}
    runs = served.project / "runs/quickstart-smoke"  # written in the project, not in the repo
    train = json.loads((runs / "train/manifest.json").read_text())
    report = by_key["quickstart-smoke-report"]
    assert report.type == "markdown"
    for text in ("## Lineage", train["stage_hash"], "## Results: evaluate", "## Config"):
        assert text in report.data
    log = (runs / "train/log.jsonl").read_text().splitlines()
    table = by_key["quickstart-smoke-train-log"]
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert table.type == "table" and len(rows) == len(log)
    assert by_key["quickstart-smoke-evaluate"].type == "table"
    link = by_key["quickstart-smoke-checkpoint"]
    # Prefect stores a link artifact as markdown: [text](file:///.../train/model)
    assert link.data.endswith(f"({(runs / 'train/model').resolve().as_uri()})"), link.data
    assert train["stage_hash"] in (runs / "train/model/README.md").read_text()
    assert "![loss](plots/loss.png)" in (runs / "report.md").read_text()
    assert (runs / "plots/loss.png").read_bytes()[:4] == b"\x89PNG"
    print(f"quickstart smoke through the deployment: {seconds:.1f}s")


@pytest.mark.slow
def test_gpu_pipeline_on_cpu_fails_fast_with_a_clear_message(served: Served) -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: nca-7b would really run")
    run_id, _, seconds = _run_deployment(served, "align/nca-7b")
    with _client(served.api_url) as client:
        state = client.read_flow_run(run_id).state
    assert state.is_failed(), state
    assert "needs a GPU" in state.message and "smoke=True" in state.message, state.message
    assert seconds < 120, f"took {seconds:.0f}s to fail"
    assert not (served.project / "runs/nca-7b").exists()  # no stage started
    print(f"nca-7b on CPU failed after {seconds:.1f}s: {state.message}")


@pytest.mark.slow
def test_cron_schedule_creates_scheduled_runs(served: Served) -> None:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    with _client(served.api_url) as client:
        nightly = client.read_deployment_by_name("align/nightly")
        assert [s.schedule.cron for s in nightly.schedules] == [NIGHTLY_CRON]
        assert client.read_deployment_by_name("align/quickstart").schedules == []
        deadline = time.monotonic() + 90
        while True:
            runs = client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[nightly.id]))
            )
            scheduled = [r for r in runs if r.state and r.state.is_scheduled()]
            if scheduled or time.monotonic() > deadline:
                break
            time.sleep(1)
    assert scheduled, "the scheduler created no runs for align/nightly"
    for run in scheduled:
        start = run.expected_start_time.astimezone(UTC)
        assert (start.hour, start.minute) == (2, 0), start
        assert run.auto_scheduled
    days = sorted({r.expected_start_time.astimezone(UTC).date() for r in scheduled})
    assert len(days) == len(scheduled)  # one run per night


@pytest.mark.slow
def test_three_rounds_through_the_deployment(served: Served) -> None:
    """Three `prefect deployment run`s of the iterative pipeline, as three nights would be:
    round 1 promoted, round 2 rejected by the gate (an unreachable min_delta), round 3 trains
    from round 1's model again; the rounds table is an artifact of every run."""
    fast = ["train.warmup_ratio=0", "train.lr_scheduler=constant", "train.learning_rate=1e-3"]
    gates = [-1.0, 2.0, -1.0]  # rewards are in [0, 1.25]: +2 can never be reached
    runs = served.project / "runs/iterative-quickstart-smoke"
    for night, min_delta in enumerate(gates, start=1):
        overrides = json.dumps([*fast, f"rounds.promote.min_delta={min_delta}"])
        _, out, seconds = _run_deployment(
            served, "align/iterative-quickstart", "smoke=true", f"overrides={overrides}"
        )
        assert "Completed" in out, out[-3000:]
        print(f"round {night} through the deployment: {seconds:.1f}s")
    events = [json.loads(x) for x in (runs / "rounds/rounds.jsonl").read_text().splitlines()]
    started = {e["round"]: e for e in events if e["event"] == "started"}
    decided = {e["round"]: e for e in events if e["event"] in ("promoted", "rejected")}
    assert [decided[n]["event"] for n in (1, 2, 3)] == ["promoted", "rejected", "promoted"]
    assert [started[n]["parent"] for n in (1, 2, 3)] == [None, 1, 1]
    round_1_model = runs / "rounds/round-1/model"
    assert started[3]["policy"] == str(round_1_model.relative_to(served.project))
    # round 3 trained from round 1's model: its prepared policy is that model, by content hash
    prepared = json.loads((runs / "prepare-model/manifest.json").read_text())["summary"]
    assert prepared["policy"]["hash"] == decided[1]["model_hash"]
    assert prepared["reference"]["source"] == "tiny"  # rounds.reference: base
    assert not (runs / "rounds/round-2").exists()  # a rejected model is not kept
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    with _client(served.api_url) as client:
        versions = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["iterative-quickstart-smoke-rounds"])
            )
        )
    assert versions, "no rounds artifact"
    table = max(versions, key=lambda a: a.created)  # the last night's
    rows = json.loads(table.data) if isinstance(table.data, str) else table.data
    assert [r["decision"] for r in rows] == ["promoted", "rejected", "promoted *"]
