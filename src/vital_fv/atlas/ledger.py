"""The job ledger: one SQLite database (WAL) per atlas job, holding the plan and one row per item.

Every state change is one committed transaction, so whatever stops a driver (Ctrl-C, kill -9, a power cut) the
ledger says exactly which items are done (their files complete on disk, written before the row changes), which
were running (given back on the next run) and which are left. One driver at a time holds the job's lock file
(``fcntl.flock``: the OS releases it when the process dies, so a killed driver never blocks the next one).
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..db import create as create_db
from ..db import transaction
from ..errors import VitalError
from ..jobs import LEDGER_FILE, MINE, SCHEMA_VERSION, open_ledger, read_plan, read_rows

LOCK_FILE = "driver.lock"
STATUSES = ("pending", "running", "done", "failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
    id INTEGER PRIMARY KEY,
    target TEXT NOT NULL,          -- JSON: {"kind": "class", "index": 967} or {"kind": "unit", ...}
    label TEXT NOT NULL,           -- what a person reads: "967 espresso", "blocks.5.2:17"
    method TEXT NOT NULL,
    seed INTEGER NOT NULL,
    refs TEXT,                     -- what a person reads of the reference source (a folder, "bundled", "pool:DIR",
                                   -- "mined:DIR") or NULL; the worker reads the spec
    spec TEXT,                     -- JSON: the item's RunSpec (runspec.RunSpec.to_json; NULL for mining shards)
    stem TEXT NOT NULL UNIQUE,     -- output files images/STEM.png (+ .json ...): one copy per item
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    worker TEXT,
    started REAL,
    finished REAL,
    seconds REAL,
    outputs TEXT,                  -- JSON list of the files written
    digests TEXT,                  -- JSON {file: [size, sha256]} of those files, checked by status and run
    error TEXT,
    UNIQUE (target, method, seed)
);
CREATE INDEX IF NOT EXISTS items_status ON items (status, method, id);
"""


@dataclass(frozen=True)
class Item:
    """One row of the ledger: a target × method × seed and where its files go."""

    id: int
    target: dict[str, Any]
    label: str
    method: str
    seed: int
    refs: str | None
    stem: str
    status: str
    attempts: int
    spec: dict[str, Any] | None = None  # the run description (``RunSpec`` JSON); None: a shard, or a version 1 job


