"""Results folders the gallery tests build by hand: records and images in the shape `vital visualize` writes."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vital_fv.result import png_bytes

HOSTILE = '<script>alert("x")</script> & \'quotes\''


def write_result(folder: Path, stem: str, *, index: int, name: str, method: str = "vital", seed: int = 0,
                 colour: float = 0.5, unit: str | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(index * 10 + seed)
    img = (torch.rand(3, 32, 32, generator=g) * 0.2 + colour).clamp(0, 1)
    (folder / f"{stem}.png").write_bytes(png_bytes(img))
    target = ({"kind": "unit", "layer": unit.split(":")[0], "channel": int(unit.split(":")[1]), "position": None}
              if unit else {"kind": "class", "index": index, "name": name})
    record = {"vital_fv": "test", "method": method, "status": "complete", "steps_done": 3, "seed": seed,
              "target": target, "model": {"name": "tiny"}, "optimizer": {"name": "quick", "lr": 0.5},
              "loss": {"act1": [1.0, 0.5, 0.25], "act2": [2.0, 1.0, 0.9]},
              "top5": [{"index": index, "name": name, "p": 0.9}], "references": {"label": "bundled", "count": 1}}
    (folder / f"{stem}.json").write_text(json.dumps(record))
    return folder / f"{stem}.png"


def results_folder(root: Path) -> Path:
    """Two classes (one with a hostile name) x two methods x two seeds, one unit, in sub-folders, plus junk."""
    for method in ("vital", "maco"):
        for seed in (0, 1):
            write_result(root / method, f"tiny-1-one-{method}-s{seed}", index=1, name="one", method=method,
                         seed=seed, colour=0.2)
            write_result(root / method, f"tiny-2-evil-{method}-s{seed}", index=2, name=HOSTILE, method=method,
                         seed=seed, colour=0.6)
    write_result(root / "units", "tiny-act2-3-s0", index=0, name="", unit="act2:3", colour=0.4)
    (root / "circuit").mkdir()
    (root / "circuit" / "circuit.json").write_text(json.dumps({"model": "tiny", "layer": "act2", "class_name": "one"}))
    (root / "circuit" / "circuit.png").write_bytes(png_bytes(torch.rand(3, 40, 120)))
    (root / "report").mkdir()  # a `vital evaluate` report beside the results
    (root / "report" / "items.csv").write_text("file,model,method,target,seed,judge_top5\n"
                                               f"{root / 'vital' / 'tiny-1-one-vital-s0.png'},tiny,vital,one,0,1\n")
    (root / "broken.json").write_text("{not json")
    (root / "orphan.json").write_text(json.dumps({"method": "vital", "target": {"kind": "class", "index": 0}}))
    (root / "notes.json").write_text(json.dumps({"hello": "world"}))
    return root


# One field of a record broken as in issue 27: the commands reading records once stopped with a traceback on these.
BAD_FIELDS = [("model", "x"), ("target", "class"), ("references", "x"), ("method", 5), ("loss", ["abc"]),
              ("loss", [1.0, None]), ("top5", "x")]


def write_bad_records(folder: Path, good: Path) -> list[tuple[str, str]]:
    """Copies of the record ``good`` (and its image) in ``folder``, each with one field of BAD_FIELDS broken;
    returns (file name, field) of each."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for k, (name, value) in enumerate(BAD_FIELDS):
        stem = f"bad-{k}-{name}"
        (folder / f"{stem}.json").write_text(json.dumps({**json.loads(good.read_text()), name: value}))
        (folder / f"{stem}.png").write_bytes(good.with_suffix(".png").read_bytes())
        out.append((f"{stem}.json", name))
    return out
