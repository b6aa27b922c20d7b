"""What a gallery shows: every result record under a folder (found recursively), the items an atlas job has not
made yet (from its ledger), the figures of the other commands, and the records that could not be read or do not fit
the record's schema (``records.check_record``; listed on the issues page instead of stopping the build)."""

from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import VitalError
from ..jobs import LEDGER_FILE, MINE, read_job

# Records of other commands, shown as figures with their key fields, not as visualizations.
FIGURE_RECORDS = {"concepts.json": "concepts", "disentangle.json": "disentangled unit", "circuit.json": "circuit",
                  "mining.json": "mined references"}
FIGURE_IMAGES = ("contact_sheet.png", "overview.png", "circuit.png")


@dataclass
class Found:
    items: list[dict[str, Any]] = field(default_factory=list)
    figures: list[dict[str, Any]] = field(default_factory=list)
    issues: list[dict[str, str]] = field(default_factory=list)
    records: dict[str, dict[str, Any]] = field(default_factory=dict)  # item id -> its record, as checked in scan
    metrics: dict[str, dict[str, str]] = field(default_factory=dict)  # stem -> `vital evaluate` items.csv row


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-") or "item"


def _target(rec: dict[str, Any]) -> dict[str, Any]:
    t = rec.get("target") or {}
    kind = t.get("kind", "?")
    if kind == "class":
        return {"kind": "class", "key": f"class:{t.get('index')}", "title": f"{t.get('index')} {t.get('name', '')}",
                "layer": "logits", "index": t.get("index"), "name": t.get("name", "")}
    if kind == "unit":
        pos = t.get("position")
        label = f"{t.get('layer')}:{t.get('channel')}" + ("@" + ",".join(map(str, pos)) if pos else "")
        return {"kind": "unit", "key": f"unit:{label}", "title": label, "layer": t.get("layer", ""),
                "channel": t.get("channel")}
    if kind == "objective":  # a combination or a custom callable: its name says what it is
        name = str(t.get("name", "?"))
        return {"kind": kind, "key": f"objective:{name}", "title": name, "layer": ",".join(t.get("layers") or [])}
    label = f"{t.get('layer')}:{t.get('name')}"
    return {"kind": kind, "key": f"{kind}:{label}", "title": label, "layer": t.get("layer", "")}


def scan(root: str | os.PathLike[str]) -> Found:
    """Every result, figure, atlas item and unreadable record under ``root``."""
    from ..records import find_results

    root = Path(root)
    if not root.is_dir():
        raise VitalError(f"{root} is not a folder: give a folder of vital results or an atlas job")
    found = Found()
    stems: set[str] = set()

    figure_records: list[Path] = []

    def other_output(path: Path) -> bool:  # figures are shown apart (kept from the same walk); mining shards not at all
        if path.name in FIGURE_RECORDS:
            figure_records.append(path)
            return True
        return path.name.startswith("shard-") or any(part.endswith(".cache") for part in path.relative_to(root).parts)

    results, problems = find_results(root, skip=other_output)
    found.figures = [_figure(root, p) for p in figure_records]
    found.issues = [{"file": str(p.path.relative_to(root)), "problem": p.reason} for p in problems]
    for path, rec in results:
        rel = path.relative_to(root)
        t = _target(rec)
        model = (rec.get("model") or {}).get("name", "?")
        stem = str(rel.with_suffix(""))
        ident = _slug(stem)
        while ident in stems:
            ident += "-"
        stems.add(ident)
        found.records[ident] = rec
        found.items.append({
            "id": ident, "stem": stem, "file": str(rel.with_suffix(".png")), "json": str(rel),
            "rgba": str(rel.with_suffix(".rgba.png")) if path.with_suffix(".rgba.png").is_file() else None,
            "model": model, "method": rec.get("method", "?"), "seed": rec.get("seed"),
            "status": rec.get("status", "?"), **t,
        })
    if (root / LEDGER_FILE).is_file():
        _atlas_items(root, found, stems)
    report = next(iter(sorted(root.rglob("items.csv"))), None)
    if report is not None:
        found.metrics = _metrics(report)
    return found


def _figure(root: Path, path: Path) -> dict[str, Any]:
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError):
        rec = {}
    if not isinstance(rec, dict):
        rec = {}
    images = [str((path.parent / name).relative_to(root)) for name in FIGURE_IMAGES if (path.parent / name).is_file()]
    keys = {k: rec[k] for k in ("model", "layer", "class_name", "class_index", "unit") if k in rec and
            isinstance(rec[k], (str, int, float))}
    return {"kind": FIGURE_RECORDS[path.name], "folder": str(path.parent.relative_to(root)), "json":
            str(path.relative_to(root)), "images": images, "fields": keys}


def _atlas_items(root: Path, found: Found, stems: set[str]) -> None:
    """An atlas job's items that have no record yet (pending, running, failed), from its ledger."""
    try:
        plan, rows = read_job(root)
    except VitalError as exc:
        found.issues.append({"file": LEDGER_FILE, "problem": str(exc)})
        return
    have = {it["stem"].split("/")[-1] for it in found.items}
    for r in rows:
        if r["method"] == MINE or r["stem"] in have:
            continue
        target = json.loads(r["target"])
        kind = target.get("kind")
        t = ({"kind": "class", "key": f"class:{target['index']}", "title": r["label"], "layer": "logits",
              "index": target["index"], "name": r["label"].split(" ", 1)[-1]} if kind == "class" else
             {"kind": kind, "key": f"{'direction' if kind == 'concept' else kind}:{r['label']}", "title": r["label"],
              "layer": target.get("layer", r["label"].split(":")[0]), "channel": target.get("channel")})
        ident = _slug(r["stem"])
        while ident in stems:
            ident += "-"
        stems.add(ident)
        found.items.append({"id": ident, "stem": r["stem"], "file": None, "json": None, "rgba": None,
                            "model": plan.get("model", "?"), "method": r["method"], "seed": r["seed"],
                            "status": r["status"], "error": _last_line(r["error"]), **t})


def _last_line(text: str | None) -> str | None:
    lines = (text or "").strip().splitlines()
    return lines[-1] if lines else None


def _metrics(report: Path) -> dict[str, dict[str, str]]:
    """``vital evaluate``'s per-image rows (items.csv), by result stem."""
    try:
        with report.open(newline="") as f:
            rows = list(csv.DictReader(f))
    except (OSError, csv.Error):
        return {}
    out = {}
    for row in rows:
        key = row.get("file") or row.get("image") or row.get("stem") or ""
        if key:
            out[Path(key).with_suffix("").name] = row
    return out
