"""``vital evaluate``: the paper's Table 1 for a folder of results (any methods, seeds, classes, units).

Reads every result record (``NAME.json`` beside ``NAME.png``) under a folder; a corrupt record or image is named
in a warning and left out, the rest is evaluated. Writes ``table.md`` / ``table.csv`` (one row per model x method),
``items.csv`` (per-item scores), ``per_class.png`` and ``tsne.png`` (penultimate features of real images and
visualizations, colour = class, marker = method, as the paper's Fig. 5).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import metrics
from .errors import VitalError
from .references import IMAGE_SUFFIXES, list_images, read_image


@dataclass
class Item:
    path: Path
    record: dict[str, Any]
    image: torch.Tensor  # (3, H, W) in [0, 1]
    scores: dict[str, Any] = field(default_factory=dict)

    @property
    def method(self) -> str:
        rel = self.record.get("relevance") or {}
        return self.record["method"] + (f"+{rel['method']}" if rel.get("method") else "")

    @property
    def model(self) -> str:
        return self.record["model"]["name"]

    @property
    def kind(self) -> str:
        return self.record["target"].get("kind", "class")


def _row_order(model: str, method: str) -> tuple[str, int, str]:
    """Table rows per model in the registry's method order (VITAL first, then the baselines it is compared
    against); methods no longer registered come last."""
    from .methods import method_names

    names = method_names()
    base = method.split("+")[0]
    return model, names.index(base) if base in names else len(names), method


def load_results(folder: str | os.PathLike[str]) -> list[Item]:
    """Every result record under ``folder`` with its image; bad files (unreadable, without an image, not fitting the
    record's schema: ``records.check_record``) are named in warnings and skipped."""
    from .records import find_results

    root = Path(folder)
    if not root.is_dir():
        raise VitalError(f"results folder {root} does not exist")
    found, problems = find_results(root)
    for p in problems:
        if p.kind == "unreadable":
            warnings.warn(f"skipping {p.path}: not a readable JSON record ({p.reason})", stacklevel=2)
        elif p.kind == "no-image":
            warnings.warn(f"skipping {p.path}: its image is missing or unreadable ({p.reason})", stacklevel=2)
        elif p.kind == "schema":  # a field the scores read is missing or of the wrong type
            warnings.warn(f"skipping {p.path}: {p.reason}", stacklevel=2)
    items = []
    for js, rec in found:
        png = js.with_suffix(".png")
        try:
            img, _ = read_image(png)
        except VitalError as exc:
            warnings.warn(f"skipping {js}: its image is missing or unreadable ({exc})", stacklevel=2)
            continue
        items.append(Item(js, rec, img.float() / 255))
    if not items:
        raise VitalError(f"no result records (NAME.json beside NAME.png) under {root}")
    return items


def _stack(images: list[torch.Tensor], size: int | None = None) -> torch.Tensor:
    """One batch; images keep their size when they share it (each model then resizes once, to its own input)."""
    from torch.nn import functional as F

    if size is None and len({tuple(i.shape) for i in images}) == 1:
        return torch.stack(images)
    size = size or max(i.shape[-1] for i in images)
    return torch.stack([F.interpolate(i[None], size=(size, size), mode="bilinear", antialias=True,
                                      align_corners=False)[0] for i in images])


def real_images(real: str | os.PathLike[str] | None, spec: Any, wanted: dict[int, str],
                per_class: int = 50) -> dict[int, torch.Tensor]:
    """Real images per class index, prepared with ``spec``'s resize and crop: from ``real`` (a folder per class,
    named by class name, underscores for spaces, or index) or, without it, the bundled photo of each bundled demo
    class with its augmented crops."""
    from . import references as refs_mod
    from .targets import resolve_class

    out: dict[int, torch.Tensor] = {}
    if real is None:
        for idx, name in wanted.items():
            if name.lower() in refs_mod.BUNDLED:
                out[idx] = refs_mod.bundled(name, n=per_class).prepare(spec.preprocess)
        return out
    root = Path(real)
    if not root.is_dir():
        raise VitalError(f"--real {root} is not a folder (expected one sub-folder per class)")
    subs = sorted(p for p in root.iterdir() if p.is_dir())
    if not subs:
        warnings.warn(f"--real {root} has no class sub-folders, so FD and KID cannot be computed: put each class's "
                      "images in a sub-folder named by the class (name, underscores for spaces, or index)",
                      stacklevel=2)
    for sub in subs:
        idx = None
        for name in (sub.name.replace("_", " "), sub.name):
            try:
                idx, _ = resolve_class(name, spec.class_names, spec.class_synonyms)
                break
            except VitalError:
                continue
        if idx is None:
            warnings.warn(f"--real: folder {sub.name} matches no class of {spec.name}; skipped", stacklevel=2)
            continue
        if idx not in wanted:
            continue
        files = [p for p in list_images(sub) if p.suffix.lower() in IMAGE_SUFFIXES][:per_class]
        if files:
            out[idx] = refs_mod.from_files(files).prepare(spec.preprocess)
    return out


class Evaluator:
    """Loads each model once and scores items; see ``evaluate``."""

    def __init__(self, device: str = "auto", clip_checkpoint: str | None = None, clip_arch: str = "ViT-B-32",
                 models: dict[str, Any] | None = None) -> None:
        from .device import resolve_device

        self.device = resolve_device(device)
        self._models: dict[str, Any] = {}
        self._held = contextlib.ExitStack()  # the caller's modules, frozen on the device until ``close``
        for spec in (models or {}).values():
            self.add(spec)
        self.clip = metrics.load_clip(clip_checkpoint, clip_arch, self.device) if clip_checkpoint else None

    def __enter__(self) -> Evaluator:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Give the caller's modules back exactly as they were (mode, gradient flags, device)."""
        self._held.close()

    def add(self, spec: Any) -> str:
        """Register a ``ModelSpec`` (models outside the zoo, e.g. trained in a benchmark) under its name; its module
        is held frozen on the device until ``close``."""
        from .device import frozen_on

        if spec.name not in self._models and all(spec.module is not s.module for s in self._models.values()):
            self._held.enter_context(frozen_on(spec.module, self.device))
        self._models[spec.name] = spec
        return spec.name

    def model(self, name: str, record_model: dict[str, Any] | None = None) -> Any:
        from .zoo import load_model

        if name not in self._models:
            weights = None
            src = (record_model or {}).get("weights_source")
            if src and Path(str(src)).is_file():
                weights = src
            spec = load_model(name, weights)
            spec.module.eval().requires_grad_(False).to(self.device)
            self._models[name] = spec
        return self._models[name]


def evaluate(
    results: str | os.PathLike[str],
    out: str | os.PathLike[str],
    real: str | os.PathLike[str] | None = None,
    judge: Any = "efficientnet_lite2",
    fid_model: Any = "efficientnet_lite0",
    clip_checkpoint: str | None = None,
    clip_arch: str = "ViT-B-32",
    controls: str | os.PathLike[str] | None = None,
    n_boot: int = 200,
    per_class: int = 50,
    device: str = "auto",
    overwrite: bool = False,
    plots: bool = True,
    models: dict[str, Any] | None = None,
) -> Report:
    """Score a results folder and write the report; returns the table rows (a list) with the files written
    (``.files``) and those left out with why (``.skipped``).

    ``judge`` and ``fid_model`` are zoo names or ``ModelSpec`` objects; ``models`` maps the model names in the
    records to ``ModelSpec`` objects for models the zoo cannot load by name."""
    from .result import ensure_writable_dir, refuse_overwrite

    out_dir = ensure_writable_dir(out)
    outputs = [out_dir / n for n in ("table.md", "table.csv", "items.csv", "per_class.png", "tsne.png")]
    refuse_overwrite(outputs, overwrite)
    items = load_results(results)
    with Evaluator(device, clip_checkpoint, clip_arch, models) as ev:
        return _evaluate(ev, items, out_dir, real, judge, fid_model, controls, n_boot, per_class, plots)


def _evaluate(ev: Evaluator, items: list[Item], out_dir: Path, real: Any, judge: Any, fid_model: Any,
              controls: Any, n_boot: int, per_class: int, plots: bool) -> Report:
    from .result import atomic_write_bytes

    judge = ev.add(judge) if judge is not None and not isinstance(judge, str) else judge
    fid_model = ev.add(fid_model) if fid_model is not None and not isinstance(fid_model, str) else fid_model
    class_items = [it for it in items if it.kind == "class"]
    unit_items = [it for it in items if it.kind == "unit"]
    rows: list[dict[str, Any]] = []
    groups: dict[tuple[str, str], list[Item]] = defaultdict(list)
    for it in class_items:
        groups[(it.model, it.method)].append(it)

    # Per item: the visualized model's, the judge's and CLIP's verdicts.
    for (model_name, _), group in groups.items():
        spec = ev.model(model_name, group[0].record["model"])
        labels = [it.record["target"]["index"] for it in group]
        imgs = _stack([it.image for it in group])
        logits, _ = metrics.logits_and_features(spec, imgs)
        for it, hit in zip(group, metrics.topk_hits(logits, labels, 1), strict=True):
            it.scores["model_top1"] = hit
        if judge:
            jspec = ev.model(judge)
            if len(jspec.class_names) == len(spec.class_names):
                jl, _ = metrics.logits_and_features(jspec, imgs)
                for it, h1, h5 in zip(group, metrics.topk_hits(jl, labels, 1), metrics.topk_hits(jl, labels, 5),
                                      strict=True):
                    it.scores["judge_top1"], it.scores["judge_top5"] = h1, h5
        if ev.clip is not None and len(ev.clip.class_names) == len(spec.class_names):
            cl = ev.clip.logits(imgs)
            for it, h1, h5 in zip(group, metrics.topk_hits(cl, labels, 1), metrics.topk_hits(cl, labels, 5),
                                  strict=True):
                it.scores["clip_top1"], it.scores["clip_top5"] = h1, h5

    # Fréchet distance and KID on the FID model's penultimate features, pooled over classes.
    real_feats: dict[int, np.ndarray] = {}
    real_spectra: dict[int, list[dict[str, float]]] = {}
    tsne_points: list[tuple[np.ndarray, int, str]] = []
    if fid_model and class_items:
        fspec = ev.model(fid_model)
        wanted = {it.record["target"]["index"]: it.record["target"]["name"] for it in class_items}
        reals = real_images(real, fspec, wanted, per_class)
        for idx, imgs in reals.items():
            real_spectra[idx] = [metrics.spectrum_stats(im) for im in imgs]
            real_feats[idx] = metrics.logits_and_features(fspec, imgs)[1]
            tsne_points += [(f, idx, "real") for f in real_feats[idx]]
        for (_, method), group in groups.items():
            feats = metrics.logits_and_features(fspec, _stack([it.image for it in group]))[1]
            for it, f in zip(group, feats, strict=True):
                it.scores["_feat"] = f
                tsne_points.append((f, it.record["target"]["index"], method))

    unit_scores = _unit_scores(ev, unit_items, controls) if unit_items else {}

    for (model_name, method), group in sorted(groups.items(), key=lambda kv: _row_order(*kv[0])):
        row: dict[str, Any] = {"model": model_name, "method": method, "targets": "classes", "items": len(group)}
        for key in ("model_top1", "judge_top1", "judge_top5", "clip_top1", "clip_top5"):
            vals = [it.scores[key] for it in group if key in it.scores]
            row[key] = round(100 * float(np.mean(vals)), 2) if vals else None
        _frechet_row(row, group, real_feats, n_boot)
        _spectrum_row(row, group, real_spectra)
        rows.append(row)
    for (model_name, method), vals in sorted(unit_scores.items(), key=lambda kv: _row_order(*kv[0])):
        rows.append({"model": model_name, "method": method, "targets": "units", "items": len(vals["auc"]),
                     "auc": round(float(np.mean(vals["auc"])), 3), "mad": round(float(np.mean(vals["mad"])), 3)})

    _write_tables(rows, items, out_dir, atomic_write_bytes)
    if plots:
        skipped = {"per_class.png": _plot_per_class(class_items, out_dir / "per_class.png", judge is not None),
                   "tsne.png": _plot_tsne(tsne_points, out_dir / "tsne.png",
                                          ev.model(fid_model).class_names if fid_model else [])}
    else:
        skipped = dict.fromkeys(("per_class.png", "tsne.png"), "--no-plots")
    report = Report(rows)
    for name in ("table.md", "table.csv", "items.csv", "per_class.png", "tsne.png"):
        if skipped.get(name):
            report.skipped[name] = skipped[name]
            stale = out_dir / name  # from an earlier report (--overwrite): it would not match these tables
            if stale.is_file():
                stale.unlink()
        else:
            report.files.append(out_dir / name)
    return report


class Report(list):
    """The table rows (a list, as before), with the report files written (``files``) and the ones left out, with
    why (``skipped``: file name -> reason)."""

    def __init__(self, rows: list[dict[str, Any]]) -> None:
        super().__init__(rows)
        self.files: list[Path] = []
        self.skipped: dict[str, str] = {}


def _frechet_row(row: dict[str, Any], group: list[Item], real_feats: dict[int, np.ndarray], n_boot: int) -> None:
    feats = [it.scores["_feat"] for it in group if "_feat" in it.scores and it.record["target"]["index"]
             in real_feats]
    classes = [it.record["target"]["index"] for it in group if it.record["target"]["index"] in real_feats]
    real = np.concatenate([real_feats[c] for c in sorted(set(classes))]) if classes else np.zeros((0, 1))
    if real_feats and (len(feats) < 2 or len(real) < 2):
        warnings.warn(f"{row['method']}: {len(feats)} visualizations and {len(real)} real images of the same classes, "
                      "so FD and KID are n/a (each needs at least two): give more images per class in --real, or "
                      "more seeds", stacklevel=2)
        return
    if len(feats) < 2:
        return
    fv = np.stack(feats)
    fd = metrics.frechet_distance(fv, real)
    row["fd"] = round(fd, 2)
    row["fd_ci"] = [round(v, 2) for v in metrics.bootstrap_ci(metrics.frechet_distance, fv, real, n_boot)]
    row["kid"] = round(metrics.kid(fv, real), 4)
    # Real-vs-real at the same sizes: as many real images as there are visualizations against the rest, drawn
    # with the same class counts, so the small-sample bias of the estimate is visible beside it.
    rng = np.random.default_rng(0)
    take, rest = [], []
    for c in sorted(set(classes)):
        k = classes.count(c)
        idx = rng.permutation(len(real_feats[c]))
        take.append(real_feats[c][idx[:k]])
        rest.append(real_feats[c][idx[k:]])
    take_a, rest_a = np.concatenate(take), np.concatenate(rest)
    if len(take_a) >= 2 and len(rest_a) >= 2:
        row["fd_real"] = round(metrics.frechet_distance(take_a, rest_a), 2)
        row["kid_real"] = round(metrics.kid(take_a, rest_a), 4)


def _spectrum_row(row: dict[str, Any], group: list[Item], real_spectra: dict[int, list[dict[str, float]]]) -> None:
    """Mean spectral slope and high-frequency share of the visualizations, beside the real images of their classes
    (hatching and pixel noise show as a high-frequency share far above the photos')."""
    stats = []
    for it in group:
        it.scores.update(metrics.spectrum_stats(it.image))
        stats.append(it.scores)
    row["slope"] = round(float(np.mean([s["slope"] for s in stats])), 3)
    row["hf_share"] = round(float(np.mean([s["hf_share"] for s in stats])), 4)
    real = [s for c in sorted({it.record["target"]["index"] for it in group}) for s in real_spectra.get(c, [])]
    if real:
        row["slope_real"] = round(float(np.mean([s["slope"] for s in real])), 3)
        row["hf_share_real"] = round(float(np.mean([s["hf_share"] for s in real])), 4)


def _unit_scores(ev: Evaluator, unit_items: list[Item], controls: str | os.PathLike[str] | None) -> dict:
    """Per (model, method): CoSy AUC and MAD of each unit against its mined references' activations."""
    from .features import capture
    from .references import MINING_RECORD, from_mining
    from .targets import UnitTarget

    if controls is None:
        warnings.warn("unit results found but no --controls (a `vital mine` folder, or a folder of them): AUC and "
                      "MAD are skipped", stacklevel=2)
        return {}
    root = Path(controls)
    folders = [root] if (root / MINING_RECORD).is_file() else sorted(p.parent for p in root.rglob(MINING_RECORD))
    by_unit = {}
    for f in folders:
        rec = json.loads((f / MINING_RECORD).read_text())
        by_unit[(rec.get("model"), rec.get("unit"))] = f
    out: dict[tuple[str, str], dict[str, list[float]]] = defaultdict(lambda: {"auc": [], "mad": []})
    for it in unit_items:
        t = it.record["target"]
        unit = UnitTarget(t["layer"], t["channel"], tuple(t["position"]) if t.get("position") else None)
        folder = by_unit.get((it.model, unit.label()))
        if folder is None:
            warnings.warn(f"{it.path}: no mining folder for {it.model} {unit.label()} under {root}", stacklevel=2)
            continue
        spec = ev.model(it.model, it.record["model"])
        refs = from_mining(folder)
        device = next(spec.module.parameters()).device
        with torch.no_grad(), capture(spec.module, [unit.layer]) as feats:
            spec.module(spec.preprocess.normalize(refs.prepare(spec.preprocess)).to(device))
            ctrl = [float(unit.value(a)) for a in feats[unit.layer]]
            img = _stack([it.image], spec.preprocess.input_size)
            spec.module(spec.preprocess.normalize(img).to(device))
            act = float(unit.value(feats[unit.layer][0]))
        it.scores.update(unit_act=act, auc=metrics.cosy_auc([act], ctrl), mad=metrics.cosy_mad([act], ctrl))
        out[(it.model, it.method)]["auc"].append(it.scores["auc"])
        out[(it.model, it.method)]["mad"].append(it.scores["mad"])
    return out


COLUMNS = [("model", "model"), ("method", "method"), ("targets", "targets"), ("items", "n"),
           ("model_top1", "model top-1 %"),
           ("judge_top1", "judge top-1 %"), ("judge_top5", "judge top-5 %"), ("fd", "FD"), ("fd_ci", "FD 95% CI"),
           ("fd_real", "FD real-vs-real"), ("kid", "KID"), ("kid_real", "KID real-vs-real"),
           ("clip_top1", "CLIP top-1 %"), ("clip_top5", "CLIP top-5 %"), ("slope", "spectral slope"),
           ("slope_real", "slope (real)"), ("hf_share", "HF share"), ("hf_share_real", "HF share (real)"),
           ("auc", "unit AUC"), ("mad", "unit MAD")]


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, list):
        return f"[{v[0]}, {v[1]}]"
    return str(v)


