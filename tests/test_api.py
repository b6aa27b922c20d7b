"""``vital_fv.visualize``: what ``vital visualize`` does, as one Python call, with every option checked first."""

from __future__ import annotations

import functools

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vital_fv
from vital_fv import Result, UnitTarget, VitalError, cli, references


@pytest.fixture
def cli_on_tiny(monkeypatch, tiny_spec):
    monkeypatch.setattr("vital_fv.zoo.loaders.load_model", lambda *a, **k: tiny_spec)


@pytest.mark.parametrize("method", ["vital", "maco"])
def test_python_and_cli_make_the_same_files(method, tiny_spec, refs_dir, tmp_path, cli_on_tiny, capsys):
    refs = ["--refs", str(refs_dir)] if method == "vital" else []
    assert cli.main(["visualize", "--class", "one", *refs, "--method", method, "--preset", "quick", "--steps", "3",
                     "--seeds", "0,1", "--out", str(tmp_path / "cli"), "--quiet"]) == 0, capsys.readouterr().err
    results = vital_fv.visualize(tiny_spec, "one", refs_dir if method == "vital" else None, method=method,
                                 preset="quick", steps=3, seeds=[0, 1], out=tmp_path / "py", progress=False)
    assert [r.record["seed"] for r in results] == [0, 1] and all(isinstance(r, Result) for r in results)
    cli_files = sorted(p.name for p in (tmp_path / "cli").iterdir())
    assert cli_files == sorted(p.name for p in (tmp_path / "py").iterdir())
    assert f"tiny-1-one{'' if method == 'vital' else '-maco'}-s1.png" in cli_files
    for name in cli_files:
        if name.endswith(".png"):
            assert (tmp_path / "cli" / name).read_bytes() == (tmp_path / "py" / name).read_bytes(), name
    assert results[1].path == tmp_path / "py" / f"tiny-1-one{'' if method == 'vital' else '-maco'}-s1.png"


def test_batch_size_forced_or_auto_runs_in_chunks_and_says_so(tiny_spec, tmp_path):
    """Issue 30: ``batch_size`` splits the run; each record says the batch and how it was chosen. The images of a
    seed are its own in any chunking (up to float32's batch-size-dependent sums)."""
    refs = references.from_tensor(torch.rand(2, 3, 36, 36, generator=torch.Generator().manual_seed(0)))
    one = vital_fv.visualize(tiny_spec, [1, 2], refs, steps=3, seeds=[0, 1], batch_size=1, progress=False,
                             out=tmp_path / "one")
    auto = vital_fv.visualize(tiny_spec, [1, 2], refs, steps=3, seeds=[0, 1], progress=False)
    assert [r.record["batch"]["size"] for r in one] == [1] * 4 and one[0].record["batch"]["how"] == "forced"
    assert auto[0].record["batch"] == {"size": 4, "how": "short", "seconds_per_image_step": {}}  # 3 steps: no probe
    assert len(list((tmp_path / "one").glob("*.png"))) == 8  # each result saved (+ .rgba.png)
    for a, b in zip(one, auto, strict=True):
        assert a.record["seed"] == b.record["seed"] and a.record["target"] == b.record["target"]
        assert (a.image - b.image).abs().mean() < 0.01  # Adam grows the last-bit differences a little
    assert (one[0].image - one[1].image).abs().mean() > 0.05  # another seed is another image
    with pytest.raises(VitalError, match="batch_size must be a positive integer or 'auto'"):
        vital_fv.visualize(tiny_spec, 1, refs, steps=2, batch_size=0, progress=False)


def test_one_target_and_no_seeds_give_one_result(tiny_spec):
    refs = references.from_tensor(torch.rand(2, 3, 36, 36))
    r = vital_fv.visualize(tiny_spec, 1, refs, steps=2, progress=False)
    assert isinstance(r, Result) and r.record["seed"] == 0 and r.path is None  # nothing saved without out


