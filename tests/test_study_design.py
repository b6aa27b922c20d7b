"""The study's design: every participant's trial list walked for priming (a label trial's class never shown
before, with its word or by any method; a 2AFC query never shown before, by content or as a crop); the 2AFC's
queries are the extremes of a scan of the whole folder; ``--seed`` fixes every participant's seed."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from study_helpers import study_results

from vital_fv.errors import VitalError
from vital_fv.study import Store, create_study
from vital_fv.study.design import MAX_REFS, trials_for
from vital_fv.study.queries import activations, model_input


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _walk(store, trials):
    """Assert the priming rules over one participant's [(part, shown, key)] in order."""
    design = store.design
    images_of = {t["target"]: {i for imgs in t["by_method"].values() for i in imgs}
                 for t in design["targets"]["class"] + design["targets"]["unit"]}
    word_of = {t["target"]: t["label"].lower() for t in design["targets"]["class"]}
    files = dict(store.con.execute("SELECT id, file FROM stimuli").fetchall())
    info = {i: json.loads(v) for i, v in store.con.execute("SELECT id, info FROM stimuli WHERE kind = 'query'")}
    content = {i: _sha(store.folder / f) for i, f in files.items()}
    # the photos whose crops a unit's reference grid shows
    cropped = set()
    for u in design["targets"]["unit"]:
        rec = json.loads((next((store.folder.parent / "r" / "units" / "vital").glob("*.json"))).read_text())
        cropped |= {_sha(Path(s)) for s in rec["references"]["sources"][:MAX_REFS]}
        assert u["refs"]
    seen_ids, seen_content, seen_words = set(), set(), set()
    labelled = 0
    for part, shown, key in trials:
        ids = shown.get("images", []) + shown.get("refs", []) + shown.get("queries", [])
        if part == "label" and not key.get("attention"):
            labelled += 1
            target = key["target"]
            assert not images_of[target] & seen_ids, f"{target}: an image of it was shown before its label trial"
            assert word_of[target] not in seen_words, f"{target}: its word was shown before its label trial"
        if part == "2afc" and not key.get("demo"):
            for q in shown["queries"]:
                assert q not in seen_ids and content[q] not in seen_content, "a 2AFC query was shown before"
                assert _sha(Path(info[q]["path"])) not in cropped, "a crop of it was shown"
        seen_ids |= set(ids)
        seen_content |= {content[i] for i in ids}
        if shown.get("word"):
            seen_words.add(shown["word"].lower())
    return labelled


@pytest.mark.parametrize("methods", [("vital", "maco"), ("vital", "maco", "fourier")])
def test_every_participants_trial_list_is_unprimed(tmp_path, methods):
    store = create_study(study_results(tmp_path / "r", methods=methods), tmp_path / "s", participants_per_subset=3,
                         seed=11)
    design = store.design
    make = trials_for(design)
    while True:  # every participant the study admits, each with their own subset and seed
        try:
            store.add_participant(make)
        except VitalError:
            break
    tokens = [r[0] for r in store.con.execute("SELECT token FROM participants")]
    assert len(tokens) == design["subsets"] * 3 and design["subsets"] == 2 * len(methods)
    labelled = 0
    for token in tokens:
        rows = store.con.execute("SELECT part, shown, key FROM trials WHERE token = ? ORDER BY n", (token,))
        labelled += _walk(store, [(p, json.loads(s), json.loads(k)) for p, s, k in rows])
    assert labelled > 0
    for subset in range(design["subsets"]):  # and more seeds than the participants had
        for seed in range(6):
            _walk(store, make(subset, seed))
    # each class is rated by some participants and labelled by others; every method shows it in both parts
    parts_of = {}
    for part, target, method in store.con.execute(
            "SELECT part, json_extract(key, '$.target'), json_extract(key, '$.method') FROM trials "
            "WHERE part IN ('rate-class', 'label') AND json_extract(key, '$.attention') IS NULL"):
        parts_of.setdefault((part, target), set()).add(method)
    for t in design["targets"]["class"]:
        for part in ("rate-class", "label"):
            assert parts_of[(part, t["target"])] == set(methods), (part, t["target"])


