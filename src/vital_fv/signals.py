"""Stops without losing work: SIGTERM handled like Ctrl-C, and signals held while results are written.

Slurm, Kubernetes and ``timeout`` stop a job with SIGTERM; the CLI turns it into the same ``KeyboardInterrupt`` as
Ctrl-C, so the loop stops at the end of its step and the images so far are saved, marked ``interrupted``. While
finished results are being written (``hold_signals``), a further Ctrl-C or SIGTERM waits until the files are
complete. Python allows signal handlers only in the main thread; elsewhere both are no-ops.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

HELD = (signal.SIGINT, signal.SIGTERM)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def _handled_by(handler: object) -> Iterator[None]:
    """SIGINT and SIGTERM go to ``handler`` within the block; the previous handlers are back after it."""
    previous = {s: signal.signal(s, handler) for s in HELD}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def sigterm_as_interrupt(received: list[int] | None = None) -> Iterator[list[int]]:
    """Within the block, SIGTERM raises ``KeyboardInterrupt`` as Ctrl-C does; both are appended to the yielded
    list, so a caller can tell a stop from a failure even when the ``KeyboardInterrupt`` surfaced as another
    exception (one raised inside an import leaves the module half-made, and the next use of it fails)."""
    seen = received if received is not None else []
    if not _main_thread():
        yield seen
        return

    def handler(signum: int, _frame: object) -> None:
        seen.append(signum)
        if len(seen) == 1:
            raise KeyboardInterrupt
        # The run is already stopping: a second Ctrl-C landing before the results are saved (the moment between
        # the loop's stop and ``hold_signals``) must not lose them.
        if len(seen) == 2:
            logging.getLogger("vital_fv").warning("already stopping: the results so far are being saved (kill -9 "
                                                  "stops at once)")

    with _handled_by(handler):
        yield seen


@contextmanager
def deferred_stops(stops: list[int]) -> Iterator[list[int]]:
    """Within the block, SIGINT and SIGTERM are recorded in ``stops`` and acted on only after it.

    For imports that run C++ which calls back into Python (torch's ``_c10d_init``): an exception raised there by a
    signal handler crosses pybind11 and aborts the process (status -6) instead of stopping it. Nothing is written
    yet at that point, so a second signal while the block runs ends the process at once."""
    if not _main_thread():
        yield stops
        return

    def record(signum: int, _frame: object) -> None:
        stops.append(signum)
        if len(stops) > 1:
            os._exit(143 if signal.SIGTERM in stops else 130)

    with _handled_by(record):
        yield stops


@contextmanager
def hold_signals() -> Iterator[list[int]]:
    """Within the block, SIGINT and SIGTERM are recorded, not acted on, so the files being written are finished;
    the yielded list says which arrived."""
    held: list[int] = []
    if not _main_thread():
        yield held
        return

    def record(signum: int, _frame: object) -> None:
        held.append(signum)

    try:
        with _handled_by(record):
            yield held
    finally:
        if held:
            logging.getLogger("vital_fv").warning(
                f"{signal.Signals(held[0]).name} arrived while results were being written: they were finished first")
