"""``vital study create``: a folder of results turned into a study (the paper's §4.3 and Appendix D).

Each target (a class or a unit) gets one trial per part for every participant; which method's image it shows is
counterbalanced by a Latin square over subsets (subset s shows target i by method (i + s) mod M), so each
participant sees each target once and every method equally often across subsets. Images are copied into the
study under opaque ids: the method and class of a stimulus are in the database, never in what the browser gets.
Attention checks are real photos with their true class (the bundled photos).
"""

from __future__ import annotations

import os
import random
import secrets
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import VitalError
from ..options import check_positive
from .store import Store

PARTS = ("rate-class", "rate-unit", "label", "2afc")
IMAGES = "images"
MAX_REFS = 9  # reference crops shown beside a unit image (the paper's 3 x 3)


def _wnid(index: int | None, name: str, num_classes: int | None) -> str | None:
    """The WordNet id of a class: ImageNet's from timm's table, else the first noun sense of its name."""
    if index is not None and num_classes == 1000:
        from timm.data import ImageNetInfo

        return ImageNetInfo().index_to_label_name(index)
    try:
        from .wordnet import wordnet

        senses = wordnet().synsets(name.replace(" ", "_"), "n")
    except VitalError:
        return None
    return f"n{senses[0].offset():08d}" if senses else None


