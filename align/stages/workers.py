"""A stage's shards over several devices: `sample.processes` / `annotate.processes` start one
worker process per GPU (or, without CUDA, per share of the CPU cores), each loading its own
copy of the models and taking every N-th shard.

Shard s goes to worker s mod N, and a shard's batches, seeds and files are those of a
one-process run, so the output is the same whatever N (docs/gpu.md). Worker r sees only its GPU
(CUDA_VISIBLE_DEVICES is the r-th visible device; with `sample.tensor_parallel: T`, the r-th
group of T), so `model.device: auto` or `cuda` places its models there and vLLM starts its
engine there. The parent process loads no model: it
draws one progress bar from the workers' reports, raises a worker's one-line AlignError as its
own, and stops every worker when one fails or when it is itself stopped.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as queues
import traceback
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from align.core.device import worker_gpus
from align.core.errors import AlignError
from align.core.runtime import prepare_process
from align.data.records import batched

POLL_SECONDS = 1.0  # how often the parent looks for a worker that died without a word


@dataclass(frozen=True)
class Part:
    """Worker `rank` of `count`: it owns the shards whose index is rank mod count."""

    rank: int = 0
    count: int = 1

    def shards(self, records: Iterable[dict], size: int) -> Iterator[tuple[int, list[dict]]]:
        """(shard index, records) of this worker's shards of `size` consecutive records; the
        stream is read through, the other workers' shards skipped."""
        for index, shard in enumerate(batched(records, size)):
            if index % self.count == self.rank:
                yield index, shard


# work(part, progress) -> a JSON-able result with the "device" it ran on; progress(n) after
# every n finished records
Work = Callable[[Part, Callable[[int], object]], dict[str, Any]]


def devices_of(results: list[dict[str, Any]]) -> str:
    """The manifest's `device`: the one device, or every worker's ('2 workers: cpu, cpu')."""
    if len(results) == 1:
        return results[0]["device"]
    return f"{len(results)} workers: " + ", ".join(r["device"] for r in results)


def run_parts(
    work: Work,
    processes: int,
    device: str,
    total: int,
    desc: str,
    unit: str,
    what: str,
    each: int = 1,
) -> list[dict[str, Any]]:
    """Run `work` in this process (processes == 1) or in `processes` spawned workers, each on
    `each` GPUs of the `model.device` setting `device`; the workers' results in rank order.
    `work` must pickle (a module-level function, or a partial of one); `what` names the
    setting in errors ('annotate.processes')."""
    bar = tqdm(total=total, desc=desc, unit=unit)
    try:
        if processes == 1:
            return [work(Part(), bar.update)]
        try:
            gpus = worker_gpus(device, processes, each)
        except ValueError as exc:
            raise AlignError(f"{what}: {exc}") from None
        return _spawn(work, processes, gpus, bar, what)
    finally:
        bar.close()


def _spawn(
    work: Work, processes: int, gpus: list[str] | None, bar: tqdm, what: str
) -> list[dict[str, Any]]:
    # spawn, not fork: a forked child of a process that has touched CUDA or holds threads (the
    # Prefect runner's) is not safe; each worker starts a fresh interpreter
    ctx = multiprocessing.get_context("spawn")
    reports = ctx.Queue()
    threads = max(1, torch.get_num_threads() // processes)  # this stage's cores, shared
    workers = [
        # not daemons: a worker's vLLM engine starts processes of its own
        ctx.Process(
            target=_worker,
            args=(work, Part(rank, processes), gpus and gpus[rank], threads, os.getpid(), reports),
            name=f"align-{what.split('.')[0]}-{rank}",
        )
        for rank in range(processes)
    ]
    results: dict[int, dict[str, Any]] = {}
    try:
        for worker in workers:
            worker.start()
        while len(results) < processes:
            try:
                kind, rank, value = reports.get(timeout=POLL_SECONDS)
            except queues.Empty:
                _check_alive(workers, results, what)
                continue
            if kind == "progress":
                bar.update(value)
            elif kind == "done":
                results[rank] = value
            elif kind == "error":
                raise AlignError(value)
            else:  # a crash: its traceback is on the worker's stderr, above
                raise RuntimeError(f"{what}: worker {rank} of {processes} failed: {value}")
    finally:
        for worker in workers:
            if worker.is_alive():
                worker.terminate()
            worker.join()
        reports.close()  # its pipe and lock go now, not at interpreter exit
        reports.join_thread()
    return [results[rank] for rank in range(processes)]


def _check_alive(workers: list, results: dict, what: str) -> None:
    """Raise when a worker ended without reporting (killed, out of memory)."""
    for rank, worker in enumerate(workers):
        if rank not in results and worker.exitcode not in (None, 0):
            raise RuntimeError(
                f"{what}: worker {rank} of {len(workers)} exited with status {worker.exitcode} "
                "before finishing its shards (killed, or out of memory?); the finished shards "
                "are kept, and a re-run resumes from them"
            )


def _worker(
    work: Work,
    part: Part,
    gpu: str | None,
    threads: int,
    parent: int,
    reports: Any,
) -> None:
    """A worker's body: see only its GPU, use its share of the cores, run `work` and report."""
    if gpu is not None:  # before anything initialises CUDA in this fresh interpreter
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    prepare_process(threads)  # what run_stage sets up: torch threads, a heap that keeps blocks

    def progress(n: int) -> None:
        if os.getppid() != parent:  # the parent is gone: stop instead of writing on alone
            raise SystemExit(1)
        reports.put(("progress", part.rank, n))

    try:
        result = work(part, progress)
    except AlignError as exc:
        reports.put(("error", part.rank, str(exc)))
        return
    except Exception as exc:
        traceback.print_exc()
        reports.put(("crash", part.rank, f"{type(exc).__name__}: {exc}".splitlines()[0]))
        return
    if gpu is not None:  # 'cuda:0' in the worker is this machine's GPU `gpu` (or the first)
        result = {**result, "device": f"{result['device']} (GPU {gpu})"}
    reports.put(("done", part.rank, result))
