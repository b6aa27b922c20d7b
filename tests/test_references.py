import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vital_fv import references
from vital_fv.errors import VitalError
from vital_fv.zoo import Preprocess, load_model


def _write(folder, name, rgb, size=(40, 30)):
    arr = np.zeros((size[1], size[0], 3), np.uint8)
    arr[...] = rgb
    Image.fromarray(arr).save(folder / name)


def test_folder_skips_corrupt_files_with_a_warning_naming_them(tmp_path):
    _write(tmp_path, "a.png", (255, 0, 0))
    _write(tmp_path, "b.jpg", (0, 255, 0))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.warns(UserWarning, match="broken.jpg"):
        refs = references.from_folder(tmp_path, n=10)
    assert len(refs) == 2 and refs.count == 2
    assert all(len(h) == 64 for h in refs.hashes)


def test_empty_or_missing_folder_is_an_error(tmp_path):
    with pytest.raises(VitalError, match="holds no files"):
        references.from_folder(tmp_path)
    with pytest.raises(VitalError, match="does not exist"):
        references.from_folder(tmp_path / "nope")
    (tmp_path / "x.txt").write_text("hello")
    with pytest.raises(VitalError, match="no readable images"), pytest.warns(UserWarning):
        references.from_folder(tmp_path)


def test_folder_samples_n_images_repeatably(tmp_path):
    for i in range(6):
        _write(tmp_path, f"{i}.png", (i * 40, 0, 0))
    a = references.from_folder(tmp_path, n=3, seed=1)
    b = references.from_folder(tmp_path, n=3, seed=1)
    assert a.sources == b.sources and len(a) == 3


def test_prepare_resizes_and_center_crops_to_the_model_input():
    img = torch.zeros(1, 3, 60, 100, dtype=torch.uint8)
    img[..., 40:60] = 255  # a bright band in the horizontal middle
    refs = references.from_tensor(img)
    x = refs.prepare(Preprocess(32, 36, (0.5,) * 3, (0.5,) * 3))
    assert x.shape == (1, 3, 32, 32) and x.min() >= 0 and x.max() <= 1
    assert x[0, :, :, 16].mean() > 0.9 and x[0, :, :, 0].mean() < 0.1


def test_augmentation_makes_up_the_requested_count_and_is_recorded():
    refs = references.bundled("espresso", n=12)
    x = refs.prepare(Preprocess(64, 72, (0.5,) * 3, (0.5,) * 3))
    assert x.shape == (12, 3, 64, 64)
    assert not torch.equal(x[1], x[2])
    assert torch.equal(x, refs.prepare(Preprocess(64, 72, (0.5,) * 3, (0.5,) * 3)))
    info = refs.describe()
    assert info["augmented"] and info["originals"] == 1 and info["count"] == 12
    plain = references.bundled("espresso", n=12, augment=False)
    assert plain.count == 1 and not plain.describe()["augmented"]


def test_unknown_bundled_class_lists_the_bundled_ones():
    with pytest.raises(VitalError, match="no bundled photo for 'expresso'.*espresso"):
        references.bundled("expresso")


class RedNet(nn.Module):
    """Class 0's logit is the image's mean red value: the reddest images are the most 'class 0'."""

    def forward(self, x):
        red = x[:, 0].mean(dim=(1, 2)) * 10
        return torch.stack([red, torch.zeros_like(red)], dim=1)


def test_pool_picks_the_images_the_model_rates_most_probable(tmp_path):
    for i, r in enumerate([10, 250, 120, 200, 30]):
        _write(tmp_path, f"img{i}.png", (r, 0, 0))
    spec = load_model(RedNet(), class_names=["red", "other"],
                      preprocess=Preprocess(16, 16, (0.0,) * 3, (1.0,) * 3))
    refs = references.from_pool(tmp_path, spec, class_index=0, n=2, progress=False)
    assert [s.rsplit("/", 1)[-1] for s in refs.sources] == ["img1.png", "img3.png"]
    assert refs.info["pool_size"] == 5


