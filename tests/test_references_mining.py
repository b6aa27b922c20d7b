import pytest
import torch
from reference_helpers import ctrl_c_on_decode, pattern_folder, red_detector

from vital_fv import references
from vital_fv.errors import VitalError


def test_mining_ranks_the_image_with_the_pattern_first_with_its_box(tmp_path):
    from vital_fv.targets import UnitTarget

    (tmp_path / "imgs").mkdir()
    pattern_folder(tmp_path / "imgs")
    spec = red_detector()
    result = references.mine(spec, UnitTarget("1", 0), tmp_path / "imgs", patch=16, stride=8, progress=False,
                             cache_dir=tmp_path / "cache")
    best = result.top(1)[0]
    assert best["source"].endswith("img3.png")
    x0, y0, x1, y1 = best["box"]
    assert x0 <= 48 <= x1 and y0 <= 16 <= y1  # the box holds the red square's centre
    refs = references.mined_references(result, k=4)
    assert len(set(refs.sources)) == 4 and refs.fit == "stretch"
    patch = refs.images[0].float()
    assert patch[0].mean() > patch[1].mean() + 50  # the top patch is mostly red


def test_mining_resumes_after_an_interruption_with_the_same_result(tmp_path, monkeypatch):
    from vital_fv.targets import UnitTarget

    (tmp_path / "imgs").mkdir()
    pattern_folder(tmp_path / "imgs")
    spec = red_detector()
    unit = UnitTarget("1", 0)
    clean = references.mine(spec, unit, tmp_path / "imgs", patch=16, progress=False, cache_dir=tmp_path / "c1")

    restore = ctrl_c_on_decode(monkeypatch, 3)
    with pytest.raises(references.ScanInterrupted, match="2 of 6"):
        references.mine(spec, unit, tmp_path / "imgs", patch=16, progress=False, cache_dir=tmp_path / "c2")
    restore()
    resumed = references.mine(spec, unit, tmp_path / "imgs", patch=16, progress=False, cache_dir=tmp_path / "c2")
    assert resumed.cache == "resumed"
    assert resumed.top(6) == clean.top(6)
    again = references.mine(spec, unit, tmp_path / "imgs", patch=16, progress=False, cache_dir=tmp_path / "c2")
    assert again.cache == "hit" and again.top(6) == clean.top(6)


def test_mining_output_folder_round_trips_as_references(tmp_path):
    from vital_fv.targets import UnitTarget

    (tmp_path / "imgs").mkdir()
    pattern_folder(tmp_path / "imgs")
    spec = red_detector()
    result = references.mine(spec, UnitTarget("1", 0), tmp_path / "imgs", patch=16, progress=False,
                             cache_dir=tmp_path / "c")
    refs = references.mined_references(result, k=3)
    record = references.save_mining(result, refs, tmp_path / "out", use="patches")
    assert (tmp_path / "out" / "contact_sheet.png").is_file() and record.is_file()
    back = references.from_folder(tmp_path / "out")  # a mining folder is read through its record
    assert back.count == 3 and back.fit == "stretch" and back.sources[0].endswith("001-img3.png")
    with pytest.raises(VitalError, match="overwrite"):
        references.save_mining(result, refs, tmp_path / "out", use="patches")


def test_mining_several_units_in_one_scan_equals_one_at_a_time(tmp_path):
    from vital_fv.targets import UnitTarget

    (tmp_path / "imgs").mkdir()
    pattern_folder(tmp_path / "imgs")
    spec = red_detector()
    with torch.no_grad():
        spec.module[0].bias[1] = 0.0
        spec.module[0].weight[1, :, 0, 0] = torch.tensor([-0.5, 1.0, -0.5])  # a green detector
    units = [UnitTarget("1", 0), UnitTarget("1", 1), UnitTarget("1", 0, (3, 3))]
    many = references.mine_many(spec, units, tmp_path / "imgs", patch=16, progress=False, cache_dir=tmp_path / "a")
    for u, got in zip(units, many, strict=True):
        one = references.mine(spec, u, tmp_path / "imgs", patch=16, progress=False, cache_dir=tmp_path / "b")
        assert got.top(6) == one.top(6) and got.params["unit"] == u.label()
    assert many[0].top(1)[0]["source"].endswith("img3.png")


def test_a_cached_scan_points_at_the_current_folders_files(tmp_path):
    import shutil

    from vital_fv.targets import UnitTarget

    (tmp_path / "imgs").mkdir()
    pattern_folder(tmp_path / "imgs")
    spec = red_detector()
    references.mine(spec, UnitTarget("1", 0), tmp_path / "imgs", patch=16, progress=False, cache_dir=tmp_path / "c")
    shutil.move(tmp_path / "imgs", tmp_path / "moved")
    again = references.mine(spec, UnitTarget("1", 0), tmp_path / "moved", patch=16, progress=False,
                            cache_dir=tmp_path / "c")
    assert again.cache == "hit" and again.top(1)[0]["source"] == str(tmp_path / "moved" / "img3.png")
    assert references.mined_references(again, k=2).count == 2
