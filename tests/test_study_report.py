"""Scoring and reporting a study: ratings, WordNet label scores, 2AFC correctness, exclusions, the figures."""

from __future__ import annotations

import csv

import pytest
from fastapi.testclient import TestClient
from gallery_helpers import write_bad_records
from study_helpers import study_results

from vital_fv.errors import VitalError
from vital_fv.study import Store, create_study
from vital_fv.study.report import OUTPUTS, make_report, score_rows, study_status
from vital_fv.study.server import make_app


def _participant(client, answer):
    token = client.post("/api/participants", json={"consent": True}).json()["token"]
    while not (trial := client.get(f"/api/participants/{token}/next").json()).get("done"):
        client.post(f"/api/participants/{token}/answers", json={"n": trial["n"], "value": answer(trial)})
    return token


def hidden_class(store, image):
    """What the server knows and the page does not: the class of a shown image (the test's oracle)."""
    return store.con.execute("SELECT label FROM stimuli WHERE id = ?", (image,)).fetchone()[0]


def test_scores_exclusions_and_the_report(tmp_path):
    study = tmp_path / "s"
    create_study(study_results(tmp_path / "r"), study, participants_per_subset=3)
    client = TestClient(make_app(study))
    store = Store(study)

    photo = {c["image"] for c in store.design["attention"]}

    def careful(trial):
        part = trial["part"]
        if part == "rate-class":
            return 5
        if part == "rate-unit":
            return 2
        if part == "label":
            return "motorbike" if trial["images"][0] in photo else hidden_class(store, trial["images"][0])
        return {"choice": "a", "confidence": 3}

    good = _participant(client, careful)
    client.post(f"/api/participants/{good}/demographics", json={"age": "25-34", "gender": "female"})
    bad = _participant(client, lambda t: 1 if t["part"].startswith("rate") else "asdf" if t["part"] == "label"
                       else {"choice": "b", "confidence": 1})
    half = client.post("/api/participants", json={"consent": True}).json()["token"]
    trial = client.get(f"/api/participants/{half}/next").json()
    client.post(f"/api/participants/{half}/answers", json={"n": trial["n"], "value": careful(trial)})
    scored, excluded = score_rows(store)
    assert set(excluded) == {bad, half} and "attention check failed" in excluded[bad]
    assert excluded[half] == "did not finish" and good not in excluded
    labels = [r for r in scored if r["participant"] == good and r["part"] == "label" and not r["attention"]]
    assert labels and all(r["score"] > 0.99 and r["wup"] == 1.0 for r in labels)  # the class's own name
    assert all(r["chance"] < 0.6 for r in labels)
    twoafc = [r for r in scored if r["participant"] == good and r["part"] == "2afc"]
    assert twoafc and all(r["score"] in (0.0, 1.0) and r["confidence"] == 3 for r in twoafc if not r["demo"])
    assert [r["score"] for r in twoafc if r["demo"]] == [None]  # the demonstration is not scored
    table = make_report(study, tmp_path / "rep", n_boot=200)
    rows = {(r["part"], r["method"]): r for r in table}
    counted = [r for r in scored if r["participant"] == good and not r["attention"] and not r.get("demo")]
    # only the good participant, attention trials left out (label-wup scores the same labels again)
    assert sum(r["n"] for r in table if r["part"] != "label-wup") == len(counted)
    assert all(r["mean"] == 5.0 for (p, _), r in rows.items() if p == "rate-class" and r["n"])
    for name in OUTPUTS:
        assert (tmp_path / "rep" / name).stat().st_size > 40, name
    demo = (tmp_path / "rep" / "demographics.csv").read_text()
    assert "age,25-34,1" in demo and "gender,female,1" in demo
    text = (tmp_path / "rep" / "table.md").read_text()
    assert "excluded 2" in text and "did not finish" in text
    with (tmp_path / "rep" / "table.csv").open() as f:
        assert len(list(csv.DictReader(f))) == len(table)
    assert study_status(study)["finished"] == 2


def test_records_that_do_not_fit_the_schema_are_named_and_the_study_is_made(tmp_path):
    results = study_results(tmp_path / "r")
    bad = write_bad_records(results / "bad", results / "units" / "vital" / "lite0-blocks3-0-vital-s0.json")
    with pytest.warns(UserWarning) as caught:
        store = create_study(results, tmp_path / "s", participants_per_subset=2)
    messages = [str(w.message) for w in caught]
    for name, field in bad:
        assert any(name in m and f"field {field}: expected" in m for m in messages), name
    assert len(store.design["targets"]["class"]) == 3 and len(store.design["targets"]["unit"]) == 2


