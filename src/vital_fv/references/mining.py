"""Mining a unit's references (SPEC §4): the patches of a folder that most activate it, each from its own image.

A thin layer over ``scan.scan_images`` (content-keyed, resumable) and ``patches.image_patches`` (how images are
cut); ``vital mine`` writes the result as a folder that ``sets.from_mining`` / ``sets.from_folder`` read back.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..cache import cache_key, cache_root
from ..device import holds_model
from ..errors import VitalError
from ..features import capture
from ..objectives import LOGITS, UnitTarget, read_layers
from ..options import check_positive
from ..result import atomic_write_bytes, png_bytes, refuse_overwrite
from ..version import __version__
from .patches import image_patches
from .scan import JsonStore, MultiStore, scan_images
from .sets import (
    MINING_RECORD,
    ReferenceSet,
    contact_sheet,
    crop,
    image_paths,
    read_image,
)


@dataclass
class MiningResult:
    """The best patch of each scanned image for a unit, ranked; ``top(k)`` are the references."""

    entries: list[dict[str, Any]]  # per image: source, sha256, score, box (x0, y0, x1, y1 in source pixels)
    params: dict[str, Any]
    key: str
    cache: str = "miss"

    def top(self, k: int) -> list[dict[str, Any]]:
        return sorted(self.entries, key=lambda e: (-e["score"], e["sha256"]))[:k]  # ties: by content, not order


def _unit_scores(act: torch.Tensor, unit: Any) -> torch.Tensor:
    """(B,) unit values of a batch of layer outputs: channel mean, or the neuron (conv maps or tokens)."""
    if isinstance(act, (tuple, list)):
        act = act[0]
    if act.dim() == 4:
        return act[:, unit.channel, unit.position[0], unit.position[1]] if unit.position else \
            act[:, unit.channel].flatten(1).mean(1)
    if act.dim() == 3:
        return act[:, unit.position[0], unit.channel] if unit.position else act[:, :, unit.channel].mean(1)
    raise VitalError(f"unit {unit.label()}: cannot score a layer output of shape {tuple(act.shape)}")


def _scores(feats: dict[str, Any], logits: torch.Tensor, unit: Any) -> torch.Tensor:
    """(B,) scores of a batch: a unit's value as ``_unit_scores`` reads it, any other objective on the activations."""
    if isinstance(unit, UnitTarget):
        return _unit_scores(feats[unit.layer], unit)
    acts = {n: feats[n][0] if isinstance(feats[n], (tuple, list)) else feats[n] for n in read_layers([unit])}
    return unit({**acts, LOGITS: logits})


def mining_key(model: Any, unit: Any, patch: int, stride: int) -> str:
    """The store of a unit's (an objective's) scans: one entry per image content, whatever folder it was found in."""
    what = unit.label() if isinstance(unit, UnitTarget) else unit.cache_id()
    return cache_key({"kind": "mining", "model": model.name, "weights": model.weights_id, "unit": what,
                      "patch": patch, "stride": stride, "preprocess": model.preprocess.as_dict()})


