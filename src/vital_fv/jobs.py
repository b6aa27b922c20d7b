"""An atlas job's ledger as its readers see it: the file's name, the ledger versions this vital-fv reads, and the
plan and item rows read back.

It sits in the core, below both the atlas (``atlas.ledger`` writes the ledger and runs the job) and the gallery
(which shows the items a job has not made yet), so that the gallery reads a job without importing the atlas.
"""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import suppress
from pathlib import Path
from typing import Any

from .db import connect
from .errors import VitalError

LEDGER_FILE = "atlas.sqlite"
SCHEMA_VERSION = 2  # 2: each item holds its run description (``spec``); version 1 jobs are read, not run
MINE = "mine"  # the method name of mining shard items (``atlas.mining``): they run before all others


def open_ledger(folder: str | os.PathLike[str]) -> sqlite3.Connection:
    """A connection to ``FOLDER/atlas.sqlite``, refused (``VitalError``) when it is missing, unreadable or newer
    than this vital-fv reads."""
    folder = Path(folder)
    path = folder / LEDGER_FILE
    if not path.is_file():
        raise VitalError(f"{folder} is not an atlas job (no {LEDGER_FILE}): make one with `vital atlas plan ... "
                         f"--out {folder}`")
    try:
        con = connect(path)
        version = int(con.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0])
    except (sqlite3.DatabaseError, TypeError, ValueError) as exc:
        raise VitalError(f"cannot read the atlas ledger {path}: {exc}") from None
    if version > SCHEMA_VERSION:
        con.close()
        raise VitalError(f"the atlas job {folder} was made by a newer vital-fv (ledger version {version}, this "
                         f"one reads up to {SCHEMA_VERSION}): upgrade vital-fv")
    columns = {r[1] for r in con.execute("PRAGMA table_info(items)")}
    if "spec" not in columns:  # a version 1 job: read as it is (status, gallery); ``atlas run`` refuses its items
        with suppress(sqlite3.OperationalError):
            con.execute("ALTER TABLE items ADD COLUMN spec TEXT")
    if "digests" not in columns:  # a job made before the files' hashes were recorded: its items get them
        # when they are made (again); an older vital-fv reads the rows by column name as before. A read-only
        # job stays as it is: read without hashes (``rows`` gives every item digests None)
        with suppress(sqlite3.OperationalError):
            con.execute("ALTER TABLE items ADD COLUMN digests TEXT")
    return con


def read_plan(con: sqlite3.Connection) -> dict[str, Any]:
    return json.loads(con.execute("SELECT value FROM meta WHERE key = 'plan'").fetchone()[0])


def read_rows(con: sqlite3.Connection) -> list[dict[str, Any]]:
    """Every item with all its columns, in plan order."""
    return [{"digests": None, "spec": None, **dict(r)} for r in con.execute("SELECT * FROM items ORDER BY id")]


def read_job(folder: str | os.PathLike[str]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The plan and every item row of the atlas job in ``folder`` (the connection closed again)."""
    con = open_ledger(folder)
    try:
        return read_plan(con), read_rows(con)
    finally:
        con.close()
