"""Small circuits (the paper's §4.1.2, Fig. 4): the channels of the last hidden layer that carry a class's decision.

Channels are ranked by their LRP relevance for the class logit, summed over the class's images (positions and
images); the top k are visualized as units (references mined from a folder) and drawn with the class in one figure.
"""

from __future__ import annotations

import io
import json
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .cache import cache_key, cache_root
from .device import holds_model
from .errors import VitalError
from .options import check_positive
from .references import read_image
from .result import Result, atomic_write_bytes, refuse_overwrite
from .targets import UnitTarget

RECORD = "circuit.json"


@dataclass
class Ranking:
    """Per channel of ``layer``: LRP relevance for the class logit summed over images (``totals``) and per image."""

    layer: str
    class_index: int
    totals: np.ndarray  # (C,)
    per_image: dict[str, list[float]]  # sha256 -> (C,) relevance
    sources: dict[str, str]  # sha256 -> file
    logit_sum: float  # summed start relevance (the class logits): the totals add up to it when relevance is conserved
    params: dict[str, Any]

    def order(self) -> list[int]:
        return [int(c) for c in np.argsort(-self.totals, kind="stable")]

    def shares(self) -> np.ndarray:
        """Each channel's part of the positive relevance reaching the layer."""
        pos = self.totals.clip(min=0).sum()
        return self.totals / pos if pos > 0 else np.zeros_like(self.totals)


