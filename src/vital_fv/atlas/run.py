"""``vital atlas run``: the driver takes batches of pending items from the ledger (one method at a time), an
executor optimizes each batch and writes its files, and the driver marks the items done.

``work_batch`` is the whole job of a worker: the batch's references, one ``run_method`` call for all its targets
(each with its own seed, prototypes and loss, as seeds already are), every result written atomically. It runs the
same way in the driver's process (the default executor, ``InProcess``) as in a worker process or a Ray actor.
"""

from __future__ import annotations

import logging
import os
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ..errors import VitalError
from ..options import check_positive
from .ledger import Item, Ledger
from .plan import IMAGES_DIR, target_from_json

log = logging.getLogger("vital_fv")


@dataclass
class Outcome:
    """What a worker reports for one item: the files it wrote, or the error, and the item's share of the time."""

    item: Item
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    interrupted: bool = False


class Executor(Protocol):
    """Runs batches of items: ``run(batch)`` returns one ``Outcome`` per item (files written before it returns)."""

    name: str

    def run(self, batch: Sequence[Item]) -> list[Outcome]: ...

    def close(self) -> None: ...


def _references(spec: Any, plan: dict[str, Any], target: Any, source: str | None, device: Any, progress: bool) -> Any:
    from .. import references

    if source is None:
        return None
    n = plan["n_refs"]
    if source == "bundled":
        return references.resolve(spec, target, n=n, device=device, progress=progress)
    kind, _, path = source.partition(":")
    if kind == "pool":
        return references.resolve(spec, target, pool=path, n=n, device=device, progress=progress)
    if kind == "images":
        return references.resolve(spec, target, images=path, n=n, device=device, progress=progress)
    return references.resolve(spec, target, source, n=n, device=device, progress=progress)


def work_batch(spec: Any, plan: dict[str, Any], folder: str | os.PathLike[str], batch: Sequence[Item],
               device: Any = "auto", progress: bool = False) -> list[Outcome]:
    """Optimize ``batch`` (items of one method) together and write each result to ``folder/images``."""
    from ..methods import Job, NonFiniteLossError, run_method

    start = time.perf_counter()
    method = batch[0].method
    targets = [target_from_json(it.target) for it in batch]
    refs_by_target: dict[Any, Any] = {}
    jobs = []
    for it, t in zip(batch, targets, strict=True):
        key = (t, it.refs)
        if key not in refs_by_target:  # read once per target (its prototypes are cached as for `visualize`)
            refs_by_target[key] = _references(spec, plan, t, it.refs, device, progress)
        jobs.append(Job(t, refs_by_target[key], it.seed))
    try:
        results = run_method(method, spec, jobs, preset=plan["preset"], steps=plan["steps"], lr=plan["lr"],
                             device=device, progress=progress)
    except NonFiniteLossError as exc:
        return [Outcome(it, error=f"non-finite loss: {exc}") for it in batch]
    out = Path(folder) / IMAGES_DIR
    out.mkdir(parents=True, exist_ok=True)
    share = (time.perf_counter() - start) / len(batch)
    outcomes = []
    for it, r in zip(batch, results, strict=True):
        if r.status == "interrupted":
            outcomes.append(Outcome(it, interrupted=True))
            continue
        r.record["atlas"] = {"job": Path(folder).name, "item": it.id, "label": it.label}
        png = out / f"{it.stem}.png"
        r.save(png, overwrite=True)  # an item not yet done may have files from a stopped run: replaced whole
        written = [p.name for p in sorted(out.glob(f"{it.stem}.*")) if p.name[len(it.stem):] in
                   (".png", ".json", ".rgba.png", ".alpha.npy")]
        outcomes.append(Outcome(it, outputs=[f"{IMAGES_DIR}/{w}" for w in written], seconds=share))
    return outcomes


class InProcess:
    """The default executor: the driver's own process, the model loaded once."""

    name = "local"

    def __init__(self, spec: Any, plan: dict[str, Any], folder: Path, device: Any, progress: bool) -> None:
        self.spec, self.plan, self.folder, self.device, self.progress = spec, plan, folder, device, progress

    def run(self, batch: Sequence[Item]) -> list[Outcome]:
        try:
            return work_batch(self.spec, self.plan, self.folder, batch, self.device, self.progress)
        except (KeyboardInterrupt, VitalError):
            raise
        except Exception as exc:  # a failure of this batch is recorded, the job goes on
            detail = "".join(traceback.format_exception_only(type(exc), exc)).strip()
            return [Outcome(it, error=detail) for it in batch]

    def close(self) -> None:
        pass