def _write_tables(rows: list[dict[str, Any]], items: list[Item], out_dir: Path, write: Any) -> None:
    cols = [(k, h) for k, h in COLUMNS if any(r.get(k) is not None for r in rows)]
    md = ["| " + " | ".join(h for _, h in cols) + " |", "|" + "---|" * len(cols)]
    md += ["| " + " | ".join(_cell(r.get(k)) for k, _ in cols) + " |" for r in rows]
    write(out_dir / "table.md", ("\n".join(md) + "\n").encode())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow([k for k, _ in cols])
    for r in rows:
        w.writerow([_cell(r.get(k)) if isinstance(r.get(k), list) else r.get(k, "") for k, _ in cols])
    write(out_dir / "table.csv", buf.getvalue().encode())
    buf = io.StringIO()
    w = csv.writer(buf)
    keys = ["model_top1", "judge_top1", "judge_top5", "clip_top1", "clip_top5", "unit_act", "auc", "mad"]
    w.writerow(["file", "model", "method", "target", "seed", *keys])
    for it in items:
        t = it.record["target"]
        label = t.get("name") if it.kind in ("class", "objective") else f"{t.get('layer')}:{t.get('channel')}"
        w.writerow([str(it.path), it.model, it.method, label, it.record.get("seed"),
                    *[it.scores.get(k, "") for k in keys]])
    write(out_dir / "items.csv", buf.getvalue().encode())


