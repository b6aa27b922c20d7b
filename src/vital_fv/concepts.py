"""Concepts of a class (CRAFT, Fel et al. 2023, SPEC §5): directions in the channel space of a model's last hidden
layer, found by non-negative matrix factorization of the activations of crops of the class's images, ranked by
their Sobol total index for the class logit.

Our own implementation on scikit-learn's NMF and SciPy's Sobol sequence (no maintained CRAFT package for PyTorch
exists; Xplique's is TensorFlow-first). Concepts are saved as ``concepts.safetensors`` (directions, importances,
coefficients, with the record in its metadata), ``concepts.json``, the top crops per concept as PNGs and a
contact sheet; ``vital visualize --concept FILE:IDX`` visualizes one with a ``DirectionTarget``.
"""

from __future__ import annotations

import io
import json
import os
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .device import holds_model
from .errors import VitalError
from .features import capture, resolve_layers
from .options import check_positive
from .references import PatchScan, ReferenceSet, contact_sheet, from_files, scan_patches
from .result import atomic_write_bytes, png_bytes, refuse_overwrite
from .targets import DirectionTarget

CONCEPTS_FILE = "concepts.safetensors"
CONCEPTS_RECORD = "concepts.json"


# --- the function from the last hidden layer to the logits ----------------------------------------------------


@dataclass
class Head:
    """The model from ``layer`` to the logits, as a function of the layer's output (B, C, H, W) or (B, T, D)."""

    fn: Callable[[torch.Tensor], torch.Tensor]
    kind: str  # "pool+linear", "pool+relu+linear" or "replay"
    act: torch.Tensor  # the layer's output on the images the head was checked on


def head_from(spec: Any, layer: str, x: torch.Tensor) -> Head:
    """The function from ``layer``'s output to the logits, checked against the model on the images ``x``.

    A pooled linear head (EfficientNet, ResNet, DenseNet) is applied directly; any other head is replayed: the
    model runs on ``x`` with the layer's output replaced by the given one (general, but a full forward per call).
    """
    (mod,) = resolve_layers(spec.module, [layer], spec.name)
    with torch.no_grad(), capture(spec.module, [layer], spec.name) as feats:
        logits = spec.module(x)
        act = feats[layer][0] if isinstance(feats[layer], (tuple, list)) else feats[layer]
    with_relu = None
    try:
        lin = spec.classifier_head()
    except VitalError:
        lin = None
    if lin is not None and act.dim() == 4 and act.shape[1] == lin.in_features:
        for relu in (False, True):
            pooled = (act.clamp(min=0) if relu else act).mean((2, 3))
            if torch.allclose(lin(pooled), logits, rtol=1e-3, atol=1e-3 * float(logits.abs().max())):
                with_relu = relu
                break
    if with_relu is not None:
        def fn(a: torch.Tensor, relu: bool = with_relu) -> torch.Tensor:
            return lin((a.clamp(min=0) if relu else a).mean((2, 3)))
        return Head(fn, "pool+relu+linear" if with_relu else "pool+linear", act)

    def replay(a: torch.Tensor) -> torch.Tensor:
        xs = x[:1].expand(a.shape[0], *x.shape[1:])
        h = mod.register_forward_hook(lambda _m, _i, _o: a)
        try:
            return spec.module(xs)
        finally:
            h.remove()
    return Head(replay, "replay", act)


# --- CRAFT -------------------------------------------------------------------------------------------------------


@dataclass
class Concepts:
    """r concept directions of a class at ``layer``, ranked by importance (index 0 = most important)."""

    layer: str
    directions: torch.Tensor  # (r, C), unit norm
    importance: torch.Tensor  # (r,) Sobol total index for the class logit, averaged over the class's images
    coefficients: torch.Tensor  # (n_crops, r) NMF coefficients of every crop
    scan: PatchScan
    params: dict[str, Any]
    top: list[list[int]] = field(default_factory=list)  # per concept, crop indices by decreasing coefficient

    def target(self, index: int) -> DirectionTarget:
        check_index(index, len(self.directions))
        return DirectionTarget(self.layer, self.directions[index], name=f"concept{index}")

    def references(self, index: int, k: int | None = None) -> ReferenceSet:
        check_index(index, len(self.directions))
        top = self.top[index][: k or len(self.top[index])]
        return self.scan.references(top, f"concept {index} of {self.params['class_name']}",
                                    {"concept": index, "coefficients": [round(float(self.coefficients[i, index]), 6)
                                                                        for i in top]})


