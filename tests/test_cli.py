import functools
import json
import signal

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import vital_fv
from vital_fv import Result
from vital_fv.cli import main


def test_classes_grep(capsys):
    assert main(["classes", "--grep", "espresso"]) == 0
    out = capsys.readouterr().out
    assert "967  espresso" in out and "tripod" not in out


def test_layers_lists_names_shapes_and_the_preset(capsys):
    assert main(["layers", "--grep", "conv_stem"]) == 0
    assert "* conv_stem" in capsys.readouterr().out
    assert main(["layers", "--grep", "bn"]) == 0
    out = capsys.readouterr().out
    assert "  bn1 " in out and "32x112x112" in out and "* bn2" in out and "1280x7x7" in out


def test_unknown_class_suggests_close_names(capsys, tmp_path):
    assert main(["visualize", "--class", "expresso", "--out", str(tmp_path)]) == 2
    assert "unknown class 'expresso'" in capsys.readouterr().err


def test_unknown_layer_is_reported_before_any_work(capsys, tmp_path):
    assert main(["visualize", "--class", "espresso", "--layers", "bn1,blocks.11", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "unknown layer 'blocks.11'" in err and "vital layers --model efficientnet_lite0" in err


def test_unwritable_output_is_reported_before_any_work(capsys, tmp_path):
    (tmp_path / "f").write_text("x")
    assert main(["visualize", "--class", "espresso", "--out", str(tmp_path / "f" / "sub")]) == 2
    assert "not writable" in capsys.readouterr().err


def test_missing_references_for_a_class_without_a_bundled_photo(capsys, tmp_path):
    assert main(["visualize", "--class", "goldfish", "--out", str(tmp_path)]) == 2
    assert "give --refs DIR" in capsys.readouterr().err


def test_visualize_writes_png_and_record_and_refuses_to_overwrite(capsys, tmp_path):
    args = ["visualize", "--class", "espresso", "--steps", "3", "--n-refs", "4", "--seeds", "0,1",
            "--out", str(tmp_path), "--quiet"]
    assert main(args) == 0
    out = capsys.readouterr().out
    pngs = sorted(p for p in tmp_path.glob("*.png") if not p.name.endswith(".rgba.png"))
    assert [p.name for p in pngs] == [f"efficientnet_lite0-967-espresso-s{s}.png" for s in (0, 1)]
    assert (tmp_path / "efficientnet_lite0-967-espresso-s0.rgba.png").exists()
    record = json.loads(pngs[1].with_suffix(".json").read_text())
    assert record["seed"] == 1 and record["steps_done"] == 3 and record["references"]["augmented"]
    assert record["model"]["weights_sha256"] and len(record["top5"]) == 5
    assert "top-5:" in out and "time:" in out
    before = pngs[0].read_bytes()
    assert main(args) == 2
    assert "already exists" in capsys.readouterr().err
    assert pngs[0].read_bytes() == before
    assert main([*args, "--overwrite"]) == 0


def test_refs_folder_with_a_corrupt_file_warns_and_runs(capsys, tmp_path):
    from PIL import Image

    refs = tmp_path / "refs"
    refs.mkdir()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(refs / "red.png")
    (refs / "bad.jpg").write_bytes(b"nope")
    with pytest.warns(UserWarning, match="bad.jpg"):
        code = main(["visualize", "--class", "1", "--refs", str(refs), "--steps", "2", "--out", str(tmp_path / "o"),
                     "--quiet"])
    assert code == 0


def _red_refs(folder):
    from PIL import Image

    folder.mkdir()
    for i in range(2):
        Image.new("RGB", (80, 64), (200, 30 + 50 * i, 30)).save(folder / f"{i}.png")
    return folder


def test_timm_model_with_weights_file_and_layers(capsys, tmp_path):
    import timm
    import torch

    path = tmp_path / "atto.pth"
    torch.save(timm.create_model("convnext_atto", pretrained=False).state_dict(), path)
    refs = _red_refs(tmp_path / "refs")
    args = ["visualize", "--model", "timm:convnext_atto", "--weights", str(path), "--class", "1", "--refs", str(refs),
            "--layers", "stages.0,stages.1,stages.2,stages.3", "--steps", "2", "--out", str(tmp_path / "o"), "--quiet"]
    assert main(args) == 0
    (js,) = (tmp_path / "o").glob("*.json")
    assert js.name == "timm-convnext_atto-1-goldfish-s0.json"  # no ':' in file names (Windows, scp, make)
    record = json.loads(js.read_text())
    assert record["layers"]["layers"] == ["stages.0", "stages.1", "stages.2", "stages.3"]
    assert record["layers"]["source"] == "user (--layers)"
    assert record["model"]["name"] == "timm:convnext_atto"


def test_torchvision_weights_file_through_the_cli_and_a_mismatched_one(capsys, tmp_path):
    import torch
    import torchvision

    good = tmp_path / "r18.pth"
    state = torchvision.models.resnet18(weights=None).state_dict()
    torch.save(state, good)
    refs = _red_refs(tmp_path / "refs")
    common = ["--class", "goldfish", "--refs", str(refs), "--layers", "layer1,layer2", "--steps", "2", "--quiet"]
    assert main(["visualize", "--model", "resnet18", "--weights", str(good), *common,
                 "--out", str(tmp_path / "o")]) == 0
    del state["layer1.0.conv1.weight"]
    bad = tmp_path / "bad.pth"
    torch.save(state, bad)
    assert main(["visualize", "--model", "resnet18", "--weights", str(bad), *common,
                 "--out", str(tmp_path / "o2")]) == 2
    assert "missing keys: layer1.0.conv1.weight" in capsys.readouterr().err


def test_layers_of_a_torchvision_model_need_no_weights(capsys):
    assert main(["layers", "--model", "resnet18", "--grep", "layer4"]) == 0
    assert "512x7x7" in capsys.readouterr().out


def test_baseline_methods_through_the_cli(capsys, tmp_path):
    out = tmp_path / "o"
    assert main(["visualize", "--class", "espresso", "--method", "maco", "--steps", "2", "--out", str(out),
                 "--quiet"]) == 0
    names = sorted(p.name for p in out.iterdir())
    stem = "efficientnet_lite0-967-espresso-maco-s0"
    assert names == [f"{stem}.alpha.npy", f"{stem}.json", f"{stem}.png", f"{stem}.rgba.png"]
    assert main(["visualize", "--class", "espresso", "--method", "deepinversion", "--batch", "2", "--steps", "2",
                 "--out", str(out), "--quiet"]) == 0
    assert (out / "efficientnet_lite0-967-espresso-deepinversion-s1.png").exists()
    assert main(["visualize", "--class", "espresso", "--method", "fourier", "--size", "300", "--steps", "2",
                 "--out", str(out), "--quiet"]) == 2
    assert "--size applies to maco only" in capsys.readouterr().err


def test_spectrum_command(capsys, tmp_path):
    target = tmp_path / "s.npy"
    assert main(["spectrum", "--offline-photos", "--out", str(target)]) == 0
    assert target.exists() and "from 14 images" in capsys.readouterr().out
    assert main(["spectrum", "--offline-photos", "--out", str(target)]) == 2
    assert main(["spectrum", "--out", str(tmp_path / "x.npy")]) == 2


def test_unit_targets_on_the_cli(capsys, tmp_path):
    out = tmp_path / "o"
    assert main(["visualize", "--unit", "blocks.5.2:17", "--method", "fourier", "--steps", "2", "--out", str(out),
                 "--quiet"]) == 0
    assert (out / "efficientnet_lite0-blocks-5-2-17-fourier-s0.png").exists()
    assert main(["visualize", "--unit", "blocks.5.2:17", "--out", str(out)]) == 2
    assert "needs the unit's references: --images DIR" in capsys.readouterr().err
    assert main(["visualize", "--unit", "blocks.5.2:17", "--method", "maco", "--relevance", "lrp",
                 "--out", str(out)]) == 2
    assert "option 'relevance' does not apply to maco (only to vital)" in capsys.readouterr().err


def test_mine_rejects_a_channel_out_of_range_before_scanning(capsys, tmp_path):
    assert main(["photos", "--out", str(tmp_path / "p")]) == 0
    assert main(["mine", "--unit", "blocks.5.2:999", "--images", str(tmp_path / "p"), "--out",
                 str(tmp_path / "m")]) == 2
    assert "channel 999 is out of range" in capsys.readouterr().err
    assert main(["mine", "--unit", "blocks.5.2:1@99,0", "--images", str(tmp_path / "p"), "--out",
                 str(tmp_path / "m")]) == 2
    assert "outside layer blocks.5.2's 7x7 grid" in capsys.readouterr().err


@pytest.mark.slow
def test_mine_then_visualize_a_unit_end_to_end(capsys, tmp_path):
    """The README's unit commands on real Lite0 and a few bundled photos: mine, then VITAL with LRP."""
    photos = tmp_path / "photos"
    assert main(["photos", "--out", str(photos)]) == 0
    for p in sorted(photos.iterdir())[4:]:
        p.unlink()  # four photos keep the scan short
    refs = tmp_path / "refs"
    assert main(["mine", "--unit", "blocks.5.2:17", "--images", str(photos), "--k", "3", "--stride", "48",
                 "--out", str(refs), "--quiet"]) == 0
    record = json.loads((refs / "mining.json").read_text())
    assert len(record["references"]) == 3 and len({r["source"] for r in record["references"]}) == 3
    assert (refs / "contact_sheet.png").is_file()
    scores = [r["score"] for r in record["references"]]
    assert scores == sorted(scores, reverse=True)
    out = tmp_path / "out"
    assert main(["visualize", "--unit", "blocks.5.2:17", "--refs", str(refs), "--steps", "5", "--out", str(out),
                 "--quiet"]) == 0
    rec = json.loads((out / "efficientnet_lite0-blocks-5-2-17-s0.json").read_text())
    assert rec["relevance"]["method"] == "lrp" and rec["references"]["fit"] == "stretch"
    assert (out / "efficientnet_lite0-blocks-5-2-17-s0.rgba.png").is_file()
    # --images mines through the cache (the scan above is reused) and visualizes in one command
    assert main(["visualize", "--unit", "blocks.5.2:17", "--images", str(photos), "--n-refs", "3",
                 "--relevance", "guided-backprop", "--steps", "3", "--out", str(out), "--name", "gb",
                 "--quiet"]) == 0
    assert json.loads((out / "gb.json").read_text())["relevance"]["method"] == "guided_backprop"


def test_unit_input_errors_are_specific(capsys, tmp_path):
    assert main(["visualize", "--class", "espresso", "--images", str(tmp_path), "--out", str(tmp_path / "o")]) == 2
    assert "--images mines references for a unit" in capsys.readouterr().err
    assert main(["mine", "--unit", "blocks.5.2:1", "--images", str(tmp_path), "--patch", "4", "--out",
                 str(tmp_path / "m")]) == 2
    assert "--patch must be at least 8 px" in capsys.readouterr().err
    assert main(["mine", "--unit", "blocks.5.2", "--images", str(tmp_path), "--out", str(tmp_path / "m")]) == 2
    assert "write LAYER:CHANNEL" in capsys.readouterr().err


@pytest.mark.slow
def test_concepts_disentangle_and_circuit_end_to_end(capsys, tmp_path):
    """The README's mechanistic-interpretability commands on real Lite0 with bundled photos (few steps)."""
    photos = tmp_path / "photos"
    assert main(["photos", "--out", str(photos)]) == 0
    espresso = tmp_path / "espresso"
    espresso.mkdir()
    (photos / "coffee.png").rename(espresso / "coffee.png")
    for p in sorted(photos.iterdir())[4:]:
        p.unlink()  # four other photos keep the scans short
    conc = tmp_path / "concepts"
    assert main(["concepts", "--class", "espresso", "--images", str(espresso), "--n-concepts", "3", "--stride", "32",
                 "--out", str(conc), "--quiet"]) == 0
    rec = json.loads((conc / "concepts.json").read_text())
    assert rec["layer"] == "bn2" and len(rec["concepts"]) == 3 and rec["class_index"] == 967
    imps = [c["importance"] for c in rec["concepts"]]
    assert imps == sorted(imps, reverse=True)
    out = tmp_path / "out"
    assert main(["visualize", "--concept", f"{conc / 'concepts.safetensors'}:0", "--steps", "3", "--out", str(out),
                 "--name", "c0", "--quiet"]) == 0
    r = json.loads((out / "c0.json").read_text())
    assert r["target"]["kind"] == "direction" and r["relevance"]["method"] == "lrp"
    assert r["references"]["count"] == 10
    assert main(["visualize", "--concept", f"{conc}:1", "--images", str(espresso), "--n-refs", "5", "--steps", "3",
                 "--out", str(out), "--name", "c1", "--quiet"]) == 0
    assert json.loads((out / "c1.json").read_text())["references"]["count"] == 5
    assert main(["visualize", "--concept", f"{conc}:0,2", "--steps", "2", "--out", str(out), "--name", "m",
                 "--quiet"]) == 0  # several concepts in one batch, each with its own crops
    recs = [json.loads((out / f"m-bn2-espresso-concept{i}.json").read_text()) for i in (0, 2)]
    assert [r["target"]["name"] for r in recs] == ["espresso-concept0", "espresso-concept2"]
    assert recs[0]["references"]["content_hash"] != recs[1]["references"]["content_hash"]

    poly = tmp_path / "poly"
    assert main(["disentangle", "--unit", "blocks.5.2:17", "--images", str(photos), "--clusters", "2", "--stride",
                 "48", "--steps", "3", "--n-refs", "5", "--out", str(poly), "--quiet"]) == 0
    d = json.loads((poly / "disentangle.json").read_text())
    assert [c["cluster"] for c in d["results"]] == [0, 1] and (poly / "overview.png").is_file()

    circ = tmp_path / "circuit"
    assert main(["circuit", "--class", "espresso", "--images", str(espresso), "--mine", str(photos), "--top", "2",
                 "--steps", "3", "--n-refs", "3", "--out", str(circ), "--quiet"]) == 0
    c = json.loads((circ / "circuit.json").read_text())
    assert c["layer"] == "bn2" and len(c["units"]) == 2 and (circ / "circuit.png").is_file()
    assert c["units"][0]["relevance"] >= c["units"][1]["relevance"]
    # existing results are kept without --overwrite
    assert main(["circuit", "--class", "espresso", "--images", str(espresso), "--out", str(circ), "--quiet"]) == 2
    assert "--overwrite" in capsys.readouterr().err


def test_concept_input_errors_are_specific(capsys, tmp_path):
    assert main(["visualize", "--concept", str(tmp_path / "none.safetensors") + ":0", "--out", str(tmp_path)]) == 2
    assert "cannot read concepts file" in capsys.readouterr().err
    assert main(["visualize", "--concept", "x.safetensors", "--out", str(tmp_path)]) == 2
    assert "write FILE:INDEX" in capsys.readouterr().err
    assert main(["concepts", "--class", "espresso", "--images", str(tmp_path), "--out", str(tmp_path / "c")]) == 2
    assert "no image files" in capsys.readouterr().err
    assert main(["disentangle", "--unit", "blocks.5.2:1", "--images", str(tmp_path), "--clusters", "1", "--out",
                 str(tmp_path / "d")]) == 2
    assert "--clusters must be at least 2" in capsys.readouterr().err


def test_photos_only_writes_the_named_photos_and_suggests_for_typos(capsys, tmp_path):
    assert main(["photos", "--only", "coffee", "--out", str(tmp_path / "e")]) == 0
    assert [p.name for p in (tmp_path / "e").iterdir()] == ["coffee.png"]
    assert main(["photos", "--only", "coffe", "--out", str(tmp_path / "f")]) == 2
    assert "did you mean coffee" in capsys.readouterr().err


def test_a_concept_from_another_model_or_with_a_pool_is_refused(capsys, tmp_path):
    from test_concepts import colour_images, colour_spec

    from vital_fv.concepts import extract_concepts, save_concepts

    found = extract_concepts(colour_spec(), 0, colour_images(tmp_path / "imgs"), n_concepts=2, patch=16,
                             progress=False)
    path = save_concepts(found, tmp_path / "c")
    assert main(["visualize", "--concept", f"{path}:0", "--out", str(tmp_path / "o")]) == 2
    assert "extracted on colours, not efficientnet_lite0" in capsys.readouterr().err
    assert main(["visualize", "--concept", f"{path}:0", "--pool", str(tmp_path / "imgs"), "--out",
                 str(tmp_path / "o")]) == 2
    assert "--pool ranks images by a class" in capsys.readouterr().err


# ------------------------------------------------------------------------------------- issue 15's table, row by row
# Rows that need real work are tested where they live: 2, 3 (SIGTERM, repeated Ctrl-C) test_signals; 4, 5 (damaged
# or unwritable caches) test_cache, test_references_scan; 6 (16-bit, RGBA, tensors) test_references_decoding; 7 (the
# caller's module) test_device, test_zoo; 10 (fewer references, another unit's) and 13 (API types) test_api,
# test_zoo; 11 (evaluate n/a) test_evaluate; 14 (a 20000x10 reference) test_references_decoding; a failure while
# saving the transparency map test_result.
# (issue row, arguments after `vital visualize --class espresso --preset quick --steps 5`, the error's words).
# Every one of these is answered by the light parse: before torch is imported, so before any model or work.
LIGHT_ROWS = [
    (1, ["--alpha-percentile", "150"], "--alpha-percentile must be in (0, 100], got 150.0"),
    (8, ["--lr", "0"], "--lr must be a positive number (got 0.0)"),
    (8, ["--lr", "inf"], "--lr must be a positive number (got inf)"),
    (8, ["--lr", "nan"], "--lr must be a positive number (got nan)"),
    (8, ["--lr", "-1"], "--lr must be a positive number (got -1.0)"),
    (8, ["--size", "100000"], "--size must be between 16 and 4096 px (got 100000)"),
    (8, ["--size", "7"], "--size must be between 16 and 4096 px (got 7)"),
    (8, ["--size", "0"], "--size must be between 16 and 4096 px (got 0)"),
    (8, ["--device", "tpu"], "--device 'tpu' is not a device: use auto, cpu, cuda or cuda:N"),
    (8, ["--n-refs", "0"], "--n-refs must be at least 1 (got 0)"),
    (8, ["--n-refs", "-5"], "--n-refs must be at least 1 (got -5)"),
    (8, ["--batch", "0"], "argument --batch: must be at least 1, got 0"),
    (8, ["--seeds", "1,1"], "--seeds repeats a seed (1,1)"),
    (8, ["--steps", "0"], "--steps must be at least 1 (got 0)"),
    (9, ["--name", "../x"], "--name '../x' must be a plain file name stem"),
    (9, ["--name", "sub/dir/x"], "--name 'sub/dir/x' must be a plain file name stem"),
    (9, ["--name", ".."], "--name '..' must be a plain file name stem"),
    (12, ["--layer-weights", "1,x"], "argument --layer-weights: expected comma-separated numbers, got '1,x'"),
    (12, ["--seeds="], "--seeds is empty: give at least one seed"),
    (12, ["--layers", "bn1", "--layer-weights", "1,2"], "--layer-weights gives 2 weights for 1 layers"),
]
BASE = ["visualize", "--class", "espresso", "--preset", "quick", "--steps", "5"]


def _run_and_capture(argv, capsys):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse's own errors (a value that is not a number)
        code = exc.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("row", "extra", "message"), LIGHT_ROWS, ids=[f"row{r}:{' '.join(e)}" for r, e, _ in
                                                                       LIGHT_ROWS])
def test_issue15_bad_options_are_answered_before_any_work(row, extra, message, capsys, tmp_path, monkeypatch):
    def no_model(*_a, **_k):
        raise AssertionError("the model was loaded before the options were checked")

    monkeypatch.setattr("vital_fv.zoo.loaders.load_model", no_model)
    code, err = _run_and_capture([*BASE, "--out", str(tmp_path / "o"), *extra], capsys)
    assert code == 2 and message in err
    assert not (tmp_path / "o").exists()


def test_bad_options_are_answered_without_importing_torch(tmp_path):
    """The light parse imports nothing heavy: errors come in a fraction of a second, not after torch's import."""
    import subprocess
    import sys

    code = ("import json, sys\nfrom vital_fv.cli import main\ncodes = []\n"
            f"for extra in {[e for _, e, _ in LIGHT_ROWS]!r}:\n"
            "    try:\n"
            f"        codes.append(main({BASE!r} + ['--out', {str(tmp_path / 'o')!r}] + extra))\n"
            "    except SystemExit as exc:\n"
            "        codes.append(exc.code)\n"
            "print(json.dumps({'codes': codes, 'torch': 'torch' in sys.modules}))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    report = json.loads(out.splitlines()[-1])
    assert report == {"codes": [2] * len(LIGHT_ROWS), "torch": False}


@pytest.mark.parametrize(("row", "extra", "message"), [
    (12, ["--unit", "nope:1", "--refs", "/nonexistent"], "unknown layer 'nope'"),  # the layer before the references
    (12, ["--unit", "blocks.5.2:17@7", "--images", "/nonexistent"], "position @7 is outside layer blocks.5.2's"),
    (12, ["--unit", "blocks.5.2:999", "--images", "/nonexistent"], "channel 999 is out of range"),
    (12, ["--class", "espresso", "--refs", "/nonexistent"], "reference files not found: /nonexistent"),
    (8, ["--class", "espresso", "--layers", "bn1", "--method", "maco"], "option 'layers' does not apply to maco"),
])
def test_issue15_model_checks_come_before_references_and_work(row, extra, message, capsys, tmp_path):
    code, err = _run_and_capture(["visualize", *extra, "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and message in err
    assert not any((tmp_path / "o").glob("*.png")) if (tmp_path / "o").exists() else True


# Values the property test draws from for each option: valid ones, boundary ones, and junk.
_JUNK = st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=6)
_OPTION_VALUES = {
    "--lr": st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(str), _JUNK),
    "--steps": st.one_of(st.integers(-3, 4).map(str), _JUNK),
    "--size": st.one_of(st.sampled_from(["0", "7", "16", "32", "4097", "1e3"]), _JUNK),
    "--seeds": st.one_of(st.lists(st.integers(-2, 2), max_size=3).map(lambda v: ",".join(map(str, v))), _JUNK),
    "--n-refs": st.one_of(st.integers(-2, 4).map(str), _JUNK),
    "--batch": st.one_of(st.integers(-1, 2).map(str), _JUNK),
    "--alpha-percentile": st.one_of(st.floats(-10, 200).map(str), st.just("nan"), _JUNK),
    "--name": st.one_of(st.sampled_from(["ok", "..", "a/b", ".hidden", ""]), _JUNK),
    "--device": st.one_of(st.sampled_from(["cpu", "auto", "cuda:7", "tpu", "cpu:0"]), _JUNK),
    "--layers": st.one_of(st.sampled_from(["act1", "act1,act2", "nope", ""]), _JUNK),
    "--layer-weights": st.one_of(st.sampled_from(["1", "1,2", "-1", "nan", "x"]), _JUNK),
    "--preset": st.sampled_from(["paper", "quick", "slow"]),
    "--method": st.sampled_from(["vital", "maco", "fourier", "deepinversion", "nope"]),
}


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chosen=st.dictionaries(st.sampled_from(sorted(_OPTION_VALUES)), st.just(None), max_size=6).flatmap(
    lambda keys: st.fixed_dictionaries({k: _OPTION_VALUES[k] for k in keys})))
def test_any_command_line_either_runs_or_gets_our_error_before_any_work(chosen, tiny_spec, refs_dir, tmp_path,
                                                                        monkeypatch, capsys):
    """Property test of the option parser: whatever the values, `vital visualize` runs or answers with exit code 2
    and a message naming the option, never a traceback, and nothing runs after a refusal."""
    ran = []

    def no_work(run):
        @functools.wraps(run)  # the method's own signature, so its own options are checked
        def fake(model, jobs, **_k):
            ran.append(1)
            return [Result(torch.zeros(3, 8, 8), {"seed": j.seed, "status": "complete", "seconds_per_step": 0.0})
                    for j in jobs]

        return fake

    for m in vital_fv.method_names():
        meth = vital_fv.get_method(m)
        monkeypatch.setattr(meth, "run", no_work(meth.run))
    monkeypatch.setattr("vital_fv.zoo.loaders.load_model", lambda *a, **k: tiny_spec)
    argv = ["visualize", "--class", "one", "--out", str(tmp_path / "o"), "--overwrite", "--quiet"]
    if chosen.get("--method", "vital") == "vital":
        argv += ["--refs", str(refs_dir)]
    for option, value in chosen.items():
        argv.append(f"{option}={value}")  # '=' so a value starting with '-' stays a value
    code, err = _run_and_capture(argv, capsys)
    event(f"exit code {code}")
    if code == 0:
        assert ran
    else:
        assert code == 2 and not ran
        assert "error:" in err and "Traceback" not in err


@pytest.mark.parametrize("sig, after, code", [(signal.SIGINT, 0.1, 130), (signal.SIGINT, 0.4, 130),
                                              (signal.SIGINT, 0.7, 130), (signal.SIGINT, 1.0, 130),
                                              (signal.SIGINT, 2.0, 130), (signal.SIGTERM, 0.5, 143),
                                              (signal.SIGTERM, 0.8, 143)])
def test_a_stop_at_any_moment_of_the_start_is_a_clean_exit(sig, after, code, tmp_path):
    """Ctrl-C or SIGTERM while the command imports torch, parses or loads the model: one line and 130 / 143, no
    traceback, no abort (a signal raised inside torch's C++ initialisation once ended it with -6), nothing written
    (the child gets SIGINT's default, which a background shell would have ignored)."""
    import subprocess
    import sys
    import time

    proc = subprocess.Popen([sys.executable, "-m", "vital_fv", "visualize", "--class", "espresso", "--steps", "500",
                             "--out", str(tmp_path / "o"), "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    time.sleep(after)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err, err
    if err.strip().splitlines()[-1].startswith("interrupted before any result"):  # stopped before the first step
        assert not list((tmp_path / "o").glob("*.png"))
    else:  # (a fast machine) stopped in the loop: the image so far is saved, marked interrupted
        assert json.loads(next((tmp_path / "o").glob("*.json")).read_text())["status"] == "interrupted"