def mine(
    model: Any,
    unit: Any,
    folder: str | os.PathLike[str],
    patch: int = 64,
    stride: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> MiningResult:
    """Score every patch of every image in ``folder`` by ``unit`` and keep each image's best patch.

    Images are scaled so their short side is the model's input size; patches of ``patch`` px (at that scale),
    every ``stride`` px (default half a patch), are each resized to the input size and scored by the unit's
    spatially averaged activation (or the neuron's value). Each image's best patch is cached by its content
    (``scan.scan_images``): an interrupted scan resumes where it stopped and a finished one is reused.
    """
    return mine_many(model, [unit], folder, patch, stride, batch_size, progress, cache_dir)[0]


@holds_model
@torch.no_grad()
def mine_many(
    model: Any,
    units: Sequence[Any],
    folder: str | os.PathLike[str],
    patch: int = 64,
    stride: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[MiningResult]:
    """``mine`` for several units (or objectives) in a single scan (one forward per patch batch for all)."""
    if not units:
        raise VitalError("nothing to mine: give at least one unit")
    scorers = [u.resolved(model.class_names, model.class_synonyms) for u in units]  # class names -> indices
    layers = read_layers(units)
    stride = stride or max(1, patch // 2)
    check_positive("--patch", patch, 8, " px")
    check_positive("--stride", stride, 1, " px")
    paths, _ = image_paths(folder)
    keys = [mining_key(model, u, patch, stride) for u in units]
    params = [{"model": model.name, "unit": u.label(), "folder": str(folder), "patch": patch, "stride": stride,
               "images": len(paths), "input_size": model.preprocess.input_size} for u in units]
    root = cache_root(cache_dir) / "mining"
    store = MultiStore([JsonStore(root / f"{key}.json", {"unit": u.label(), "model": model.name})
                        for key, u in zip(keys, units, strict=True)])
    device = model.device
    label = units[0].label() if len(units) == 1 else f"{len(units)} units of {', '.join(layers)}"

    with capture(model.module, layers, model.name) as feats:

        def best_patches(batch: list[tuple[Path, str, torch.Tensor]]) -> list[tuple[dict[str, Any], ...]]:
            out = []
            for _, _, img in batch:
                scores, boxes = [], []
                for chunk, crops in image_patches(img, model.preprocess, patch, stride, batch_size):
                    logits = model.module(model.preprocess.normalize(crops).to(device))
                    scores.append(torch.stack([_scores(feats, logits, u).float().cpu() for u in scorers], 1))
                    boxes += chunk
                per_unit = torch.cat(scores)  # (patches, units)
                best = per_unit.argmax(0).tolist()
                out.append(tuple({"score": float(per_unit[j, k]), "box": boxes[j]} for k, j in enumerate(best)))
            return out

        outcome = scan_images(paths, store, best_patches, desc=f"mining {label}", progress=progress, what="mining")
    return [MiningResult([{"source": str(outcome.sources[sha]), "sha256": sha, **entry[k]}
                          for sha, entry in outcome.entries.items()], par, key, cache=outcome.cache)
            for k, (key, par) in enumerate(zip(keys, params, strict=True))]


def mine_checked(
    model: Any,
    unit: Any,
    images: str | os.PathLike[str],
    *,
    patch: int = 64,
    stride: int | None = None,
    batch_size: int = 32,
    device: Any = "auto",
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> MiningResult:
    """``mine`` on ``device`` after checking the unit exists in its layer (before any image is read)."""
    import logging

    from ..device import frozen_on, resolve_device
    from ..targets import check_units

    dev = resolve_device(device)
    with frozen_on(model.module, dev):
        check_units(model, [unit], model.preprocess.input_size, dev)
        result = mine(model, unit, images, patch=patch, stride=stride, batch_size=batch_size, progress=progress,
                      cache_dir=cache_dir)
    logging.getLogger("vital_fv").info(f"mined {unit.label()} over {result.params['images']} images "
                                       f"({result.cache})")
    return result


def mined_references(result: MiningResult, k: int = 50, use: str = "patches") -> ReferenceSet:
    """The top-``k`` patches (from distinct images) as references, or their full source images (``use="images"``,
    as the authors' code does)."""
    if use not in ("patches", "images"):
        raise VitalError(f"unknown reference kind '{use}': choose patches or images")
    top = result.top(k)
    if not top:
        raise VitalError("mining found no readable image")
    if len(top) < k:
        warnings.warn(f"only {len(top)} distinct images were scanned: using {len(top)} references, not {k}",
                      stacklevel=2)
    images, sources, hashes = [], [], []
    for e in top:
        img, h = read_image(e["source"])
        if h != e["sha256"]:
            raise VitalError(f"{e['source']} changed since it was mined: mine again")
        images.append(crop(img, e["box"]) if use == "patches" else img)
        sources.append(e["source"])
        hashes.append(h if use == "images" else hashlib.sha256(images[-1].numpy().tobytes()).hexdigest())
    return ReferenceSet(images, sources, hashes, n=len(images), label=f"mined:{result.params['unit']}",
                        fit="stretch" if use == "patches" else "crop",
                        info={"mining": {**result.params, "k": k, "use": use, "key": result.key,
                                         "scores": [round(e["score"], 6) for e in top],
                                         "boxes": [e["box"] for e in top]}})


def save_mining(result: MiningResult, refs: ReferenceSet, out: str | os.PathLike[str], use: str,
                overwrite: bool = False) -> Path:
    """Write the patches, a contact sheet with scores, and ``mining.json`` (source and box of each) to ``out``."""

    out = Path(out)
    record_path = out / MINING_RECORD
    refuse_overwrite([record_path, out / "contact_sheet.png"], overwrite)
    out.mkdir(parents=True, exist_ok=True)
    info = refs.info["mining"]
    entries = []
    patches = []
    for rank, (src, score, box) in enumerate(zip(refs.sources, info["scores"], info["boxes"], strict=True), 1):
        img, _ = read_image(src)
        patch = crop(img, box)
        patches.append(patch)
        name = f"patches/{rank:03d}-{''.join(c if c.isalnum() else '-' for c in Path(src).stem)[:40]}.png"
        atomic_write_bytes(out / name, png_bytes(patch.float() / 255))
        entries.append({"rank": rank, "file": name, "source": src, "box": box, "score": score})
    sheet = contact_sheet(patches, [f"#{e['rank']} {e['score']:.3g}" for e in entries])
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(out / "contact_sheet.png", buf.getvalue())
    atomic_write_bytes(record_path, json.dumps( {"vital_fv": __version__, **result.params, "k": info["k"], "use": use,
                                   "cache_key": result.key, "references": entries}, indent=1).encode())
    return record_path


def mine_to_folder(
    model: Any,
    unit: Any,
    images: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    k: int = 50,
    use: str = "patches",
    patch: int = 64,
    stride: int | None = None,
    batch_size: int = 32,
    device: Any = "auto",
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> tuple[Path, ReferenceSet]:
    """``vital mine``: mine the unit's top ``k`` patches of ``images`` (cached, resumable) and write them to ``out``
    (patches/, contact_sheet.png, mining.json); returns the record's path and the references."""
    check_positive("--k", k)
    if use not in ("patches", "images"):
        raise VitalError(f"unknown reference kind '{use}': choose patches or images")
    folder = Path(out)
    refuse_overwrite([folder / MINING_RECORD, folder / "contact_sheet.png"], overwrite)
    result = mine_checked(model, unit, images, patch=patch, stride=stride, batch_size=batch_size, device=device,
                          progress=progress, cache_dir=cache_dir)
    refs = mined_references(result, k=k, use=use)
    return save_mining(result, refs, folder, use, overwrite=overwrite), refs


def merge_shards(job_layer_dir: str | os.PathLike[str], unit: Any) -> Any:
    """``unit``'s ``MiningResult`` over every shard of its layer in an atlas job (``atlas.mining``: each shard's
    ``shard-NNNN.json`` beside its file list; all must be done), as one scan of the whole folder would give."""
    folder = Path(job_layer_dir)
    lists = sorted(folder.glob("shard-*.txt"))
    entries: dict[str, dict[str, Any]] = {}
    params: dict[str, Any] = {}
    key = ""
    for lst in lists:
        result = lst.with_suffix(".json")
        if not result.is_file():
            raise VitalError(f"shard {result.stem} of {folder.name} has not been mined yet: run the job to the end")
        found = json.loads(result.read_text())["units"].get(unit.label())
        if found is None:
            raise VitalError(f"{unit.label()} was not mined in {folder}: plan the job with it")
        for e in found["entries"]:
            entries.setdefault(e["sha256"], e)  # one entry per image content, whichever shard saw it
        params, key = found["params"], found["key"]
    if not lists:
        raise VitalError(f"no shards in {folder}")
    images = sum(1 for lst in lists for line in lst.read_text().splitlines() if line)
    return MiningResult(list(entries.values()), {**params, "folder": str(folder), "images": images,
                                                 "shards": len(lists)}, key, cache="merged")
