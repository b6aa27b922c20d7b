"""A study run on a recruitment platform: the export (every column, formula cells escaped, in all three CSVs),
pilots kept out of the live study's numbers, abandoned participations freeing their slot, platform ids checked
and kept apart, the participants' texts from a file."""

from __future__ import annotations

import csv
import io
import time

import pytest
from fastapi.testclient import TestClient
from study_helpers import study_results

from vital_fv.errors import VitalError
from vital_fv.study import Store, create_study
from vital_fv.study.report import EXPORT_COLUMNS, export_answers, make_report, pseudonym, study_status
from vital_fv.study.server import make_app

FORMULAS = ["=HYPERLINK(\"http://x\",\"y\")", "+1+1", "-2+3", "@SUM(A1)"]


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """One study made once (the 2AFC's scan loads a model), copied for each test."""
    root = tmp_path_factory.mktemp("template")
    create_study(study_results(root / "r"), root / "s", participants_per_subset=2, seed=3,
                 completion_code="ABC123", abandon_after_minutes=1)
    return root / "s"


@pytest.fixture
def study(template, tmp_path):
    import shutil

    shutil.copytree(template, tmp_path / "s")
    return tmp_path / "s"


def answer_for(trial, labels):
    return {"rate-class": 4, "rate-unit": 3, "label": next(labels),
            "2afc": {"choice": "a", "confidence": 2}}[trial["part"]]


def run(client, labels, **start):
    token = client.post("/api/participants", json={"consent": True, **start}).json()["token"]
    while not (trial := client.get(f"/api/participants/{token}/next").json()).get("done"):
        r = client.post(f"/api/participants/{token}/answers", json={"n": trial["n"],
                                                                   "value": answer_for(trial, labels), "ms": 900})
        assert r.status_code == 200, r.text
    return token, trial


def test_the_export_has_every_row_and_column_and_escapes_formulas(study, tmp_path):
    import itertools

    client = TestClient(make_app(study))
    store = Store(study)
    token, end = run(client, itertools.cycle(FORMULAS))
    assert end == {"done": True, "completion_code": "ABC123"}  # the code only at the end
    half = client.post("/api/participants", json={"consent": True}).json()["token"]
    first = client.get(f"/api/participants/{half}/next").json()
    client.post(f"/api/participants/{half}/answers", json={"n": first["n"], "value": answer_for(first, iter("x")),
                                                             "ms": 700})
    path = export_answers(study, tmp_path / "export.csv")
    with pytest.raises(VitalError, match="already exists"):
        export_answers(study, tmp_path / "export.csv")
    text = path.read_text()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert list(rows[0]) == EXPORT_COLUMNS and len(rows) == len(store.rows())
    seeds = dict(store.con.execute("SELECT token, seed FROM participants").fetchall())
    for r in rows:
        assert all(r[c] != "" for c in ("participant", "subset", "seed", "trial", "part", "stimuli", "target",
                                         "shown_at", "answered_at", "response_s", "browser_ms", "answer"))
        assert r["shown_at"] <= r["answered_at"] and float(r["response_s"]) >= 0
        if r["part"] == "2afc":
            assert r["correct_side"] in ("a", "b") and r["correct"] == str(int(r["answer"] == r["correct_side"]))
    assert {r["seed"] for r in rows if r["participant"] == pseudonym(token)} == {str(seeds[token])}
    assert {r["excluded"] for r in rows if r["participant"] == pseudonym(half)} == {"1"}
    assert {r["why"] for r in rows if r["participant"] == pseudonym(half)} == {"did not finish"}
    assert token not in text  # a participant's token would let its holder answer as them
    labels = [r["answer"] for r in rows if r["part"] == "label" and r["attention"] == "0"]
    assert labels and all(lab.startswith("'") and lab[1:] in FORMULAS for lab in labels)
    admin = client.get("/api/admin/export.csv", headers={"X-Admin-Token": store.admin_token}).text
    assert admin == path.read_bytes().decode()  # the same CSV over HTTP
    make_report(study, tmp_path / "rep", n_boot=20)
    scored = list(csv.DictReader((tmp_path / "rep" / "answers_scored.csv").open()))
    raw = [r["answer"] for r in scored if r["part"] == "label" and r["attention"] == "0"]
    assert raw and all(a[:1] == "'" for a in raw)
    for f in ("answers_scored.csv", "table.csv", "demographics.csv"):
        for row in csv.reader((tmp_path / "rep" / f).open()):
            assert not any(cell[:1] in ("=", "+", "-", "@") for cell in row), (f, row)


