"""What a gallery finds: records recursively, broken ones listed as issues, an atlas job's unmade items."""

from __future__ import annotations

import pytest
from gallery_helpers import HOSTILE, results_folder

from vital_fv.errors import VitalError
from vital_fv.gallery import scan


def test_records_are_found_recursively_and_broken_ones_listed(tmp_path):
    root = results_folder(tmp_path / "r")
    cache = root / "mining" / "blocks.5.2" / "shard-0000.cache" / "mining"  # an atlas job's mining caches
    cache.mkdir(parents=True)
    (cache / "0a1b.json").write_text('{"entries": {}}')
    (cache.parent.parent / "shard-0000.json").write_text('{"units": {}}')
    found = scan(root)
    assert len(found.items) == 9
    assert {it["method"] for it in found.items} == {"vital", "maco"}
    evil = [it for it in found.items if it.get("name") == HOSTILE]
    assert len(evil) == 4 and evil[0]["key"] == "class:2" and evil[0]["title"] == f"2 {HOSTILE}"
    unit = next(it for it in found.items if it["kind"] == "unit")
    assert unit["title"] == "act2:3" and unit["layer"] == "act2" and unit["channel"] == 3
    problems = {i["file"]: i["problem"] for i in found.issues}
    assert set(problems) == {"broken.json", "orphan.json", "notes.json"}
    assert "unreadable JSON" in problems["broken.json"] and "image orphan.png is missing" in problems["orphan.json"]
    assert len({it["id"] for it in found.items}) == 9  # ids are unique
    assert found.figures == [{"kind": "circuit", "folder": "circuit", "json": "circuit/circuit.json",
                              "images": ["circuit/circuit.png"],
                              "fields": {"model": "tiny", "layer": "act2", "class_name": "one"}}]


def test_an_atlas_job_lists_its_unmade_items(tmp_path):
    from vital_fv.atlas.ledger import Ledger

    job = tmp_path / "job"
    items = [{"target": {"kind": "class", "index": i}, "label": f"{i} c{i}", "method": "vital", "seed": 0,
              "refs": "bundled", "stem": f"tiny-{i}-c{i}-s0"} for i in range(3)]
    ledger = Ledger.create(job, {"model": "tiny"}, items)
    first, second = ledger.claim(2, "w")
    ledger.failed(second, "Traceback ...\nVitalError: no references", max_attempts=1)
    from gallery_helpers import write_result

    write_result(job / "images", "tiny-0-c0-s0", index=0, name="c0")
    ledger.done(first, ["images/tiny-0-c0-s0.png"], 1.0)
    found = scan(job)
    status = {it["stem"].split("/")[-1]: it["status"] for it in found.items}
    assert status == {"tiny-0-c0-s0": "complete", "tiny-1-c1-s0": "failed", "tiny-2-c2-s0": "pending"}
    failed = next(it for it in found.items if it["status"] == "failed")
    assert failed["error"] == "VitalError: no references" and failed["file"] is None


def test_not_a_folder_is_named(tmp_path):
    with pytest.raises(VitalError, match="is not a folder"):
        scan(tmp_path / "nope")
