"""Mining at data-set scale: a folder split into shards (file lists) that the executors scan like any batch, each
shard's best patch per image and unit written as one file, and the shards merged deterministically into each
unit's references.

The merge keeps every image's entry from whichever shard scanned it and ranks them by score, ties by content
(``MiningResult.top``), so it equals one scan of the whole folder. A shard's own scan is cached per image inside
the job, so a killed worker's shard resumes where it stopped, and finished shards are never scanned again.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..references.mining import merge_shards
from ..result import atomic_write_bytes
from .ledger import MINE  # noqa: F401  (re-exported: the shard items' method name)

MINING_DIR = "mining"


def layer_dir(job: str | os.PathLike[str], layer: str) -> Path:
    return Path(job) / MINING_DIR / "".join(c if c.isalnum() or c in "._-" else "-" for c in layer)


def write_shards(job: str | os.PathLike[str], layer: str, files: Sequence[Path], shard_size: int) -> list[Path]:
    """The file lists of ``layer``'s shards (``shard-0000.txt`` ...), written into the job at plan time."""
    folder = layer_dir(job, layer)
    for stale in folder.glob("shard-*.json"):  # a job planned anew: results of the old plan's shards go
        stale.unlink()
    lists = []
    for i, start in enumerate(range(0, len(files), shard_size)):
        path = folder / f"shard-{i:04d}.txt"
        atomic_write_bytes(path, "".join(f"{Path(f).resolve()}\n" for f in files[start : start + shard_size]).encode())
        lists.append(path)
    return lists


def mine_shard(spec: Any, units: Sequence[Any], file_list: str | os.PathLike[str], patch: int, stride: int | None,
               device: Any = "auto") -> Path:
    """Scan one shard for all ``units`` (one layer) and write its entries next to its file list
    (``shard-NNNN.json``: per unit, each image's best patch). Returns that file."""
    from ..device import frozen_on, resolve_device
    from ..references import mine_many

    file_list = Path(file_list)
    files = [line for line in file_list.read_text().splitlines() if line]
    cache = file_list.with_suffix(".cache")  # per shard: two workers never write one store
    with frozen_on(spec.module, resolve_device(device)):
        results = mine_many(spec, list(units), files, patch=patch, stride=stride, progress=False, cache_dir=cache)
    out = file_list.with_suffix(".json")
    data = {"units": {u.label(): {"params": r.params, "key": r.key, "entries": r.entries}
                      for u, r in zip(units, results, strict=True)}}
    atomic_write_bytes(out, json.dumps(data).encode())
    return out


merged = merge_shards  # the name the atlas used before the merge moved next to mining (references.mining)
