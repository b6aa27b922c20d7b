"""The study's database: SQLite in WAL mode inside the study folder. The design (stimuli and their answer key, the
subsets' trial lists) is written once by ``create``; participants, their trials and answers as they come, each
answer committed when given. Demographics live in their own table, never joined to answers by the exports.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from ..db import connect, transaction
from ..db import create as create_db
from ..errors import VitalError

DB_FILE = "study.sqlite"
SCHEMA_VERSION = 1
_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS stimuli (
    id TEXT PRIMARY KEY,            -- opaque: what the browser sees in image URLs
    file TEXT NOT NULL,             -- images/ID.png in the study folder
    kind TEXT NOT NULL,             -- vis, refcrop, query, photo
    method TEXT, target TEXT, label TEXT, wnid TEXT, info TEXT
);
CREATE TABLE IF NOT EXISTS participants (
    token TEXT PRIMARY KEY, subset INTEGER NOT NULL, seed INTEGER NOT NULL, started REAL NOT NULL,
    finished REAL, consent INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS demographics (token TEXT PRIMARY KEY, age TEXT, gender TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS trials (
    token TEXT NOT NULL, n INTEGER NOT NULL, part TEXT NOT NULL,
    shown TEXT NOT NULL,            -- JSON: what the page shows (prompt, image ids): no answer key
    key TEXT NOT NULL,              -- JSON: the answer key (method, target, correct query, attention check)
    PRIMARY KEY (token, n)
);
CREATE TABLE IF NOT EXISTS answers (
    token TEXT NOT NULL, n INTEGER NOT NULL, value TEXT NOT NULL, ms INTEGER, created REAL NOT NULL,
    PRIMARY KEY (token, n)          -- one answer per trial: the same one twice is stored once
);
"""


