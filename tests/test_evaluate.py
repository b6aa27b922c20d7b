import csv
import json

import pytest
from gallery_helpers import BAD_FIELDS, write_bad_records

from vital_fv.cli import main


@pytest.fixture(scope="module")
def results_folder(tmp_path_factory):
    """A few quick Lite0 results of two methods and two classes, plus a corrupt record, an orphan record and
    records with one field broken (BAD_FIELDS)."""
    out = tmp_path_factory.mktemp("results")
    for cls in ("espresso", "tripod"):
        assert main(["visualize", "--class", cls, "--steps", "2", "--n-refs", "3", "--out", str(out), "--quiet"]) == 0
        assert main(["visualize", "--class", cls, "--method", "fourier", "--steps", "2", "--out", str(out),
                     "--quiet"]) == 0
    (out / "broken.json").write_text('{"vital_fv": "0.1", "method": ')
    orphan = json.loads(next(out.glob("*espresso-s0.json")).read_text())
    (out / "orphan.json").write_text(json.dumps(orphan))  # no orphan.png
    write_bad_records(out / "bad", next(out.glob("*espresso-s0.json")))
    return out


def test_evaluate_names_bad_files_and_scores_the_rest(results_folder, tmp_path, capsys):
    report = tmp_path / "report"
    with pytest.warns(UserWarning) as caught:
        assert main(["evaluate", str(results_folder), "--out", str(report), "--per-class", "6", "--n-boot", "10"]) == 0
    messages = " ".join(str(w.message) for w in caught)
    assert "broken.json" in messages and "orphan.json" in messages
    for k, (field, _) in enumerate(BAD_FIELDS):  # each record with a broken field named, with the field
        assert any(f"bad-{k}-{field}.json" in str(w.message) and f"field {field}: expected" in str(w.message)
                   for w in caught), field
    table = (report / "table.md").read_text()
    assert "| efficientnet_lite0 | fourier | classes | 2 |" in table
    assert "| efficientnet_lite0 | vital | classes | 2 |" in table
    rows = list(csv.DictReader((report / "table.csv").read_text().splitlines()))
    assert [r["method"] for r in rows] == ["vital", "fourier"]  # the registry's order, not alphabetical
    for r in rows:
        assert 0 <= float(r["model_top1"]) <= 100 and 0 <= float(r["judge_top5"]) <= 100
        assert float(r["fd"]) > 0 and float(r["fd_real"]) >= 0 and r["kid"] != ""
        assert float(r["slope"]) < 0 and 0 <= float(r["hf_share"]) <= 1 and float(r["hf_share_real"]) < 0.2
    items = list(csv.DictReader((report / "items.csv").read_text().splitlines()))
    assert len(items) == 4 and all(i["judge_top1"] in ("True", "False") for i in items)
    assert (report / "per_class.png").stat().st_size > 0 and (report / "tsne.png").stat().st_size > 0
    assert "efficientnet_lite0" in capsys.readouterr().out
    assert main(["evaluate", str(results_folder), "--out", str(report)]) == 2  # refuses to overwrite
    assert "overwrite" in capsys.readouterr().err


def test_evaluate_an_empty_folder_is_an_error(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path), "--out", str(tmp_path / "r")]) == 2
    assert "no result records" in capsys.readouterr().err


def test_evaluate_with_too_few_or_unsorted_real_images_computes_the_rest(results_folder, tmp_path, capsys):
    from PIL import Image

    one = tmp_path / "one" / "espresso"
    one.mkdir(parents=True)
    Image.new("RGB", (40, 40), (90, 60, 30)).save(one / "a.png")
    with pytest.warns(UserWarning, match="1 real images of the same classes, so FD and KID are n/a"):
        assert main(["evaluate", str(results_folder), "--real", str(tmp_path / "one"), "--out", str(tmp_path / "r1"),
                     "--no-plots", "--n-boot", "5"]) == 0
    rows = list(csv.DictReader((tmp_path / "r1" / "table.csv").read_text().splitlines()))
    assert rows and all(r["judge_top5"] != "" for r in rows)  # what can be computed, is
    flat = tmp_path / "flat"
    flat.mkdir()
    Image.new("RGB", (40, 40)).save(flat / "b.png")
    with pytest.warns(UserWarning, match="no class sub-folders, so FD and KID cannot be computed"):
        assert main(["evaluate", str(results_folder), "--real", str(flat), "--out", str(tmp_path / "r2"),
                     "--no-plots"]) == 0
    capsys.readouterr()


def test_the_report_lists_only_the_files_it_wrote_and_why_one_was_left_out(results_folder, tmp_path, capsys):
    import shutil

    few = tmp_path / "few"
    few.mkdir()
    for f in results_folder.glob("*espresso-s0.*"):  # one result: too few points for a t-SNE
        shutil.copy(f, few)
    from PIL import Image

    (tmp_path / "real1" / "espresso").mkdir(parents=True)
    Image.new("RGB", (40, 40), (90, 60, 30)).save(tmp_path / "real1" / "espresso" / "a.png")
    report = tmp_path / "report"
    report.mkdir()
    (report / "tsne.png").write_bytes(b"an earlier report's figure")
    with pytest.warns(UserWarning, match="FD and KID are n/a"):
        assert main(["evaluate", str(few), "--real", str(tmp_path / "real1"), "--out", str(report), "--n-boot", "2",
                     "--overwrite"]) == 0
    out = capsys.readouterr().out
    listed = out.split(f"report in {report}/ (")[1].split(")")[0].split(", ")
    assert "tsne.png" not in listed and "table.md" in listed and "per_class.png" in listed
    assert all((report / name).is_file() for name in listed)
    assert "tsne.png not written: t-SNE needs at least 5 points" in out
    assert not (report / "tsne.png").exists()  # the earlier figure would not match this report's tables
