"""Polysemantic units (SPEC §5): a unit that fires on unrelated things gets one visualization per meaning.

The unit's top patches (the paper: 1000) are clustered with scikit-learn's k-means on their activation vectors at
the unit's layer (or a layer below), and VITAL runs on each cluster with that cluster's top patches (the paper:
50) as references.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .device import holds_model
from .errors import VitalError
from .features import resolve_layers
from .options import check_positive
from .references import PatchScan, ReferenceSet, scan_patches
from .result import Result, atomic_write_bytes, refuse_overwrite
from .targets import UnitTarget, check_units

RECORD = "disentangle.json"


@dataclass
class Disentangled:
    """A unit's top patches, their unit scores and their cluster (0 = the largest cluster)."""

    unit: UnitTarget
    scan: PatchScan
    selected: list[int]  # indices into ``scan``, by decreasing unit score
    scores: np.ndarray  # unit score of each selected patch
    labels: np.ndarray  # cluster of each selected patch
    params: dict[str, Any]

    @property
    def n_clusters(self) -> int:
        return int(self.labels.max()) + 1

    def sizes(self) -> list[int]:
        """How many patches each cluster holds."""
        return [len(self.members(c)) for c in range(self.n_clusters)]

    def members(self, cluster: int) -> list[int]:
        """Scan indices of the cluster's patches, by decreasing unit score."""
        return [self.selected[i] for i in np.flatnonzero(self.labels == cluster)]

    def references(self, cluster: int, k: int = 50) -> ReferenceSet:
        if not 0 <= cluster < self.n_clusters:
            raise VitalError(f"cluster {cluster} does not exist: there are {self.n_clusters}")
        top = self.members(cluster)[:k]
        where = {j: i for i, j in enumerate(self.selected)}
        return self.scan.references(top, f"{self.unit.label()} cluster {cluster}",
                                    {"cluster": cluster, "scores": [round(float(self.scores[where[j]]), 6)
                                                                    for j in top]})


def top_patches(scores: np.ndarray, entries: Sequence[dict[str, Any]], n: int, per_image: int | None = None) -> \
        list[int]:
    """Indices of the ``n`` highest-scoring patches on which the unit fires (score > 0), at most ``per_image`` from
    one image."""
    order = [int(i) for i in np.argsort(-scores, kind="stable") if scores[i] > 0]
    if not per_image:
        return order[:n]
    taken: dict[str, int] = {}
    out = []
    for i in order:
        h = entries[i]["sha256"]
        if taken.get(h, 0) < per_image:
            taken[h] = taken.get(h, 0) + 1
            out.append(i)
            if len(out) == n:
                break
    return out


