import json

import pytest
import torch

from vital_fv import objectives as ob
from vital_fv.errors import VitalError
from vital_fv.objectives import LOGITS, ClassTarget, UnitTarget


def _acts() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {"l": torch.randn(2, 4, 3, 3, generator=g), LOGITS: torch.randn(2, 5, generator=g)}


def test_the_algebra_computes_what_it_says_and_knows_its_layers():
    acts = _acts()
    a, b = ob.channel("l", 1), ob.channel("l", 3)
    diff = a - b
    assert torch.allclose(diff(acts), acts["l"][:, 1].mean((1, 2)) - acts["l"][:, 3].mean((1, 2)))
    mix = 2 * a + ob.logit(4) / 4 - ob.neuron("l", 0, (1, 2))
    want = 2 * acts["l"][:, 1].mean((1, 2)) + acts[LOGITS][:, 4] / 4 - acts["l"][:, 0, 1, 2]
    assert torch.allclose(mix(acts), want)
    assert torch.allclose((-a)(acts), -a(acts))
    assert torch.allclose(sum([a, b, a])(acts), 2 * a(acts) + b(acts))
    assert mix.layers == ("l", LOGITS)
    assert diff.layer == "l" and diff.label() == "l:1 - l:3" and diff.slug() == "l-1-l-3"
    assert (ob.logit("espresso") - 0.5 * ob.logit("cup")).label() == "espresso - 0.5*cup"
    with pytest.raises(VitalError, match="reads 2 layers"):
        _ = mix.layer
    with pytest.raises(VitalError, match="finite number"):
        a * "2"
    with pytest.raises(VitalError, match="cannot combine"):
        a + 3


def test_built_in_objectives_and_their_algebra_round_trip_through_json():
    d = ob.direction("l", torch.tensor([0.1, -0.2, 0.3, 0.7]), "c0")
    combo = 3 * ob.channel("l", 1) - ob.neuron("l", 2, (0, 1)) + ob.logit("espresso") - 0.25 * d
    back = ob.from_json(json.loads(json.dumps(combo.to_json())))
    assert back.label() == combo.label() and back.to_json() == combo.to_json()
    acts = _acts()
    resolved = back.resolved(["a", "b", "c", "d", "espresso"])
    assert torch.equal(resolved(acts), combo.resolved(["a", "b", "c", "d", "espresso"])(acts))
    assert ob.from_json(UnitTarget("l", 3).to_json()) == UnitTarget("l", 3)
    with pytest.raises(VitalError, match="unknown objective kind"):
        ob.from_json({"kind": "nope"})


def test_a_custom_callable_is_scored_checked_and_refuses_json():
    def peak(acts):
        return acts["l"].amax((1, 2, 3))

    custom = ob.objective(peak, layers=["l"])
    acts = _acts()
    assert custom.label() == "peak" and torch.equal(custom(acts), acts["l"].amax((1, 2, 3)))
    assert torch.allclose((custom - ob.channel("l", 0))(acts), custom(acts) - acts["l"][:, 0].mean((1, 2)))
    with pytest.raises(VitalError, match="custom callable: it cannot be written to JSON"):
        custom.to_json()
    assert custom.describe()["objective"] is None and "code" in custom.describe()
    with pytest.raises(VitalError, match=r"one score per batch item.*\(2,\)"):
        ob.objective(lambda acts: acts["l"].sum(), layers=["l"])(acts)
    with pytest.raises(VitalError, match="layers="):
        ob.objective(peak, layers=[])


def test_the_command_line_spelling_and_its_errors():
    assert ob.parse("blocks.5.2:17 - blocks.5.2:3").to_json() == (ob.channel("blocks.5.2", 17)
                                                                  - ob.channel("blocks.5.2", 3)).to_json()
    assert ob.parse("espresso - cup").label() == "espresso - cup"
    assert ob.parse("black-and-tan coonhound") == ClassTarget("black-and-tan coonhound")  # hyphens stay in names
    assert ob.parse("-2*a:1 + b:2@3,4").label() == "-2*a:1 + b:2@3,4"
    for bad, msg in [("", "empty"), ("x*a:1", "factor"), ("a:b", "LAYER:CHANNEL"), ("a:1 -", "cannot read")]:
        with pytest.raises(VitalError, match=msg):
            ob.parse(bad)