def _savefig(fig: Any, path: Path) -> None:
    from .result import atomic_write_bytes

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    atomic_write_bytes(path, buf.getvalue())


def _plot_per_class(items: list[Item], path: Path, has_judge: bool) -> str | None:
    """Draws the figure; returns why not, where it cannot be drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not items:
        return "no class results to plot"
    key = "judge_top1" if has_judge else "model_top1"
    classes = sorted({it.record["target"]["name"] for it in items})
    methods = sorted({it.method for it in items})
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(classes) * max(1, len(methods)) / 2), 4))
    width = 0.8 / len(methods)
    for m_i, m in enumerate(methods):
        vals = []
        for c in classes:
            hits = [it.scores.get(key) for it in items if it.method == m and it.record["target"]["name"] == c]
            hits = [h for h in hits if h is not None]
            vals.append(100 * np.mean(hits) if hits else 0)
        ax.bar(np.arange(len(classes)) + m_i * width, vals, width, label=m)
    ax.set_xticks(np.arange(len(classes)) + 0.4 - width / 2, classes, rotation=30, ha="right")
    ax.set_ylabel(f"{'judge' if has_judge else 'model'} top-1 (%)")
    ax.set_ylim(0, 105)
    ax.legend(fontsize=8)
    _savefig(fig, path)
    plt.close(fig)


def _plot_tsne(points: list[tuple[np.ndarray, int, str]], path: Path, class_names: list[str]) -> str | None:
    """Draws the figure; returns why not, where it cannot be drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.manifold import TSNE

    if len(points) < 5:
        return (f"t-SNE needs at least 5 points (real images and visualizations of the classes), there are "
                f"{len(points)}: give more images per class in --real, or more seeds")
    x = np.stack([p[0] for p in points])
    emb = TSNE(n_components=2, perplexity=min(30, len(points) - 1) / 2, init="pca", random_state=0).fit_transform(x)
    classes = sorted({p[1] for p in points})
    methods = sorted({p[2] for p in points}, key=lambda m: (m != "real", m))
    markers = ["o", "^", "s", "D", "v", "P", "X", "*"]
    cmap = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(7, 6))
    for mi, m in enumerate(methods):
        for ci, c in enumerate(classes):
            sel = [i for i, p in enumerate(points) if p[1] == c and p[2] == m]
            if sel:
                ax.scatter(emb[sel, 0], emb[sel, 1], s=14 if m == "real" else 40, marker=markers[mi % len(markers)],
                           color=cmap(ci % 10), alpha=0.35 if m == "real" else 0.9, edgecolors="none")
    handles = [plt.Line2D([], [], marker=markers[i % len(markers)], ls="", color="grey", label=m)
               for i, m in enumerate(methods)]
    handles += [plt.Line2D([], [], marker="o", ls="", color=cmap(i % 10),
                           label=class_names[c] if c < len(class_names) else str(c)) for i, c in enumerate(classes)]
    ax.legend(handles=handles, fontsize=7, loc="best")
    ax.set_title("t-SNE of penultimate features (colour: class, marker: method)")
    ax.set_xticks([])
    ax.set_yticks([])
    _savefig(fig, path)
    plt.close(fig)
