"""The study's HTTP interface: a participant's whole path, answers stored once, the answer key never sent, and
bad input refused with a clear 4xx while the server goes on."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from study_helpers import study_results

from vital_fv.errors import VitalError
from vital_fv.study import Store, create_study
from vital_fv.study.server import make_app


@pytest.fixture
def study(tmp_path):
    create_study(study_results(tmp_path / "r"), tmp_path / "s", participants_per_subset=2)
    return tmp_path / "s"


def answer_for(trial):
    return {"rate-class": 4, "rate-unit": 3, "label": "a cup of coffee",
            "2afc": {"choice": "a", "confidence": 2}}[trial["part"]]


def test_a_participant_goes_through_every_part_and_nothing_gives_the_key_away(study):
    client = TestClient(make_app(study))
    assert "A study of images" in client.get("/").text
    token = client.post("/api/participants", json={"consent": True}).json()["token"]
    assert client.post(f"/api/participants/{token}/demographics", json={"age": "25-34", "gender": None}).status_code \
        == 200
    seen_parts, sent = [], 0
    while True:
        trial = client.get(f"/api/participants/{token}/next").json()
        if trial.get("done"):
            break
        text = json.dumps(trial)
        assert "method" not in text and "vital" not in text and "maco" not in text  # the key stays on the server
        if trial["part"] == "label":
            assert "espresso" not in text and "tripod" not in text and "missile" not in text
        for ident in trial.get("images", []) + trial.get("refs", []) + trial.get("queries", []):
            r = client.get(f"/img/{ident}.png")
            assert r.status_code == 200 and r.content[:4] == b"\x89PNG"
        seen_parts.append(trial["part"])
        r = client.post(f"/api/participants/{token}/answers", json={"n": trial["n"], "value": answer_for(trial),
                                                                   "ms": 1234})
        assert r.status_code == 200 and r.json()["stored"]
        sent += 1
    assert list(dict.fromkeys(seen_parts)) == ["rate-class", "rate-unit", "label", "2afc"]
    store = Store(study)
    rows = store.rows()
    assert len(rows) == sent and all(r["ms"] == 1234 for r in rows) and all(r["finished"] for r in rows)
    assert store.con.execute("SELECT age FROM demographics").fetchone()[0] == "25-34"
    # the same answer again is stored once; another answer for it is refused
    first = rows[0]
    again = client.post(f"/api/participants/{token}/answers", json={"n": first["n"], "value": first["value"]})
    assert again.status_code == 200 and not again.json()["stored"]
    assert client.post(f"/api/participants/{token}/answers",
                       json={"n": first["n"], "value": {"choice": "b", "confidence": 1}
                             if first["part"] == "2afc" else 1 if first["part"] != "label" else "x"}
                       ).status_code == 409
    assert len(Store(study).rows()) == sent


@pytest.mark.parametrize(("n", "value", "code", "words"), [
    (None, 9, 422, "from 1 (worst) to 5"),
    (None, "<script>alert(1)</script>" * 10, 422, "at most 200 characters"),
    (999, 3, 404, "no trial 999"),
    ("0", 3, 422, "n is a trial number"),
    (10**20, 3, 422, "n is a trial number"),
    (-1, 3, 422, "n is a trial number"),
    (1.5, 3, 422, "n is a trial number"),
    (True, 3, 422, "n is a trial number"),
])
def test_bad_answers_get_a_clear_4xx_and_nothing_is_stored(study, n, value, code, words):
    client = TestClient(make_app(study))
    token = client.post("/api/participants", json={"consent": True}).json()["token"]
    trial = client.get(f"/api/participants/{token}/next").json()
    if isinstance(value, str) and trial["part"] != "label":  # find a label trial for the label case
        store = Store(study)
        trial = {"n": store.con.execute("SELECT n FROM trials WHERE token = ? AND part = 'label'",
                                        (token,)).fetchone()[0]}
    r = client.post(f"/api/participants/{token}/answers", json={"n": trial["n"] if n is None else n, "value": value})
    assert r.status_code == code and words in r.json()["detail"]
    assert Store(study).rows() == []
    assert client.get("/api/study").status_code == 200  # still up


@pytest.mark.parametrize("ms", [10**20, -5, "12", True, float("inf")])
def test_a_malformed_response_time_is_a_4xx(study, ms):
    client = TestClient(make_app(study))
    token = client.post("/api/participants", json={"consent": True}).json()["token"]
    trial = client.get(f"/api/participants/{token}/next").json()
    body = json.dumps({"n": trial["n"], "value": answer_for(trial), "ms": ms})  # inf: JSON's Infinity
    r = client.post(f"/api/participants/{token}/answers", content=body, headers={"Content-Type": "application/json"})
    assert 400 <= r.status_code < 500 and Store(study).rows() == []


def test_only_the_current_trial_can_be_answered(study):
    client = TestClient(make_app(study))
    token = client.post("/api/participants", json={"consent": True}).json()["token"]
    ahead = client.post(f"/api/participants/{token}/answers", json={"n": 0, "value": 3})
    assert ahead.status_code == 409 and "not the one" in ahead.json()["detail"]  # not even sent yet
    first = client.get(f"/api/participants/{token}/next").json()
    later = client.post(f"/api/participants/{token}/answers", json={"n": first["n"] + 3, "value": 3})
    assert later.status_code in (409, 422) and Store(study).rows() == []
    assert client.post(f"/api/participants/{token}/answers",
                       json={"n": first["n"], "value": answer_for(first)}).status_code == 200
    assert client.get(f"/api/participants/{token}/next").json()["n"] == first["n"] + 1


def test_html_in_a_label_is_stored_as_text(study):
    client = TestClient(make_app(study))
    token = client.post("/api/participants", json={"consent": True}).json()["token"]
    store = Store(study)
    label = '<script>alert("x")</script>'
    while (trial := client.get(f"/api/participants/{token}/next").json())["part"] != "label":
        client.post(f"/api/participants/{token}/answers", json={"n": trial["n"], "value": answer_for(trial)})
    assert client.post(f"/api/participants/{token}/answers", json={"n": trial["n"], "value": label}).status_code \
        == 200
    assert [r["value"] for r in store.rows() if r["part"] == "label"] == [label]


def test_tokens_images_and_admin_routes_are_guarded(study):
    client = TestClient(make_app(study))
    assert client.post("/api/participants", json={}).status_code == 400  # no consent, no participant
    assert client.get("/api/participants/nope/next").status_code == 404
    for path in ("/img/../study.sqlite", "/img/%2e%2e%2fstudy.sqlite", "/img/0123456789abcdef.png",
                 "/img/..%2F..%2Fetc%2Fpasswd", "/static/../study.sqlite"):
        assert client.get(path).status_code == 404, path
    assert client.get("/api/admin/status").status_code == 401
    assert client.get("/api/admin/export.csv", headers={"X-Admin-Token": "guess"}).status_code == 401
    store = Store(study)
    admin = store.admin_token
    assert client.get(f"/api/admin/status?token={admin}").status_code == 401  # never in a URL
    assert client.get(f"/api/admin/export.csv?x_admin_token={admin}").status_code == 401
    assert (store.token_file.stat().st_mode & 0o777) == 0o600
    assert admin not in store.con.execute("SELECT group_concat(value) FROM meta").fetchone()[0]
    assert client.get("/api/admin/status", headers={"X-Admin-Token": admin}).json()["started"] == 0
    subsets = store.design["subsets"]
    assert subsets == 4  # 2 methods x 2 halves of the classes (rate one half, label the other)
    for _ in range(2 * subsets):
        assert client.post("/api/participants", json={"consent": True}).status_code == 200
    full = client.post("/api/participants", json={"consent": True})
    assert full.status_code == 409 and "the study is full" in full.json()["detail"]
    got = [r[0] for r in store.con.execute("SELECT subset FROM participants")]
    assert sorted(got) == sorted(list(range(subsets)) * 2)  # counterbalanced


def test_the_title_is_neutral_and_new_participants_are_limited_per_minute(study, tmp_path):
    client = TestClient(make_app(study, max_new_per_minute=3))
    about = client.get("/api/study").json()
    assert about["title"] == "A study of images"
    assert str(tmp_path) not in json.dumps(about) and "vital" not in json.dumps(about).lower()
    codes = [client.post("/api/participants", json={"consent": True}).status_code for _ in range(5)]
    assert codes == [200, 200, 200, 429, 429]
    assert Store(study).counts()["started"] == 3
    with pytest.raises(VitalError, match="--max-new-per-minute"):
        make_app(study, max_new_per_minute=0)


def test_serve_prints_where_the_token_is_not_the_token(study, monkeypatch, capsys):
    import uvicorn

    from vital_fv.study.server import serve

    monkeypatch.setattr(uvicorn, "run", lambda *a, **k: None)
    serve(study)
    out = capsys.readouterr().out
    assert Store(study).admin_token not in out and "admin-token" in out


@pytest.mark.slow
def test_fifty_participants_at_once_and_a_server_killed_mid_study(tmp_path):
    """Bounded load on loopback: 50 simulated participants at once; the server is killed (SIGKILL) once half the
    answers are in and started again; every participant finishes, every answer stored once."""
    import os
    import random
    import signal
    import socket
    import subprocess
    import sys
    import time
    from concurrent.futures import ThreadPoolExecutor

    from vital_fv.study.simulate import random_answer, run_participant

    study = tmp_path / "s"
    create_study(study_results(tmp_path / "r"), study, participants_per_subset=25)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "vital_fv.cli", "study", "serve", str(study), "--port", str(port)]

    def start():
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    return proc
            time.sleep(0.1)
        raise AssertionError("the server did not start")

    server = start()
    store = Store(study)
    from vital_fv.study.design import trials_for

    design = store.design  # 50 over the subsets, as evenly as they go; a subset's trial count is fixed
    make = trials_for(design)
    per_subset = [50 // design["subsets"] + (s < 50 % design["subsets"]) for s in range(design["subsets"])]
    total = sum(k * len(make(s, 0)) for s, k in enumerate(per_subset))
    try:
        with ThreadPoolExecutor(max_workers=50) as pool:
            rngs = [random.Random(i) for i in range(50)]
            runs = [pool.submit(run_participant, f"http://127.0.0.1:{port}",
                                lambda t, _g, r=rng: random_answer(t, r)) for rng in rngs]
            deadline = time.time() + 120
            while time.time() < deadline and len(store.rows()) < total // 2:
                time.sleep(0.05)
            os.kill(server.pid, signal.SIGKILL)
            server.wait()
            killed_at = len(store.rows())
            server = start()
            results = [r.result(timeout=180) for r in runs]
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert 0 < killed_at < total
    rows = store.rows()
    assert len(rows) == total == sum(r["answers"] for r in results)  # each answer once, none lost
    counts = store.con.execute("SELECT COUNT(*), COUNT(finished) FROM participants").fetchone()
    assert tuple(counts) == (50, 50)
    trials = store.con.execute("SELECT COUNT(*) FROM trials").fetchone()[0]
    assert trials == total