def test_baselines_ascend_an_objective_and_record_it(tiny_spec):
    from vital_fv import visualize

    obj = ob.channel("act2", 3) - ob.channel("act2", 5)
    r = visualize(tiny_spec, obj, method="fourier", preset="quick", steps=15, progress=False)
    curve = r.record["loss"]["objective"]  # minus the objective
    assert curve[-1] < curve[0]
    assert r.record["target"]["kind"] == "objective" and r.record["target"]["name"] == "act2:3 - act2:5"
    assert ob.from_json(r.record["target"]["objective"]).label() == obj.label()
    from vital_fv.records import check_record

    assert check_record(r.record) is None  # the gallery, evaluate and study read it as a result
    assert "target.name" in check_record({**r.record, "target": {"kind": "objective"}})
    # a class objective alone is the class: the same image as by name
    by_obj = visualize(tiny_spec, ob.logit("two"), method="fourier", steps=3, progress=False)
    by_name = visualize(tiny_spec, "two", method="fourier", steps=3, progress=False)
    assert torch.equal(by_obj.image, by_name.image)


def test_class_difference_ranks_a_pool_and_vital_runs_on_it(tiny_spec, refs_dir):
    from vital_fv import visualize
    from vital_fv.references import from_pool

    obj = ob.logit("one") - ob.logit("two")
    pool = from_pool(refs_dir, tiny_spec, obj, n=2, progress=False)
    scores = pool.info["pool_scores"]
    assert len(scores) == 2 and scores[0] >= scores[1]
    every = from_pool(refs_dir, tiny_spec, obj, n=3, progress=False).info["pool_scores"]
    assert every[:2] == scores and min(every) <= scores[-1]  # the top 2 of all 3
    r = visualize(tiny_spec, obj, pool=refs_dir, n_refs=2, preset="quick", steps=4, progress=False, cache=False)
    assert r.record["references"]["label"].startswith("pool:")
    assert r.record["relevance"]["method"] == "lrp"  # its relevance from its own gradient
    assert r.record["layers"]["layers"] == list(tiny_spec.preset.layers)  # a logits objective: the class layers


def test_vital_mines_references_ranked_by_the_objective(tiny_spec, refs_dir):
    from vital_fv import visualize
    from vital_fv.references import mine, mined_references

    obj = ob.channel("act2", 3) - ob.channel("act2", 5)
    mined = mine(tiny_spec, obj, refs_dir, patch=16, progress=False)
    top = mined.top(3)
    assert [e["score"] for e in top] == sorted((e["score"] for e in top), reverse=True)
    # each image's score is its best patch's value of the objective (patches cut as mining cuts them)
    from vital_fv.references import image_patches, read_image

    for e in top:
        img, _ = read_image(e["source"])
        with torch.no_grad():
            best = max(float(ob.per_item([obj] * len(crops), ob.forward(
                tiny_spec, [obj], tiny_spec.preprocess.normalize(crops))).max())
                for _, crops in image_patches(img, tiny_spec.preprocess, 16, 8))
        assert e["score"] == pytest.approx(best, rel=1e-5, abs=1e-6)
    assert mined_references(mined, k=1).info["mining"]["scores"][0] == round(top[0]["score"], 6)
    r = visualize(tiny_spec, obj, images=refs_dir, n_refs=2, preset="quick", steps=4, progress=False, cache=False)
    assert r.record["references"]["label"] == "mined:act2:3 - act2:5"
    assert r.record["relevance"]["references_used"] >= 1
    assert isinstance(r.record["target"]["value"], float)


def test_relevance_starts_from_the_objectives_gradient():
    from vital_fv.relevance.engine import _start

    top = torch.randn(1, 4, 3, 3)
    obj = ob.channel("l", 1) - ob.channel("l", 2)
    start, seed = _start(top, [obj], "lrp")
    want = torch.zeros_like(top)
    want[0, 1] = top[0, 1] / 9
    want[0, 2] = -top[0, 2] / 9
    assert torch.allclose(start, want)
    _, grad = _start(top, [obj], "guided_backprop")
    assert torch.allclose(grad[0, 1], torch.full((3, 3), 1 / 9)) and torch.allclose(grad[0, 2], torch.full((3, 3),
                                                                                                           -1 / 9))


def test_the_cli_takes_an_objective_and_checks_it_before_any_work(tmp_path, capsys):
    from vital_fv.cli import main

    assert main(["visualize", "--objective", "x*blocks.5.2:1", "--out", str(tmp_path)]) == 2
    assert "--objective: cannot read the factor 'x'" in capsys.readouterr().err
    assert main(["visualize", "--objective", "espresso - cup", "--method", "fourier", "--steps", "2", "--out",
                 str(tmp_path), "--name", "ec", "--quiet"]) == 0
    rec = json.loads((tmp_path / "ec.json").read_text())
    assert rec["target"]["name"] == "espresso - cup" and rec["target"]["layers"] == [LOGITS]