def test_simulate_leaves_the_live_study_as_it_was(study, tmp_path):
    from vital_fv.study.simulate import simulate

    client = TestClient(make_app(study))
    run(client, iter(["cup"] * 20))
    before = (study_status(study), export_answers(study, tmp_path / "before.csv").read_text())
    make_report(study, tmp_path / "rep-before", n_boot=50)
    done = simulate(str(study), 3, model=None, concurrency=2)
    assert len(done) == 3 and all(d["answers"] > 0 for d in done)
    after = (study_status(study), export_answers(study, tmp_path / "after.csv").read_text())
    assert after[0] == {**before[0], "pilots": 3} and after[1] == before[1]
    make_report(study, tmp_path / "rep-after", n_boot=50)
    for name in ("table.md", "table.csv", "answers_scored.csv"):
        assert (tmp_path / "rep-after" / name).read_text() == (tmp_path / "rep-before" / name).read_text(), name
    with_pilots = study_status(study, pilots=True)
    assert with_pilots["started"] == before[0]["started"] + 3
    # pilots take no slot: the study still admits its full count of participants
    for _ in range(store_capacity(study) - 1):
        assert client.post("/api/participants", json={"consent": True}).status_code == 200
    assert client.post("/api/participants", json={"consent": True}).status_code == 409
    # and only the researcher starts one
    assert client.post("/api/participants", json={"consent": True, "pilot": True}).status_code == 401


def store_capacity(study):
    d = Store(study).design
    return d["subsets"] * d["participants_per_subset"]


def test_an_abandoned_participation_frees_its_slot(study):
    client = TestClient(make_app(study))
    store = Store(study)
    tokens = [client.post("/api/participants", json={"consent": True}).json()["token"]
              for _ in range(store_capacity(study))]
    assert client.post("/api/participants", json={"consent": True}).status_code == 409
    assert study_status(study)["holding_slots"] == len(tokens)
    # one of them has not answered for two minutes (the study's --abandon-after is 1)
    with store.transaction() as con:
        con.execute("UPDATE participants SET started = ?, last = ? WHERE token = ?",
                    (time.time() - 120, time.time() - 120, tokens[0]))
    assert study_status(study)["holding_slots"] == len(tokens) - 1
    again = client.post("/api/participants", json={"consent": True})
    assert again.status_code == 200
    got = store.participant(again.json()["token"])["subset"]
    assert got == store.participant(tokens[0])["subset"]  # the freed slot's subset
    assert client.post("/api/participants", json={"consent": True}).status_code == 409
    assert client.get(f"/api/participants/{tokens[0]}/next").status_code == 200  # they may still come back


@pytest.mark.parametrize(("platform", "ok"), [
    ({"PROLIFIC_PID": "5f1e2d3c4b5a69788796a5b4", "STUDY_ID": "x1"}, True),
    ({"PROLIFIC_PID": "<script>"}, False),
    ({"PROLIFIC_PID": "a" * 65}, False),
    ({"EMAIL": "someone@example.org"}, False),
    ("5f1e2d", False),
])
def test_platform_ids_are_checked_and_stored_apart(study, platform, ok):
    client = TestClient(make_app(study))
    r = client.post("/api/participants", json={"consent": True, "platform": platform})
    assert (r.status_code == 200) == ok and (ok or r.status_code == 422)
    stored = dict(Store(study).con.execute("SELECT name, value FROM platform_ids").fetchall())
    assert stored == (platform if ok else {})


