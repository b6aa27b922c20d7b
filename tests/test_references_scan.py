"""The shared scan: content-keyed, resumable, one read per file, and a broken cache never stops the work."""

import json

import pytest
import torch
from PIL import Image

from vital_fv.references import JsonStore, ScanInterrupted, scan_images


def _folder(tmp_path, n=4):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(n):
        Image.new("RGB", (8, 6), (10 * i, 0, 0)).save(folder / f"img{i}.png")
    return folder


def _mean_red(batch):
    return [{"red": float(img[0].float().mean()), "file": p.name} for p, _, img in batch]


def test_each_picture_once_unreadable_files_named_and_a_rerun_reads_the_cache(tmp_path):
    folder = _folder(tmp_path)
    (folder / "copy.png").write_bytes((folder / "img2.png").read_bytes())  # the same picture under another name
    (folder / "broken.png").write_bytes(b"not a png")
    paths = sorted(folder.iterdir())
    store = JsonStore(tmp_path / "c" / "s.json")
    with pytest.warns(UserWarning, match="skipping .*broken.png"):
        first = scan_images(paths, store, _mean_red, batch_size=2, progress=False)
    assert len(first.entries) == 4 and first.computed == 4 and first.cache == "miss"
    # in the order of the files, the copy standing for img2 (whose bytes it has)
    assert [e["red"] for e in first.entries.values()] == [20.0, 0.0, 10.0, 30.0]
    assert [p.name for p in first.sources.values()] == ["copy.png", "img0.png", "img1.png", "img3.png"]
    calls = []
    with pytest.warns(UserWarning, match="broken.png"):
        again = scan_images(paths, JsonStore(tmp_path / "c" / "s.json"), lambda b: calls.append(b) or _mean_red(b),
                            progress=False)
    assert again.cache == "hit" and not calls and again.entries == first.entries


def test_ctrl_c_keeps_the_finished_batches_and_the_same_command_resumes(tmp_path):
    paths = sorted(_folder(tmp_path, n=5).iterdir())
    seen = []

    def interrupted_on_third_batch(batch):
        seen.append(len(batch))
        if len(seen) == 3:
            raise KeyboardInterrupt
        return _mean_red(batch)

    with pytest.raises(ScanInterrupted, match="mining interrupted after 4 of 5 images"):
        scan_images(paths, JsonStore(tmp_path / "s.json"), interrupted_on_third_batch, batch_size=2,
                    progress=False, what="mining")
    assert len(json.loads((tmp_path / "s.json").read_text())["entries"]) == 4
    done = scan_images(paths, JsonStore(tmp_path / "s.json"), _mean_red, batch_size=2, progress=False)
    assert done.cache == "resumed" and done.computed == 1 and len(done.entries) == 5


def test_an_unwritable_or_damaged_store_warns_once_and_the_scan_goes_on(tmp_path):
    paths = sorted(_folder(tmp_path).iterdir())
    blocker = tmp_path / "file"
    blocker.write_text("a file where the cache folder should be")
    with pytest.warns(UserWarning, match="cannot write the scan cache") as caught:
        out = scan_images(paths, JsonStore(blocker / "s.json"), _mean_red, progress=False)
    assert len(out.entries) == 4 and len([w for w in caught if "scan cache" in str(w.message)]) == 1
    (tmp_path / "bad.json").write_text('{"entries": ')
    redone = scan_images(paths, JsonStore(tmp_path / "bad.json"), _mean_red, progress=False)
    assert redone.cache == "miss" and len(redone.entries) == 4
    assert torch.tensor([e["red"] for e in redone.entries.values()]).max() == 30.0
