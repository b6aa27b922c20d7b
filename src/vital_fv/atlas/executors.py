"""Where an atlas job's batches run, behind one interface: the driver's own process (``InProcess``, the default)
or local worker processes (``LocalWorkers``, each pinned to a device and loading the model once); Ray actors are
in ``raycluster``.

An executor takes batches (``submit``, as many at once as it has ``slots``) and hands back finished ones
(``wait``): each item's ``Outcome``, with its files already written. A worker that dies mid-batch gives its items
back as failures (the driver retries them up to ``--max-attempts``) and is replaced. A worker dies with its
driver, however the driver ends (kill -9 included): ``die_with_parent``.
"""

from __future__ import annotations

import os
import queue
import signal
import sys
import threading
import time
import traceback
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from ..errors import VitalError
from .ledger import Item

if TYPE_CHECKING:
    from .work import Outcome

# ``.work`` (torch, the methods) is imported where it is used: a spawned worker imports this module before it runs
# ``_worker_main``, which must start watching its driver before it spends seconds importing torch.


class Executor(Protocol):
    name: str
    slots: int  # batches it runs at once

    def submit(self, batch: Sequence[Item]) -> str:
        """Start ``batch``; returns the name of the worker it went to (recorded in the ledger)."""

    def wait(self) -> list[list[Outcome]]:
        """Block until at least one submitted batch is finished; its outcomes, one list per batch."""

    def close(self) -> None: ...


def _error(exc: BaseException) -> str:
    return "".join(traceback.format_exception_only(type(exc), exc)).strip()


def run_guarded(spec: Any, plan: dict[str, Any], folder: str, batch: Sequence[Item], device: Any,
                progress: bool) -> list[Outcome]:
    """``work_batch``, with any failure of the batch reported as its items' errors (the job goes on)."""
    from .work import Outcome, work_batch

    try:
        return work_batch(spec, plan, folder, batch, device, progress)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        return [Outcome(it, error=_error(exc)) for it in batch]


class InProcess:
    """The default executor: the driver's own process, the model loaded once, one batch at a time."""

    name = "local"
    slots = 1

    def __init__(self, plan: dict[str, Any], folder: str | os.PathLike[str], device: Any = "auto",
                 progress: bool = False, spec: Any = None) -> None:
        self.plan, self.folder, self.device, self.progress = plan, str(folder), device, progress
        from .work import load_plan_model

        self.spec = spec if spec is not None else load_plan_model(plan)
        self._queued: list[Sequence[Item]] = []

    def submit(self, batch: Sequence[Item]) -> str:
        self._queued.append(batch)
        return self.name

    def wait(self) -> list[list[Outcome]]:
        batch = self._queued.pop(0)
        return [run_guarded(self.spec, self.plan, self.folder, batch, self.device, self.progress)]

    def close(self) -> None:
        self._queued.clear()


PR_SET_PDEATHSIG, PR_SET_NAME = 1, 15  # linux/prctl.h
WATCHDOG = "vital-watchdog"  # the watchdog thread's name (``ps -T``, /proc/PID/task/*/comm on Linux)


def die_with_parent(parent: int, grace: float = 10.0) -> None:
    """End this process when ``parent`` (the driver that started it) ends, however it ends: on Linux the kernel
    sends SIGTERM at once (``prctl(PR_SET_PDEATHSIG)``); everywhere a watchdog thread notices the new parent and
    sends it itself, then ends the process outright if it has not unwound within ``grace`` seconds. Without this
    a kill -9'd driver leaves its workers (and the resource tracker they hold open) blocked on their queues."""
    prctl = None
    if sys.platform.startswith("linux"):
        try:
            import ctypes

            prctl = ctypes.CDLL(None, use_errno=True).prctl
        except (OSError, AttributeError):
            pass  # the watchdog below sends the signal
    signalled = prctl is not None and prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0  # by the kernel
    if os.getppid() != parent:  # the driver died before the line above: no signal will come
        os._exit(1)

    def watch() -> None:
        if prctl is not None:
            prctl(PR_SET_NAME, WATCHDOG.encode(), 0, 0, 0)
        while os.getppid() == parent:
            time.sleep(0.5)
        if not signalled:
            os.kill(os.getpid(), signal.SIGTERM)  # the worker unwinds (temporary files removed) ...
        time.sleep(grace)
        os._exit(1)  # ... or is ended here

    threading.Thread(target=watch, name="die-with-parent", daemon=True).start()


