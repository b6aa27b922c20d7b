import json

import pytest
import torch
from PIL import Image

from vital_fv.errors import VitalError
from vital_fv.result import Result, ensure_writable_dir


def test_save_writes_png_and_record_and_refuses_to_overwrite(tmp_path):
    r = Result(torch.rand(3, 8, 8), {"seed": 1, "status": "complete"})
    png, js = r.save(tmp_path / "a.png")
    with Image.open(png) as im:
        assert im.size == (8, 8)
    assert json.loads(js.read_text())["seed"] == 1
    before = png.read_bytes()
    with pytest.raises(VitalError, match="already exists.*--overwrite"):
        Result(torch.zeros(3, 8, 8), {}).save(tmp_path / "a.png")
    assert png.read_bytes() == before
    Result(torch.zeros(3, 8, 8), {}).save(tmp_path / "a.png", overwrite=True)
    assert png.read_bytes() != before
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_unwritable_output_folder_is_reported(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(VitalError, match="not writable"):
        ensure_writable_dir(blocker / "sub")


def test_on_white_blends_the_image_over_white_through_its_transparency():
    import torch

    from vital_fv.result import Result

    img = torch.zeros(3, 4, 4)
    alpha = torch.zeros(3, 4, 4)
    alpha[:, 0, 0] = 1.0  # one pixel carries all the gradient
    out = Result(img, {}, alpha=alpha, alpha_percentile=100).on_white()
    assert out[:, 0, 0].tolist() == [0.0, 0.0, 0.0] and bool((out[:, 1:, :] == 1).all())
    assert torch.equal(Result(img, {}).on_white(), img)


def test_a_failure_while_writing_the_transparency_map_keeps_the_image_and_record(tmp_path, monkeypatch):
    import vital_fv.result as result_mod

    real = result_mod.png_bytes

    def no_rgba(image):
        if image.shape[0] == 4:
            raise OSError("disk full")
        return real(image)

    monkeypatch.setattr(result_mod, "png_bytes", no_rgba)
    r = Result(torch.rand(3, 8, 8), {"status": "interrupted", "seed": 0}, alpha=torch.rand(3, 8, 8))
    with pytest.raises(OSError, match="disk full"):
        r.save(tmp_path / "x.png")
    assert (tmp_path / "x.png").stat().st_size > 0 and (tmp_path / "x.json").is_file()
    assert not list(tmp_path.glob(".*.tmp"))


def test_stale_partial_writes_are_removed_and_nothing_else(tmp_path):
    from vital_fv.result import atomic_write_bytes, remove_stale_partial_writes

    atomic_write_bytes(tmp_path / "a.png", b"done")
    (tmp_path / ".a.png.x7f2q.tmp").write_bytes(b"half")  # what a killed writer leaves
    (tmp_path / ".hidden").write_text("user's")
    (tmp_path / "b.tmp").write_text("user's")
    assert remove_stale_partial_writes(tmp_path) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden", "a.png", "b.tmp"]
    assert (tmp_path / "a.png").read_bytes() == b"done"
    assert remove_stale_partial_writes(tmp_path / "absent") == 0
