"""A worker's whole job: one batch of items of one method, optimized together and written to the job folder.

``work_batch`` runs the same in the driver's process, in a local worker process and in a Ray actor: the batch's
references (read once per target; prototypes cached as for ``visualize``), one ``run_method`` call for all its
targets (each with its own seed, prototypes and loss, as seeds already are), each result written atomically.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..api import OUTPUT_SUFFIXES
from ..errors import VitalError
from .ledger import Item
from .mining import MINE, merged, mine_shard
from .plan import IMAGES_DIR, target_from_json


@dataclass
class Outcome:
    """What a worker reports for one item: the files it wrote, or the error, and the item's share of the time."""

    item: Item
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    interrupted: bool = False


def _references(spec: Any, plan: dict[str, Any], target: Any, source: str | None, device: Any, progress: bool) -> Any:
    from .. import references

    if source is None:
        return None
    n = plan["n_refs"]
    how = plan.get("references") or {}  # a job planned before these options: the defaults
    opts = {"n": n, "augment": how.get("augment"), "crops": how.get("crops", "evidence"),
            "weighting": how.get("weighting", "none"), "device": device, "progress": progress}
    if source == "bundled":
        return references.resolve(spec, target, **opts)
    kind, _, path = source.partition(":")
    if kind == "pool":
        return references.resolve(spec, target, pool=path, **opts)
    if kind == "images":
        return references.resolve(spec, target, images=path, **opts)
    if kind == "mined":  # the job's own shards, merged
        return references.mined_references(merged(path, target), k=n)
    return references.resolve(spec, target, source, **opts)


def work_batch(spec: Any, plan: dict[str, Any], folder: str | os.PathLike[str], batch: Sequence[Item],
               device: Any = "auto", progress: bool = False) -> list[Outcome]:
    """Optimize ``batch`` (items of one method) together and write each result to ``folder/images``."""
    from ..methods import NonFiniteLossError, run_method

    start = time.perf_counter()
    method = batch[0].method
    if method == MINE:
        return [_mine(spec, plan, folder, it, device) for it in batch]
    jobs = batch_jobs(spec, plan, batch, device, progress)
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
        # the files Result.save writes: checked by name, not by listing a folder that holds the whole job
        written = sorted(f"{it.stem}{ext}" for ext in OUTPUT_SUFFIXES if (out / f"{it.stem}{ext}").is_file())
        outcomes.append(Outcome(it, outputs=[f"{IMAGES_DIR}/{w}" for w in written], seconds=share))
    return outcomes


def batch_jobs(spec: Any, plan: dict[str, Any], batch: Sequence[Item], device: Any = "auto",
               progress: bool = False) -> list[Any]:
    """The ``Job`` of each item (references read once per target; prototypes cached as for ``visualize``)."""
    from ..methods import Job

    refs_by_target: dict[Any, Any] = {}
    jobs = []
    for it in batch:
        t = target_from_json(it.target)
        key = (json.dumps(it.target, sort_keys=True), it.refs)
        if key not in refs_by_target:
            refs_by_target[key] = (t.references() if it.refs == "concept" else
                                   _references(spec, plan, t, it.refs, device, progress))
        jobs.append(Job(getattr(t, "target", t), refs_by_target[key], it.seed))  # a concept: its direction
    return jobs


def load_plan_model(plan: dict[str, Any]) -> Any:
    """The plan's model, refused when its weights are not the ones the plan was made with."""
    from ..zoo import load_model

    spec = load_model(plan["model"], plan.get("weights"))
    if plan.get("weights_sha256") and spec.weights_id != plan["weights_sha256"]:
        raise VitalError(f"the weights of {plan['model']} changed since the job was planned (sha256 "
                         f"{spec.weights_id[:12]} now, {plan['weights_sha256'][:12]} in the plan): plan a new job")
    return spec




def _mine(spec: Any, plan: dict[str, Any], folder: str | os.PathLike[str], item: Item, device: Any) -> Outcome:
    """One shard item: every planned unit of its layer over the shard's files."""
    from ..targets import UnitTarget

    start = time.perf_counter()
    layer = item.target["layer"]
    m = plan["mining"][layer]
    out = mine_shard(spec, [UnitTarget(layer, c) for c in m["channels"]], item.refs or "", m["patch"], m["stride"],
                     device)
    return Outcome(item, outputs=[str(out.relative_to(Path(folder).resolve()))], seconds=time.perf_counter() - start)
