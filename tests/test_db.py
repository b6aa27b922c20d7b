"""The SQLite helpers: WAL mode, and a transaction that commits whole or not at all."""

from __future__ import annotations

import pytest

from vital_fv.db import connect, transaction


def test_wal_and_all_or_nothing(tmp_path):
    con = connect(tmp_path / "x.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.execute("CREATE TABLE t (v INTEGER)")
    with transaction(con):
        con.execute("INSERT INTO t VALUES (1)")
    with pytest.raises(RuntimeError), transaction(con):
        con.execute("INSERT INTO t VALUES (2)")
        raise RuntimeError
    other = connect(tmp_path / "x.sqlite")
    assert [r[0] for r in other.execute("SELECT v FROM t")] == [1]


def test_a_new_database_exists_whole_or_not_at_all(tmp_path):
    from vital_fv.db import create

    def fails(con):
        con.execute("INSERT INTO t VALUES (1)")
        raise ValueError("half way")

    with pytest.raises(ValueError):
        create(tmp_path / "a.sqlite", "CREATE TABLE t (v INTEGER);", fails)
    assert list(tmp_path.iterdir()) == []
    create(tmp_path / "a.sqlite", "CREATE TABLE t (v INTEGER);", lambda con: con.execute("INSERT INTO t VALUES (7)"))
    assert [r[0] for r in connect(tmp_path / "a.sqlite").execute("SELECT v FROM t")] == [7]