class Ledger:
    """An atlas job's ledger (``FOLDER/atlas.sqlite``): create it with ``create``, open it with ``open``."""

    def __init__(self, folder: Path, con: sqlite3.Connection) -> None:
        self.folder = folder
        self._con = con

    # -------------------------------------------------------------------------------------------- opening
    @classmethod
    def create(cls, folder: str | os.PathLike[str], plan: dict[str, Any], items: Sequence[dict[str, Any]],
               overwrite: bool = False) -> Ledger:
        """A new job: the plan and its items, written in one transaction (a job is all there or not at all)."""
        folder = Path(folder)
        path = folder / LEDGER_FILE
        if path.exists():
            if not overwrite:
                raise VitalError(f"{folder} already holds an atlas job: `vital atlas run {folder}` continues it; "
                                 "pass --overwrite to plan it anew (its images are kept until replaced)")
            for suffix in ("", "-wal", "-shm"):
                Path(f"{path}{suffix}").unlink(missing_ok=True)
        folder.mkdir(parents=True, exist_ok=True)

        def fill(con: sqlite3.Connection) -> None:
            con.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("schema_version", str(SCHEMA_VERSION)), ("plan", json.dumps(plan)), ("created", str(time.time()))])
            con.executemany(
                "INSERT INTO items (target, label, method, seed, refs, stem, spec) VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(json.dumps(it["target"], sort_keys=True), it["label"], it["method"], it["seed"], it.get("refs"),
                  it["stem"], json.dumps(it["spec"]) if it.get("spec") is not None else None) for it in items])

        try:
            create_db(path, _SCHEMA, fill)  # the job appears complete or not at all
        except sqlite3.IntegrityError as exc:
            raise VitalError(f"the plan repeats an item (the same target, method and seed, or file name): {exc}") \
                from None
        return cls.open(folder)

    @classmethod
    def open(cls, folder: str | os.PathLike[str]) -> Ledger:
        return cls(Path(folder), open_ledger(folder))

    def close(self) -> None:
        self._con.close()

    # ---------------------------------------------------------------------------------------------- reading
    @property
    def plan(self) -> dict[str, Any]:
        return read_plan(self._con)

    def meta(self, key: str) -> Any:
        """A JSON value the driver stored under ``key`` (None if absent), e.g. ``batch``: the batch size chosen."""
        row = self._con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def set_meta(self, key: str, value: Any) -> None:
        with self._transaction() as con:
            con.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, sort_keys=True)))

    def items(self, status: str | None = None) -> list[Item]:
        sql = "SELECT * FROM items" + (" WHERE status = ?" if status else "") + " ORDER BY id"
        return [self._item(r) for r in self._con.execute(sql, (status,) if status else ())]

    def rows(self) -> list[dict[str, Any]]:
        """Every item with all its columns (for status and the gallery)."""
        return read_rows(self._con)

    def counts(self) -> dict[str, int]:
        found = dict(self._con.execute("SELECT status, COUNT(*) FROM items GROUP BY status").fetchall())
        return {s: int(found.get(s, 0)) for s in STATUSES}

    @staticmethod
    def _item(r: sqlite3.Row) -> Item:
        spec = r["spec"] if "spec" in r.keys() else None  # noqa: SIM118 (a Row's `in` looks at values)
        return Item(r["id"], json.loads(r["target"]), r["label"], r["method"], r["seed"], r["refs"], r["stem"],
                    r["status"], r["attempts"], json.loads(spec) if spec else None)

    # ---------------------------------------------------------------------------------------------- writing
    def _transaction(self) -> Any:
        return transaction(self._con)

    def requeue(self, statuses: Sequence[str] = ("running",), reset_attempts: bool = False) -> int:
        """Give items in ``statuses`` back to the queue: ``running`` ones a stopped driver left (their attempt is
        not counted), or ``failed`` ones for ``--retry-failed`` (their attempts start again)."""
        with self._transaction() as con:
            before = con.total_changes
            if "running" in statuses:
                con.execute("UPDATE items SET status = 'pending', attempts = MAX(attempts - 1, 0), worker = NULL "
                            "WHERE status = 'running'")
            others = [s for s in statuses if s != "running"]
            if others:
                marks = ",".join("?" * len(others))
                con.execute(f"UPDATE items SET status = 'pending', worker = NULL, error = NULL"
                            f"{', attempts = 0' if reset_attempts else ''} WHERE status IN ({marks})", others)
            return con.total_changes - before

    def claim(self, n: int, worker: str) -> list[Item]:
        """Up to ``n`` pending items of one method (the first pending item's), marked running for ``worker``.
        Mining shards come first, and items whose references they make wait until every shard is done."""
        ready = ("status = 'pending' AND (refs IS NULL OR refs NOT LIKE 'mined:%' OR NOT EXISTS "
                 "(SELECT 1 FROM items AS m WHERE m.method = :mine AND m.status != 'done'))")
        with self._transaction() as con:
            first = con.execute(f"SELECT method FROM items WHERE {ready} ORDER BY method != :mine, id LIMIT 1",
                                {"mine": MINE}).fetchone()
            if first is None:
                return []
            rows = con.execute(f"SELECT id FROM items WHERE {ready} AND method = :method ORDER BY id LIMIT :n",
                               {"mine": MINE, "method": first[0], "n": n}).fetchall()
            ids = [r[0] for r in rows]
            marks = ",".join("?" * len(ids))
            con.execute(f"UPDATE items SET status = 'running', attempts = attempts + 1, worker = ?, started = ?, "
                        f"error = NULL WHERE id IN ({marks})", [worker, time.time(), *ids])
            return [self._item(r) for r in con.execute(f"SELECT * FROM items WHERE id IN ({marks}) ORDER BY id", ids)]

    def assign(self, items: Sequence[Item], worker: str) -> None:
        with self._transaction() as con:
            con.executemany("UPDATE items SET worker = ? WHERE id = ?", [(worker, it.id) for it in items])

    def release(self, items: Sequence[Item]) -> None:
        """Back to pending without counting the attempt (the driver was stopped, not the item's fault)."""
        with self._transaction() as con:
            con.executemany("UPDATE items SET status = 'pending', attempts = MAX(attempts - 1, 0), worker = NULL "
                            "WHERE id = ? AND status = 'running'", [(it.id,) for it in items])

    def blocked(self) -> int:
        """Pending items nothing can unblock (a mining shard failed for good): marked failed, naming the shards."""
        with self._transaction() as con:
            bad = [r[0] for r in con.execute("SELECT label FROM items WHERE method = ? AND status = 'failed'",
                                             (MINE,))]
            if not bad:
                return 0
            before = con.total_changes
            con.execute("UPDATE items SET status = 'failed', error = ? WHERE status = 'pending' AND refs LIKE "
                        "'mined:%'", (f"the references could not be mined ({', '.join(bad[:3])} failed): fix the "
                                      "cause and run with --retry-failed",))
            return con.total_changes - before

    def done(self, item: Item, outputs: Sequence[str], seconds: float,
             digests: dict[str, tuple[int, str]] | None = None) -> None:
        """Mark ``item`` done: call only after its files are complete on disk (``digests``: each file's size and
        sha256, what ``status`` and ``run`` check them against later)."""
        with self._transaction() as con:
            con.execute("UPDATE items SET status = 'done', finished = ?, seconds = ?, outputs = ?, digests = ?, "
                        "error = NULL WHERE id = ?",
                        (time.time(), seconds, json.dumps(list(outputs)),
                         json.dumps({k: list(v) for k, v in digests.items()}) if digests is not None else None,
                         item.id))

    def remake(self, ids: Sequence[int]) -> int:
        """Done items whose files are missing or damaged: back to pending, their attempts starting again."""
        with self._transaction() as con:
            before = con.total_changes
            con.executemany("UPDATE items SET status = 'pending', attempts = 0, worker = NULL, outputs = NULL, "
                            "digests = NULL, finished = NULL, seconds = NULL, error = NULL "
                            "WHERE id = ? AND status = 'done'", [(i,) for i in ids])
            return con.total_changes - before

    def failed(self, item: Item, error: str, max_attempts: int) -> str:
        """Record a failure: back to pending while attempts are left, else ``failed``. Returns the new status."""
        with self._transaction() as con:
            attempts = con.execute("SELECT attempts FROM items WHERE id = ?", (item.id,)).fetchone()[0]
            status = "failed" if attempts >= max_attempts else "pending"
            con.execute("UPDATE items SET status = ?, error = ?, finished = ? WHERE id = ?",
                        (status, error[-2000:], time.time(), item.id))
            return status

    # ------------------------------------------------------------------------------------------ one driver
    @contextmanager
    def driver(self) -> Iterator[None]:
        """Hold the job's driver lock for the duration; a second driver is refused, naming the first."""
        import fcntl

        path = self.folder / LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                raise VitalError(f"another `vital atlas run` is driving {self.folder} ({holder}): wait for it, or "
                                 "stop it (Ctrl-C) and run again to continue") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"pid {os.getpid()} on {socket.gethostname()}, since {time.ctime()}".encode(), 0)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock
