"""``RunSpec``: one run description from the API, the CLI and the atlas, checked once, kept in every record so a
result can be made again exactly."""

from __future__ import annotations

import json

import pytest
import torch

import vital_fv
from vital_fv import ClassTarget, DirectionTarget, UnitTarget, VitalError, cli
from vital_fv.runspec import (
    References,
    ReferenceSource,
    RunSpec,
    TargetKind,
    kind_of,
    register_target_kind,
    target_from_json,
    target_to_json,
)


def test_targets_and_sources_round_trip_as_tagged_json(tmp_path):
    direction = DirectionTarget("act2", torch.tensor([0.25, -1.0, 3.0]), "d")
    targets = (ClassTarget("espresso"), ClassTarget(3), UnitTarget("act2", 5), UnitTarget("act2", 5, (1, 2)),
               direction)
    assert [target_to_json(t)["kind"] for t in targets] == ["class", "class", "unit", "neuron", "direction"]
    back = [target_from_json(json.loads(json.dumps(target_to_json(t)))) for t in targets]
    assert back[:4] == list(targets[:4])
    assert torch.equal(back[4].vector, direction.vector) and back[4].name == "d"
    (tmp_path / "refs").mkdir()
    for source in (ReferenceSource("folder", str(tmp_path / "refs")), ReferenceSource("pool", str(tmp_path)),
                   ReferenceSource("files", paths=(str(tmp_path / "a.png"),)), ReferenceSource("bundled"),
                   ReferenceSource("mine", str(tmp_path)), ReferenceSource("mined", str(tmp_path)),
                   ReferenceSource("concept")):
        how = References(source, n=7, augment=False, crops="random", weighting="none", use="images")
        assert References.from_json(json.loads(json.dumps(how.to_json()))) == how
    spec = RunSpec("efficientnet_lite0", targets[:4], References(ReferenceSource("folder", str(tmp_path / "refs"))),
                   method="vital", preset="quick", steps=3, lr=0.5, size=224, layers=["blocks.1"],
                   layer_weights=[2.0], options={"relevance": "lrp"}, seeds=(0, 4), device="cpu", name="x")
    data = json.loads(json.dumps(spec.to_json()))
    assert RunSpec.from_json(data).to_json() == data
    with pytest.raises(VitalError, match="unknown target kind 'word'"):
        target_from_json({"kind": "word"})
    with pytest.raises(VitalError, match="unknown reference source 'web'"):
        ReferenceSource.from_json({"kind": "web"})


def test_a_target_kind_registered_from_outside_round_trips(monkeypatch):
    """The way an objective kind is added: matches, JSON both ways, and the kind a method must show."""
    from vital_fv import runspec

    class Negated:
        def __init__(self, cls):
            self.cls = cls

    monkeypatch.setattr(runspec, "_TARGET_KINDS", dict(runspec._TARGET_KINDS))
    register_target_kind(TargetKind("negated", lambda t: isinstance(t, Negated), lambda t: {"of": t.cls},
                                    lambda d: Negated(d["of"]), "class"))
    assert target_to_json(Negated(3)) == {"kind": "negated", "of": 3}
    assert target_from_json({"kind": "negated", "of": 3}).cls == 3 and kind_of(Negated(1)).shows_as == "class"
    with pytest.raises(VitalError, match="already registered"):
        register_target_kind(TargetKind("negated", bool, dict, dict, "class"))


@pytest.mark.parametrize(("spec", "message"), [
    ({"targets": ()}, "nothing to visualize"),
    ({"targets": (UnitTarget("act2", 0),), "references": References(ReferenceSource("pool", "p"))},
     "--pool ranks images by a class's probability"),
    ({"references": References(ReferenceSource("mine", "p"))}, "--images mines references for a unit"),
    ({"targets": (UnitTarget("act2", 0),)}, "needs the unit's references"),
    ({"targets": (UnitTarget("act2", 0),), "references": References(ReferenceSource("bundled"))},
     "references from bundled .* cannot serve unit targets"),
    ({"method": "fourier", "references": References(ReferenceSource("pool", "p"))}, "fourier uses no references"),
    ({"method": "deepinversion", "targets": (UnitTarget("act2", 0),)}, "deepinversion cannot show a unit target"),
    ({"options": {"spectrum": "x.npy"}}, "option 'spectrum' does not apply to vital \\(only to maco\\)"),
    ({"options": {"relevance": "loud"}}, "option 'relevance' of vital must be one of"),
    ({"method": "maco", "options": {"spectrum": 3}}, "option 'spectrum' of maco must be a file path"),
    ({"references": References(n=0)}, "--n-refs must be at least 1"),
    ({"references": References(crops="best")}, "--crops must be one of"),
    ({"seeds": 3}, "seeds must be a list of whole numbers"),
    ({"device": "gpu"}, "device"),
])
def test_every_check_is_made_once_before_any_work(spec, message, tiny_spec):
    run = RunSpec(tiny_spec, **{"targets": (ClassTarget(1),), **spec})
    with pytest.raises(VitalError, match=message):
        run.check()


