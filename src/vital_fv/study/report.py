"""``vital study status | export | report``: what the participants answered, scored and drawn as the paper does.

Scores: the 1-5 ratings as given; a label's Wu–Palmer similarity to the hidden class's synset (``wordnet``); a 2AFC
answer's correctness and confidence. Participants who did not finish, or failed an attention check (a real photo
rated below 4 for its own word, or labelled with similarity below 0.6 to its class), are excluded and listed. Per
part and method: the paper's Fig. 6 (violins with the median and the 5% / 95% quantiles; box plots where a method
has fewer than 5 answers), the per-target breakdown (its Figs. 37-39), 2AFC accuracy and mean confidence (its Fig.
41), all with bootstrap 95% intervals, and ``table.md`` / ``table.csv``.
"""

from __future__ import annotations

import csv
import io
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VitalError
from ..result import atomic_write_bytes, refuse_overwrite
from .store import Store

# A real photo rated below 4 for its own word, or labelled far from its class, fails the attention check: for the
# moped photo "motorbike" scores 0.96, "motorcycle" 0.92, "scooter" or "bicycle" 0.67, "dog" 0.55, "asdf" 0.
ATTENTION_RATE, ATTENTION_LABEL = 4, 0.6
OUTPUTS = ("table.md", "table.csv", "answers_scored.csv", "parts.png", "per_target.png", "2afc.png")


def _bootstrap(values: list[float], n_boot: int, seed: int) -> tuple[float, float]:
    if len(values) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    x = np.asarray(values, dtype=float)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def text_encoder(folder: str | os.PathLike[str]) -> Any:
    """The user's sentence encoder (a sentence-transformers model folder): label -> unit vector, loaded from
    disk only (nothing is downloaded)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not Path(folder).is_dir():
        raise VitalError(f"--text-model {folder} is not a folder: give a sentence-transformers model folder")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise VitalError("--text-model needs sentence-transformers: pip install 'vital-fv[study]'") from None
    try:
        model = SentenceTransformer(str(folder), device="cpu")
    except Exception as exc:  # a folder that is not a model: say which, not a library traceback
        raise VitalError(f"--text-model {folder}: cannot load a sentence encoder from it ({exc})") from None
    return lambda texts: model.encode(list(texts), normalize_embeddings=True)


def score_rows(store: Store, text_model: str | os.PathLike[str] | None = None
               ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every answer with its score, and the excluded participants with why. Labels: Wu–Palmer in WordNet when the
    class has a synset, the sentence encoder's cosine (``text_model``) beside it and where it has none."""
    rows = store.rows()
    encode = text_encoder(text_model) if text_model else None
    wn = None
    needs_wordnet = any(r["part"] == "label" and r["key"].get("wnid") for r in rows)
    if needs_wordnet:
        from .wordnet import label_score, synset_of, wordnet

        wn = wordnet()
    scored, excluded = [], {}
    for r in rows:
        k, v = r["key"], r["value"]
        out = {"participant": r["token"], "subset": r["subset"], "part": r["part"], "method": k.get("method"),
               "target": k.get("target"), "label": k.get("label"), "attention": bool(k.get("attention")),
               "answer": v, "ms": r["ms"], "finished": bool(r["finished"])}
        if r["part"] in ("rate-class", "rate-unit"):
            out["score"] = float(v)
        elif r["part"] == "label":
            if encode is not None:
                a, b = encode([v, k.get("label") or ""])
                out["cosine"] = round(float(a @ b), 4)
            if wn is not None and k.get("wnid"):
                match = label_score(wn, v, synset_of(wn, k["wnid"]))
                out["score"], out["matched"], out["scored_by"] = match["score"], match["matched"], "wordnet"
            elif "cosine" in out:
                out["score"], out["scored_by"] = out["cosine"], "sentence encoder"
            else:
                out["score"] = None  # no synset and no encoder: said in the report
        else:
            out["score"] = float(v["choice"] == k.get("correct"))
            out["confidence"] = v["confidence"]
        if out["attention"] and out["score"] is not None:
            floor = ATTENTION_RATE if r["part"] == "rate-class" else ATTENTION_LABEL
            if out["score"] < floor:
                excluded[r["token"]] = f"attention check failed ({r['part']}: {v!r})"
        scored.append(out)
    for r in scored:
        if not r["finished"] and r["participant"] not in excluded:
            excluded[r["participant"]] = "did not finish"
    return scored, excluded