class _Stimuli:
    """Images copied into the study under opaque ids (what a URL shows is a random id, nothing else)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder / IMAGES
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []

    def add(self, kind: str, png: bytes, **fields: Any) -> str:
        ident = secrets.token_hex(8)
        path = self.folder / f"{ident}.png"
        path.write_bytes(png)
        self.rows.append({"id": ident, "file": f"{IMAGES}/{ident}.png", "kind": kind, **fields})
        return ident


def _crop_png(source: str, box: Sequence[int] | None, root: Path) -> bytes | None:
    """The reference image ``source`` (cut at ``box``) as PNG; None when it cannot be read or the box is empty."""
    from ..references import crop, read_image
    from ..result import png_bytes

    path = Path(source)
    for candidate in ([path] if path.is_absolute() else [root / path, Path.cwd() / path, root.parent / path]):
        if candidate.is_file():
            try:
                img, _ = read_image(candidate)
            except VitalError:
                return None
            if box:
                img = crop(img, box)
            return png_bytes(img.float() / 255) if img.numel() else None
    return None


def create_study(results: str | os.PathLike[str], out: str | os.PathLike[str], *,
                 parts: Sequence[str] = PARTS, participants_per_subset: int = 20, title: str | None = None,
                 overwrite: bool = False) -> Store:
    """Make a study in ``out`` from the results under ``results`` (see the module's docstring); records that cannot
    be read, lack their image or do not fit the record's schema are named in warnings and left out."""
    from ..records import find_results

    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise VitalError(f"--parts: unknown part {bad[0]!r}; choose from {', '.join(PARTS)}" if bad else
                         f"--parts is empty: choose from {', '.join(PARTS)}")
    check_positive("--participants-per-subset", participants_per_subset)
    out, root = Path(out), Path(results)
    if (out / "study.sqlite").exists() and not overwrite:
        raise VitalError(f"{out} already holds a study (its answers are kept): choose another --out, or pass "
                         "--overwrite to make it anew")
    found, problems = find_results(root)
    for p in problems:  # records that cannot be read, have no image or do not fit the schema: named, left out
        if p.kind != "other":
            warnings.warn(f"skipping {p.path}: {p.reason}", stacklevel=2)
    classes: dict[tuple, dict[str, Any]] = {}
    units: dict[tuple, dict[str, Any]] = {}
    for path, rec in sorted(found, key=lambda f: (f[1].get("seed", 0), str(f[0]))):
        t, model = rec["target"], rec.get("model") or {}
        if t.get("kind") == "class":
            key = (model.get("name"), t.get("index"))
            entry = classes.setdefault(key, {"label": t.get("name", str(t.get("index"))), "index": t.get("index"),
                                             "num_classes": model.get("num_classes"), "by_method": {}})
        elif t.get("kind") == "unit":
            label = f"{t.get('layer')}:{t.get('channel')}"
            key = (model.get("name"), label)
            entry = units.setdefault(key, {"label": label, "by_method": {}, "mining": None})
            refs = rec.get("references") or {}
            mining = refs.get("mining")
            if mining and refs.get("sources") and entry["mining"] is None:
                entry["mining"] = {"sources": refs["sources"], "boxes": mining.get("boxes"),
                                   "scores": mining.get("scores")}
        else:
            continue
        entry["by_method"].setdefault(rec["method"], []).append(path)
    from ..methods import method_names

    order = method_names()
    methods = sorted({m for e in [*classes.values(), *units.values()] for m in e["by_method"]},
                     key=lambda m: (order.index(m) if m in order else len(order), m))
    wants_classes = any(p in parts for p in ("rate-class", "label"))
    wants_units = any(p in parts for p in ("rate-unit", "2afc"))
    if wants_classes and not classes:
        raise VitalError(f"no class visualizations under {root} for --parts {','.join(parts)}")
    usable_units = {k: u for k, u in units.items() if u["mining"]}
    if wants_units and not usable_units:
        raise VitalError(f"no unit visualizations with mined references under {root} (rate-unit and 2afc show the "
                         "unit's top patches): visualize units from `vital mine` folders or --images")
    if len(methods) < 2:
        raise VitalError(f"a study compares methods, and {root} holds results of {methods or 'none'}: add results of "
                         "other methods (e.g. --method fourier, maco)")

    if out.exists() and overwrite:
        for sub in (IMAGES,):
            shutil.rmtree(out / sub, ignore_errors=True)
        for suffix in ("", "-wal", "-shm"):
            (out / f"study.sqlite{suffix}").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    stim = _Stimuli(out)
    targets: dict[str, list[dict[str, Any]]] = {"class": [], "unit": []}
    for (_, index), c in sorted(classes.items(), key=lambda kv: str(kv[0])):
        wnid = _wnid(index, c["label"], c["num_classes"]) if "label" in parts else None
        by_method = {m: [stim.add("vis", p.with_suffix(".png").read_bytes(), method=m, target=f"class:{index}",
                                  label=c["label"], wnid=wnid) for p in paths] for m, paths in c["by_method"].items()}
        targets["class"].append({"target": f"class:{index}", "label": c["label"], "wnid": wnid,
                                 "by_method": by_method})
    for (_, label), u in sorted(usable_units.items(), key=lambda kv: str(kv[0])):
        mining = u["mining"]
        boxes = mining["boxes"] or []
        box = [boxes[k] if k < len(boxes) else None for k in range(len(mining["sources"]))]
        crops = []
        for k, src in enumerate(mining["sources"][:MAX_REFS]):
            png = _crop_png(src, box[k], root)
            if png is not None:
                crops.append(stim.add("refcrop", png, target=f"unit:{label}", label=label))
        last = len(mining["sources"]) - 1
        strong = _crop_png(mining["sources"][0], box[0], root)
        weak = _crop_png(mining["sources"][last], box[last], root)
        by_method = {m: [stim.add("vis", p.with_suffix(".png").read_bytes(), method=m, target=f"unit:{label}",
                                  label=label) for p in paths] for m, paths in u["by_method"].items()}
        queries = ({"strong": stim.add("query", strong, target=f"unit:{label}", info={"rank": 0}),
                    "weak": stim.add("query", weak, target=f"unit:{label}", info={"rank": last})}
                   if strong and weak and last > 0 else None)
        if crops:
            targets["unit"].append({"target": f"unit:{label}", "label": label, "refs": crops, "queries": queries,
                                    "by_method": by_method})
    attention = _attention(stim, parts)
    design = {"title": title or f"Which images show what a network sees? ({root.name})", "parts": list(parts),
              "methods": methods, "subsets": len(methods), "participants_per_subset": participants_per_subset,
              "targets": targets, "attention": attention, "results": str(root.resolve())}
    return Store.create(out, design, stim.rows)


def _imagenet_wnid(name: str) -> str | None:
    """The ImageNet synset of a class name (palace is WordNet's second sense of the word, not its first)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    for i in range(info.num_classes()):
        if info.index_to_description(i).split(",")[0].strip().lower() == name.lower():
            return info.index_to_label_name(i)
    return None


def _attention(stim: _Stimuli, parts: Sequence[str]) -> list[dict[str, Any]]:
    """Real photos with their true class: rated as showing their word (>= 4), labelled with their class."""
    from .. import references
    from ..result import png_bytes

    checks = []
    for part, name in (("rate-class", "espresso"), ("label", "moped")):
        if part not in parts:
            continue
        img = references.bundled(name, n=1).images[0]
        wnid = _imagenet_wnid(name) if part == "label" else None
        ident = stim.add("photo", png_bytes(img.float() / 255), target=f"photo:{name}", label=name, wnid=wnid)
        checks.append({"part": part, "image": ident, "label": name, "wnid": wnid})
    return checks


def trials_for(design: dict[str, Any]) -> Any:
    """The trial list of a participant of subset ``s`` with seed ``seed``: [(part, shown, key)], parts in the
    design's order, trials shuffled within each part by the participant's own recorded seed."""

    def make(subset: int, seed: int) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        rng = random.Random(seed)
        methods = design["methods"]
        trials = []
        for part in design["parts"]:
            pool = design["targets"]["class" if part in ("rate-class", "label") else "unit"]
            block = []
            for i, t in enumerate(pool):
                if part == "2afc" and not t.get("queries"):
                    continue
                method = next((methods[(i + subset + k) % len(methods)] for k in range(len(methods))
                               if methods[(i + subset + k) % len(methods)] in t["by_method"]), None)
                if method is None:
                    continue
                images = t["by_method"][method]
                key = {"method": method, "target": t["target"], "label": t["label"]}
                if part == "rate-class":
                    block.append((part, {"word": t["label"], "images": images[:1]}, key))
                elif part == "label":
                    block.append((part, {"images": images[:1]}, {**key, "wnid": t.get("wnid")}))
                elif part == "rate-unit":
                    block.append((part, {"refs": t["refs"], "images": images[:1]}, key))
                else:
                    pair = [t["queries"]["strong"], t["queries"]["weak"]]
                    rng.shuffle(pair)
                    correct = "a" if pair[0] == t["queries"]["strong"] else "b"
                    block.append((part, {"refs": images, "queries": pair}, {**key, "correct": correct}))
            for check in design["attention"]:
                if check["part"] == part:
                    shown = {"word": check["label"], "images": [check["image"]]} if part == "rate-class" else \
                        {"images": [check["image"]]}
                    block.append((part, shown, {"method": None, "target": f"photo:{check['label']}",
                                                "label": check["label"], "wnid": check.get("wnid"),
                                                "attention": True}))
            rng.shuffle(block)
            trials += block
        return trials

    return make
