"""Which targets an atlas covers: ``--classes all | 0-99 | LIST | FILE`` and ``--units LAYER:all | LAYER:0-63 |
LAYER:LIST``, each checked against the model before anything is planned."""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import VitalError
from ..targets import ClassTarget, UnitTarget, resolve_class

_RANGE = re.compile(r"\s*(\d+)\s*-\s*(\d+)\s*")


def _span(text: str, count: int, what: str) -> list[int] | None:
    """``all`` or ``A-B`` (inclusive) as indices below ``count``; None when ``text`` is neither."""
    if text.strip().lower() == "all":
        return list(range(count))
    m = _RANGE.fullmatch(text)
    if not m:
        return None
    lo, hi = int(m[1]), int(m[2])
    if lo > hi or hi >= count:
        raise VitalError(f"{what} range {lo}-{hi} is outside the model's {count} {what}es (0-{count - 1})"
                         if what == "class" else
                         f"{what} range {lo}-{hi} is outside the layer's {count} channels (0-{count - 1})")
    return list(range(lo, hi + 1))


def select_classes(text: str, class_names: Sequence[str], synonyms: Any = None) -> list[ClassTarget]:
    """``all``, ``A-B``, a comma-separated list of indices or names, or a file with one per line."""
    if not class_names:
        raise VitalError("the model has no class names: plan --units instead, or give the model's class names")
    indices = _span(text, len(class_names), "class")
    if indices is None:
        path = Path(text)
        if path.is_file():
            words = [w.strip() for w in path.read_text().splitlines() if w.strip() and not w.startswith("#")]
            where = f" in {path}"
        else:
            words = [w.strip() for w in text.split(",") if w.strip()]
            where = ""
        if not words:
            raise VitalError(f"--classes names no class{where}: give all, a range such as 0-99, names or indices")
        indices = [resolve_class(w, list(class_names), synonyms)[0] for w in words]
    if not indices:
        raise VitalError("--classes selects no class")
    return [ClassTarget(i) for i in dict.fromkeys(indices)]


def select_units(texts: Sequence[str], channels_of: Any) -> list[UnitTarget]:
    """Each ``LAYER:all``, ``LAYER:A-B`` or ``LAYER:C1,C2``; ``channels_of(layer)`` gives the layer's channel
    count (and raises our error for an unknown layer)."""
    units: list[UnitTarget] = []
    for text in texts:
        layer, sep, spec = text.rpartition(":")
        if not sep or not layer or not spec.strip():
            raise VitalError(f"--units '{text}': write LAYER:all, LAYER:0-63 or LAYER:1,5,9")
        count = channels_of(layer)
        chosen = _span(spec, count, "channel")
        if chosen is None:
            try:
                chosen = [int(c) for c in spec.split(",") if c.strip()]
            except ValueError:
                raise VitalError(f"--units '{text}': channels are all, A-B or comma-separated numbers") from None
            bad = [c for c in chosen if not 0 <= c < count]
            if bad:
                raise VitalError(f"--units '{text}': channel {bad[0]} is out of range: {layer} has {count} channels "
                                 f"(0-{count - 1})")
        units += [UnitTarget(layer, c) for c in chosen]
    if not units:
        raise VitalError("--units selects no unit")
    return list(dict.fromkeys(units))