@pytest.mark.parametrize(("options", "message"), [
    ({"alpha_percentile": 150}, "--alpha-percentile must be in"),
    ({"seeds": [1, 1]}, "--seeds repeats a seed"),
    ({"seeds": []}, "--seeds is empty"),
    ({"name": "../x"}, "--name '../x' must be a plain file name"),
    ({"name": ".."}, "--name '..' must be a plain file name"),
    ({"method": "lucid"}, "unknown method 'lucid'"),
    ({"method": "maco", "preset": "slow"}, "unknown preset 'slow' for maco"),
    ({"method": "fourier", "preset": "balanced"}, "unknown preset 'balanced' for fourier: choose one of paper, quick"),
    ({"steps": 0}, "--steps must be at least 1"),
    ({"layer_weights": [1.0]}, "--layer-weights needs --layers"),
    ({"layers": ["act9"]}, "unknown layer 'act9'"),
    ({"spectrum": "x.npy"}, "option 'spectrum' does not apply to vital \\(only to maco\\)"),
    ({"method": "fourier", "relevance": "lrp"}, "option 'relevance' does not apply to fourier"),
    ({"method": "fourier", "pool": "photos/"}, "fourier uses no references: drop --pool"),
    ({"n_refs": 0}, "--n-refs must be at least 1"),
])
def test_bad_options_are_refused_before_any_work(options, message, tiny_spec, refs_dir, tmp_path, monkeypatch):
    def no_work(run):
        @functools.wraps(run)  # the same signature, so the option check sees the method's own
        def refuse(*_a, **_k):
            raise AssertionError("the method ran")

        return refuse

    for m in ("vital", "fourier", "maco"):
        method = vital_fv.get_method(m)
        monkeypatch.setattr(method, "run", no_work(method.run))
    refs = None if options.get("method", "vital") != "vital" else refs_dir
    with pytest.raises(VitalError, match=message):
        vital_fv.visualize(tiny_spec, "one", refs, out=tmp_path / "o", progress=False, **options)
    assert not list((tmp_path / "o").glob("*.png")) if (tmp_path / "o").exists() else True


def test_targets_are_checked_before_any_reference_is_read(tiny_spec, tmp_path):
    missing = tmp_path / "no-such-folder"
    with pytest.raises(VitalError, match="unknown layer 'act9'"):
        vital_fv.visualize(tiny_spec, UnitTarget("act9", 0), images=missing, progress=False)
    with pytest.raises(VitalError, match="channel 99 is out of range"):
        vital_fv.visualize(tiny_spec, UnitTarget("act2", 99), images=missing, progress=False)
    with pytest.raises(VitalError, match="position @40,1 is outside"):
        vital_fv.visualize(tiny_spec, UnitTarget("act2", 1, (40, 1)), images=missing, progress=False)
    with pytest.raises(VitalError, match="class index 9 is out of range: the model has 4 classes"):
        vital_fv.visualize(tiny_spec, 9, missing, progress=False)


def test_fewer_references_than_asked_and_references_of_another_unit_are_named(tiny_spec, refs_dir, tmp_path):
    with pytest.warns(UserWarning, match="3 reference images where --n-refs asks for 50.*--augment"):
        vital_fv.visualize(tiny_spec, 1, refs_dir, steps=1, progress=False, augment=False)
    completed = vital_fv.visualize(tiny_spec, 1, refs_dir, steps=1, n_refs=10, progress=False)  # by default
    summary = completed.record["references"]["summary"]
    assert summary == "3 photos: 10 crops around the class, chosen by the model's evidence"
    assert completed.record["references"]["count"] == 10
    mined = references.resolve(tiny_spec, UnitTarget("act2", 0), images=refs_dir, n=2, progress=False)
    with pytest.warns(UserWarning, match="mined for act2:0, not act2:1"):
        vital_fv.visualize(tiny_spec, UnitTarget("act2", 1), mined, steps=1, n_refs=2, progress=False)


def _methods_do_no_work(monkeypatch) -> list[int]:
    """Every registered method's ``run`` replaced by a stand-in that records the call and returns blank results;
    each keeps its method's signature, so its own options are still checked. Returns the list of calls."""
    ran: list[int] = []

    def no_work(run):
        @functools.wraps(run)
        def fake(model, jobs, **_k):
            ran.append(1)
            return [Result(torch.zeros(3, 8, 8), {"seed": j.seed, "status": "complete"}) for j in jobs]

        return fake

    for m in vital_fv.method_names():
        meth = vital_fv.get_method(m)
        monkeypatch.setattr(meth, "run", no_work(meth.run))
    return ran


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lr=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
       steps=st.one_of(st.none(), st.integers(-5, 10**6)), size=st.one_of(st.none(), st.integers(-10, 10**5)),
       seeds=st.lists(st.integers(-3, 3), max_size=4), n_refs=st.integers(-3, 100),
       alpha=st.floats(allow_nan=True, allow_infinity=True), name=st.one_of(st.none(), st.text(max_size=6)),
       method=st.sampled_from(["vital", "maco", "fourier", "deepinversion", "nope"]),
       preset=st.sampled_from(["paper", "quick", "slow"]))
