"""A local Prefect server and process worker for this project (`make serve`, `make stop`).

    python -m flows.serve start [--port 4200] [--limit 1] [--no-ui]
    python -m flows.serve status
    python -m flows.serve stop

`start` runs, from the project root (the current directory):
  1. `prefect server start` on 127.0.0.1 (port 4200, or a free one when 4200 is taken), with its
     own database under .prefect/serve/ so that `align run`'s ephemeral server never shares it;
  2. creates the process work pool `align-process` if it is missing;
  3. `prefect worker start` on that pool, with ALIGN_PROJECT_DIR set to this folder (the pull
     step of every deployment moves its flow runs there);
  4. `prefect --no-prompt deploy --all` (prefect.yaml, one deployment per pipelines/*.yaml).
Both processes run in the background in their own sessions; their PIDs, logs and the API URL
are under .prefect/serve/. `stop` signals exactly those two process groups: the worker gets
TERM, then INT if it is still up (it finishes its shutdown on the second signal), the server
TERM; KILL only after a grace period. A second `start` while they run only redeploys.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import flows  # noqa: F401  (project-local PREFECT_HOME, telemetry off)
from align.core.errors import AlignError
from flows.deployments import PREFECT_FILE, WORK_POOL, discover, render

HOST = "127.0.0.1"
DEFAULT_PORT = 4200
STATE_DIR = Path(".prefect") / "serve"
STATE_FILE = "state.json"
SERVER_TIMEOUT_S = 180.0  # a cold server on a busy 2-core machine needs ~10-40 s
WORKER_TIMEOUT_S = 120.0


@dataclass
class ServeState:
    """What `start` leaves in .prefect/serve/state.json for `status` and `stop`."""

    project: str
    api_url: str
    server_pid: int
    worker_pid: int
    worker_name: str
    started: float


def prefect_bin() -> str:
    """The `prefect` script of the interpreter running us (the project's venv)."""
    script = Path(sys.executable).parent / "prefect"
    return str(script) if script.is_file() else shutil.which("prefect") or "prefect"


def free_port(preferred: int) -> int:
    """`preferred` when nothing listens on it on 127.0.0.1, else a free port the OS picks."""
    for port in (preferred, 0):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            # as the server binds: a port left in TIME_WAIT by the last `make stop` is free
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((HOST, port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free TCP port on 127.0.0.1")


def child_env(project: Path, api_url: str) -> dict[str, str]:
    """Environment of the server, worker and deploy commands (and so of every flow run)."""
    env = dict(os.environ)  # already holds flows/__init__'s PREFECT_HOME and telemetry defaults
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_RUNNER_AUTO_INSTALL_DEPENDENCIES="false",  # flow runs use this venv as it is
        ALIGN_PROJECT_DIR=str(project),
    )
    return env


def spawn(cmd: list[str], log: Path, env: dict[str, str], cwd: Path) -> int:
    """Start `cmd` in the background in a new session (its PID is its process group id)."""
    with open(log, "wb") as out:  # a fresh log per start: its tail is what failures show
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return proc.pid


def alive(pid: int) -> bool:
    """Whether `pid` still runs (a zombie child of ours counts as gone)."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reap it if it is our child and has exited
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def ours(pid: int, role: str) -> bool:
    """Whether `pid` is still the prefect server/worker we started (not a reused PID)."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    words = [w.decode(errors="replace") for w in cmdline]
    try:
        leader = os.getpgid(pid) == pid
    except ProcessLookupError:
        return False
    return leader and any(w.endswith("prefect") for w in words) and role in words


def tail(path: Path, lines: int = 30) -> str:
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""
    )


def wait_for(check, pid: int, log: Path, what: str, timeout: float) -> float:
    """Poll `check()` until true; fail with the log's tail if `pid` exits or time runs out."""
    started = time.monotonic()
    while not check():
        if not alive(pid):
            raise RuntimeError(f"{what} exited; last lines of {log}:\n{tail(log)}")
        if time.monotonic() - started > timeout:
            raise RuntimeError(f"{what} not ready after {timeout:.0f}s; see {log}:\n{tail(log)}")
        time.sleep(0.5)
    return time.monotonic() - started


def healthy(api_url: str) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


def api_client(api_url: str):
    """A synchronous Prefect client for `api_url` (Prefect is imported only when needed)."""
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        return get_client(sync_client=True)


def ensure_pool(api_url: str) -> bool:
    """Create the process work pool if it is missing; True when it was created."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound
    from prefect.workers.process import ProcessWorker

    with api_client(api_url) as client:
        try:
            client.read_work_pool(WORK_POOL)
            return False
        except ObjectNotFound:
            client.create_work_pool(
                WorkPoolCreate(
                    name=WORK_POOL,
                    type="process",
                    base_job_template=ProcessWorker.get_default_base_job_template(),
                    description="align: flow runs as subprocesses on this machine",
                )
            )
            return True


def worker_online(api_url: str, name: str) -> bool:
    with api_client(api_url) as client:
        workers = client.read_workers_for_work_pool(WORK_POOL)
    return any(w.name == name and str(w.status).upper().endswith("ONLINE") for w in workers)


def read_state(state_dir: Path) -> ServeState | None:
    path = state_dir / STATE_FILE
    return ServeState(**json.loads(path.read_text())) if path.is_file() else None


def deployment_names(project: Path) -> list[str]:
    """The deployments prefect.yaml declares; an error when it disagrees with pipelines/."""
    found = discover(project)
    target = project / PREFECT_FILE
    if not target.is_file() or target.read_text() != render(found):
        raise RuntimeError(
            f"{PREFECT_FILE} is out of date with pipelines/; run `python -m flows.deployments`"
        )
    return [f"align/{d.name}" for d in found]


def deploy(project: Path, env: dict[str, str], log: Path) -> list[str]:
    """`prefect deploy --all` from the project root; returns the deployment names."""
    names = deployment_names(project)
    with open(log, "wb") as out:
        res = subprocess.run(
            [prefect_bin(), "--no-prompt", "deploy", "--all"],
            cwd=project,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            timeout=600,
        )
    if res.returncode != 0:
        raise RuntimeError(f"`prefect deploy --all` failed; last lines of {log}:\n{tail(log)}")
    return names


def start(port: int, limit: int, ui: bool) -> int:
    project = Path.cwd().resolve()
    deployment_names(project)  # a stale prefect.yaml fails here, before anything starts
    state_dir = project / STATE_DIR
    state_dir.mkdir(parents=True, exist_ok=True)
    state = read_state(state_dir)
    if state and alive(state.server_pid) and alive(state.worker_pid):
        print(f"already running at {state.api_url}; redeploying")
        names = deploy(project, child_env(project, state.api_url), state_dir / "deploy.log")
        print(f"deployed: {', '.join(names)}")
        return 0
    if state:
        stop()  # one of the two died: start both afresh
    t0 = time.monotonic()
    port = free_port(port)
    api_url = f"http://{HOST}:{port}/api"
    env = child_env(project, api_url)
    server_env = dict(
        env,
        PREFECT_SERVER_DATABASE_CONNECTION_URL=f"sqlite+aiosqlite:///{state_dir / 'prefect.db'}",
        # `prefect deployment run --watch` then shows the run's logs (a failure's reason too)
        PREFECT_SERVER_LOGS_STREAM_OUT_ENABLED="true",
        PREFECT_SERVER_LOGS_STREAM_PUBLISHING_ENABLED="true",
    )
    server_log, worker_log = state_dir / "server.log", state_dir / "worker.log"
    server_cmd = [prefect_bin(), "server", "start", "--host", HOST, "--port", str(port)]
    server_cmd += ["--analytics-off", *([] if ui else ["--no-ui"])]
    server_pid = spawn(server_cmd, server_log, server_env, project)
    (state_dir / "server.pid").write_text(f"{server_pid}\n")
    try:
        up = wait_for(lambda: healthy(api_url), server_pid, server_log, "server", SERVER_TIMEOUT_S)
        print(f"server up in {up:.1f}s: {api_url} (pid {server_pid}, log {server_log})")
        created = ensure_pool(api_url)
        print(f"work pool {WORK_POOL!r}: {'created' if created else 'exists'}")
        name = f"align-{socket.gethostname()}-{port}"
        worker_cmd = [prefect_bin(), "worker", "start", "--pool", WORK_POOL, "--type", "process"]
        worker_cmd += ["--name", name, "--limit", str(limit)]
        worker_pid = spawn(worker_cmd, worker_log, env, project)
        (state_dir / "worker.pid").write_text(f"{worker_pid}\n")
        save = ServeState(str(project), api_url, server_pid, worker_pid, name, time.time())
        (state_dir / STATE_FILE).write_text(json.dumps(asdict(save), indent=2) + "\n")
        names = deploy(project, env, state_dir / "deploy.log")
        print(f"deployed: {', '.join(names)}")
        online = wait_for(
            lambda: worker_online(api_url, name), worker_pid, worker_log, "worker", WORKER_TIMEOUT_S
        )
        print(f"worker {name!r} online (pid {worker_pid}, log {worker_log}) after {online:.1f}s")
    except BaseException:
        stop()  # never leave half a setup running
        raise
    (state_dir / "env.sh").write_text(f"export PREFECT_API_URL={api_url}\n")
    print(
        f"ready in {time.monotonic() - t0:.1f}s. UI: http://{HOST}:{port}\n"
        f"In your shell: export PREFECT_API_URL={api_url}   (or: source {STATE_DIR}/env.sh)\n"
        "  prefect deployment run align/quickstart --watch\n"
        "  prefect deployment run align/quickstart -p smoke=true --watch\n"
        "Stop with `make stop` (python -m flows.serve stop)."
    )
    return 0


def signal_group(pid: int, role: str, signals: list[signal.Signals], grace: float) -> str:
    """Send each signal in turn to the process group `pid` until it exits; returns how it went."""
    if not alive(pid) or not ours(pid, role):
        return "not running"
    for sig in [*signals, signal.SIGKILL]:
        os.killpg(pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not alive(pid):
                return f"stopped by {sig.name}"
            time.sleep(0.2)
    return "still running after SIGKILL"


def stop() -> int:
    state_dir = Path.cwd().resolve() / STATE_DIR
    pids = {
        role: int((state_dir / f"{role}.pid").read_text())
        for role in ("worker", "server")
        if (state_dir / f"{role}.pid").is_file()
    }
    if not pids:
        print("nothing to stop (no PIDs under .prefect/serve/)")
        return 0
    plans = {
        "worker": [signal.SIGTERM, signal.SIGINT],
        "server": [signal.SIGTERM],
    }
    for role, pid in pids.items():  # worker first: it reports to the server while it stops
        print(f"{role} (pid {pid}): {signal_group(pid, role, plans[role], grace=10.0)}")
        (state_dir / f"{role}.pid").unlink(missing_ok=True)
    for name in (STATE_FILE, "env.sh"):
        (state_dir / name).unlink(missing_ok=True)
    return 0


def status() -> int:
    state = read_state(Path.cwd().resolve() / STATE_DIR)
    if state is None:
        print("not running (start it with `make serve`)")
        return 3
    up = {"server": alive(state.server_pid), "worker": alive(state.worker_pid)}
    print(f"API {state.api_url} ({'healthy' if healthy(state.api_url) else 'not answering'})")
    for role, pid in (("server", state.server_pid), ("worker", state.worker_pid)):
        print(f"{role}: pid {pid} {'running' if up[role] else 'gone'}")
    return 0 if all(up.values()) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m flows.serve",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("start", help="start server and worker, deploy every pipeline")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="preferred port (default 4200)")
    p.add_argument("--limit", type=int, default=1, help="flow runs the worker runs at once")
    p.add_argument("--no-ui", dest="ui", action="store_false", help="API only, no dashboard")
    sub.add_parser("stop", help="stop the server and worker that `start` launched")
    sub.add_parser("status", help="whether they run, and where")
    args = parser.parse_args(argv)
    try:
        if args.command == "start":
            return start(args.port, args.limit, args.ui)
        return stop() if args.command == "stop" else status()
    except (AlignError, RuntimeError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
