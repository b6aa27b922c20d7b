import json

import pytest

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
    pngs = sorted(tmp_path.glob("*.png"))
    assert [p.name for p in pngs] == [f"efficientnet_lite0-967-espresso-s{s}.png" for s in (0, 1)]
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
