"""One walk over a results folder: results with their images, and every other JSON file named with why."""

from __future__ import annotations

import copy
import functools
import json
import math

import pytest
from gallery_helpers import results_folder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vital_fv.errors import VitalError
from vital_fv.records import find_results


def test_results_and_problems(tmp_path):
    root = results_folder(tmp_path / "r")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.json").write_text("{")
    found, problems = find_results(root, skip=lambda p: p.name == "circuit.json")
    assert len(found) == 9 and all(p.with_suffix(".png").is_file() for p, _ in found)
    kinds = {p.path.name: p.kind for p in problems}
    assert kinds == {"broken.json": "unreadable", "notes.json": "other", "orphan.json": "no-image"}
    with pytest.raises(VitalError, match="is not a folder"):
        find_results(tmp_path / "nope")


# Two records in the shape `vital visualize` writes them (a tiny model's VITAL class run, trimmed hashes; a unit
# run from a `vital mine` folder): the starting points the property test below breaks.
REAL_CLASS = {
    "vital_fv": "0.1.0", "method": "vital", "status": "complete", "steps_done": 2,
    "target": {"kind": "class", "index": 1, "name": "one"}, "seed": 0,
    "model": {"name": "tiny", "weights_sha256": "de84", "weights_source": "in-memory module",
              "preprocess": {"input_size": 32, "resize_size": 36, "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                             "interpolation": "bilinear"},
              "preprocess_source": "", "num_classes": 4, "class_token_matched": None},
    "optimizer": {"name": "paper", "steps": 2, "lr": 1.0, "betas": [0.5, 0.9], "eps": 1e-08, "warmup": 0,
                  "unit_init_std": None},
    "resolution": 32, "device": "cpu",
    "references": {"label": "refs", "sources": ["refs/r0.png", "refs/r1.png"], "sha256": ["117c", "94a7"],
                   "originals": 2, "count": 2, "augmented": False, "augment_seed": 0, "crop_scale": [0.5, 1.0],
                   "content_hash": "7d7a", "fit": "crop",
                   "crops": {"chosen_by": "evidence", "class_index": 1, "kept": 2, "kept_mean": 0.4}},
    "loss": {"act1": [0.015223, 0.003332], "act2": [0.002407, 0.000462]},
    "seconds_per_step": 0.0044, "step_seconds": [0.00562, 0.00318], "seconds_total": 0.029,
    "top5": [{"index": 3, "name": "three", "p": 0.26528}, {"index": 1, "name": "one", "p": 0.23468}],
    "environment": {"torch": "2.4.0", "python": "3.11.7"},
    "image_spectrum": {"slope": -0.4018, "hf_share": 0.69125},
    "layers": {"layers": ["act1", "act2"], "weights": [1.0, 1.0], "tv": 0.0, "l2": 0.0, "source": "user"},
    "prototypes": {"key": "ecb1", "cache": "miss"}, "reference_seconds": 0.02,
    "relevance": {"method": "lrp", "family": "generic", "conservation": {"act1": 0.999998}, "silent_steps": 0},
    "files": {"png": "r.png", "json": "r.json"},
}
REAL_UNIT = {
    **REAL_CLASS, "target": {"kind": "unit", "layer": "act2", "channel": 3, "position": [1, 2], "value": 0.079467},
    "relevance": None,
    "references": {"label": "mined:act2:3", "sources": ["mine/p0.png", "mine/p1.png"], "count": 2, "fit": "stretch",
                   "mining": {"k": 2, "use": "patches", "scores": [3.0, 1.5],
                              "boxes": [[0, 0, 16, 16], [8, 8, 24, 24]]}},
}

JSON = st.recursive(st.none() | st.booleans() | st.integers(-3, 3) | st.floats() | st.text(max_size=4),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=5)


def _paths(value, path=()):
    yield path
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
    for key, sub in items:
        yield from _paths(sub, (*path, key))


@st.composite
def broken_records(draw):
    """A real record with one to three fields, at any depth, deleted, set to null or replaced by any JSON value."""
    rec = copy.deepcopy(draw(st.sampled_from([REAL_CLASS, REAL_UNIT])))
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from([p for p in _paths(rec) if p]))
        parent = functools.reduce(lambda v, k: v[k], path[:-1], rec)
        action = draw(st.sampled_from(["delete", "null", "replace"]))
        if action == "delete":
            del parent[path[-1]]
        else:
            parent[path[-1]] = None if action == "null" else draw(JSON)
    return rec


def _typed(rec):
    """What the readers (gallery, study, evaluate) take for granted of a record find_results accepts."""
    def is_int(v):
        return isinstance(v, int) and not isinstance(v, bool)

    def is_num(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    assert isinstance(rec["method"], str) and rec["method"]
    t = rec["target"]
    assert t["kind"] in ("class", "unit", "direction")
    if t["kind"] == "class":
        assert is_int(t["index"]) and isinstance(t["name"], str)
    else:
        assert isinstance(t["layer"], str)
    if t["kind"] == "unit":
        assert is_int(t["channel"]) and (t.get("position") is None or all(is_int(p) for p in t["position"]))
    if t["kind"] == "direction":
        assert isinstance(t["name"], str)
    assert isinstance(rec["model"]["name"], str) and is_int(rec["model"].get("num_classes", 0))
    assert is_int(rec.get("seed", 0)) and isinstance(rec.get("status", ""), str)
    for layer, curve in rec.get("loss", {}).items():
        assert isinstance(layer, str) and all(is_num(v) and math.isfinite(v) for v in curve)
    refs = rec.get("references") or {}
    assert isinstance(refs, dict) and all(isinstance(s, str) for s in refs.get("sources", []))
    assert isinstance(refs.get("crops") or {}, dict) and isinstance(refs.get("label", ""), str)
    mining = refs.get("mining") or {}
    assert all(len(b) == 4 and all(is_int(x) for x in b) for b in mining.get("boxes") or [])
    assert all(is_num(s) for s in mining.get("scores") or [])
    assert all(is_int(t["index"]) and isinstance(t["name"], str) and is_num(t["p"]) for t in rec.get("top5", []))
    assert is_num(rec.get("optimizer", {}).get("lr", 0)) and isinstance(rec.get("relevance") or {}, dict)
    assert isinstance((rec.get("relevance") or {}).get("method") or "", str)
    assert all(isinstance(n, str) for n in rec.get("layers", {}).get("layers", []))
    assert all(is_num(rec.get("image_spectrum", {}).get(k, 0)) for k in ("slope", "hf_share"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rec=broken_records())
def test_a_broken_record_is_accepted_typed_or_named_never_a_crash(tmp_path, rec):
    import torch

    from vital_fv.evaluate import Item
    from vital_fv.gallery.build import _details, _Manifest, _references
    from vital_fv.gallery.index import _target

    (tmp_path / "r.png").write_bytes(b"png")
    (tmp_path / "r.json").write_text(json.dumps(rec))
    found, problems = find_results(tmp_path)
    assert len(found) + len(problems) == 1
    if found:
        _typed(found[0][1])
        item = {"id": "r", "json": "r.json", **_target(rec)}
        _details(rec, item, tmp_path, tmp_path / "site", None, [])
        _references(rec, item, tmp_path, tmp_path / "site", _Manifest(tmp_path / "site"))
        it = Item(tmp_path / "r.json", rec, torch.zeros(3, 2, 2))
        assert isinstance(it.method, str) and isinstance(it.model, str) and it.kind in ("class", "unit", "direction")
    else:
        (p,) = problems
        assert p.kind in ("schema", "other") and p.path.name == "r.json"
        if p.kind == "schema":
            assert p.reason.startswith("not a valid result record: field ")


def test_real_records_pass_the_schema(tmp_path):
    from vital_fv.records import check_record

    for name, rec in (("c", REAL_CLASS), ("u", REAL_UNIT)):
        (tmp_path / f"{name}.png").write_bytes(b"png")
        (tmp_path / f"{name}.json").write_text(json.dumps(rec))
    found, problems = find_results(tmp_path)
    assert [p.name for p, _ in found] == ["c.json", "u.json"] and problems == []
    assert check_record(REAL_CLASS) is None and check_record(REAL_UNIT) is None


@pytest.mark.parametrize("field, value, words", [
    ("model", "x", "field model: expected an object, got str 'x'"),
    ("target", "class", "field target: expected an object, got str 'class'"),
    ("references", "x", "field references: expected null or an object, got str 'x'"),
    ("method", 5, "field method: expected a non-empty string, got int 5"),
    ("loss", ["abc"], "field loss: expected an object, got list"),
    ("loss", {"act1": [1.0, None]}, "field loss.act1[1]: expected a finite number, got null"),
    ("loss", {"act1": [1.0, float("nan")]}, "field loss.act1[1]: expected a finite number, got float nan"),
    ("seed", "0", "field seed: expected an integer, got str '0'"),
    ("target", {"kind": "class", "index": True, "name": "one"},
     "field target.index: expected a non-negative integer, got bool"),
    ("target", {"kind": "shape", "index": 1}, "field target.kind: expected one of class, unit, direction"),
    ("target", {"kind": "unit", "layer": "act2"}, "field target.channel: missing"),
    ("spec", {"runspec": 1, "model": {"name": "tiny"}, "targets": [], "method": "vital"}, "field spec.seeds: missing"),
    ("spec", "vital visualize --class 1", "field spec: expected an object"),
])
def test_the_issue_s_bad_records_are_named_with_their_field(tmp_path, field, value, words):
    (tmp_path / "bad.png").write_bytes(b"png")
    (tmp_path / "bad.json").write_text(json.dumps({**REAL_UNIT, field: value}))
    found, problems = find_results(tmp_path)
    assert found == [] and [(p.path.name, p.kind) for p in problems] == [("bad.json", "schema")]
    assert words in problems[0].reason
