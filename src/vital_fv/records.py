"""Finding result records: every ``NAME.json`` beside its ``NAME.png`` under a folder, as ``vital visualize`` and
``vital atlas`` write them. One walk shared by ``vital evaluate``, the gallery and the study, so all three agree on
what a result is and name the same problems."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import VitalError


@dataclass(frozen=True)
class Problem:
    path: Path
    kind: str  # "unreadable" (not JSON), "other" (JSON but not a result record), "no-image"
    reason: str


def is_result(rec: Any) -> bool:
    return isinstance(rec, dict) and "method" in rec and "target" in rec


def find_results(root: str | os.PathLike[str], skip: Callable[[Path], bool] | None = None
                 ) -> tuple[list[tuple[Path, dict[str, Any]]], list[Problem]]:
    """(record path, record) of every result under ``root`` (sorted; hidden folders left out), and the JSON files
    that are not usable results with why. ``skip(path)`` leaves files out silently (figures, shards)."""
    root = Path(root)
    if not root.is_dir():
        raise VitalError(f"{root} is not a folder: give a folder of vital results")
    found, problems = [], []
    for path in sorted(root.rglob("*.json")):
        if any(part.startswith(".") for part in path.relative_to(root).parts) or (skip and skip(path)):
            continue
        try:
            rec = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError) as exc:
            problems.append(Problem(path, "unreadable", f"unreadable JSON: {exc}"))
            continue
        if not is_result(rec):
            problems.append(Problem(path, "other", "not a vital result record (no method or target)"))
            continue
        if not path.with_suffix(".png").is_file():
            problems.append(Problem(path, "no-image", f"its image {path.with_suffix('.png').name} is missing"))
            continue
        found.append((path, rec))
    return found, problems