def _unwind(*_: Any) -> None:
    """A worker's SIGTERM: unwind (temporary files removed, queues released) instead of dying on the spot, once:
    the signals that follow (a killed driver's threads may each send one as they die) are ignored meanwhile."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(0)


def _worker_main(name: str, plan: dict[str, Any], folder: str, device: str, threads: int, tasks: Any,
                 results: Any, parent: int | None = None) -> None:
    """A local worker process: loads the model once, then runs the batches it is sent until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver decides when workers stop (Ctrl-C reaches it)
    signal.signal(signal.SIGTERM, _unwind)  # the driver's terminate(), or its death (``die_with_parent``)
    if parent is not None:
        die_with_parent(parent)
    import torch

    from .work import load_plan_model

    torch.set_num_threads(threads)
    try:
        spec = load_plan_model(plan)
    except BaseException as exc:
        results.put(("dead", name, _error(exc)))
        return
    results.put(("ready", name, None))
    while True:
        batch = tasks.get()
        if batch is None:
            return
        results.put(("done", name, run_guarded(spec, plan, folder, batch, device, False)))


class LocalWorkers:
    """``workers`` processes on this machine, worker ``i`` pinned to ``devices[i % len(devices)]``, each with its
    share of the CPU threads. Started with ``spawn`` (a clean interpreter: no inherited CUDA or thread state)."""

    name = "workers"

    def __init__(self, plan: dict[str, Any], folder: str | os.PathLike[str], workers: int,
                 devices: Sequence[str] = ("auto",)) -> None:
        import multiprocessing as mp

        self.plan, self.folder = plan, str(folder)
        self.devices = list(devices) or ["auto"]
        self.slots = workers
        self._ctx = mp.get_context("spawn")
        self._results = self._ctx.Queue()
        self._workers: dict[str, tuple[Any, Any, str]] = {}  # name -> (process, task queue, device)
        self._busy: dict[str, Sequence[Item]] = {}
        self._threads = max(1, (os.cpu_count() or 1) // workers)
        self._count = 0
        for i in range(workers):
            self._start(self.devices[i % len(self.devices)])

    def _start(self, device: str) -> str:
        name = f"worker-{self._count}"
        self._count += 1
        tasks = self._ctx.Queue()
        proc = self._ctx.Process(target=_worker_main, name=name, daemon=True,
                                 args=(name, self.plan, self.folder, device, self._threads, tasks, self._results,
                                       os.getpid()))
        proc.start()
        self._workers[name] = (proc, tasks, device)
        return name

    def submit(self, batch: Sequence[Item]) -> str:
        idle = [n for n in self._workers if n not in self._busy]
        if not idle:
            raise VitalError("no idle worker (the driver submitted more batches than slots)")
        name = idle[0]
        self._busy[name] = batch
        self._workers[name][1].put(list(batch))
        return name

    def wait(self) -> list[list[Outcome]]:
        while True:
            try:
                kind, name, payload = self._results.get(timeout=0.5)
            except queue.Empty:
                finished = self._reap()
                if finished:
                    return finished
                continue
            if kind == "done":
                self._busy.pop(name, None)
                return [payload]
            if kind == "dead":  # the model did not load: every worker would fail the same way
                raise VitalError(f"{name} could not start: {payload}")

    def _reap(self) -> list[list[Outcome]]:
        """Workers that died: their batch comes back as failures, and a new worker takes their place."""
        from .work import Outcome

        finished = []
        for name, (proc, _, device) in list(self._workers.items()):
            if proc.is_alive():
                continue
            del self._workers[name]
            batch = self._busy.pop(name, None)
            if batch is not None:
                why = f"{name} died during this batch (exit code {proc.exitcode})"
                finished.append([Outcome(it, error=why) for it in batch])
            self._start(device)
        return finished

    def close(self) -> None:
        for name, (proc, tasks, _) in self._workers.items():
            if proc.is_alive() and name not in self._busy:
                tasks.put(None)
        for name, (proc, _, _) in self._workers.items():
            if name in self._busy:
                proc.terminate()  # a stopped driver does not wait for a batch it will hand out again
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for _, tasks, _ in self._workers.values():
            tasks.close()
            tasks.cancel_join_thread()
        self._results.close()
        self._results.cancel_join_thread()
        self._workers.clear()
        self._busy.clear()
