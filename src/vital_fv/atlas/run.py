"""``vital atlas run``: the driver takes batches of pending items from the ledger (one method at a time), an
executor runs them (``executors``: this process, local workers, Ray actors) and writes their files, and the
driver marks the items done (with each file's size and sha256), retries failures up to ``--max-attempts``, and
gives back what a stop interrupted. Done items whose files went missing or were damaged are made again: ``status``
reports them, ``run`` queues them first (both check sizes; ``verify`` hashes every file).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import VitalError
from ..options import check_device_name, check_positive
from ..result import remove_stale_partial_writes
from .executors import Executor, InProcess, LocalWorkers
from .ledger import MINE, Item, Ledger
from .plan import IMAGES_DIR
from .work import Outcome

log = logging.getLogger("vital_fv")


MINE_BATCH = 8  # mining shards per claim (a worker scans them one after the other)


def make_executor(plan: dict[str, Any], folder: Path, *, workers: int | None, devices: Sequence[str] | None,
                  ray: str | None, device: str, progress: bool) -> Executor:
    """The executor a ``vital atlas run`` asks for: ``--ray``, ``--workers``, or this process."""
    if ray is not None:
        from .raycluster import RayWorkers  # Ray is optional: imported only when asked for

        return RayWorkers(plan, folder, address=ray, workers=workers or 1, devices=devices)
    if workers:
        return LocalWorkers(plan, folder, workers, devices or [device])
    if device == "auto" and not devices:  # "this machine, all its devices": one worker per GPU when there are several
        import torch

        if torch.cuda.device_count() > 1:
            gpus = [f"cuda:{i}" for i in range(torch.cuda.device_count())]
            return LocalWorkers(plan, folder, len(gpus), gpus)
    return InProcess(plan, folder, (devices or [device])[0], progress)


def _refuse_old_items(ledger: Ledger) -> None:
    """A job planned before items held their run description (ledger version 1) is refused, saying what to do:
    its items would run with options the old plan does not say (the method's own, the reference source's)."""
    old = [it for it in ledger.items() if it.method != MINE and it.spec is None]
    if old:
        raise VitalError(f"{ledger.folder} was planned by an older vital-fv: its {len(old)} items hold no run "
                         f"description (ledger version 1). Plan it again with the same options and --overwrite "
                         f"(`vital atlas plan ... --out {ledger.folder} --overwrite`): the images already made stay "
                         "until they are made again; `vital atlas status` and `vital gallery` still read it")


def run_atlas(folder: str | os.PathLike[str], *, batch: int | str = "auto", device: str = "auto",
              workers: int | None = None, devices: Sequence[str] | None = None, ray: str | None = None,
              max_attempts: int = 3, retry_failed: bool = False, verify: bool = False, progress: bool = True,
              executor: Executor | None = None) -> dict[str, int]:
    """Run a planned job to the end (or until Ctrl-C): done items are never redone unless their files went
    missing or changed size (``verify``: or their sha256), items a stopped driver left running go back to the
    queue, failures are retried up to ``max_attempts`` (``retry_failed``: the failed ones too). ``workers`` local
    processes (pinned round-robin to ``devices``), or ``ray`` (``auto`` or an address) with ``workers`` actors;
    default: this process. ``batch``: items optimized together, or "auto": per method, the fastest per image of
    a few steps timed at candidate sizes on the device (``methods.batching``, cached per model x method x
    device; stored in the ledger's ``batch`` field). Returns the ledger's counts."""
    from ..device import resolve_device
    from ..methods.batching import check_batch

    forced = check_batch(batch)
    check_positive("--max-attempts", max_attempts)
    check_positive("--workers", workers)
    for d in [device, *(devices or [])]:
        check_device_name(d)
    ledger = Ledger.open(folder)
    try:
        _refuse_old_items(ledger)
        with ledger.driver():
            if ray is None:
                for d in [device, *(devices or [])]:
                    resolve_device(d)  # devices of this machine (a Ray cluster's are its own)
            back = ledger.requeue(("running",))
            if back:
                log.info(f"{back} items a stopped run left running are queued again")
            partial = remove_stale_partial_writes(ledger.folder / IMAGES_DIR)  # a killed run's half-written files
            if partial:
                log.info(f"{partial} half-written files a killed run left in {IMAGES_DIR}/ are removed")
            if retry_failed:
                log.info(f"{ledger.requeue(('failed',), reset_attempts=True)} failed items queued again")
            damaged = check_done(ledger.folder, ledger.rows(), verify)
            if damaged:
                ledger.remake([d["id"] for d in damaged])
                log.info(f"{len(damaged)} done items are made again, their files missing or damaged: "
                         f"{_summary(damaged)}")
            counts = ledger.counts()
            if counts["pending"] == 0:
                log.info(f"nothing to do: {counts['done']} done, {counts['failed']} failed")
                return counts
            plan = ledger.plan
            ex = executor or make_executor(plan, Path(folder), workers=workers, devices=devices, ray=ray,
                                           device=device, progress=progress and not workers and ray is None)
            sizer = _BatchSizer(ledger, plan, forced, (devices or [device])[0], ex, ray is not None)
            try:
                _drive(ledger, ex, sizer, max_attempts, progress)
            finally:
                ex.close()
            return ledger.counts()
    finally:
        ledger.close()


class _BatchSizer:
    """How many items of a method go into one batch: forced, or chosen by measurement the first time the driver
    claims items of that method (on the run's device, with the first claimed item's references; the model is the
    executor's own where it runs in this process). Each choice is logged and stored in the ledger (``batch``)."""

    def __init__(self, ledger: Ledger, plan: dict[str, Any], forced: int | None, device: str, ex: Executor,
                 remote: bool) -> None:
        from ..methods.batching import CANDIDATES

        self.ledger, self.plan, self.forced, self.device, self.ex, self.remote = \
            ledger, plan, forced, device, ex, remote
        self.claim = forced or max(CANDIDATES)
        self.choices: dict[str, Any] = {}
        self._spec = None

    def size_for(self, items: Sequence[Item]) -> int:
        from ..methods.batching import BatchChoice, choose_for_jobs

        method = items[0].method
        if self.forced is not None:
            return self.forced
        if method == MINE:
            return MINE_BATCH
        if method not in self.choices:
            if self.remote:  # a Ray cluster's devices are not this machine's: nothing here to time
                choice = BatchChoice(MINE_BATCH, "default")
                log.info(f"{method}: batch {choice.size} (Ray: the workers' devices are not timed here; "
                         "--batch N chooses)")
            else:
                from .work import batch_jobs, load_plan_model

                if self._spec is None:
                    self._spec = getattr(self.ex, "spec", None) or load_plan_model(self.plan)
                jobs = batch_jobs(self._spec, self.plan, items[:1], self.device)
                choice = choose_for_jobs(method, self._spec, jobs, items=len(items), device=self.device,
                                         preset=self.plan["preset"], steps=self.plan["steps"])
            self.choices[method] = choice
            self.ledger.set_meta("batch", {m: c.describe() for m, c in self.choices.items()})
        return self.choices[method].size


def _drive(ledger: Ledger, ex: Executor, sizer: _BatchSizer, max_attempts: int, progress: bool) -> None:
    from tqdm.auto import tqdm

    counts = ledger.counts()
    inflight: dict[int, list[Item]] = {}  # first item id -> the batch
    with tqdm(total=sum(counts.values()), initial=counts["done"] + counts["failed"], desc="atlas", unit="item",
              disable=not progress) as bar:
        try:
            while True:
                while len(inflight) < ex.slots:
                    items = ledger.claim(sizer.claim, "driver")
                    if not items:
                        break
                    size = sizer.size_for(items)
                    if size < len(items):  # claimed for the largest candidate: the rest go back to the queue
                        ledger.release(items[size:])
                        items = items[:size]
                    inflight[items[0].id] = items
                    ledger.assign(items, ex.submit(items))
                if not inflight:
                    if ledger.counts()["pending"] and ledger.blocked():
                        log.info("items left that depend on failed mining shards were marked failed")
                    return
                for outcomes in ex.wait():
                    inflight.pop(outcomes[0].item.id, None)
                    bar.update(_record(ledger, outcomes, max_attempts))
        except BaseException:
            for items in inflight.values():
                ledger.release(items)  # Ctrl-C (or an error of the driver): the batches out are queued again
            raise


def _record(ledger: Ledger, outcomes: Sequence[Outcome], max_attempts: int) -> int:
    """Write one finished batch into the ledger; the number of items that reached an end (done or failed)."""
    ended = 0
    stopped = [o.item for o in outcomes if o.interrupted]
    for o in outcomes:
        if o.interrupted:
            continue
        error = o.error
        if error is None:
            try:
                digests = file_digests(ledger.folder, o.outputs)
            except OSError as exc:  # gone between the worker's write and now: the item is made again
                error = f"its file {exc.filename} could not be read after it was written: {exc.strerror}"
            else:
                ledger.done(o.item, o.outputs, o.seconds, digests)
                ended += 1
                continue
        status = ledger.failed(o.item, error, max_attempts)
        log.info(f"{o.item.label} ({o.item.method}, seed {o.item.seed}): {error.splitlines()[-1]}"
                 f"{' - failed' if status == 'failed' else ' - will be retried'}")
        ended += status == "failed"
    if stopped:
        ledger.release(stopped)
        raise KeyboardInterrupt
    return ended


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digests(folder: str | os.PathLike[str], outputs: Sequence[str]) -> dict[str, tuple[int, str]]:
    """Each of an item's files (paths relative to the job ``folder``): its size and sha256."""
    return {o: (os.path.getsize(Path(folder) / o), _sha256(Path(folder) / o)) for o in outputs}


def _readable(path: Path) -> str | None:
    """What is wrong with a file no hash was recorded for (an item of an older vital-fv), read by its kind."""
    try:
        if path.name.endswith(".png"):
            from PIL import Image

            with Image.open(path) as im:
                im.load()
        elif path.suffix == ".json":
            json.loads(path.read_bytes())
    except Exception as exc:  # noqa: BLE001  (any failure to read it is the finding)
        return f"unreadable ({type(exc).__name__}: {exc})"
    return None


def check_done(folder: str | os.PathLike[str], rows: Sequence[dict[str, Any]], verify: bool = False) -> \
        list[dict[str, Any]]:
    """The done items whose files are missing or damaged, each with its problems: every file must exist with the
    size the ledger recorded (``verify``: and its sha256; an item recorded without hashes, by an older vital-fv,
    has its PNG decoded and its JSON parsed instead). An item that lists no files is checked for its image."""
    folder = Path(folder)
    damaged = []
    for r in rows:
        if r["status"] != "done":
            continue
        outputs = json.loads(r["outputs"]) if r["outputs"] else []
        if not outputs and r["method"] != MINE:
            outputs = [f"{IMAGES_DIR}/{r['stem']}.png"]
        digests = json.loads(r["digests"]) if r.get("digests") else {}
        problems = []
        for o in outputs:
            path = folder / o
            try:
                size = path.stat().st_size if path.is_file() else None
            except OSError:
                size = None
            if size is None:
                problems.append(f"{o} is missing")
                continue
            want = digests.get(o)
            if want is not None and size != want[0]:
                problems.append(f"{o} has {size} bytes, {want[0]} when it was made")
            elif want is None and size == 0:
                problems.append(f"{o} is empty")
            elif verify and want is not None:
                try:
                    changed = _sha256(path) != want[1]
                except OSError as exc:
                    problems.append(f"{o} cannot be read ({exc.strerror})")
                    continue
                if changed:
                    problems.append(f"{o} differs from the file that was made (sha256)")
            elif verify:
                why = _readable(path)
                if why:
                    problems.append(f"{o} is {why}")
        if problems:
            damaged.append({"id": r["id"], "label": r["label"], "method": r["method"], "seed": r["seed"],
                            "stem": r["stem"], "problems": problems})
    return damaged


def _summary(damaged: Sequence[dict[str, Any]], n: int = 3) -> str:
    return "; ".join(f"{d['label']} ({d['method']}, seed {d['seed']}): {d['problems'][0]}" for d in damaged[:n]) + \
        (" ..." if len(damaged) > n else "")


def atlas_status(folder: str | os.PathLike[str], verify: bool = False) -> dict[str, Any]:
    """Done / running / failed / left, images per hour from the items' own times, the ETA, per worker, and the
    done items whose files are missing or damaged (``damaged``: sizes checked; ``verify``: every file hashed)."""
    ledger = Ledger.open(folder)
    try:
        rows = ledger.rows()
        counts = ledger.counts()
        plan = ledger.plan
        batch = ledger.meta("batch")
    finally:
        ledger.close()
    damaged = check_done(folder, rows, verify)
    done = [r for r in rows if r["status"] == "done" and r["seconds"] and r["method"] != MINE]
    per_item = sum(r["seconds"] for r in done) / len(done) if done else None
    shards = [r for r in rows if r["method"] == MINE]
    shard_done = [r for r in shards if r["status"] == "done" and r["seconds"]]
    per_shard = sum(r["seconds"] for r in shard_done) / len(shard_done) if shard_done else 0.0
    workers: dict[str, dict[str, int]] = {}
    for r in rows:
        if r["worker"]:
            w = workers.setdefault(r["worker"], {"done": 0, "running": 0, "failed": 0})
            if r["status"] in w:
                w[r["status"]] += 1
    left = sum(r["status"] in ("pending", "running") for r in rows if r["method"] != MINE)
    shards_left = sum(r["status"] in ("pending", "running") for r in shards)
    return {
        "plan": plan, "counts": counts, "total": len(rows), "workers": workers, "batch": batch,
        "images_per_hour": 3600 / per_item if per_item else None,
        "eta_seconds": left * per_item + shards_left * per_shard if per_item else None,
        "mining": {"shards": len(shards), "done": len(shard_done) if shards else 0, "seconds_per_shard": per_shard},
        "failed": [{"label": r["label"], "method": r["method"], "seed": r["seed"], "attempts": r["attempts"],
                    "error": (r["error"] or "").strip().splitlines()[-1] if r["error"] else ""}
                   for r in rows if r["status"] == "failed"],
        "damaged": damaged, "verified": verify,
        "unhashed": sum(r["status"] == "done" and not r.get("digests") for r in rows),
    }
