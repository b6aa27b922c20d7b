"""The study's database: SQLite in WAL mode inside the study folder. The design (stimuli and their answer key, the
subsets' trial lists) is written once by ``create``; participants, their trials and answers as they come, each
answer committed when given. Demographics and recruitment-platform ids live in their own tables, never joined to
answers by the exports. The admin token is in a file of its own (``admin-token``, mode 0600), not in the database.
"""

from __future__ import annotations

import hmac
import json
import os
import random
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
TOKEN_FILE = "admin-token"
SCHEMA_VERSION = 2
ABANDON_AFTER_MINUTES = 60  # an unfinished participant with no answer for this long frees their slot
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
    finished REAL, consent INTEGER NOT NULL,
    ordinal INTEGER,                -- k-th participant of the study (the k-th seed of its sequence); NULL: pilot
    pilot INTEGER NOT NULL DEFAULT 0,  -- a simulated or test participant: left out of counts, export and report
    last REAL                       -- the last answer (or the start): how long they have been away
);
CREATE TABLE IF NOT EXISTS demographics (token TEXT PRIMARY KEY, age TEXT, gender TEXT, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS platform_ids (  -- a recruitment platform's ids (PROLIFIC_PID, ...), apart from answers
    token TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (token, name)
);
CREATE TABLE IF NOT EXISTS trials (
    token TEXT NOT NULL, n INTEGER NOT NULL, part TEXT NOT NULL,
    shown TEXT NOT NULL,            -- JSON: what the page shows (prompt, image ids): no answer key
    key TEXT NOT NULL,              -- JSON: the answer key (method, target, correct query, attention check)
    shown_at REAL,                  -- when the server first sent it (server clock)
    PRIMARY KEY (token, n)
);
CREATE TABLE IF NOT EXISTS answers (
    token TEXT NOT NULL, n INTEGER NOT NULL, value TEXT NOT NULL, ms INTEGER, created REAL NOT NULL,
    PRIMARY KEY (token, n)          -- one answer per trial: the same one twice is stored once
);
"""
# A study made by version 1: the columns version 2 added (its participants count as ordinary ones).
_MIGRATE_1 = ("ALTER TABLE participants ADD COLUMN ordinal INTEGER",
              "ALTER TABLE participants ADD COLUMN pilot INTEGER NOT NULL DEFAULT 0",
              "ALTER TABLE participants ADD COLUMN last REAL",
              "ALTER TABLE trials ADD COLUMN shown_at REAL",
              "CREATE TABLE IF NOT EXISTS platform_ids (token TEXT NOT NULL, name TEXT NOT NULL, "
              "value TEXT NOT NULL, PRIMARY KEY (token, name))",
              "UPDATE participants SET last = started",
              "UPDATE meta SET value = '2' WHERE key = 'schema_version'")


def participant_seed(study_seed: int, ordinal: int) -> int:
    """The ``ordinal``-th participant's seed: a fixed sequence per study seed (``create --seed``)."""
    return random.Random(f"vital-study/{study_seed}/{ordinal}").randrange(2**31)


def _write_secret(path: Path, text: str) -> None:
    """A file only its owner can read (0600 from the start), written whole under a temporary name."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, path)


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
            if version == 1:
                with self.transaction() as con:
                    for sql in _MIGRATE_1:
                        con.execute(sql)
                version = 2
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
                ("created", str(time.time()))])
            con.executemany("INSERT INTO stimuli VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [
                (s["id"], s["file"], s["kind"], s.get("method"), s.get("target"), s.get("label"), s.get("wnid"),
                 json.dumps(s.get("info") or {})) for s in stimuli])

        _write_secret(folder / TOKEN_FILE, secrets.token_urlsafe(24))
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
    def token_file(self) -> Path:
        return self.folder / TOKEN_FILE

    @property
    def admin_token(self) -> str:
        """The admin token, from its 0600 file (a version-1 study's is moved there from the database)."""
        if not self.token_file.is_file():
            try:
                old = self.meta("admin_token")
            except VitalError:
                raise VitalError(f"{self.token_file} is missing: the study's admin token is lost") from None
            _write_secret(self.token_file, old)
        return self.token_file.read_text().strip()

    def is_admin(self, given: str | None) -> bool:
        """Constant-time comparison with the admin token."""
        return given is not None and hmac.compare_digest(given.encode(), self.admin_token.encode())

    # ---------------------------------------------------------------------------------------- participants
    def _active(self, con: sqlite3.Connection, pilot: bool) -> dict[int, int]:
        """Participants per subset holding a slot: finished, or answered within the abandon time."""
        design = self.design
        if pilot:
            return dict(con.execute("SELECT subset, COUNT(*) FROM participants WHERE pilot = 1 GROUP BY subset"))
        since = time.time() - 60 * design.get("abandon_after_minutes", ABANDON_AFTER_MINUTES)
        return dict(con.execute("SELECT subset, COUNT(*) FROM participants WHERE pilot = 0 AND "
                                "(finished IS NOT NULL OR COALESCE(last, started) >= ?) GROUP BY subset", (since,)))

    def add_participant(self, trials_for: Any, *, pilot: bool = False,
                        platform: dict[str, str] | None = None) -> str:
        """A new participant in the subset with the fewest so far (counterbalancing), with their trial list
        (``trials_for(subset, seed)``: [(part, shown, key)]) written in the same transaction. Participants take
        the study's seed sequence in order; pilots get a random seed and are counted apart (no slot taken)."""
        design = self.design
        with self.transaction() as con:
            counts = self._active(con, pilot)
            subset = min(range(design["subsets"]), key=lambda s: (counts.get(s, 0), s))
            if not pilot and counts.get(subset, 0) >= design["participants_per_subset"]:
                raise VitalError("the study is full: every subset has its participants")
            token = secrets.token_urlsafe(16)
            if pilot:
                ordinal, seed = None, secrets.randbelow(2**31)
            else:
                ordinal = con.execute("SELECT COUNT(*) FROM participants WHERE pilot = 0").fetchone()[0]
                seed = participant_seed(design.get("seed", 0), ordinal)
            now = time.time()
            con.execute("INSERT INTO participants VALUES (?, ?, ?, ?, NULL, 1, ?, ?, ?)",
                        (token, subset, seed, now, ordinal, int(pilot), now))
            con.executemany("INSERT INTO trials VALUES (?, ?, ?, ?, ?, NULL)", [
                (token, n, part, json.dumps(shown), json.dumps(key))
                for n, (part, shown, key) in enumerate(trials_for(subset, seed))])
            con.executemany("INSERT INTO platform_ids VALUES (?, ?, ?)",
                            [(token, k, v) for k, v in (platform or {}).items()])
        return token

    def participant(self, token: str) -> sqlite3.Row | None:
        return self.con.execute("SELECT * FROM participants WHERE token = ?", (token,)).fetchone()

    def next_trial(self, token: str) -> dict[str, Any] | None:
        """The first trial without an answer (a reload or a dropped connection resumes there); the first time
        it is sent, its time is recorded (answers are taken only for a trial that was shown)."""
        row = self.con.execute(
            "SELECT t.n, t.part, t.shown, t.shown_at, (SELECT COUNT(*) FROM trials WHERE token = t.token) AS total, "
            "NOT EXISTS (SELECT 1 FROM trials e WHERE e.token = t.token AND e.part = t.part AND e.n < t.n) AS first "
            "FROM trials t LEFT JOIN answers a ON a.token = t.token AND a.n = t.n "
            "WHERE t.token = ? AND a.n IS NULL ORDER BY t.n LIMIT 1", (token,)).fetchone()
        if row is None:
            return None
        if row["shown_at"] is None:
            with self.transaction() as con:
                con.execute("UPDATE trials SET shown_at = ? WHERE token = ? AND n = ? AND shown_at IS NULL",
                            (time.time(), token, row["n"]))
        return {"n": row["n"], "part": row["part"], "total": row["total"], "first": bool(row["first"]),
                **json.loads(row["shown"])}

    def trial(self, token: str, n: int) -> sqlite3.Row | None:
        return self.con.execute("SELECT * FROM trials WHERE token = ? AND n = ?", (token, n)).fetchone()

    def answer(self, token: str, n: int, value: Any, ms: int | None) -> str:
        """Store an answer once: ``stored``, ``again`` (the same answer, already stored), ``conflict`` (another
        answer was stored) or ``not shown`` (not the trial the participant is on)."""
        text = json.dumps(value, sort_keys=True)
        with self.transaction() as con:
            old = con.execute("SELECT value FROM answers WHERE token = ? AND n = ?", (token, n)).fetchone()
            if old is not None:
                return "again" if old[0] == text else "conflict"
            current = con.execute(
                "SELECT t.n, t.shown_at FROM trials t LEFT JOIN answers a ON a.token = t.token AND a.n = t.n "
                "WHERE t.token = ? AND a.n IS NULL ORDER BY t.n LIMIT 1", (token,)).fetchone()
            if current is None or current["n"] != n or current["shown_at"] is None:
                return "not shown"
            now = time.time()
            con.execute("INSERT INTO answers VALUES (?, ?, ?, ?, ?)", (token, n, text, ms, now))
            con.execute("UPDATE participants SET last = ? WHERE token = ?", (now, token))
            left = con.execute("SELECT COUNT(*) FROM trials t LEFT JOIN answers a ON a.token = t.token AND a.n = t.n "
                               "WHERE t.token = ? AND a.n IS NULL", (token,)).fetchone()[0]
            if left == 0:
                con.execute("UPDATE participants SET finished = ? WHERE token = ?", (now, token))
        return "stored"

    def demographics(self, token: str, age: str | None, gender: str | None) -> None:
        with self.transaction() as con:
            con.execute("INSERT OR REPLACE INTO demographics VALUES (?, ?, ?, ?)", (token, age, gender, time.time()))

    def stimulus_file(self, ident: str) -> Path | None:
        row = self.con.execute("SELECT file FROM stimuli WHERE id = ?", (ident,)).fetchone()
        return self.folder / row[0] if row else None

    # --------------------------------------------------------------------------------------------- reading
    def rows(self, pilots: bool = False) -> list[dict[str, Any]]:
        """Every answer with its trial (what was shown, the key, when) and its participant's subset and seed, for
        status, export and the report; pilots only when asked; no demographics, no platform ids."""
        cur = self.con.execute(
            "SELECT p.token, p.subset, p.seed, p.pilot, p.finished IS NOT NULL AS finished, t.n, t.part, t.shown, "
            "t.key, t.shown_at, a.value, a.ms, a.created FROM answers a "
            "JOIN trials t ON t.token = a.token AND t.n = a.n JOIN participants p ON p.token = a.token "
            + ("" if pilots else "WHERE p.pilot = 0 ") + "ORDER BY p.started, t.n")
        return [{**dict(r), "key": json.loads(r["key"]), "shown": json.loads(r["shown"]),
                 "value": json.loads(r["value"])} for r in cur]

    def counts(self, pilots: bool = False) -> dict[str, Any]:
        con = self.con
        where = "" if pilots else "WHERE p.pilot = 0"
        started, finished = con.execute(f"SELECT COUNT(*), COUNT(finished) FROM participants p {where}").fetchone()
        per_part: dict[str, int] = {}
        per_method: dict[str, int] = {}
        for r in self.rows(pilots):
            per_part[r["part"]] = per_part.get(r["part"], 0) + 1
            m = r["key"].get("method") or ("demonstration" if r["key"].get("demo") else "attention check")
            per_method[m] = per_method.get(m, 0) + 1
        active = sum(self._active(con, False).values())
        pilot_count = con.execute("SELECT COUNT(*) FROM participants WHERE pilot = 1").fetchone()[0]
        return {"started": started, "finished": finished, "holding_slots": active, "pilots": pilot_count,
                "answers_per_part": per_part, "answers_per_method": per_method}