def study_status(folder: str | os.PathLike[str]) -> dict[str, Any]:
    store = Store(folder)
    design = store.design
    counts = store.counts()
    per_subset = dict(store.con.execute("SELECT subset, COUNT(*) FROM participants GROUP BY subset").fetchall())
    return {**counts, "capacity": design["subsets"] * design["participants_per_subset"],
            "per_subset": per_subset, "methods": design["methods"], "parts": design["parts"]}


def export_answers(folder: str | os.PathLike[str], out: str | os.PathLike[str], overwrite: bool = False) -> Path:
    from .server import export_csv

    path = Path(out)
    refuse_overwrite([path], overwrite)
    atomic_write_bytes(path, export_csv(Store(folder)).encode())
    return path


def make_report(folder: str | os.PathLike[str], out: str | os.PathLike[str], *, n_boot: int = 1000, seed: int = 0,
                text_model: str | os.PathLike[str] | None = None, overwrite: bool = False) -> list[dict[str, Any]]:
    """Write the report into ``out``; returns the table's rows (part, method, n, mean, interval, median)."""
    store = Store(folder)
    design = store.design
    out = Path(out)
    refuse_overwrite([out / name for name in OUTPUTS], overwrite)
    scored, excluded = score_rows(store, text_model)
    if not scored:
        raise VitalError(f"{folder} has no answers yet: nothing to report")
    kept = [r for r in scored if r["participant"] not in excluded and not r["attention"] and r["score"] is not None]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for r in kept:
        groups[(r["part"], r["method"])].append(r)
    table = []
    for part in design["parts"]:
        for method in design["methods"]:
            rs = groups.get((part, method), [])
            values = [r["score"] for r in rs]
            lo, hi = _bootstrap(values, n_boot, seed)
            row = {"part": part, "method": method, "n": len(values),
                   "mean": float(np.mean(values)) if values else float("nan"), "ci_low": lo, "ci_high": hi,
                   "median": float(np.median(values)) if values else float("nan")}
            if part == "2afc":
                conf = [r["confidence"] for r in rs]
                row["confidence"] = float(np.mean(conf)) if conf else float("nan")
                row["confidence_ci"] = _bootstrap(conf, n_boot, seed)
            table.append(row)
        if part == "label" and text_model:  # the paper's second label score, beside WordNet's
            for method in design["methods"]:
                values = [r["cosine"] for r in groups.get((part, method), []) if "cosine" in r]
                lo, hi = _bootstrap(values, n_boot, seed)
                table.append({"part": "label-cosine", "method": method, "n": len(values),
                              "mean": float(np.mean(values)) if values else float("nan"), "ci_low": lo,
                              "ci_high": hi, "median": float(np.median(values)) if values else float("nan")})
    out.mkdir(parents=True, exist_ok=True)
    _write_tables(out, table, scored, excluded, design)
    _figures(out, groups, design, kept, n_boot, seed)
    return table


def _fmt(x: float) -> str:
    return "n/a" if x != x else f"{x:.2f}"


