"""Finding result records: every ``NAME.json`` beside its ``NAME.png`` under a folder, as ``vital visualize`` and
``vital atlas`` write them. One walk shared by ``vital evaluate``, the gallery and the study, so all three agree on
what a result is and name the same problems.

A record must also fit ``RECORD`` (``check_record``): the fields the readers use, with the types the writers give
them (``methods.base.build_record``, ``Result.save``, the atlas). Other fields are free, so a method may add its own.
A record that does not fit is a problem of kind "schema" naming the field and what is wrong, never a reader's crash.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import VitalError


@dataclass(frozen=True)
class Problem:
    path: Path
    kind: str  # "unreadable" (not JSON), "other" (JSON but not a result record), "no-image", "schema" (a bad field)
    reason: str


def is_result(rec: Any) -> bool:
    return isinstance(rec, dict) and "method" in rec and "target" in rec


# ------------------------------------------------------------------------------------------------------ the schema
# A check takes a value and the field's name and raises _Bad naming what is wrong.
Check = Callable[[Any, str], None]


class _Bad(Exception):
    pass


def _show(v: Any) -> str:
    if v is None:
        return "null"
    if isinstance(v, (bool, list, dict)):
        return type(v).__name__
    return f"{type(v).__name__} {v!r}"[:60]


def _is(what: str, test: Callable[[Any], bool]) -> Check:
    def check(v: Any, field: str) -> None:
        if not test(v):
            raise _Bad(f"field {field}: expected {what}, got {_show(v)}")
    return check


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


STR = _is("a string", lambda v: isinstance(v, str))
NAME = _is("a non-empty string", lambda v: isinstance(v, str) and bool(v))
INT = _is("an integer", _int)
INDEX = _is("a non-negative integer", lambda v: _int(v) and v >= 0)
NUMBER = _is("a number", _num)  # NaN allowed: the image spectrum of a flat image is NaN, and written so
FINITE = _is("a finite number", lambda v: _num(v) and math.isfinite(v))
OBJECT = _is("an object", lambda v: isinstance(v, dict))
BOX = _is("a box [x0, y0, x1, y1] of integers, x0 < x1 and y0 < y1", lambda v: isinstance(v, list) and len(v) == 4
          and all(_int(x) and x >= 0 for x in v) and v[0] < v[2] and v[1] < v[3])


def nullable(check: Check) -> Check:
    def inner(v: Any, field: str) -> None:
        if v is None:
            return
        try:
            check(v, field)
        except _Bad as exc:  # the value itself is wrong (not a field inside it): say null would do too
            head = f"field {field}: expected "
            raise _Bad(str(exc).replace(head, head + "null or ", 1)) from None
    return inner


def list_of(check: Check) -> Check:
    def inner(v: Any, field: str) -> None:
        if not isinstance(v, list):
            raise _Bad(f"field {field}: expected a list, got {_show(v)}")
        for i, x in enumerate(v):
            check(x, f"{field}[{i}]")
    return inner


def dict_of(check: Check) -> Check:
    def inner(v: Any, field: str) -> None:
        OBJECT(v, field)
        for k, x in v.items():
            check(x, f"{field}.{k}")
    return inner


def struct(required: dict[str, Check], optional: dict[str, Check] | None = None) -> Check:
    """An object with these fields (others are free)."""
    def inner(v: Any, field: str) -> None:
        OBJECT(v, field)
        prefix = f"{field}." if field else ""
        for k, check in required.items():
            if k not in v:
                raise _Bad(f"field {prefix}{k}: missing")
            check(v[k], prefix + k)
        for k, check in (optional or {}).items():
            if k in v:
                check(v[k], prefix + k)
    return inner


TARGETS: dict[str, Check] = {
    "class": struct({"index": INDEX, "name": STR}),
    "unit": struct({"layer": STR, "channel": INDEX}, {"position": nullable(list_of(INDEX)), "value": NUMBER}),
    "direction": struct({"layer": STR, "name": STR}),
    "objective": struct({"name": STR}, {"value": NUMBER}),  # a combination or a custom callable (objectives)
}


def _target(v: Any, field: str) -> None:
    OBJECT(v, field)
    if not isinstance(v.get("kind"), str) or v["kind"] not in TARGETS:
        raise _Bad(f"field {field}.kind: expected one of {', '.join(TARGETS)}, got {_show(v.get('kind'))}")
    TARGETS[v["kind"]](v, field)


# Required: what every reader needs. Optional: checked where present (null only where writers write null). Fields
# no reader uses (environment, prototypes, files, atlas, a method's own) are left free.
RECORD = struct(
    {"method": NAME, "target": _target, "model": struct({"name": NAME}, {
        "num_classes": INDEX, "weights_source": nullable(STR)})},
    {
        "vital_fv": STR, "status": STR, "seed": INT, "steps_done": INT, "resolution": INT,
        "optimizer": struct({}, {"name": STR, "lr": NUMBER}),
        "references": nullable(struct({}, {
            "label": STR, "count": INT, "fit": STR, "sources": list_of(STR),
            "crops": nullable(struct({}, {"chosen_by": STR})),
            "mining": nullable(struct({}, {"boxes": nullable(list_of(BOX)), "scores": nullable(list_of(NUMBER))})),
        })),
        "loss": dict_of(list_of(FINITE)),  # the curves stop at the last finite step
        "seconds_per_step": NUMBER, "step_seconds": list_of(NUMBER), "seconds_total": NUMBER,
        "top5": list_of(struct({"index": INDEX, "name": STR, "p": NUMBER})),
        "image_spectrum": struct({}, {"slope": NUMBER, "hf_share": NUMBER}),
        "layers": struct({}, {"layers": list_of(STR)}),
        "relevance": nullable(struct({}, {"method": nullable(STR)})),
        # the run that made it (``runspec.RunSpec.to_json``; absent in records made before): its own checks run
        # when it is read back (``RunSpec.from_record``)
        "spec": struct({"runspec": INT, "model": struct({"name": NAME}), "targets": list_of(OBJECT),
                        "method": NAME, "seeds": list_of(INT)}, {"references": OBJECT, "options": OBJECT}),
    },
)


def check_record(rec: Any) -> str | None:
    """What makes ``rec`` not fit the result record's schema (the first field found: its name, what was expected,
    what is there), or None when it fits."""
    try:
        RECORD(rec, "")
    except _Bad as exc:
        return str(exc)
    return None


# -------------------------------------------------------------------------------------------------------- the walk
def find_results(root: str | os.PathLike[str], skip: Callable[[Path], bool] | None = None
                 ) -> tuple[list[tuple[Path, dict[str, Any]]], list[Problem]]:
    """(record path, record) of every result under ``root`` (sorted; hidden folders left out), and the JSON files
    that are not usable results with why. A result found fits ``RECORD``; ``skip(path)`` leaves files out silently
    (figures, shards)."""
    root = Path(root)
    if not root.is_dir():
        raise VitalError(f"{root} is not a folder: give a folder of vital results")
    found, problems = [], []
    for path in sorted(root.rglob("*.json")):
        if any(part.startswith(".") for part in path.relative_to(root).parts) or (skip and skip(path)):
            continue
        try:
            rec = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
            problems.append(Problem(path, "unreadable", f"unreadable JSON: {exc}"))
            continue
        if not is_result(rec):
            problems.append(Problem(path, "other", "not a vital result record (no method or target)"))
            continue
        if not path.with_suffix(".png").is_file():
            problems.append(Problem(path, "no-image", f"its image {path.with_suffix('.png').name} is missing"))
            continue
        why = check_record(rec)
        if why is not None:
            problems.append(Problem(path, "schema", f"not a valid result record: {why}"))
            continue
        found.append((path, rec))
    return found, problems
