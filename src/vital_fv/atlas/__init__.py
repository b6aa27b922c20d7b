"""Atlas jobs: a whole model's classes and units × methods × seeds as one resumable, batched job.

- ``selection``: which targets (``--classes all | 0-99 | LIST | FILE``, ``--units LAYER:all``)
- ``ledger``: the job's SQLite ledger (plan, one row per item, one driver at a time)
- ``plan``: ``plan_atlas``, every option and reference source checked before the job exists
- ``work``: ``work_batch``, a worker's whole job (a batch optimized together, its files written)
- ``executors``: where batches run (this process, local worker processes); ``raycluster``: Ray actors
- ``run``: ``run_atlas`` (the driver) and ``atlas_status``

It uses the methods and the core; nothing outside this package imports it.
"""

from .executors import Executor, InProcess, LocalWorkers
from .ledger import Item, Ledger
from .plan import plan_atlas
from .run import atlas_status, run_atlas
from .work import Outcome, work_batch

__all__ = ["Executor", "InProcess", "Item", "Ledger", "LocalWorkers", "Outcome", "atlas_status", "plan_atlas",
           "run_atlas", "work_batch"]
