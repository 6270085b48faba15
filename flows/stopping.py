"""Stopping `align run` on Ctrl-C (SIGINT) or SIGTERM: one line, no process left behind, an
exit within STOP_S seconds.

Nothing a stage finished is lost: records are written atomically a batch at a time
(align/data/records.py), manifests last, and the stage locks are `flock`s the kernel drops with
the process. So stopping means ending every process this run started (the stage worker pool, the
temporary Prefect server) and leaving; the next identical command resumes.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator

import psutil

STOP_S = 4.0  # the deadline after the signal; the last resort ends everything at this point
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def end_processes(processes: list[psutil.Process], grace: float) -> None:
    """SIGTERM each process, SIGKILL those still alive after `grace` seconds, reap them."""
    for proc in processes:
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    _, alive = psutil.wait_procs(processes, timeout=grace)
    for proc in alive:
        with contextlib.suppress(psutil.Error):
            proc.kill()
    psutil.wait_procs(alive, timeout=grace)


def _clear_progress_bars() -> None:
    """Erase this process's progress bars, so the stop line starts a line of its own."""
    from tqdm.std import tqdm

    for bar in list(getattr(tqdm, "_instances", [])):
        bar.leave = False
        bar.close()


def descendants() -> list[psutil.Process]:
    return psutil.Process().children(recursive=True)


def _is_stage_worker(proc: psutil.Process) -> bool:
    """A worker of the stage pool, not the temporary Prefect server (it records how the run
    ended) nor multiprocessing's resource tracker (relaunched, with a traceback, if killed)."""
    with contextlib.suppress(psutil.Error):
        line = " ".join(proc.cmdline())
        return "uvicorn" not in line and "resource_tracker" not in line
    return False


class Stopper:
    """Signal handlers for one command; `signum` is the signal that stopped it, if any."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame) -> None:
        if self.signum is not None:  # a second signal: no more waiting
            self.finish(grace=0.5)
        self.signum = signum
        logging.disable(logging.CRITICAL)  # Prefect's crash report, the server's shutdown lines
        _clear_progress_bars()
        # not print(): inside a flow, Prefect turns prints into (now disabled) log records
        # a stage worker's progress bar may hold the terminal's line: start a fresh one
        sys.stderr.write("\r\033[K" if sys.stderr.isatty() else "\n")
        sys.stderr.write(
            f"align: stopping ({signal.Signals(signum).name}); finished records are kept, "
            "run the same command again to resume\n"
        )
        sys.stderr.flush()
        # the stage workers first: they hold the CPU; the server records the run's end
        end_processes([p for p in descendants() if _is_stage_worker(p)], grace=1.0)
        threading.Thread(target=self._deadline, daemon=True).start()
        raise KeyboardInterrupt

    def _deadline(self) -> None:
        time.sleep(STOP_S - 1.5)
        self.finish(grace=0.5)

    def finish(self, grace: float = 1.0) -> None:
        """End every process left and exit now, skipping exit handlers that would wait on
        a server that is gone."""
        end_processes(descendants(), grace)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(128 + (self.signum or signal.SIGINT))

    def install(self) -> None:
        global _ACTIVE
        for sig in SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        _ACTIVE = self

    def restore(self) -> None:
        global _ACTIVE
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        _ACTIVE = None


_ACTIVE: Stopper | None = None


def reclaim_sigterm() -> None:
    """Inside a flow that `align run` started: take SIGTERM back from Prefect's engine, which
    would otherwise wait for the stage workers to finish before it exits. A flow run that a
    Prefect worker started (no Stopper here) keeps Prefect's handler, its cancellation path."""
    if _ACTIVE is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _ACTIVE._handle)


@contextlib.contextmanager
def stoppable() -> Iterator[Stopper]:
    """Within: SIGINT/SIGTERM print one line, end the child processes and raise
    KeyboardInterrupt; leaving after a signal ends whatever is left and exits the process."""
    stopper = Stopper()
    stopper.install()
    try:
        yield stopper
    finally:
        stopper.restore()
        if stopper.signum is not None:
            stopper.finish()