def test_one_source_only_and_a_set_given_in_python_is_not_rerun(tiny_spec, refs_dir):
    with pytest.raises(VitalError, match="give one reference source, not --refs and --pool"):
        References.given(refs_dir, pool=refs_dir)
    assert References.given(refs_dir).source == ReferenceSource("folder", str(refs_dir))
    assert References.given([refs_dir / "r0.png"]).source.kind == "files"
    refs = vital_fv.references.from_folder(refs_dir)
    r = vital_fv.visualize(tiny_spec, 1, refs, steps=1, progress=False)
    assert r.record["spec"]["rerun"]["possible"] is False
    with pytest.raises(VitalError, match="cannot be made again.*ReferenceSet given in Python"):
        RunSpec.from_record(r.record, tiny_spec)


@pytest.mark.parametrize("target", ["class", "unit"])
def test_a_record_reruns_to_the_same_image(target, tiny_spec, refs_dir, tmp_path, monkeypatch, capsys):
    """Python (``vital_fv.rerun``) and the CLI (``--from``) make a result's PNG again, byte for byte (CPU)."""
    kwargs = {"target": 1, "references": refs_dir} if target == "class" else {
        "target": UnitTarget("act2", 3), "images": refs_dir, "n_refs": 2}
    tgt, refs = kwargs.pop("target"), kwargs.pop("references", None)
    results = vital_fv.visualize(tiny_spec, tgt, refs, preset="quick", steps=3, seeds=[0, 5], device="cpu",
                                 out=tmp_path / "a", progress=False, **kwargs)
    record = results[1].path.with_suffix(".json")
    spec = json.loads(record.read_text())["spec"]
    assert spec["seeds"] == [5] and len(spec["targets"]) == 1 and spec["name"] == results[1].path.stem
    again = vital_fv.rerun(record, model=tiny_spec, out=tmp_path / "b")
    assert again.path.name == results[1].path.name
    assert again.path.read_bytes() == results[1].path.read_bytes()
    assert again.record["spec"] == spec  # the rerun's record keeps the same run
    monkeypatch.setattr("vital_fv.zoo.loaders.load_model", lambda *a, **k: tiny_spec)  # the record names model 'tiny'
    assert cli.main(["visualize", "--from", str(record), "--out", str(tmp_path / "c"), "--quiet"]) == 0, \
        capsys.readouterr().err
    assert (tmp_path / "c" / results[1].path.name).read_bytes() == results[1].path.read_bytes()
    assert cli.main(["visualize", "--from", str(record), "--steps", "2", "--out", str(tmp_path / "d")]) == 2
    assert "--from makes the recorded run again: drop --steps" in capsys.readouterr().err


def test_a_record_without_a_run_description_is_refused_saying_why(tmp_path, capsys):
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"method": "vital", "target": {"kind": "class", "index": 1, "name": "one"},
                               "model": {"name": "tiny"}, "seed": 0}))
    with pytest.raises(VitalError, match="holds no run description .* made before vital-fv kept them"):
        vital_fv.rerun(old)
    assert cli.main(["visualize", "--from", str(old), "--out", str(tmp_path / "o")]) == 2
    assert "holds no run description" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_model_given_must_be_the_recorded_one(tiny_spec, refs_dir):
    r = vital_fv.visualize(tiny_spec, 1, refs_dir, steps=1, progress=False)
    with torch.no_grad():
        tiny_spec.module.fc.bias.add_(1.0)
    other = vital_fv.load_model(tiny_spec.module, layers=["act1", "act2"], preprocess=tiny_spec.preprocess,
                                class_names=tiny_spec.class_names, name="tiny")
    with pytest.raises(VitalError, match="not the one the record was made with"):
        RunSpec.from_record(r.record, other)


def test_an_atlas_item_reruns_with_its_batch(tiny_spec, tmp_path, monkeypatch, capsys):
    """An atlas record keeps its item's run and the batch it was optimized with: rerun makes the same PNG."""
    monkeypatch.setattr("vital_fv.zoo.load_model", lambda *a, **k: tiny_spec)
    job = tmp_path / "job"
    assert cli.main(["atlas", "plan", "--model", "tiny", "--classes", "1,2,3", "--methods", "fourier", "--steps",
                     "3", "--out", str(job)]) == 0, capsys.readouterr().err
    assert cli.main(["atlas", "run", str(job), "--batch", "3", "--device", "cpu", "--quiet"]) == 0
    record = job / "images" / "tiny-2-two-fourier-s0.json"
    spec = json.loads(record.read_text())["spec"]
    assert spec["batch"]["index"] == 1 and len(spec["batch"]["items"]) == 3
    again = vital_fv.rerun(record, model=tiny_spec, out=tmp_path / "again")
    assert again.path.read_bytes() == record.with_suffix(".png").read_bytes()
    monkeypatch.setattr("vital_fv.zoo.loaders.load_model", lambda *a, **k: tiny_spec)
    assert cli.main(["visualize", "--from", str(record), "--out", str(tmp_path / "cli"), "--name", "x",
                     "--quiet"]) == 0
    assert (tmp_path / "cli" / "x.png").read_bytes() == record.with_suffix(".png").read_bytes()
