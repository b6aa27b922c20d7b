import pytest
import torch
from reference_helpers import ctrl_c_on_decode, pattern_folder, red_detector

from vital_fv import references


def test_patch_scan_keeps_each_patch_and_resumes_after_an_interruption(tmp_path, monkeypatch):
    (tmp_path / "imgs").mkdir()
    pattern_folder(tmp_path / "imgs", n=4)
    spec = red_detector()
    restore = ctrl_c_on_decode(monkeypatch, 3)
    with pytest.raises(references.ScanInterrupted, match="run the same command again"):
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