@holds_model
def rank_channels(
    spec: Any,
    class_index: int,
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    layer: str | None = None,
    batch_size: int = 16,
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Ranking:
    """Sum, over ``images`` (each with the model's own resize and center crop) and over positions, the LRP relevance
    of every channel of ``layer`` (default: the last hidden layer) for the class logit.

    Each image's relevance vector is saved as the scan goes (keyed by model, layer, class and image content): an
    interrupted ranking resumes, and a repeated one is read back."""
    from .references import JsonStore, ReferenceSet, image_paths, scan_images
    from .relevance import Relevance

    if spec.class_names and not 0 <= class_index < len(spec.class_names):
        raise VitalError(f"class index {class_index} is out of range: the model has {len(spec.class_names)} classes")
    layer = layer or spec.last_hidden_layer()
    paths, where = image_paths(images)
    parts = {"model": spec.name, "weights": spec.weights_id, "layer": layer, "class": class_index,
             "preprocess": spec.preprocess.as_dict(), "rules": "lrp"}
    key = cache_key(parts)
    store = JsonStore(cache_root(cache_dir) / "circuits" / f"{key}.json", parts)
    device = spec.device
    rel_models: list[Relevance] = []  # built on the first image that is not cached (a copy of the model)

    def relevance(batch: list[tuple[Path, str, torch.Tensor]]) -> list[dict[str, Any]]:
        if not rel_models:
            rel_models.append(Relevance(spec.module, [layer], "lrp", spec.skip_tokens, spec.name))
        refs = ReferenceSet([img for _, _, img in batch], [str(p) for p, _, _ in batch],
                            [sha for _, sha, _ in batch], n=len(batch))
        x = spec.preprocess.normalize(refs.prepare(spec.preprocess)).to(device)
        out = rel_models[0](x, [class_index] * len(batch))
        per = out.rel[layer].sum(-1).double().cpu()
        return [{"relevance": per[b].tolist(), "logit": float(out.start[b])} for b in range(len(batch))]

    try:
        outcome = scan_images(paths, store, relevance, batch_size=batch_size, progress=progress,
                              desc=f"relevance of {layer} for class {class_index}", what="ranking")
    finally:
        for r in rel_models:
            r.close()
    if not outcome.entries:
        raise VitalError(f"no readable image in {where}")
    per_image = {h: e["relevance"] for h, e in outcome.entries.items()}
    totals = np.sum([per_image[h] for h in sorted(per_image)], axis=0)
    params = {"model": spec.name, "weights": spec.weights_id, "class_index": class_index,
              "class_name": spec.class_names[class_index] if spec.class_names else str(class_index), "layer": layer,
              "images": where, "image_count": len(per_image), "relevance": "lrp", "cache": outcome.cache,
              "cache_key": key}
    sources = {h: str(p) for h, p in outcome.sources.items()}
    logit_sum = float(sum(e["logit"] for e in outcome.entries.values()))
    if logit_sum <= 0:
        warnings.warn(f"the class logit is not positive on these images (sum {logit_sum:.3g}): the ranking "
                      "spreads a negative decision; give images of the class", stacklevel=2)
    return Ranking(layer, class_index, totals, per_image, sources, logit_sum, params)


@torch.no_grad()
def ablation(spec: Any, ranking: Ranking, channels: Sequence[int], n_random: int = 20, seed: int = 0,
             batch_size: int = 32) -> dict[str, Any]:
    """How much of the class logit the channels carry: the mean logit drop over the ranked images when the
    channels are zeroed at the ranking's layer, beside the drop for as many channels drawn at random."""
    import random

    from .features import resolve_layers
    from .references import from_files

    (mod,) = resolve_layers(spec.module, [ranking.layer], spec.name)
    device = next(spec.module.parameters()).device
    files = [ranking.sources[h] for h in sorted(ranking.sources)]
    rng = random.Random(seed)
    draws = [rng.sample(range(len(ranking.totals)), len(channels)) for _ in range(n_random)]
    zeroed: list[int] = []

    def hook(_m: Any, _i: Any, o: torch.Tensor) -> torch.Tensor | None:
        if not zeroed:
            return None
        o = o.clone()
        if o.dim() == 4:
            o[:, zeroed] = 0
        else:
            o[..., zeroed] = 0
        return o

    variants = [list(channels), *draws]  # the circuit's channels, then the random draws
    drops = torch.zeros(len(variants))
    logit_sum = 0.0
    handle = mod.register_forward_hook(hook)
    try:
        for i in range(0, len(files), batch_size):  # each batch is read once and run for every variant
            x = spec.preprocess.normalize(from_files(files[i : i + batch_size]).prepare(spec.preprocess)).to(device)
            zeroed.clear()
            base = spec.module(x)[:, ranking.class_index].float().cpu()
            logit_sum += float(base.sum())
            for k, v in enumerate(variants):
                zeroed[:] = v
                drops[k] += float((base - spec.module(x)[:, ranking.class_index].float().cpu()).sum())
    finally:
        handle.remove()
    drops /= len(files)
    base, top, rand = logit_sum / len(files), float(drops[0]), drops[1:].numpy()
    return {"channels": list(map(int, channels)), "images": len(files), "logit_mean": round(base, 6),
            "drop_top": round(top, 6), "drop_random_mean": round(float(rand.mean()), 6),
            "drop_random_std": round(float(rand.std()), 6), "random_draws": n_random, "seed": seed}


@dataclass
class Circuit:
    """The top channels of a ranking with their visualizations and mined references."""

    ranking: Ranking
    channels: list[int]
    results: list[Result]
    references: list[Any]  # ReferenceSet per channel (mined patches)
    ablation: dict[str, Any] | None = None


@holds_model
def build_circuit(
    spec: Any, ranking: Ranking, mine_images: str | os.PathLike[str], top: int = 3, n_refs: int = 50,
    seed: int = 0, progress: bool = True, cache_dir: str | os.PathLike[str] | None = None, patch: int = 64,
    method: str = "vital", **options: Any,
) -> Circuit:
    """Visualize the ``top`` channels of ``ranking`` as units: references mined from ``mine_images`` (one scan for
    all of them), VITAL with LRP in one batch through the registry (``options`` go to ``methods.run_method``)."""
    from .methods import Job, run_method
    from .references import mine_many, mined_references

    check_positive("--top", top)
    channels = ranking.order()[:top]
    units = [UnitTarget(ranking.layer, c) for c in channels]
    mined = mine_many(spec, units, mine_images, patch=patch, progress=progress, cache_dir=cache_dir)
    refs = [mined_references(m, k=n_refs) for m in mined]
    jobs = [Job(u, r, seed) for u, r in zip(units, refs, strict=True)]
    results = run_method(method, spec, jobs, progress=progress, **options)
    shares = ranking.shares()
    for c, res in zip(channels, results, strict=True):
        res.record["circuit"] = {"class_index": ranking.class_index, "class_name": ranking.params["class_name"],
                                 "relevance": round(float(ranking.totals[c]), 6), "share": round(float(shares[c]), 6),
                                 "rank": channels.index(c) + 1}
    return Circuit(ranking, channels, results, refs, ablation(spec, ranking, channels, seed=seed))


def run_circuit(
    model: Any,
    cls: int | str,
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    mine: str | os.PathLike[str] | None = None,
    top: int = 3,
    layer: str | None = None,
    n_refs: int = 50,
    patch: int = 64,
    seed: int = 0,
    preset: str = "paper",
    steps: int | None = None,
    lr: float | None = None,
    relevance: str | None = "lrp",
    device: str = "auto",
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> tuple[Circuit, Path]:
    """``vital circuit`` as one call: rank the channels of ``layer`` for the class over ``images``, visualize the
    ``top`` ones from patches mined in ``mine`` (default: ``images``) through the registry, and write the files of
    ``save_circuit`` to ``out``; returns the circuit and its record's path. ``model``: a ``ModelSpec`` or a zoo
    name (with ``weights``); ``cls``: a class index or name. Options and output files are checked before any work;
    after a non-finite loss the last finite images are saved and a ``VitalError`` says so."""
    import logging

    from .device import frozen_on, resolve_device
    from .methods import get_method, get_preset, keep_last_finite
    from .result import output_folder
    from .targets import ClassTarget
    from .zoo import as_model_spec

    get_preset(get_method("vital"), preset, steps, lr)
    check_positive("--top", top)
    check_positive("--n-refs", n_refs)
    folder = output_folder(out, [RECORD, "circuit.png"], overwrite)
    spec = as_model_spec(model, weights)
    index, name = ClassTarget(cls).resolve(spec.class_names, spec.class_synonyms)
    with frozen_on(spec.module, resolve_device(device)):
        ranking = rank_channels(spec, index, images, layer=layer, progress=progress, cache_dir=cache_dir)
    shares = ranking.shares()
    channels = ranking.order()[:top]
    logging.getLogger("vital_fv").info(
        f"{name} ({index}): top channels of {ranking.layer} over {ranking.params['image_count']} images: "
        + ", ".join(f"#{c} {100 * shares[c]:.1f}%" for c in channels))
    holder: dict[str, Circuit] = {}

    def run() -> list[Result]:
        holder["circuit"] = build_circuit(
            spec, ranking, mine or images, top=top, n_refs=n_refs, seed=seed, progress=progress,
            cache_dir=cache_dir, patch=patch, preset=preset, steps=steps, lr=lr, device=device, relevance=relevance)
        return holder["circuit"].results

    keep_last_finite(run, [folder / f"unit-{c}.png" for c in channels])
    return holder["circuit"], save_circuit(holder["circuit"], folder, overwrite=overwrite)


def save_circuit(circuit: Circuit, out: str | os.PathLike[str], patches: int = 3, overwrite: bool = False) -> Path:
    """``unit-C.png`` (+ record, transparency) per channel, ``circuit.png`` (the paper's Fig. 4 style) and
    ``circuit.json``."""
    from .version import __version__

    out = Path(out)
    refuse_overwrite([out / RECORD, out / "circuit.png"], overwrite)
    out.mkdir(parents=True, exist_ok=True)
    rk = circuit.ranking
    shares = rk.shares()
    units = []
    for c, res, refs in zip(circuit.channels, circuit.results, circuit.references, strict=True):
        res.save(out / f"unit-{c}.png", overwrite=True)
        units.append({"channel": c, "relevance": round(float(rk.totals[c]), 6), "share": round(float(shares[c]), 6),
                      "image": f"unit-{c}.png", "unit_value": res.record["target"].get("value"),
                      "status": res.status, "references": refs.describe()["sources"],
                      "boxes": refs.info["mining"]["boxes"]})
    atomic_write_bytes(out / "circuit.png", figure(circuit, patches))
    ranking = [{"channel": c, "relevance": round(float(rk.totals[c]), 6), "share": round(float(shares[c]), 6)}
               for c in rk.order()[:20]]
    record = {"vital_fv": __version__, **rk.params, "top": len(circuit.channels), "logit_sum": round(rk.logit_sum, 6),
              "relevance_sum": round(float(rk.totals.sum()), 6), "ranking_top20": ranking, "units": units,
              "ablation": circuit.ablation}
    atomic_write_bytes(out / RECORD, json.dumps(record, indent=1).encode())
    return out / RECORD


def figure(circuit: Circuit, patches: int = 3) -> bytes:
    """The paper's Fig. 4 layout: each unit's VITAL image and top patches on the left, the class on the right,
    arrows labelled with channel id and relevance share."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    from .references import crop

    rk = circuit.ranking
    k = len(circuit.channels)
    cols = 1 + patches
    height = 1.7 * k + 0.8
    fig = plt.figure(figsize=(1.6 * cols + 3.2, height))
    top_margin = 0.75 / height  # room for the title and the column titles
    row_h = (1 - top_margin - 0.02) / k
    tile_w = 1.6 / fig.get_figwidth()
    shares = rk.shares()
    centre = 0.02 + (1 - top_margin - 0.02) / 2
    for i, (c, res, refs) in enumerate(zip(circuit.channels, circuit.results, circuit.references, strict=True)):
        y0 = 1 - top_margin - (i + 1) * row_h
        tiles = [res.on_white().permute(1, 2, 0).numpy()]  # the transparency rendering, as the method shows units
        for src, box in list(zip(refs.sources, refs.info["mining"]["boxes"], strict=True))[:patches]:
            tiles.append(crop(read_image(src)[0], box).permute(1, 2, 0).numpy())
        for j, tile in enumerate(tiles):
            ax = fig.add_axes((0.01 + j * tile_w, y0 + 0.08 * row_h, tile_w * 0.94, row_h * 0.84))
            ax.imshow(tile)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("VITAL (transparency)" if j == 0 else f"top patch {j}", fontsize=8)
        start = (0.01 + len(tiles) * tile_w, y0 + row_h / 2)
        end = (0.80, centre)
        fig.add_artist(FancyArrowPatch(start, end, transform=fig.transFigure, arrowstyle="-|>", mutation_scale=12,
                                       lw=1 + 4 * max(0.0, float(shares[c])), color="#444"))
        mid = (start[0] + (end[0] - start[0]) * 0.35, start[1] + (end[1] - start[1]) * 0.35)
        fig.text(*mid, f"#{c}  {100 * shares[c]:.1f}%", fontsize=9, ha="center", va="bottom",
                 bbox={"boxstyle": "round", "fc": "white", "ec": "#999"})
    name = rk.params["class_name"]
    fig.text(0.895, centre, f"{name}\n(class {rk.class_index})", ha="center", va="center", fontsize=11,
             bbox={"boxstyle": "round,pad=0.6", "fc": "#eef", "ec": "#336"})
    n = rk.params["image_count"]
    fig.suptitle(f"{rk.params['model']}: top {k} channels of {rk.layer} for '{name}' (LRP relevance, {n} "
                 f"image{'s' if n != 1 else ''})", fontsize=9, y=1 - 0.12 / height, va="top")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()

