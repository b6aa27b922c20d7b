"""A worker's whole job: one batch of items of one method, optimized together and written to the job folder.

``work_batch`` runs the same in the driver's process, in a local worker process and in a Ray actor: the batch's
references (read once per target; prototypes cached as for ``visualize``), one ``run_method`` call for all its
targets (each with its own seed, prototypes and loss, as seeds already are), each result written atomically.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ..api import OUTPUT_SUFFIXES
from ..errors import VitalError
from .ledger import Item
from .mining import MINE, mine_shard
from .plan import IMAGES_DIR


@dataclass
class Outcome:
    """What a worker reports for one item: the files it wrote, or the error, and the item's share of the time."""

    item: Item
    outputs: list[str] = field(default_factory=list)
    seconds: float = 0.0
    error: str | None = None
    interrupted: bool = False


def item_run(spec: Any, item: Item) -> Any:
    """The item's ``RunSpec`` on the worker's loaded model (refused for an item planned without one)."""
    from ..runspec import RunSpec

    if item.spec is None:
        raise VitalError(f"item {item.label} ({item.method}, seed {item.seed}) holds no run description: the job "
                         "was planned by an older vital-fv; plan it again with --overwrite")
    return RunSpec.from_json(item.spec, model=spec)


def item_references(spec: Any, item: Item, device: Any = "auto", progress: bool = False) -> Any:
    """The references of an item's target, from its run description's source (as ``vital visualize`` reads them)."""
    from ..api import references_of
    from ..runspec import plain_target

    run = item_run(spec, item)
    run = replace(run, device=device, progress=progress)
    return references_of(run, spec, list(run.targets), [plain_target(t) for t in run.targets])[0]


def batch_jobs(spec: Any, plan: dict[str, Any], batch: Sequence[Item], device: Any = "auto",
               progress: bool = False) -> list[Any]:
    """The ``Job``s of a batch of items (targets, seeds, references from each item's run description): what a
    worker optimizes, and what the driver times to choose the batch size."""
    from ..api import jobs_of

    return jobs_of([replace(item_run(spec, it), device=device, progress=progress) for it in batch], spec)[1]


def work_batch(spec: Any, plan: dict[str, Any], folder: str | os.PathLike[str], batch: Sequence[Item],
               device: Any = "auto", progress: bool = False) -> list[Outcome]:
    """Optimize ``batch`` (items of one method) together and write each result to ``folder/images``: each item's
    ``RunSpec`` gives its target, seed and references, the first its method's preset and options (one plan),
    all optimized together by ``api.run_jobs``."""
    from ..api import run_jobs
    from ..methods import NonFiniteLossError

    start = time.perf_counter()
    method = batch[0].method
    if method == MINE:
        return [_mine(spec, plan, folder, it, device) for it in batch]
    runs = [replace(item_run(spec, it), device=device, progress=progress) for it in batch]
    try:
        results = run_jobs(runs, spec)
    except NonFiniteLossError as exc:
        return [Outcome(it, error=f"non-finite loss: {exc}") for it in batch]
    out = Path(folder) / IMAGES_DIR
    out.mkdir(parents=True, exist_ok=True)
    share = (time.perf_counter() - start) / len(batch)
    outcomes = []
    for i, (it, r) in enumerate(zip(batch, results, strict=True)):
        if r.status == "interrupted":
            outcomes.append(Outcome(it, interrupted=True))
            continue
        # the item's run, and the batch it was optimized in: `vital visualize --from` makes the image again
        r.record["spec"] = {**it.spec, "batch": {"items": [b.spec for b in batch], "index": i}} \
            if len(batch) > 1 else it.spec
        r.record["atlas"] = {"job": Path(folder).name, "item": it.id, "label": it.label}
        png = out / f"{it.stem}.png"
        r.save(png, overwrite=True)  # an item not yet done may have files from a stopped run: replaced whole
        # the files Result.save writes: checked by name, not by listing a folder that holds the whole job
        written = sorted(f"{it.stem}{ext}" for ext in OUTPUT_SUFFIXES if (out / f"{it.stem}{ext}").is_file())
        outcomes.append(Outcome(it, outputs=[f"{IMAGES_DIR}/{w}" for w in written], seconds=share))
    return outcomes


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