def test_any_options_either_run_or_get_our_error_before_any_work(tiny_spec, refs_dir, tmp_path, monkeypatch, lr,
                                                                 steps, size, seeds, n_refs, alpha, name, method,
                                                                 preset):
    ran = _methods_do_no_work(monkeypatch)
    try:
        vital_fv.visualize(tiny_spec, "one", refs_dir if method == "vital" else None, method=method, preset=preset,
                           lr=lr, steps=steps, size=size, seeds=seeds, n_refs=n_refs, alpha_percentile=alpha,
                           name=name, out=tmp_path / "o", overwrite=True, progress=False)
    except VitalError:
        assert not ran  # refused before the method ran
    else:
        assert ran


_ODD_VALUES = st.sampled_from([True, False, None, 0, 1, 1.5, -2, 2**70, "0", "no", "0,1", "", b"x", [1], ["0"], (),
                               [True], {"a": 1}, float("nan"), object()])
_ARGUMENTS = ["target", "references", "weights", "method", "preset", "seed", "seeds", "steps", "lr", "size", "device",
              "n_refs", "pool", "images", "augment", "crops", "use", "layers", "layer_weights", "relevance",
              "class_token", "spectrum", "cache", "cache_dir", "out", "name", "overwrite", "alpha_percentile",
              "progress"]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(odd=st.dictionaries(st.sampled_from(_ARGUMENTS), _ODD_VALUES, min_size=1, max_size=3))
def test_any_argument_of_any_type_either_runs_or_gets_our_error_naming_it(tiny_spec, refs_dir, tmp_path, monkeypatch,
                                                                          odd):
    """Wrong types (bools for numbers, strings for lists, None where a value is needed) are refused by name before
    any work, never a raw TypeError / ValueError / AttributeError, and nothing runs after a refusal."""
    ran = _methods_do_no_work(monkeypatch)
    monkeypatch.chdir(tmp_path)  # an odd `out` ("", "0") is a folder relative to here: not the checkout
    kwargs = {"target": "one", "references": refs_dir, "steps": 1, "out": tmp_path / "o", "overwrite": True,
              "progress": False, **odd}
    target, references = kwargs.pop("target"), kwargs.pop("references")
    try:
        vital_fv.visualize(tiny_spec, target, references, **kwargs)
    except VitalError as exc:
        assert not ran
        bad = [a for a in odd if a in str(exc).replace("-", "_")] or [a for a in odd if a in ("target", "references")]
        assert bad or "nothing to visualize" in str(exc) or "uses no references" in str(exc), (odd, str(exc))
    else:
        assert ran
        for arg, value in odd.items():  # whatever ran was of the documented type
            assert _DOCUMENTED.get(arg, lambda v: True)(value), (arg, value)


def _is(*kinds, optional=False):
    return lambda v: (optional and v is None) or (isinstance(v, kinds) and (bool in kinds or not isinstance(v, bool)))


_DOCUMENTED = {
    "target": lambda v: _is(int, str)(v) or (isinstance(v, (list, tuple)) and all(_is(int, str)(t) for t in v)),
    "seed": _is(int), "steps": _is(int, optional=True), "size": _is(int, optional=True),
    "n_refs": _is(int), "lr": _is(int, float, optional=True), "alpha_percentile": _is(int, float),
    "seeds": lambda v: v is None or (isinstance(v, (list, tuple)) and all(_is(int)(s) for s in v)),
    "augment": _is(bool, optional=True), "overwrite": _is(bool), "progress": _is(bool),
    "class_token": _is(bool, optional=True), "method": _is(str), "preset": _is(str), "device": _is(str),
    "crops": _is(str), "use": _is(str), "name": _is(str, optional=True), "out": _is(str, optional=True),
    "cache_dir": _is(str, optional=True), "weights": _is(str, optional=True), "relevance": _is(str, optional=True),
    "layers": lambda v: v is None or (isinstance(v, (list, tuple)) and all(isinstance(n, str) for n in v)),
    "layer_weights": lambda v: v is None or (isinstance(v, (list, tuple)) and all(_is(int, float)(w) for w in v)),
}