def _red_detector():
    """Channel 0 fires on red (R - (G + B) / 2, rectified); channel 1 never fires."""
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
    with torch.no_grad():
        net[0].weight.zero_()
        net[0].weight[0, :, 0, 0] = torch.tensor([1.0, -0.5, -0.5])
        net[0].bias.copy_(torch.tensor([0.0, -1.0]))
    return load_model(net, layers=["1"], preprocess=Preprocess(32, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
                      class_names=[], name="red-detector")


def _pattern_folder(folder, n=6):
    rng = np.random.default_rng(0)
    for i in range(n):
        arr = rng.integers(90, 140, size=(48, 64, 3), dtype=np.uint8)  # grey noise
        if i == 3:
            arr[8:24, 40:56] = (230, 20, 20)  # the pattern, in one image only
        Image.fromarray(arr).save(folder / f"img{i}.png")


def test_mining_ranks_the_image_with_the_pattern_first_with_its_box(tmp_path):
    from vital_fv.targets import UnitTarget

    (tmp_path / "imgs").mkdir()
    _pattern_folder(tmp_path / "imgs")
    spec = _red_detector()
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


def _ctrl_c_on_call(monkeypatch, name: str, n: int):  # noqa: ANN202
    """``references.<name>`` raises KeyboardInterrupt on its n-th call (a Ctrl-C mid-scan); returns the undo."""
    real = getattr(references, name)
    calls = {"n": 0}

    def flaky(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls["n"] += 1
        if calls["n"] == n:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(references, name, flaky)
    return lambda: monkeypatch.setattr(references, name, real)


def test_mining_resumes_after_an_interruption_with_the_same_result(tmp_path, monkeypatch):
    from vital_fv.targets import UnitTarget

    (tmp_path / "imgs").mkdir()
    _pattern_folder(tmp_path / "imgs")
    spec = _red_detector()
    unit = UnitTarget("1", 0)
    clean = references.mine(spec, unit, tmp_path / "imgs", patch=16, progress=False, cache_dir=tmp_path / "c1")

    restore = _ctrl_c_on_call(monkeypatch, "read_image", 3)
    with pytest.raises(references.MiningInterrupted, match="2 of 6"):
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
    _pattern_folder(tmp_path / "imgs")
    spec = _red_detector()
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
    _pattern_folder(tmp_path / "imgs")
    spec = _red_detector()
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
    _pattern_folder(tmp_path / "imgs")
    spec = _red_detector()
    references.mine(spec, UnitTarget("1", 0), tmp_path / "imgs", patch=16, progress=False, cache_dir=tmp_path / "c")
    shutil.move(tmp_path / "imgs", tmp_path / "moved")
    again = references.mine(spec, UnitTarget("1", 0), tmp_path / "moved", patch=16, progress=False,
                            cache_dir=tmp_path / "c")
    assert again.cache == "hit" and again.top(1)[0]["source"] == str(tmp_path / "moved" / "img3.png")
    assert references.mined_references(again, k=2).count == 2


def test_patch_scan_keeps_each_patch_and_resumes_after_an_interruption(tmp_path, monkeypatch):
    (tmp_path / "imgs").mkdir()
    _pattern_folder(tmp_path / "imgs", n=4)
    spec = _red_detector()
    restore = _ctrl_c_on_call(monkeypatch, "decode_image", 3)
    with pytest.raises(references.MiningInterrupted, match="run the same command again"):
        references.scan_patches(spec, ["1"], tmp_path / "imgs", patch=16, stride=8, progress=False)
    restore()
    scan = references.scan_patches(spec, ["1"], tmp_path / "imgs", patch=16, stride=8, progress=False)
    assert scan.cache == "resumed" and scan.images == 4
    assert scan.acts["1"].shape == (len(scan), 2)
    # the red square's patches score highest on channel 0, and their boxes hold it
    best = int(scan.acts["1"][:, 0].argmax())
    assert scan.entries[best]["source"].endswith("img3.png")
    crop = scan.crops([best])[0].float()
    assert crop[0].mean() > crop[1].mean() + 50
    again = references.scan_patches(spec, ["1"], tmp_path / "imgs", patch=16, stride=8, progress=False)
    assert again.cache == "hit" and torch.equal(again.acts["1"], scan.acts["1"])
