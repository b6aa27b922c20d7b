"""The atlas ledger: items move pending -> running -> done / failed in committed steps; one driver at a time."""

from __future__ import annotations

import sqlite3

import pytest

from vital_fv.atlas.ledger import Ledger
from vital_fv.errors import VitalError


def _items(n: int, methods=("vital",)):
    return [{"target": {"kind": "class", "index": i}, "label": f"{i} c{i}", "method": m, "seed": 0,
             "refs": "bundled", "stem": f"m-{i}-{m}"} for m in methods for i in range(n)]


def test_claims_group_one_method_and_every_change_is_committed(tmp_path):
    ledger = Ledger.create(tmp_path / "job", {"model": "x"}, _items(3, ("vital", "maco")))
    first = ledger.claim(4, "w1")
    assert [it.method for it in first] == ["vital"] * 3 and all(it.attempts == 1 for it in first)
    ledger.done(first[0], ["images/a.png"], 1.5)
    assert ledger.failed(first[1], "boom", max_attempts=2) == "pending"
    ledger.release([first[2]])
    other = Ledger.open(tmp_path / "job")  # what another process reads: every step is already committed
    assert other.counts() == {"pending": 5, "running": 0, "done": 1, "failed": 0}
    again = ledger.claim(2, "w1")
    assert [it.id for it in again] == [first[1].id, first[2].id] and [it.attempts for it in again] == [2, 1]
    assert ledger.failed(again[0], "boom again", max_attempts=2) == "failed"
    ledger.done(again[1], [], 1.0)
    assert ledger.claim(10, "w2")[0].method == "maco"
    assert ledger.requeue(("running",)) == 3  # a stopped driver's items, their attempt not counted
    assert ledger.requeue(("failed",), reset_attempts=True) == 1
    assert ledger.counts() == {"pending": 4, "running": 0, "done": 2, "failed": 0}
    assert ledger.plan == {"model": "x"}


def test_one_driver_at_a_time_and_a_job_is_never_planned_twice(tmp_path):
    ledger = Ledger.create(tmp_path / "job", {}, _items(1))
    second = Ledger.open(tmp_path / "job")
    with ledger.driver(), pytest.raises(VitalError, match=r"another `vital atlas run` is driving .*\(pid \d+"), \
            second.driver():
        pass
    with Ledger.open(tmp_path / "job").driver():  # released when the first driver stopped
        pass
    with pytest.raises(VitalError, match="already holds an atlas job"):
        Ledger.create(tmp_path / "job", {}, _items(1))
    assert Ledger.create(tmp_path / "job", {}, _items(2), overwrite=True).counts()["pending"] == 2
    with pytest.raises(VitalError, match="the plan repeats an item"):
        Ledger.create(tmp_path / "dup", {}, _items(1) * 2)
    assert not (tmp_path / "dup" / "atlas.sqlite").exists()  # a job is all there or not at all


def test_unreadable_and_newer_ledgers_are_named(tmp_path):
    with pytest.raises(VitalError, match="is not an atlas job"):
        Ledger.open(tmp_path)
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "atlas.sqlite").write_text("not a database")
    with pytest.raises(VitalError, match="cannot read the atlas ledger"):
        Ledger.open(tmp_path / "bad")
    Ledger.create(tmp_path / "new", {}, _items(1)).close()
    con = sqlite3.connect(tmp_path / "new" / "atlas.sqlite")
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(VitalError, match="made by a newer vital-fv"):
        Ledger.open(tmp_path / "new")


def test_mined_items_wait_for_every_shard_and_a_failed_shard_fails_them_by_name(tmp_path):
    items = [{"target": {"kind": "shard", "layer": "l", "index": i}, "label": f"mine l shard {i + 1}/2",
              "method": "mine", "seed": 0, "refs": f"s{i}.txt", "stem": f"mine-{i}"} for i in range(2)]
    items += [{"target": {"kind": "unit", "layer": "l", "channel": c}, "label": f"l:{c}", "method": "vital",
               "seed": 0, "refs": "mined:/job/mining/l", "stem": f"u{c}"} for c in range(2)]
    items += [{"target": {"kind": "unit", "layer": "l", "channel": 0}, "label": "l:0", "method": "fourier",
               "seed": 0, "refs": None, "stem": "f0"}]
    ledger = Ledger.create(tmp_path / "job", {}, items)
    shard = ledger.claim(1, "w")
    assert [it.method for it in shard] == ["mine"]
    second = ledger.claim(8, "w")
    assert [it.label for it in second] == ["mine l shard 2/2"]
    assert [it.method for it in ledger.claim(8, "w")] == ["fourier"]  # needs no mining: it need not wait
    assert ledger.claim(8, "w") == []  # the units wait for both shards
    ledger.done(shard[0], [], 1.0)
    assert ledger.failed(second[0], "disk full", max_attempts=1) == "failed"
    assert ledger.claim(8, "w") == []
    assert ledger.blocked() == 2
    failed = [r for r in ledger.rows() if r["method"] == "vital"]
    assert all(r["status"] == "failed" and "mine l shard 2/2 failed" in r["error"] for r in failed)


def test_a_ledger_made_before_file_hashes_gets_their_column_and_reads_as_before(tmp_path):
    Ledger.create(tmp_path / "job", {}, _items(2)).close()
    con = sqlite3.connect(tmp_path / "job" / "atlas.sqlite")
    con.execute("ALTER TABLE items DROP COLUMN digests")  # the schema of a job an older vital-fv planned
    con.commit()
    con.close()
    ledger = Ledger.open(tmp_path / "job")
    assert [r["digests"] for r in ledger.rows()] == [None, None]
    first, second = ledger.claim(2, "w")
    ledger.done(first, ["images/a.png"], 1.0, {"images/a.png": (3, "ab")})
    ledger.done(second, ["images/b.png"], 1.0)
    assert [r["digests"] for r in ledger.rows()] == ['{"images/a.png": [3, "ab"]}', None]
    assert ledger.remake([first.id, second.id]) == 2
    assert [(r["status"], r["attempts"], r["digests"], r["outputs"]) for r in ledger.rows()] == \
        [("pending", 0, None, None)] * 2