class Store:
    """The study's SQLite database; one connection per thread (the server answers on several)."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.path = self.folder / DB_FILE
        if not self.path.is_file():
            raise VitalError(f"{folder} is not a study (no {DB_FILE}): make one with `vital study create`")
        self._local = threading.local()
        try:
            version = int(self.meta("schema_version"))
        except (sqlite3.DatabaseError, TypeError, ValueError) as exc:
            raise VitalError(f"cannot read the study database {self.path}: {exc}") from None
        if version > SCHEMA_VERSION:
            raise VitalError(f"{folder} was made by a newer vital-fv (study version {version}): upgrade vital-fv")

    @staticmethod
    def create(folder: str | Path, design: dict[str, Any], stimuli: list[dict[str, Any]]) -> Store:
        folder = Path(folder)

        def fill(con: sqlite3.Connection) -> None:
            con.executemany("INSERT INTO meta VALUES (?, ?)", [
                ("schema_version", str(SCHEMA_VERSION)), ("design", json.dumps(design)),
                ("admin_token", secrets.token_urlsafe(18)), ("created", str(time.time()))])
            con.executemany("INSERT INTO stimuli VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
                (s["id"], s["file"], s["kind"], s.get("method"), s.get("target"), s.get("label"), s.get("wnid"),
                 json.dumps(s.get("info") or {})) for s in stimuli])

        create_db(folder / DB_FILE, _SCHEMA, fill)  # the design exists complete or not at all
        return Store(folder)

    @property
    def con(self) -> sqlite3.Connection:
        con = getattr(self._local, "con", None)
        if con is None:
            con = self._local.con = connect(self.path, check_same_thread=False)
        return con

    def transaction(self) -> Any:
        return transaction(self.con)

    def meta(self, key: str) -> str:
        row = self.con.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        if row is None:
            raise VitalError(f"the study database has no {key}")
        return row[0]

    @property
    def design(self) -> dict[str, Any]:
        return json.loads(self.meta("design"))

    @property
    def admin_token(self) -> str:
        return self.meta("admin_token")

    # ---------------------------------------------------------------------------------------- participants
    def add_participant(self, trials_for: Any) -> str:
        """A new participant in the subset with the fewest so far (counterbalancing), with their trial list
        (``trials_for(subset, seed)``: [(part, shown, key)]) written in the same transaction."""
        design = self.design
        with self.transaction() as con:
            counts = dict(con.execute("SELECT subset, COUNT(*) FROM participants GROUP BY subset").fetchall())
            subsets = range(design["subsets"])
            subset = min(subsets, key=lambda s: (counts.get(s, 0), s))
            if counts.get(subset, 0) >= design["participants_per_subset"]:
                raise VitalError("the study is full: every subset has its participants")
            token = secrets.token_urlsafe(16)
            seed = secrets.randbelow(2**31)
            con.execute("INSERT INTO participants VALUES (?, ?, ?, ?, NULL, 1)", (token, subset, seed, time.time()))
            con.executemany("INSERT INTO trials VALUES (?, ?, ?, ?, ?)", [
                (token, n, part, json.dumps(shown), json.dumps(key))
                for n, (part, shown, key) in enumerate(trials_for(subset, seed))])
        return token

    def participant(self, token: str) -> sqlite3.Row | None:
        return self.con.execute("SELECT * FROM participants WHERE token = ?", (token,)).fetchone()

    def next_trial(self, token: str) -> dict[str, Any] | None:
        """The first trial without an answer (a reload or a dropped connection resumes there)."""
        row = self.con.execute(
            "SELECT t.n, t.part, t.shown, (SELECT COUNT(*) FROM trials WHERE token = t.token) AS total "
            "FROM trials t LEFT JOIN answers a ON a.token = t.token AND a.n = t.n "
            "WHERE t.token = ? AND a.n IS NULL ORDER BY t.n LIMIT 1", (token,)).fetchone()
        if row is None:
            return None
        return {"n": row["n"], "part": row["part"], "total": row["total"], **json.loads(row["shown"])}

    def trial(self, token: str, n: int) -> sqlite3.Row | None:
        return self.con.execute("SELECT * FROM trials WHERE token = ? AND n = ?", (token, n)).fetchone()

    def answer(self, token: str, n: int, value: Any, ms: int | None) -> str:
        """Store an answer once: ``stored``, ``again`` (the same answer, already stored) or ``conflict``."""
        text = json.dumps(value, sort_keys=True)
        with self.transaction() as con:
            old = con.execute("SELECT value FROM answers WHERE token = ? AND n = ?", (token, n)).fetchone()
            if old is not None:
                return "again" if old[0] == text else "conflict"
            con.execute("INSERT INTO answers VALUES (?, ?, ?, ?, ?)", (token, n, text, ms, time.time()))
            left = con.execute("SELECT COUNT(*) FROM trials t LEFT JOIN answers a ON a.token = t.token AND a.n = t.n "
                               "WHERE t.token = ? AND a.n IS NULL", (token,)).fetchone()[0]
            if left == 0:
                con.execute("UPDATE participants SET finished = ? WHERE token = ?", (time.time(), token))
        return "stored"

    def demographics(self, token: str, age: str | None, gender: str | None) -> None:
        with self.transaction() as con:
            con.execute("INSERT OR REPLACE INTO demographics VALUES (?, ?, ?, ?)", (token, age, gender, time.time()))

    def stimulus_file(self, ident: str) -> Path | None:
        row = self.con.execute("SELECT file FROM stimuli WHERE id = ?", (ident,)).fetchone()
        return self.folder / row[0] if row else None

    # --------------------------------------------------------------------------------------------- reading
    def rows(self) -> list[dict[str, Any]]:
        """Every answer with its trial's key and part, for status, export and the report (no demographics)."""
        cur = self.con.execute(
            "SELECT p.token, p.subset, p.finished IS NOT NULL AS finished, t.n, t.part, t.key, a.value, a.ms, "
            "a.created FROM answers a JOIN trials t ON t.token = a.token AND t.n = a.n "
            "JOIN participants p ON p.token = a.token ORDER BY p.started, t.n")
        return [{**dict(r), "key": json.loads(r["key"]), "value": json.loads(r["value"])} for r in cur]

    def counts(self) -> dict[str, Any]:
        con = self.con
        started, finished = con.execute("SELECT COUNT(*), COUNT(finished) FROM participants").fetchone()
        per_part = dict(con.execute("SELECT t.part, COUNT(*) FROM answers a JOIN trials t ON t.token = a.token AND "
                                    "t.n = a.n GROUP BY t.part").fetchall())
        per_method: dict[str, int] = {}
        for (key,) in con.execute("SELECT t.key FROM answers a JOIN trials t ON t.token = a.token AND t.n = a.n"):
            m = json.loads(key).get("method") or "attention check"
            per_method[m] = per_method.get(m, 0) + 1
        return {"started": started, "finished": finished, "answers_per_part": per_part,
                "answers_per_method": per_method}
