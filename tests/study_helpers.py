"""A results folder a study can be made from, written by hand: three ImageNet classes and two units, each by two
methods, the units with mining records pointing at the first four of sixteen photos in the folder (the 2AFC's
queries come from a scan of all sixteen)."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vital_fv.result import png_bytes

CLASSES = {967: "espresso", 872: "tripod", 657: "missile"}
PHOTOS = 16


def _record(folder: Path, stem: str, target: dict, method: str, seed: int, refs: dict | None = None) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(hash((stem, seed)) % 2**31)
    (folder / f"{stem}.png").write_bytes(png_bytes(torch.rand(3, 48, 48, generator=g)))
    rec = {"vital_fv": "test", "method": method, "status": "complete", "seed": seed, "target": target,
           "model": {"name": "efficientnet_lite0", "num_classes": 1000}, "references": refs or {}}
    (folder / f"{stem}.json").write_text(json.dumps(rec))


def study_results(root: Path, methods=("vital", "maco")) -> Path:
    photos = root / "photos"
    photos.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for i in range(PHOTOS):
        (photos / f"p{i}.png").write_bytes(png_bytes(torch.rand(3, 80, 100, generator=g)))
    for index, name in CLASSES.items():
        for m in methods:
            _record(root / m, f"lite0-{index}-{name}-{m}-s0", {"kind": "class", "index": index, "name": name}, m, 0)
    for ch in (0, 1):
        mining = {"sources": [str(photos / f"p{i}.png") for i in range(4)],
                  "mining": {"boxes": [[0, 0, 40, 40], [10, 10, 60, 60], [20, 0, 70, 50], [40, 30, 90, 80]],
                             "scores": [3.0, 2.0, 1.5, 0.2], "unit": f"blocks.3:{ch}"}, "fit": "stretch"}
        for m in methods:
            for seed in (0, 1):
                _record(root / "units" / m, f"lite0-blocks3-{ch}-{m}-s{seed}",
                        {"kind": "unit", "layer": "blocks.3", "channel": ch, "position": None}, m, seed,
                        mining if m == "vital" else None)
    return root
