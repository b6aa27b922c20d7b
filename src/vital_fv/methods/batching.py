"""How many items to optimize together: measured, not guessed (issue 30).

Whether a batch pays depends on the method, the model and the device: on a 2-core CPU VITAL at batch 5 is ~1.2x
cheaper per image than alone while MACO's large crops made batching cost; a GPU wants 32. ``choose_batch_size``
times a few steps at each candidate size (the caller's ``measure``, so tests can give a fake timer), keeps the
fastest per image, and caches each size's figure per model x method x device x size in the cache root, so the
next run on the same machine measures nothing. A forced size (``--batch N``) skips all of it.
"""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cache import cache_key, cache_root
from ..errors import VitalError

log = logging.getLogger("vital_fv")

CANDIDATES = (1, 2, 4, 8, 16, 32)
PROBE_STEPS = 4  # steps timed per candidate; the first is left out (allocations, lazy init)


@dataclass(frozen=True)
class BatchChoice:
    """The size chosen, how (``forced``, ``measured``, ``cached``, ``single``, ``short``, ``default``) and each
    size's seconds per image-step: what the log line and the record / ledger say."""

    size: int
    how: str
    per_image: Mapping[int, float] = field(default_factory=dict)

    def reason(self) -> str:
        if self.how == "forced":
            return f"batch {self.size} (forced by --batch)"
        if self.how == "single":
            return f"batch {self.size} (nothing to compare: one size fits the items, or they are coupled)"
        if self.how == "default":
            return f"batch {self.size} (the default: not measured)"
        if self.how == "short":
            return f"batch {self.size} (the run is shorter than measuring would be)"
        figures = ", ".join(f"{k}: {v * 1000:.1f} ms" for k, v in sorted(self.per_image.items()))
        return f"batch {self.size}, the fastest per image ({self.how}; per image-step {figures})"

    def describe(self) -> dict[str, Any]:
        """JSON for a record or the ledger."""
        return {"size": self.size, "how": self.how,
                "seconds_per_image_step": {str(k): round(v, 6) for k, v in sorted(self.per_image.items())}}


def check_batch(batch: int | str | None, option: str = "--batch") -> int | None:
    """``auto`` (or None) -> None (measure); a positive integer -> itself; anything else refused."""
    if batch is None or batch == "auto":
        return None
    if isinstance(batch, str) and batch.isdigit():
        batch = int(batch)
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise VitalError(f"{option} must be a positive integer or 'auto', got {batch!r}")
    return batch


def device_label(device: Any) -> str:
    """What identifies a device's speed in the cache key: the GPU's name, or the CPU's model and core count."""
    import torch

    dev = torch.device(device)
    if dev.type == "cuda":
        return f"cuda:{torch.cuda.get_device_name(dev)}"
    return f"{dev.type}:{platform.processor() or platform.machine()}:{os.cpu_count()}:{torch.get_num_threads()}t"