def test_the_2afc_queries_are_the_scans_strongest_and_weakest(tmp_path):
    from vital_fv.references import list_images, read_image
    from vital_fv.study.queries import _model

    results = study_results(tmp_path / "r")
    store = create_study(results, tmp_path / "s", participants_per_subset=2, device="cpu")
    design = store.design
    paths = list_images(results / "photos")
    rec = json.loads(next((results / "units" / "vital").glob("*.json")).read_text())
    cropped = {_sha(Path(s)) for s in rec["references"]["sources"][:MAX_REFS]}
    targets = [t for t in design["targets"]["class"] + design["targets"]["unit"] if t.get("queries")]
    assert {t["target"].split(":")[0] for t in targets} == {"class", "unit"}  # classes and units
    spec = _model("efficientnet_lite0", "cpu")
    acts = activations(spec, [t["target"] for t in targets], paths)
    free = [i for i, p in enumerate(paths) if _sha(p) not in cropped]
    assert len(free) == len(paths) - 4
    candidates = len(free)
    for j, (t, row) in enumerate(zip(targets, acts, strict=True)):
        info = {k: json.loads(store.con.execute("SELECT info FROM stimuli WHERE id = ?", (t["queries"][k],))
                              .fetchone()[0]) for k in ("strong", "weak")}
        chosen = {k: paths.index(Path(info[k]["path"])) for k in info}
        assert float(row[chosen["strong"]]) == pytest.approx(float(row[free].max()))
        assert float(row[chosen["weak"]]) == pytest.approx(float(row[free].min()))  # the least, not the 50th best
        assert info["weak"]["of"] == candidates
        if j == 0:  # ranks in the whole scan: the first target's queries are its very first and very last
            assert info["strong"]["rank"] == 0 and info["weak"]["rank"] == candidates - 1
        free = [i for i in free if i not in chosen.values()]  # each image is the query of one target at most
    # the class scores are the class's logits: checked without the scan's code for the first class
    first = targets[0]
    index = int(first["target"].split(":")[1])
    with torch.no_grad():
        logits = torch.cat([spec.module(spec.preprocess.normalize(model_input(read_image(p)[0], spec.preprocess)))
                            for p in paths])[:, index]
    assert torch.allclose(logits, acts[0], atol=1e-4)


def test_the_2afc_needs_an_image_folder_when_none_can_be_found(tmp_path):
    results = study_results(tmp_path / "r")
    with pytest.raises(VitalError, match="--images .* is not a folder"):
        create_study(results, tmp_path / "s", images=tmp_path / "nowhere")
    assert not (tmp_path / "s").exists()


def test_a_seed_fixes_every_participants_seed_and_trials(tmp_path):
    results = study_results(tmp_path / "r")
    lists = {}
    for name, seed in (("a", 5), ("b", 5), ("c", 6)):
        store = create_study(results, tmp_path / name, participants_per_subset=2, seed=seed,
                             parts=["rate-class", "label"])
        for _ in range(5):
            store.add_participant(trials_for(store.design))
        rows = store.con.execute("SELECT p.seed, t.part, json_extract(t.key, '$.target'), "
                                 "json_extract(t.key, '$.method') FROM participants p JOIN trials t "
                                 "ON t.token = p.token ORDER BY p.ordinal, t.n").fetchall()
        lists[name] = [tuple(r) for r in rows]
    assert lists["a"] == lists["b"] and lists["a"] != lists["c"]
    seeds = [r[0] for r in Store(tmp_path / "a").con.execute("SELECT seed FROM participants ORDER BY ordinal")]
    assert len(set(seeds)) == 5
    with pytest.raises(VitalError, match="--seed"):
        create_study(results, tmp_path / "d", seed=-1)
