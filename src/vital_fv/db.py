"""SQLite as the project's job and answer store (the atlas ledger, the study database): WAL mode, so readers
(``status``) never block the writer, autocommit with explicit ``BEGIN IMMEDIATE`` transactions, so every state
change is one committed step that a crash cannot leave half done."""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


def connect(path: str | Path, check_same_thread: bool = True) -> sqlite3.Connection:
    con = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=check_same_thread)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA synchronous=NORMAL")
    con.row_factory = sqlite3.Row
    return con


@contextmanager
def transaction(con: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taken at once (no lock upgrade to deadlock on), rolled back on any error."""
    con.execute("BEGIN IMMEDIATE")
    try:
        yield con
    except BaseException:
        con.execute("ROLLBACK")
        raise
    con.execute("COMMIT")


def create(path: str | Path, schema: str, fill: Callable[[sqlite3.Connection], None]) -> None:
    """A new database made whole under a temporary name (``schema``, then ``fill`` in one transaction) and renamed
    into place: it exists complete or not at all."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    con = sqlite3.connect(tmp, isolation_level=None)
    try:
        con.executescript(schema)
        with transaction(con):
            fill(con)
    except BaseException:
        con.close()
        tmp.unlink(missing_ok=True)
        raise
    con.close()
    os.replace(tmp, path)