class BatchCache:
    """Seconds per image-step by batch size, one small JSON file per model x method x device (x resolution,
    preset, torch version) under ``CACHE_ROOT/batch/``. A damaged or unwritable file only costs a measurement."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = cache_root(root) / "batch"

    def path(self, key_parts: Mapping[str, Any]) -> Path:
        return self.root / f"{cache_key(key_parts)}.json"

    def load(self, key_parts: Mapping[str, Any]) -> dict[int, float]:
        try:
            data = json.loads(self.path(key_parts).read_text())
            return {int(k): float(v) for k, v in data["per_image"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}

    def save(self, key_parts: Mapping[str, Any], per_image: Mapping[int, float]) -> None:
        p = self.path(key_parts)
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps({"key": dict(key_parts), "per_image": {str(k): v for k, v in
                                                                             per_image.items()}},
                                      sort_keys=True, default=str))
            os.replace(tmp, p)
        except OSError as exc:
            log.warning(f"cannot write the batch-size cache in {self.root} ({exc}): the next run measures again")


def choose_batch_size(
    measure: Callable[[int], float],
    items: int,
    *,
    key_parts: Mapping[str, Any] | None = None,
    cache: BatchCache | None = None,
    forced: int | None = None,
    candidates: Sequence[int] = CANDIDATES,
    slower: float = 1.1,
) -> BatchChoice:
    """The batch size with the least seconds per image-step for ``items`` items.

    ``measure(size)`` returns the seconds of one step at that batch size (raise ``MemoryError`` or a CUDA
    out-of-memory error where a size does not fit). Candidates above ``items`` are not tried; sizes are tried
    upwards and the search stops once one is ``slower`` x the best so far per image (batching stopped paying).
    Each figure is read from and written to ``cache`` under ``key_parts`` (model, method, device, ...).
    """
    if forced is not None:
        return BatchChoice(forced, "forced")
    sizes = sorted({c for c in candidates if c <= items}) or [1]
    if len(sizes) == 1:
        return BatchChoice(sizes[0], "single")
    known = cache.load(key_parts) if cache is not None and key_parts is not None else {}
    per_image: dict[int, float] = {}
    measured = False
    for size in sizes:
        if size in known:
            per_image[size] = known[size]
        else:
            try:
                per_image[size] = measure(size) / size
            except MemoryError:
                per_image[size] = math.inf
            except RuntimeError as exc:  # torch.cuda.OutOfMemoryError is a RuntimeError
                if "out of memory" not in str(exc).lower():
                    raise
                per_image[size] = math.inf
            measured = True
        best = min(per_image.values())
        if per_image[size] > slower * best:
            break
    if measured and cache is not None and key_parts is not None:
        cache.save(key_parts, {**known, **per_image})
    best_size = min(per_image, key=lambda k: (per_image[k], k))
    return BatchChoice(best_size, "measured" if measured else "cached",
                       {k: v for k, v in per_image.items() if math.isfinite(v)})


def step_timer(method: Any, model: Any, jobs: Sequence[Any], steps: int = PROBE_STEPS,
               **options: Any) -> Callable[[int], float]:
    """``measure(size)`` for ``choose_batch_size``: ``steps`` real steps of ``method`` on the first ``size`` jobs
    (repeated when there are fewer), the median step after the first, in seconds. Nothing is saved."""
    from .base import run_method

    def measure(size: int) -> float:
        batch = [jobs[i % len(jobs)] for i in range(size)]
        start = time.perf_counter()
        results = run_method(method, model, batch, steps=steps, progress=False, **options)
        times = results[0].record.get("step_seconds") if results else None
        if not times:  # a method that does not time its steps: the whole call, per step
            return (time.perf_counter() - start) / max(1, steps)
        return statistics.median(times[1:] or times)

    return measure


def key_for(model: Any, method: str, device: Any, preset: str, size: int | None = None, **extra: Any) -> dict:
    """The cache key's parts: model (and weights), method, preset, resolution, device and torch version."""
    import torch

    return {"model": model.name, "weights": model.weights_id, "method": method, "preset": preset,
            "resolution": size or model.preprocess.input_size, "device": device_label(device),
            "torch": torch.__version__, **extra}


def choose_for_jobs(method: Any, model: Any, jobs: Sequence[Any], *, device: Any, preset: str = "paper",
                    steps: int | None = None, forced: int | None = None, items: int | None = None,
                    cache_dir: str | os.PathLike[str] | None = None, cache_choices: bool = True,
                    size: int | None = None,
                    candidates: Sequence[int] = CANDIDATES, **options: Any) -> BatchChoice:
    """``choose_batch_size`` for real jobs of a registered method on a model: times ``PROBE_STEPS`` steps at each
    candidate on ``device`` with batches made of ``jobs`` (repeated as needed), for ``items`` items to run (default
    ``len(jobs)``). Skipped when the run itself is shorter than the probes would be, or when the method's items
    are coupled, as DeepInversion's batch statistics are: then one batch."""
    from ..device import resolve_device
    from .base import get_method, get_preset

    m = get_method(method) if isinstance(method, str) else method
    n = items or len(jobs)
    if forced is not None:
        return BatchChoice(forced, "forced")
    if getattr(m, "coupled_batch", False):
        return BatchChoice(n, "single")
    dev = resolve_device(device)
    run_steps = get_preset(m, preset, steps).steps
    probe_cost = PROBE_STEPS * sum(c for c in candidates if c <= n)
    if n * run_steps < 4 * probe_cost:
        return BatchChoice(n, "short")  # measuring would cost more than it could save: one batch
    store = BatchCache(cache_dir) if cache_choices else None
    timer = step_timer(m, model, jobs, preset=preset, size=size, device=dev, **options)
    name = preset if isinstance(preset, str) else getattr(preset, "name", "custom")  # a preset object: its name
    choice = choose_batch_size(timer, n, key_parts=key_for(model, m.name, dev, name, size),
                               cache=store, candidates=candidates)
    log.info(f"{m.name}: {choice.reason()}")
    return choice


def chunks(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    """``items`` in consecutive batches of ``size`` (the last may be shorter)."""
    return [items[i : i + size] for i in range(0, len(items), size)]
