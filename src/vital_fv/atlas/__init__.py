"""Atlas jobs: a whole model's classes and units × methods × seeds as one resumable, batched job.

- ``selection``: which targets (``--classes all | 0-99 | LIST | FILE``, ``--units LAYER:all``)
- ``ledger``: the job's SQLite ledger (plan, one row per item, one driver at a time)
- ``plan``: ``plan_atlas``, every option and reference source checked before the job exists
- ``work``: ``work_batch``, a worker's whole job (a batch optimized together, its files written)
- ``executors``: where batches run (this process, local worker processes); ``raycluster``: Ray actors
- ``run``: ``run_atlas`` (the driver) and ``atlas_status``

It uses the methods and the core; nothing outside this package imports it. The names below are imported on first
use (PEP 562): a spawned worker (``executors``) and the ledger's readers import no torch through this file.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .executors import Executor, InProcess, LocalWorkers
    from .ledger import Item, Ledger
    from .plan import plan_atlas
    from .run import atlas_status, run_atlas
    from .work import Outcome, work_batch

_LAZY = {
    **dict.fromkeys(["Executor", "InProcess", "LocalWorkers"], ".executors"),
    **dict.fromkeys(["Item", "Ledger"], ".ledger"),
    "plan_atlas": ".plan",
    **dict.fromkeys(["atlas_status", "run_atlas"], ".run"),
    **dict.fromkeys(["Outcome", "work_batch"], ".work"),
}

__all__ = ["Executor", "InProcess", "Item", "Ledger", "LocalWorkers", "Outcome", "atlas_status", "plan_atlas",
           "run_atlas", "work_batch"]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_LAZY])