def _write_tables(out: Path, table: list[dict[str, Any]], scored: list[dict[str, Any]], excluded: dict[str, str],
                  design: dict[str, Any]) -> None:
    what = {"rate-class": "rating 1-5", "rate-unit": "rating 1-5", "label": "Wu-Palmer similarity 0-1 (WordNet 3.0)",
            "label-cosine": "sentence-encoder cosine", "2afc": "accuracy 0-1"}
    lines = [f"# {design['title']}", "", f"Methods: {', '.join(design['methods'])}; parts: "
             f"{', '.join(design['parts'])}. Means with bootstrap 95% intervals; attention-check trials and excluded "
             "participants left out.", "", "| part | method | n | mean | 95% interval | median | 2AFC confidence |",
             "|---|---|---|---|---|---|---|"]
    for r in table:
        conf = _fmt(r["confidence"]) if "confidence" in r else ""
        lines.append(f"| {r['part']} ({what[r['part']]}) | {r['method']} | {r['n']} | {_fmt(r['mean'])} | "
                     f"{_fmt(r['ci_low'])}-{_fmt(r['ci_high'])} | {_fmt(r['median'])} | {conf} |")
    unscored = sum(1 for r in scored if r["part"] == "label" and r["score"] is None)
    by_encoder = sum(1 for r in scored if r.get("scored_by") == "sentence encoder")
    if unscored:
        lines += ["", f"{unscored} labels could not be scored: their classes have no WordNet synset (give "
                      "--text-model to score them with a sentence encoder)."]
    if by_encoder:
        lines += ["", f"{by_encoder} labels were scored by the sentence encoder: their classes have no WordNet synset."]
    people = {r["participant"] for r in scored}
    lines += ["", f"Participants: {len(people)}, excluded {len(excluded)}:"]
    lines += [f"- `{token[:8]}`: {why}" for token, why in sorted(excluded.items())] or ["- none"]
    atomic_write_bytes(out / "table.md", ("\n".join(lines) + "\n").encode())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["part", "method", "n", "mean", "ci_low", "ci_high", "median", "confidence"])
    for r in table:
        w.writerow([r["part"], r["method"], r["n"], r["mean"], r["ci_low"], r["ci_high"], r["median"],
                    r.get("confidence", "")])
    atomic_write_bytes(out / "table.csv", buf.getvalue().encode())
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["participant", "excluded", "part", "method", "target", "label", "attention", "answer", "score", "ms"])
    for r in scored:
        w.writerow([r["participant"][:8], excluded.get(r["participant"], ""), r["part"], r["method"] or "",
                    r["target"], r["label"], int(r["attention"]), r["answer"], r["score"], r["ms"] or ""])
    atomic_write_bytes(out / "answers_scored.csv", buf.getvalue().encode())


def _figures(out: Path, groups: dict, design: dict[str, Any], kept: list[dict[str, Any]], n_boot: int,
             seed: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods, parts = design["methods"], design["parts"]
    fig, axes = plt.subplots(1, len(parts), figsize=(3.6 * len(parts), 3.4), squeeze=False)
    for ax, part in zip(axes[0], parts, strict=True):
        data = [[r["score"] for r in groups.get((part, m), [])] for m in methods]
        pos = [i for i, d in enumerate(data) if d]
        if pos and min(len(data[i]) for i in pos) >= 5 and part != "2afc":
            vp = ax.violinplot([data[i] for i in pos], positions=pos, showmedians=True, quantiles=[[0.05, 0.95]] *
                               len(pos))
            for body in vp["bodies"]:
                body.set_alpha(0.5)
        elif pos:
            ax.boxplot([data[i] for i in pos], positions=pos, widths=0.5)
        ax.set_xticks(range(len(methods)), methods, rotation=30)
        ax.set_title(part)
        ax.set_ylim((0.5, 5.5) if part.startswith("rate") else (-0.05, 1.05))
    fig.tight_layout()
    _save(fig, out / "parts.png")

    targets = sorted({r["target"] for r in kept})
    fig, ax = plt.subplots(figsize=(max(5, 0.5 * len(targets) * len(methods)), 3.6))
    width = 0.8 / max(1, len(methods))
    for j, m in enumerate(methods):
        means = []
        for t in targets:
            vals = [r["score"] for r in kept if r["method"] == m and r["target"] == t and r["part"] != "2afc"]
            means.append(np.mean(vals) if vals else np.nan)
        ax.bar(np.arange(len(targets)) + j * width, means, width, label=m)
    ax.set_xticks(np.arange(len(targets)) + 0.4 - width / 2, targets, rotation=45, ha="right")
    ax.set_ylabel("mean score (ratings and labels)")
    ax.legend()
    fig.tight_layout()
    _save(fig, out / "per_target.png")

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, (field, title) in zip(axes, (("score", "2AFC accuracy"), ("confidence", "mean confidence (1-3)")),
                                  strict=True):
        for i, m in enumerate(methods):
            vals = [r[field] for r in groups.get(("2afc", m), [])]
            if vals:
                lo, hi = _bootstrap(vals, n_boot, seed)
                mean = float(np.mean(vals))
                ax.bar(i, mean)
                if lo == lo:
                    ax.errorbar(i, mean, yerr=[[mean - lo], [hi - mean]], color="black", capsize=4)
        ax.set_xticks(range(len(methods)), methods, rotation=30)
        ax.set_title(title)
    fig.tight_layout()
    _save(fig, out / "2afc.png")


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