def test_texts_from_a_file_and_each_wrong_key_named(tmp_path):
    results = study_results(tmp_path / "r")
    good = tmp_path / "good.toml"
    good.write_text('welcome = "Hello."\ncompletion_code = "XYZ"\n[instructions]\nlabel = "Name it."\n')
    store = create_study(results, tmp_path / "s", parts=["rate-class", "label"], texts=good)
    d = store.design
    assert d["texts"]["welcome"] == "Hello." and d["texts"]["instructions"]["label"] == "Name it."
    assert d["texts"]["instructions"]["rate-class"].startswith("You will see")  # the package's default kept
    assert d["completion"]["completion_code"] == "XYZ"
    assert TestClient(make_app(tmp_path / "s")).get("/api/study").json()["texts"]["welcome"] == "Hello."
    for body, words in (('welcom = "x"', "unknown key 'welcom'"), ('welcome = 3', "welcome must be text"),
                        ('[instructions]\nlabl = "x"', "[instructions]"), ("= nonsense", "not a TOML file"),
                        ('completion_code = "a b"', "--completion-code"),
                        ('completion_url = "javascript:alert(1)"', "--completion-url")):
        bad = tmp_path / "bad.toml"
        bad.write_text(body)
        with pytest.raises(VitalError, match=words.replace("[", r"\[").replace("]", r"\]")):
            create_study(results, tmp_path / "t", parts=["rate-class", "label"], texts=bad)
        assert not (tmp_path / "t").exists()
    with pytest.raises(VitalError, match="--texts .*no such file"):
        create_study(results, tmp_path / "t", texts=tmp_path / "none.toml")


V1_SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE stimuli (id TEXT PRIMARY KEY, file TEXT NOT NULL, kind TEXT NOT NULL, method TEXT, target TEXT,
    label TEXT, wnid TEXT, info TEXT);
CREATE TABLE participants (token TEXT PRIMARY KEY, subset INTEGER NOT NULL, seed INTEGER NOT NULL,
    started REAL NOT NULL, finished REAL, consent INTEGER NOT NULL);
CREATE TABLE demographics (token TEXT PRIMARY KEY, age TEXT, gender TEXT, created REAL NOT NULL);
CREATE TABLE trials (token TEXT NOT NULL, n INTEGER NOT NULL, part TEXT NOT NULL, shown TEXT NOT NULL,
    key TEXT NOT NULL, PRIMARY KEY (token, n));
CREATE TABLE answers (token TEXT NOT NULL, n INTEGER NOT NULL, value TEXT NOT NULL, ms INTEGER,
    created REAL NOT NULL, PRIMARY KEY (token, n));
"""


def test_a_study_made_by_version_1_keeps_its_answers_and_goes_on(study, tmp_path):
    """Part 1's database (token in the database, no pilot or shown-at columns) opens, keeps its answers, moves
    its admin token to the 0600 file and takes new participants."""
    import sqlite3

    new = Store(study)
    design, stimuli = new.meta("design"), new.con.execute("SELECT * FROM stimuli").fetchall()
    old = tmp_path / "v1"
    (old / "images").mkdir(parents=True)
    con = sqlite3.connect(old / "study.sqlite")
    con.executescript(V1_SCHEMA)
    con.executemany("INSERT INTO meta VALUES (?, ?)", [("schema_version", "1"), ("design", design),
                                                        ("admin_token", "old-token-123"), ("created", "0")])
    con.executemany("INSERT INTO stimuli VALUES (?, ?, ?, ?, ?, ?, ?, ?)", [tuple(r) for r in stimuli])
    con.execute("INSERT INTO participants VALUES ('tok', 0, 9, 1.0, NULL, 1)")
    con.execute("INSERT INTO trials VALUES ('tok', 0, 'rate-class', '{\"images\": []}', '{\"method\": \"vital\"}')")
    con.execute("INSERT INTO answers VALUES ('tok', 0, '4', 800, 2.0)")
    con.commit()
    con.close()
    store = Store(old)
    rows = store.rows()
    assert [(r["token"], r["value"], r["seed"], r["pilot"]) for r in rows] == [("tok", 4, 9, 0)]
    assert store.admin_token == "old-token-123" and (store.token_file.stat().st_mode & 0o777) == 0o600
    assert store.meta("schema_version") == "2"
    client = TestClient(make_app(old))
    assert client.post("/api/participants", json={"consent": True}).status_code == 200
    assert "tok" not in export_answers(old, tmp_path / "v1.csv").read_text()


def test_a_text_that_names_a_labelled_class_is_warned_about(tmp_path):
    results = study_results(tmp_path / "r")
    texts = tmp_path / "t.toml"
    texts.write_text('[instructions]\nlabel = "Example: for a cup of coffee, type espresso."\n')
    with pytest.warns(UserWarning, match="instructions.label names the class 'espresso'"):
        create_study(results, tmp_path / "s", parts=["rate-class", "label"], texts=texts)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the package's own texts name no class of this study
        create_study(results, tmp_path / "s2", parts=["rate-class", "label"])