def check_index(index: int, count: int) -> None:
    if not 0 <= index < count:
        raise VitalError(f"concept {index} does not exist: there are {count} (0..{count - 1}, 0 = most important)")


def nmf(acts: np.ndarray, r: int, seed: int = 0, max_iter: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """A ≈ U W with U, W ≥ 0; rows of W scaled to unit norm (U scaled inversely), so coefficients are comparable."""
    from sklearn.decomposition import NMF

    model = NMF(n_components=r, init="nndsvda", max_iter=max_iter, random_state=seed, tol=1e-5)
    u = model.fit_transform(acts)
    w = model.components_
    norms = np.linalg.norm(w, axis=1, keepdims=True)
    norms[norms == 0] = 1
    return u * norms.T, w / norms


def nmf_transform(acts: np.ndarray, w: np.ndarray, max_iter: int = 1000) -> np.ndarray:
    """Coefficients U ≥ 0 of new activations for fixed directions W (rows)."""
    from sklearn.decomposition import non_negative_factorization

    u, _, _ = non_negative_factorization(np.ascontiguousarray(acts, dtype=np.float64), H=w.astype(np.float64),
                                         n_components=w.shape[0], update_H=False, max_iter=max_iter)
    return u


def sobol_masks(r: int, nb_design: int, seed: int = 0) -> tuple[np.ndarray, int]:
    """Saltelli's design for r inputs from a scrambled Sobol sequence: rows [A; B; C_1..C_r] with C_i = A whose
    column i comes from B; (nb_design * (r + 2), r) masks in [0, 1]."""
    from scipy.stats import qmc

    s = qmc.Sobol(d=2 * r, scramble=True, seed=seed).random(nb_design)
    a, b = s[:, :r], s[:, r:]
    cs = []
    for i in range(r):
        c = a.copy()
        c[:, i] = b[:, i]
        cs.append(c)
    return np.concatenate([a, b, *cs]), nb_design


def jansen_total(f: np.ndarray, r: int, nb_design: int) -> np.ndarray:
    """Total Sobol indices from the outputs of ``sobol_masks``' design (Jansen's estimator)."""
    fa, fb = f[:nb_design], f[nb_design : 2 * nb_design]
    fc = f[2 * nb_design :].reshape(r, nb_design)
    var = np.var(np.concatenate([fa, fb]))
    if var <= 0:
        return np.zeros(r)
    return ((fa[None] - fc) ** 2).mean(1) / (2 * var)


def _positions(a: torch.Tensor) -> tuple[torch.Tensor, Callable[[torch.Tensor], torch.Tensor]]:
    """(P, C) rows of one item's layer output, and the inverse for (n, P, C) batches."""
    if a.dim() == 3:  # (C, H, W)
        c, h, w = a.shape
        return a.flatten(1).t(), lambda z: z.transpose(1, 2).reshape(z.shape[0], c, h, w)
    return a, lambda z: z  # (T, D) tokens


@torch.no_grad()
def concept_importance(
    spec: Any, layer: str, directions: np.ndarray, class_index: int, images: Sequence[str | os.PathLike[str]],
    nb_design: int = 32, seed: int = 0, batch_size: int = 64,
) -> tuple[np.ndarray, str]:
    """Total Sobol index of each concept for the class logit (CRAFT): each position of an image's layer output is
    written in concept coefficients, the coefficients are masked by the quasi-Monte-Carlo design, the masked
    reconstruction goes through the rest of the model, and the indices are averaged over the images (image
    files, each with the model's resize and center crop, read one at a time)."""
    device = next(spec.module.parameters()).device
    r = directions.shape[0]
    masks, nb = sobol_masks(r, nb_design, seed)
    masks_t = torch.as_tensor(masks, dtype=torch.float32, device=device)
    w = torch.as_tensor(directions, dtype=torch.float32, device=device)
    totals = []
    kind = ""
    for file in images:
        x = spec.preprocess.normalize(from_files([file]).prepare(spec.preprocess)).to(device)
        head = head_from(spec, layer, x)  # its check already ran the model: its activation is reused
        kind = head.kind
        rows, back = _positions(head.act[0].float())
        u = torch.as_tensor(nmf_transform(rows.clamp(min=0).cpu().numpy(), directions), dtype=torch.float32,
                            device=device)  # (P, r)
        f = []
        for i in range(0, len(masks_t), batch_size):
            m = masks_t[i : i + batch_size]
            recon = (u[None] * m[:, None, :]) @ w  # (n, P, C)
            f.append(head.fn(back(recon))[:, class_index].float().cpu())
        totals.append(jansen_total(torch.cat(f).numpy().astype(np.float64), r, nb))
    return np.mean(totals, 0), kind


@holds_model
def extract_concepts(
    spec: Any,
    class_index: int,
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    n_concepts: int = 10,
    layer: str | None = None,
    patch: int = 64,
    stride: int | None = None,
    top: int = 10,
    nb_design: int = 32,
    seed: int = 0,
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    class_name: str | None = None,
    sobol_images: int | None = 100,
) -> Concepts:
    """CRAFT for one class: crops of ``images`` (the class's pictures; ``patch`` px, non-overlapping by default, as
    CRAFT), their positive activations at ``layer`` (default: the last hidden layer) averaged over positions,
    NMF into ``n_concepts`` directions, Sobol total indices for the class logit on the whole images (a seeded
    sample of ``sobol_images`` of them; None for all), and each concept's ``top`` crops. The patch scan is cached
    per image (an interrupted run resumes)."""
    check_positive("--n-concepts", n_concepts)
    if class_index < 0 or (spec.class_names and class_index >= len(spec.class_names)):
        raise VitalError(f"class index {class_index} is out of range: the model has {len(spec.class_names)} classes")
    layer = layer or spec.last_hidden_layer()
    resolve_layers(spec.module, [layer], spec.name)
    scan = scan_patches(spec, [layer], images, patch=patch, stride=stride or patch, progress=progress,
                        cache_dir=cache_dir)
    if len(scan) < 2 * n_concepts:
        raise VitalError(
            f"{len(scan)} crops from {scan.images} images are too few for {n_concepts} concepts (at least "
            f"{2 * n_concepts} needed): give more images of the class, fewer --n-concepts, or a smaller --stride"
        )
    acts = scan.acts[layer].clamp(min=0).numpy().astype(np.float64)
    if not (acts.sum(1) > 0).any():
        raise VitalError(f"layer {layer} is never positive on these crops: choose another --layer")
    u, w = nmf(acts, n_concepts, seed)
    files = sorted({e["source"] for e in scan.entries})
    if sobol_images and len(files) > sobol_images:  # a seeded sample bounds the cost on large class folders
        files = sorted(random.Random(seed).sample(files, sobol_images))
    importance, head_kind = concept_importance(spec, layer, w, class_index, files, nb_design, seed)
    order = np.argsort(-importance, kind="stable")
    u, w, importance = u[:, order], w[order], importance[order]
    tops = [list(map(int, np.argsort(-u[:, i], kind="stable")[:top])) for i in range(n_concepts)]
    params = {
        "model": spec.name, "weights": spec.weights_id, "class_index": class_index,
        "class_name": class_name or (spec.class_names[class_index] if spec.class_names else str(class_index)),
        "layer": layer, "n_concepts": n_concepts, "patch": patch, "stride": stride or patch, "top": top,
        "nb_design": nb_design, "sobol_images": len(files), "seed": seed, "images": scan.params["images"],
        "image_count": scan.images,
        "crops": len(scan), "head": head_kind, "scan_cache": scan.cache,
        "nmf": {"init": "nndsvda", "relative_error": float(np.linalg.norm(acts - u @ w) / np.linalg.norm(acts))},
    }
    return Concepts(layer, torch.as_tensor(w, dtype=torch.float32), torch.as_tensor(importance, dtype=torch.float32),
                    torch.as_tensor(u, dtype=torch.float32), scan, params, tops)


# --- files ---------------------------------------------------------------------------------------------------------


def save_concepts(concepts: Concepts, out: str | os.PathLike[str], overwrite: bool = False) -> Path:
    """``out/concepts.safetensors`` + ``concepts.json`` + ``crops/concept-I/NN.png`` + ``contact_sheet.png``."""
    from safetensors.torch import save as st_save

    from .version import __version__

    out = Path(out)
    files = [out / CONCEPTS_FILE, out / CONCEPTS_RECORD, out / "contact_sheet.png"]
    refuse_overwrite(files, overwrite)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    sheet_rows = []
    for i in range(len(concepts.directions)):
        crops = concepts.scan.crops(concepts.top[i])
        items = []
        for rank, (j, crop) in enumerate(zip(concepts.top[i], crops, strict=True), 1):
            name = f"crops/concept-{i}/{rank:02d}.png"
            atomic_write_bytes(out / name, png_bytes(crop.float() / 255))
            e = concepts.scan.entries[j]
            items.append({"file": name, "source": e["source"], "sha256": e["sha256"], "box": e["box"],
                          "coefficient": round(float(concepts.coefficients[j, i]), 6)})
        share = float(concepts.importance[i] / concepts.importance.sum()) if concepts.importance.sum() > 0 else 0.0
        rows.append({"index": i, "importance": round(float(concepts.importance[i]), 6), "share": round(share, 4),
                     "top_crops": items})
        sheet_rows.append((f"concept {i}  importance {float(concepts.importance[i]):.3f}", crops))
    record = {"vital_fv": __version__, **concepts.params, "concepts": rows}
    sources = list(dict.fromkeys(e["source"] for e in concepts.scan.entries))
    where = {src: k for k, src in enumerate(sources)}
    # Every crop's coefficients with its box and image (an index into the record's "crop_sources").
    atomic_write_bytes(out / CONCEPTS_FILE, st_save(
        {"directions": concepts.directions.contiguous(), "importance": concepts.importance.contiguous(),
         "coefficients": concepts.coefficients.contiguous(),
         "crop_boxes": torch.tensor([e["box"] for e in concepts.scan.entries], dtype=torch.int64),
         "crop_image": torch.tensor([where[e["source"]] for e in concepts.scan.entries], dtype=torch.int64)},
        metadata={"record": json.dumps({**record, "crop_sources": sources})}))
    atomic_write_bytes(out / CONCEPTS_RECORD, json.dumps({**record, "crop_sources": sources}, indent=1).encode())
    buf = io.BytesIO()
    labelled_sheet(sheet_rows).save(buf, format="PNG")
    atomic_write_bytes(out / "contact_sheet.png", buf.getvalue())
    return out / CONCEPTS_FILE


def run_concepts(
    model: Any,
    cls: int | str,
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    out: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    n_concepts: int = 10,
    layer: str | None = None,
    patch: int = 64,
    stride: int | None = None,
    top: int = 10,
    nb_design: int = 32,
    sobol_images: int | None = 100,
    seed: int = 0,
    device: str = "auto",
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> tuple[Concepts, Path]:
    """``vital concepts`` as one call: CRAFT concepts of the class (``extract_concepts``) written to ``out``
    (``save_concepts``); returns them and the ``concepts.safetensors`` path. ``model``: a ``ModelSpec`` or a zoo
    name (with ``weights``); ``cls``: a class index or name. The output files are checked before any work."""
    from .device import frozen_on, resolve_device
    from .result import output_folder
    from .targets import ClassTarget
    from .zoo import as_model_spec

    folder = output_folder(out, [CONCEPTS_FILE, CONCEPTS_RECORD], overwrite)
    spec = as_model_spec(model, weights)
    index, name = ClassTarget(cls).resolve(spec.class_names, spec.class_synonyms)
    with frozen_on(spec.module, resolve_device(device)):
        concepts = extract_concepts(spec, index, images, n_concepts=n_concepts, layer=layer, patch=patch,
                                    stride=stride, top=top, nb_design=nb_design, sobol_images=sobol_images or None,
                                    seed=seed, progress=progress, cache_dir=cache_dir, class_name=name)
    return concepts, save_concepts(concepts, folder, overwrite=overwrite)


def labelled_sheet(rows: Sequence[tuple[str, Sequence[torch.Tensor]]], tile: int = 96):  # noqa: ANN201 - PIL image
    """One labelled row of tiles per group (concepts, clusters), stacked vertically."""
    from PIL import Image, ImageDraw

    cols = max(len(r[1]) for r in rows)
    head = 16
    sheet = Image.new("RGB", (cols * tile, len(rows) * (tile + head)), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (label, crops) in enumerate(rows):
        y = k * (tile + head)
        draw.text((2, y + 2), label, fill="black")
        part = contact_sheet(list(crops), [""] * len(crops), tile=tile, cols=cols) if crops else None
        if part is not None:
            sheet.paste(part.crop((0, 0, part.width, tile)), (0, y + head))
    return sheet


@dataclass
class SavedConcept:
    """One concept read back from ``concepts.safetensors``: its target, record and top crops."""

    target: DirectionTarget
    record: dict[str, Any]
    folder: Path
    index: int

    def references(self) -> ReferenceSet:
        """The concept's saved top crops (stretched to the model input, as mined patches)."""
        items = self.record["concepts"][self.index]["top_crops"]
        refs = from_files([self.folder / it["file"] for it in items])
        refs.fit = "stretch"
        refs.label = f"concept {self.index} of {self.record['class_name']} ({self.folder})"
        refs.info = {"concept": {"index": self.index, "file": str(self.folder / CONCEPTS_FILE),
                                 "coefficients": [it["coefficient"] for it in items]}}
        return refs


def load_concept(text: str) -> SavedConcept:
    """``FILE:IDX`` (a ``concepts.safetensors`` or its folder, and a concept index; 0 = most important)."""
    concepts = load_concepts(text)
    if len(concepts) != 1:
        raise VitalError(f"'{text}' names {len(concepts)} concepts: give one index")
    return concepts[0]


def load_concepts(text: str) -> list[SavedConcept]:
    """``FILE:IDX``, ``FILE:0,1,2`` or ``FILE:all`` (a ``concepts.safetensors`` or its folder)."""
    from safetensors import safe_open

    path, sep, idx = str(text).rpartition(":")
    parts = [t.strip() for t in idx.split(",") if t.strip()]
    if not sep or not parts or not (parts == ["all"] or all(t.isdigit() for t in parts)):
        raise VitalError(f"cannot read concept '{text}': write FILE:INDEX (or FILE:0,1,2, FILE:all), e.g. "
                         f"concepts/espresso/{CONCEPTS_FILE}:3")
    p = Path(path)
    if p.is_dir():
        p = p / CONCEPTS_FILE
    try:
        with safe_open(str(p), framework="pt") as f:
            record = json.loads(f.metadata()["record"])
            directions = f.get_tensor("directions")
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same clear message
        raise VitalError(f"cannot read concepts file {p}: {exc} (write one with `vital concepts`)") from None
    indices = list(range(len(directions))) if parts == ["all"] else [int(t) for t in parts]
    out = []
    for index in dict.fromkeys(indices):
        check_index(index, len(directions))
        target = DirectionTarget(record["layer"], directions[index],
                                 name=f"{record['class_name'].replace(' ', '-')}-concept{index}")
        out.append(SavedConcept(target, record, p.parent, index))
    return out


@holds_model
def concept_references_from(
    spec: Any, concept: SavedConcept, images: str | os.PathLike[str], k: int = 50, progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ReferenceSet:
    """The ``k`` crops of ``images`` with the largest coefficient for the concept (every concept of the file fixed,
    as CRAFT writes a crop), cut and scanned as the concepts were."""
    rec = concept.record
    if spec.name != rec["model"]:
        raise VitalError(f"the concepts were extracted on {rec['model']}, not {spec.name}: use --model {rec['model']}")
    scan = scan_patches(spec, [rec["layer"]], images, patch=rec["patch"], stride=rec["stride"], progress=progress,
                        cache_dir=cache_dir)
    from safetensors.torch import load_file

    w = load_file(str(concept.folder / CONCEPTS_FILE))["directions"].numpy()
    u = nmf_transform(scan.acts[rec["layer"]].clamp(min=0).numpy(), w)[:, concept.index]
    top = [int(i) for i in np.argsort(-u, kind="stable")[:k] if u[i] > 0]
    if not top:
        raise VitalError(f"no crop of {images} expresses concept {concept.index}: give images of "
                         f"{rec['class_name']}")
    return scan.references(top, f"concept {concept.index} of {rec['class_name']} (crops of {images})",
                           {"concept": concept.index, "coefficients": [round(float(u[i]), 6) for i in top]})
