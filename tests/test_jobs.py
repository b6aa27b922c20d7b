"""An atlas job read without the atlas: what ``vital gallery`` sees of a ledger the atlas wrote."""

from __future__ import annotations

import sqlite3

import pytest

from vital_fv.atlas.ledger import Ledger
from vital_fv.errors import VitalError
from vital_fv.jobs import LEDGER_FILE, read_job


def _items(n: int):
    return [{"target": {"kind": "class", "index": i}, "label": f"{i} c{i}", "method": "vital", "seed": 0,
             "refs": "bundled", "stem": f"m-{i}"} for i in range(n)]


def test_read_job_gives_the_plan_and_every_row_as_the_ledger_left_them(tmp_path):
    ledger = Ledger.create(tmp_path / "job", {"model": "x", "steps": 3}, _items(3))
    first = ledger.claim(1, "w1")[0]
    ledger.done(first, ["images/m-0.png"], 1.5)
    ledger.close()
    plan, rows = read_job(tmp_path / "job")
    assert plan == {"model": "x", "steps": 3}
    assert [r["stem"] for r in rows] == ["m-0", "m-1", "m-2"]
    assert [r["status"] for r in rows] == ["done", "pending", "pending"]
    assert rows[0]["outputs"] and rows[1]["digests"] is None


def test_read_job_refuses_what_is_not_a_job_it_can_read(tmp_path):
    with pytest.raises(VitalError, match="is not an atlas job"):
        read_job(tmp_path)
    Ledger.create(tmp_path / "new", {}, _items(1)).close()
    con = sqlite3.connect(tmp_path / "new" / LEDGER_FILE)
    con.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    con.commit()
    con.close()
    with pytest.raises(VitalError, match="made by a newer vital-fv"):
        read_job(tmp_path / "new")
