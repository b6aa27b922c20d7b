"""The method interface and registry: a method defined here, outside the package, runs through Python and the CLI."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import torch

import vital_fv
from vital_fv import ClassTarget, Job, UnitTarget, VitalError, cli
from vital_fv.methods import (
    MethodOption,
    Preset,
    Updater,
    build_record,
    describe_target,
    get_method,
    get_preset,
    method_names,
    register,
    run_method,
    run_steps,
    schedule,
    unregister,
)
from vital_fv.methods.base import lr_factor
from vital_fv.result import Result


@dataclass(frozen=True)
class ToyPreset(Preset):
    steps: int
    lr: float
    init: float = 0.5


class Toy:
    """Gradient ascent on the class logit, straight on [0, 1] pixels: the smallest complete method."""

    name = "toy"
    description = "pixels, logit ascent (test)"
    presets = {"paper": ToyPreset(6, 0.05), "quick": ToyPreset(3, 0.05)}
    targets = ("class",)
    needs_references = False
    transparency = True
    options = (MethodOption("brightness", float, 0.0, "toy: starting grey level above 0.5", flag="--brightness",
                            what="a number"),)

    def run(self, model, jobs, *, preset, steps, lr, size, device, progress, brightness):
        p = get_preset(self, preset, steps, lr)
        size = size or model.preprocess.input_size
        x = torch.full((len(jobs), 3, size, size), p.init + brightness, requires_grad=True)
        classes = [describe_target(j.target, model)["index"] for j in jobs]
        opt = torch.optim.Adam([x], lr=p.lr)
        alpha = torch.zeros_like(x)
        update = Updater(opt, schedule(opt, p.steps, decay=False), alpha=alpha, grad_of=lambda: x,
                         after_step=lambda: x.data.clamp_(0, 1))
        curve = torch.zeros(p.steps, len(jobs))

        def step(i):
            logits = model.module(model.preprocess.normalize(x))
            obj = logits[range(len(jobs)), classes]
            curve[i] = -obj.detach()
            return update(-obj.sum(), len(jobs))

        status, times = run_steps(p.steps, step, progress, self.name)
        images = x.detach().clamp(0, 1)
        top5 = model.top5(images)
        return [Result(images[b], build_record(self.name, status=status, step_times=times,
                                               target=describe_target(j.target, model), seed=j.seed, model=model,
                                               optimizer=p.as_dict(), resolution=size, device="cpu",
                                               references=None, loss={"objective": curve[: len(times), b]},
                                               top5=top5[b]), alpha=alpha[b])
                for b, j in enumerate(jobs)]


@pytest.fixture
def toy():
    register(Toy())
    yield get_method("toy")
    unregister("toy")


def test_a_method_registered_from_outside_runs_through_python(toy, tiny_spec, tmp_path):
    assert method_names()[-1] == "toy" and method_names()[0] == "vital"
    results = vital_fv.visualize(tiny_spec, 2, method="toy", preset="quick", seeds=[0, 1], out=tmp_path)
    assert [r.record["method"] for r in results] == ["toy", "toy"]
    curve = results[0].record["loss"]["objective"]
    assert len(curve) == 3 and curve[-1] < curve[0]  # the logit rose
    assert {p.name for p in tmp_path.iterdir()} >= {"tiny-2-two-toy-s0.png", "tiny-2-two-toy-s1.json",
                                                    "tiny-2-two-toy-s0.rgba.png"}
    with pytest.raises(VitalError, match="already exist"):
        vital_fv.visualize(tiny_spec, 2, method="toy", preset="quick", seeds=[0, 1], out=tmp_path)
    (r,) = run_method("toy", tiny_spec, [Job(ClassTarget(2))], steps=2, brightness=0.1)  # its own option
    assert r.record["steps_done"] == 2 and r.image.mean() > 0.55


def test_a_method_registered_from_outside_runs_through_the_cli(toy, tiny_spec, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("vital_fv.zoo.loaders.load_model", lambda *a, **k: tiny_spec)
    code = cli.main(["visualize", "--method", "toy", "--class", "one", "--preset", "quick", "--out", str(tmp_path),
                     "--name", "t", "--quiet"])
    assert code == 0, capsys.readouterr().err
    rec = json.loads((tmp_path / "t.json").read_text())
    assert rec["method"] == "toy" and rec["target"] == {"kind": "class", "index": 1, "name": "one"}
    assert rec["optimizer"] == {"steps": 3, "lr": 0.05, "init": 0.5}
    assert "with toy, preset quick" in capsys.readouterr().err


def test_what_a_method_cannot_do_is_refused_before_any_work(toy, tiny_spec):
    with pytest.raises(VitalError, match="toy cannot show a unit target.*--method vital or fourier or maco"):
        run_method("toy", tiny_spec, [Job(UnitTarget("act2", 0))])
    with pytest.raises(VitalError, match="option 'spectrum' does not apply to toy \\(only to maco\\)"):
        run_method("toy", tiny_spec, [Job(ClassTarget(0))], spectrum="x.npy")
    with pytest.raises(VitalError, match="unknown preset 'slow' for toy: choose one of paper, quick"):
        run_method("toy", tiny_spec, [Job(ClassTarget(0))], preset="slow")
    with pytest.raises(VitalError, match="vital needs references"):
        run_method("vital", tiny_spec, [Job(ClassTarget(0))])
    with pytest.raises(VitalError, match="already registered"):
        register(Toy())
    with pytest.raises(VitalError, match="not a Method"):
        register(object())


def test_unknown_method_is_named_with_the_choices(tiny_spec):
    with pytest.raises(VitalError, match="unknown method 'lucid'.*choose one of vital, fourier, maco, deepinversion"):
        run_method("lucid", tiny_spec, [Job(ClassTarget(0), None, 0)])


def test_schedule_warms_up_then_decays_to_zero():
    assert lr_factor(0, 100, 10) == pytest.approx(0.1)
    assert lr_factor(9, 100, 10) == pytest.approx(1.0)
    assert lr_factor(10, 100, 10) == pytest.approx(1.0)
    assert lr_factor(100, 100, 10) == pytest.approx(0.0, abs=1e-12)


def test_a_method_s_own_option_goes_through_python_the_cli_and_the_atlas(toy, tiny_spec, tmp_path, monkeypatch,
                                                                          capsys):
    """``brightness``, declared by the toy method only: a keyword of ``visualize`` (options=), a flag of ``vital
    visualize`` and of ``vital atlas plan`` (generated from the declaration), stored in each atlas item's run."""
    from vital_fv.atlas import Ledger

    bright = vital_fv.visualize(tiny_spec, 2, method="toy", preset="quick", options={"brightness": 0.3},
                                progress=False)
    plain = vital_fv.visualize(tiny_spec, 2, method="toy", preset="quick", progress=False)
    assert bright.image.mean() > plain.image.mean() + 0.2 and bright.record["spec"]["options"] == {"brightness": 0.3}
    with pytest.raises(VitalError, match="option 'brightness' does not apply to fourier \\(only to toy\\)"):
        vital_fv.visualize(tiny_spec, 2, method="fourier", options={"brightness": 0.3}, progress=False)
    with pytest.raises(VitalError, match="option 'brightness' of toy must be a number"):
        vital_fv.visualize(tiny_spec, 2, method="toy", options={"brightness": "high"}, progress=False)

    monkeypatch.setattr("vital_fv.zoo.loaders.load_model", lambda *a, **k: tiny_spec)
    monkeypatch.setattr("vital_fv.zoo.load_model", lambda *a, **k: tiny_spec)  # the atlas loads by name
    assert cli.main(["visualize", "--method", "toy", "--class", "two", "--preset", "quick", "--brightness", "0.3",
                     "--out", str(tmp_path / "cli"), "--name", "t", "--quiet"]) == 0, capsys.readouterr().err
    rec = json.loads((tmp_path / "cli" / "t.json").read_text())
    assert rec["spec"]["options"] == {"brightness": 0.3} and rec["loss"] == bright.record["loss"]
    assert cli.main(["visualize", "--class", "two", "--brightness", "0.3", "--out", str(tmp_path / "x")]) == 2
    assert "option 'brightness' does not apply to vital (only to toy)" in capsys.readouterr().err

    job = tmp_path / "job"
    assert cli.main(["atlas", "plan", "--model", "tiny", "--classes", "1,2", "--methods", "toy", "--preset",
                     "quick", "--brightness", "0.3", "--out", str(job)]) == 0, capsys.readouterr().err
    ledger = Ledger.open(job)
    assert [it.spec["options"] for it in ledger.items()] == [{"brightness": 0.3}] * 2
    ledger.close()
    assert cli.main(["atlas", "run", str(job), "--device", "cpu", "--quiet"]) == 0, capsys.readouterr().err
    made = json.loads((job / "images" / "tiny-2-two-toy-s0.json").read_text())
    assert made["loss"] == bright.record["loss"] and made["spec"]["options"] == {"brightness": 0.3}
    assert cli.main(["atlas", "plan", "--model", "tiny", "--classes", "1", "--methods", "fourier", "--brightness",
                     "0.3", "--out", str(tmp_path / "job2")]) == 2
    assert "option 'brightness' applies to none of --methods fourier (only to toy)" in capsys.readouterr().err