def tiny_encoder(folder):
    """A sentence encoder the test builds: a one-layer BERT over a 13-word vocabulary (random weights)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizer

    folder.mkdir()
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "cup", "coffee", "espresso", "dog", "motorbike", "a",
             "of", "red"]
    (folder / "vocab.txt").write_text("\n".join(words) + "\n")
    torch.manual_seed(0)
    BertModel(BertConfig(vocab_size=len(words), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=32, max_position_embeddings=32)).save_pretrained(folder)
    BertTokenizer(str(folder / "vocab.txt")).save_pretrained(folder)
    return folder


def test_labels_scored_by_another_sentence_encoder_beside_wordnet(tmp_path):
    study = tmp_path / "s"
    create_study(study_results(tmp_path / "r"), study, parts=["rate-class", "label"], participants_per_subset=2)
    client = TestClient(make_app(study))
    photo = {c["image"] for c in Store(study).design["attention"]}
    _participant(client, lambda t: 5 if t["part"] == "rate-class" else
                 "motorbike" if t["images"][0] in photo else "a cup of coffee")
    table = make_report(study, tmp_path / "rep", n_boot=50, text_model=tiny_encoder(tmp_path / "enc"))
    cos = [r for r in table if r["part"] == "label" and r["n"]]
    assert cos and all(-1 <= r["mean"] <= 1.0001 for r in cos)
    assert sum(r["n"] for r in cos) == sum(r["n"] for r in table if r["part"] == "label-wup")
    with pytest.raises(VitalError, match="is not a folder"):
        make_report(study, tmp_path / "rep2", text_model=tmp_path / "none")


PAIRS = [("espresso", "a cup of coffee", "a dog on grass"), ("moped", "motor scooter", "a palace"),
         ("palace", "a castle", "bassinet"), ("tripod", "camera stand", "a banana"),
         ("missile", "rocket", "a teapot")]


def test_the_default_label_score_is_the_packaged_sentence_encoder_offline(monkeypatch, tmp_path):
    """all-MiniLM-L6-v2 from its PyPI package, extracted into the cache, loaded with every connection refused; a
    right label scores clearly above a wrong one for every class."""
    import socket

    from vital_fv.study.report import default_encoder, text_encoder

    def refuse(*_a, **_k):
        raise OSError("no network in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    folder = default_encoder(tmp_path / "cache")
    assert (folder / "modules.json").is_file() and folder.is_relative_to(tmp_path / "cache")
    assert default_encoder(tmp_path / "cache") == folder  # extracted once
    encode = text_encoder(folder)  # loaded afresh from the extracted folder, every connection refused
    for cls, right, wrong in PAIRS:
        c, r, w = encode([cls, right, wrong])
        assert float(c @ r) - float(c @ w) > 0.15, (cls, float(c @ r), float(c @ w))


def test_the_report_puts_each_method_beside_its_chance_level(tmp_path):
    study = tmp_path / "s"
    create_study(study_results(tmp_path / "r"), study, parts=["rate-class", "label"], participants_per_subset=2)
    client = TestClient(make_app(study))
    store = Store(study)
    photo = {c["image"] for c in store.design["attention"]}
    right = {"espresso": "a cup of coffee", "tripod": "camera stand", "missile": "rocket"}
    for _ in range(4):  # one participant per subset: every class labelled by both methods
        _participant(client, lambda t: 5 if t["part"] == "rate-class" else "motorbike" if t["images"][0] in photo
                     else right[hidden_class(store, t["images"][0])])
    table = make_report(study, tmp_path / "rep", n_boot=50)
    labels = [r for r in table if r["part"] == "label"]
    assert len(labels) == 2 and all(r["n"] == 3 for r in labels)
    assert all(r["mean"] - r["chance"] > 0.25 for r in labels)
    text = (tmp_path / "rep" / "table.md").read_text()
    assert "| chance |" in text and f"{labels[0]['chance']:.2f}" in text
    wup = [r for r in table if r["part"] == "label-wup"]
    assert [r["n"] for r in wup] == [3, 3]  # Wu-Palmer beside it, for the same labels