def cluster(features: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means labels of L2-normalized feature vectors (the direction of the activation pattern, not its strength,
    tells meanings apart), relabelled so that cluster 0 is the largest."""
    from sklearn.cluster import KMeans

    x = features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)
    labels = KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(x)
    sizes = np.bincount(labels, minlength=k)
    rank = {int(c): r for r, c in enumerate(np.argsort(-sizes, kind="stable"))}
    return np.array([rank[int(c)] for c in labels])


@holds_model
def disentangle(
    spec: Any,
    unit: UnitTarget,
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    clusters: int = 3,
    patches: int = 1000,
    per_image: int | None = None,
    cluster_layer: str | None = None,
    patch: int = 64,
    stride: int | None = None,
    seed: int = 0,
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> Disentangled:
    """The unit's top ``patches`` patches of ``images`` (each image cut as ``vital mine`` does; the scan is cached
    per image and resumes), clustered into ``clusters`` groups by their activations at ``cluster_layer`` (default:
    the unit's own layer)."""
    if unit.position is not None:
        raise VitalError(f"disentangle a channel (LAYER:CHANNEL), not one neuron ({unit.label()})")
    check_positive("--clusters", clusters, 2)
    layer = cluster_layer or unit.layer
    resolve_layers(spec.module, [unit.layer, layer], spec.name)
    check_units(spec, [unit], spec.preprocess.input_size, next(spec.module.parameters()).device)
    layers = list(dict.fromkeys([unit.layer, layer]))
    scan = scan_patches(spec, layers, images, patch=patch, stride=stride or max(1, patch // 2), progress=progress,
                        cache_dir=cache_dir)
    scores = scan.acts[unit.layer][:, unit.channel].numpy()
    selected = top_patches(scores, scan.entries, patches, per_image)
    if len(selected) < 2 * clusters:
        raise VitalError(
            f"{unit.label()} fires on {len(selected)} of {len(scan)} patches from {scan.images} images: too few for "
            f"{clusters} clusters (at least {2 * clusters} needed). Give more images or fewer --clusters"
        )
    labels = cluster(scan.acts[layer][selected].numpy().astype(np.float64), clusters, seed)
    params = {"model": spec.name, "weights": spec.weights_id, "unit": unit.label(), "cluster_layer": layer,
              "clusters": clusters, "patches_requested": patches, "patches": len(selected), "per_image": per_image,
              "patch": patch, "stride": scan.params["stride"], "seed": seed, "images": scan.params["images"],
              "image_count": scan.images, "scanned_patches": len(scan), "scan_cache": scan.cache}
    return Disentangled(unit, scan, selected, scores[selected], labels, params)


def save_disentangled(
    dis: Disentangled, results: Sequence[Result], out: str | os.PathLike[str], top: int, sheet: int = 20,
    overwrite: bool = False,
) -> Path:
    """Per cluster ``cluster-C.png`` (+ record, transparency) and ``cluster-C-patches.png``; ``overview.png`` puts
    the clusters side by side; ``disentangle.json`` records everything."""
    from .references import contact_sheet
    from .version import __version__

    out = Path(out)
    refuse_overwrite([out / RECORD, out / "overview.png"], overwrite)
    out.mkdir(parents=True, exist_ok=True)
    where = {j: i for i, j in enumerate(dis.selected)}
    rows = []
    for c, res in enumerate(results):
        members = dis.members(c)
        crops = dis.scan.crops(members[:sheet])
        buf = io.BytesIO()
        contact_sheet(crops, [f"#{r} {dis.scores[where[j]]:.3g}" for r, j in enumerate(members[:sheet], 1)],
                      cols=10).save(buf, format="PNG")
        atomic_write_bytes(out / f"cluster-{c}-patches.png", buf.getvalue())
        res.save(out / f"cluster-{c}.png", overwrite=True)  # the overwrite check ran before the work
        rows.append({"cluster": c, "size": len(members), "mean_score": round(float(dis.scores[dis.labels == c].mean()),
                                                                             6),
                     "image": f"cluster-{c}.png", "patches_sheet": f"cluster-{c}-patches.png",
                     "unit_value": res.record["target"].get("value"), "status": res.status,
                     "references": [{**dis.scan.entries[j], "score": round(float(dis.scores[where[j]]), 6)}
                                    for j in members[:top]]})
    figure = overview(dis, results)
    atomic_write_bytes(out / "overview.png", figure)
    record = {"vital_fv": __version__, **dis.params, "top": top, "results": rows}
    atomic_write_bytes(out / RECORD, json.dumps(record, indent=1).encode())
    return out / RECORD


def overview(dis: Disentangled, results: Sequence[Result], patches: int = 5) -> bytes:
    """A matplotlib figure, one row per cluster: its VITAL image, the transparency rendering, its top patches."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    k = len(results)
    cols = 2 + patches
    fig, axes = plt.subplots(k, cols, figsize=(1.5 * cols, 1.65 * k + 0.4), squeeze=False)
    for c, res in enumerate(results):
        members = dis.members(c)
        tiles = [res.image.permute(1, 2, 0).clamp(0, 1).numpy(),
                 res.on_white().permute(1, 2, 0).numpy() if res.alpha is not None else None]
        tiles += [crop.permute(1, 2, 0).numpy() for crop in dis.scan.crops(members[:patches])]
        for j, ax in enumerate(axes[c]):
            if j < len(tiles) and tiles[j] is not None:
                ax.imshow(tiles[j])
            ax.set_xticks([])
            ax.set_yticks([])
            for s in ax.spines.values():
                s.set_visible(False)
        axes[c][0].set_ylabel(f"cluster {c}\n{len(members)} patches", fontsize=8)
    for j, title in enumerate(["VITAL", "transparency"] + [f"patch {i + 1}" for i in range(patches)]):
        axes[0][j].set_title(title, fontsize=8)
    fig.suptitle(f"{dis.params['model']} {dis.unit.label()}: {k} meanings", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def visualize_clusters(spec: Any, dis: Disentangled, top: int = 50, seed: int = 0, method: str = "vital",
                       **options: Any) -> list[Result]:
    """VITAL (or another registered method that takes references) for the unit once per cluster, each with the
    cluster's ``top`` patches as references, in one batch through the registry (``methods.run_method``)."""
    from .methods import Job, run_method

    jobs = [Job(dis.unit, dis.references(c, top), seed) for c in range(dis.n_clusters)]
    results = run_method(method, spec, jobs, **options)
    for c, r in enumerate(results):
        r.record["cluster"] = {"index": c, "size": len(dis.members(c)), "disentangle": dis.params}
    return results



@dataclass
class DisentangleRun:
    """What ``run_disentangle`` made: the clusters, one result per cluster, and where the record is."""

    disentangled: Disentangled
    results: list[Result]
    record: Path
    out: Path

    def sizes(self) -> list[int]:
        return self.disentangled.sizes()


def run_disentangle(
    model: Any,
    unit: UnitTarget | str,
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    clusters: int = 3,
    patches: int = 1000,
    per_image: int | None = None,
    cluster_layer: str | None = None,
    patch: int = 64,
    stride: int | None = None,
    n_refs: int = 50,
    seed: int = 0,
    preset: str = "paper",
    steps: int | None = None,
    lr: float | None = None,
    relevance: str | None = "lrp",
    device: str = "auto",
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> DisentangleRun:
    """``vital disentangle`` as one call: the unit's top patches of ``images`` clustered, VITAL once per cluster
    (through the registry), and the files of ``save_disentangled`` in ``out``. ``model``: a ``ModelSpec`` or a zoo
    name (with ``weights``); ``unit``: a ``UnitTarget`` or ``LAYER:CHANNEL``. Options and output files are checked
    before any work; after a non-finite loss the last finite images are saved and a ``VitalError`` says so."""
    import logging

    from .device import frozen_on, resolve_device
    from .methods import get_method, get_preset, keep_last_finite
    from .result import output_folder
    from .zoo import as_model_spec

    get_preset(get_method("vital"), preset, steps, lr)
    check_positive("--n-refs", n_refs)
    unit = UnitTarget.parse(unit) if isinstance(unit, str) else unit
    folder = output_folder(out, [RECORD, "overview.png"], overwrite)
    spec = as_model_spec(model, weights)
    with frozen_on(spec.module, resolve_device(device)):
        dis = disentangle(spec, unit, images, clusters=clusters, patches=patches, per_image=per_image,
                          cluster_layer=cluster_layer, patch=patch, stride=stride, seed=seed, progress=progress,
                          cache_dir=cache_dir)
    logging.getLogger("vital_fv").info(
        f"{unit.label()}: {dis.params['patches']} top patches of {dis.params['image_count']} images in "
        f"{dis.n_clusters} clusters of {', '.join(map(str, dis.sizes()))}; visualizing each")
    results = keep_last_finite(
        lambda: visualize_clusters(spec, dis, top=n_refs, seed=seed, progress=progress, preset=preset, steps=steps,
                                   lr=lr, device=device, relevance=relevance),
        [folder / f"cluster-{c}.png" for c in range(dis.n_clusters)])
    record = save_disentangled(dis, results, folder, top=n_refs, overwrite=overwrite)
    return DisentangleRun(dis, results, record, folder)