def load_plan_model(plan: dict[str, Any]) -> Any:
    """The plan's model, refused when its weights are not the ones the plan was made with."""
    from ..zoo import load_model

    spec = load_model(plan["model"], plan.get("weights"))
    if plan.get("weights_sha256") and spec.weights_id != plan["weights_sha256"]:
        raise VitalError(f"the weights of {plan['model']} changed since the job was planned (sha256 "
                         f"{spec.weights_id[:12]} now, {plan['weights_sha256'][:12]} in the plan): plan a new job")
    return spec


def run_atlas(folder: str | os.PathLike[str], *, batch: int = 8, device: str = "auto", max_attempts: int = 3,
              retry_failed: bool = False, progress: bool = True, executor: Executor | None = None) -> dict[str, int]:
    """Run a planned job to the end (or until Ctrl-C): done items are never redone, items a stopped driver left
    running go back to the queue, failures are retried up to ``max_attempts`` (``retry_failed``: the failed
    ones too). Returns the ledger's counts."""
    from ..device import resolve_device
    from ..options import check_device_name

    check_positive("--batch", batch)
    check_positive("--max-attempts", max_attempts)
    check_device_name(device)
    ledger = Ledger.open(folder)
    try:
        with ledger.driver():
            resolve_device(device)
            back = ledger.requeue(("running",))
            if back:
                log.info(f"{back} items a stopped run left running are queued again")
            if retry_failed:
                again = ledger.requeue(("failed",), reset_attempts=True)
                log.info(f"{again} failed items queued again")
            plan = ledger.plan
            counts = ledger.counts()
            if counts["pending"] == 0:
                log.info(f"nothing to do: {counts['done']} done, {counts['failed']} failed")
                return counts
            ex = executor or InProcess(load_plan_model(plan), plan, Path(folder), device, progress)
            try:
                _drive(ledger, ex, batch, max_attempts, progress)
            finally:
                ex.close()
            return ledger.counts()
    finally:
        ledger.close()


def _drive(ledger: Ledger, ex: Executor, batch: int, max_attempts: int, progress: bool) -> None:
    from tqdm.auto import tqdm

    counts = ledger.counts()
    total = sum(counts.values())
    with tqdm(total=total, initial=counts["done"] + counts["failed"], desc="atlas", unit="item",
              disable=not progress) as bar:
        while True:
            items = ledger.claim(batch, ex.name)
            if not items:
                return
            try:
                outcomes = ex.run(items)
            except BaseException:
                ledger.release(items)  # Ctrl-C (or our own error) stops the driver: the batch is queued again
                raise
            stopped = [o.item for o in outcomes if o.interrupted]
            for o in outcomes:
                if o.interrupted:
                    continue
                if o.error is None:
                    ledger.done(o.item, o.outputs, o.seconds)
                    bar.update(1)
                else:
                    status = ledger.failed(o.item, o.error, max_attempts)
                    log.info(f"{o.item.label} ({o.item.method}, seed {o.item.seed}): {o.error.splitlines()[-1]}"
                             f"{' - failed' if status == 'failed' else ' - will be retried'}")
                    bar.update(1 if status == "failed" else 0)
            if stopped:
                ledger.release(stopped)
                raise KeyboardInterrupt


def atlas_status(folder: str | os.PathLike[str]) -> dict[str, Any]:
    """Done / running / failed / left, images per hour from the items' own times, the ETA, and per worker."""
    ledger = Ledger.open(folder)
    try:
        rows = ledger.rows()
        counts = ledger.counts()
        plan = ledger.plan
    finally:
        ledger.close()
    done = [r for r in rows if r["status"] == "done" and r["seconds"]]
    per_item = sum(r["seconds"] for r in done) / len(done) if done else None
    workers: dict[str, dict[str, int]] = {}
    for r in rows:
        if r["worker"]:
            w = workers.setdefault(r["worker"], {"done": 0, "running": 0, "failed": 0})
            if r["status"] in w:
                w[r["status"]] += 1
    left = counts["pending"] + counts["running"]
    return {
        "plan": plan, "counts": counts, "total": len(rows), "workers": workers,
        "images_per_hour": 3600 / per_item if per_item else None,
        "eta_seconds": left * per_item if per_item else None,
        "failed": [{"label": r["label"], "method": r["method"], "seed": r["seed"], "attempts": r["attempts"],
                    "error": (r["error"] or "").strip().splitlines()[-1] if r["error"] else ""}
                   for r in rows if r["status"] == "failed"],
    }
