"""Mining in shards: merged, it equals one scan of the whole folder; a shard's results are its own file."""

from __future__ import annotations

import torch

from vital_fv.atlas.mining import merged, mine_shard, write_shards
from vital_fv.references import image_paths, mine_many
from vital_fv.result import png_bytes
from vital_fv.targets import UnitTarget


def test_shards_merged_equal_one_scan_of_the_folder(tiny_spec, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    g = torch.Generator().manual_seed(0)
    for i in range(7):
        (folder / f"{i}.png").write_bytes(png_bytes(torch.rand(3, 40 + 4 * i, 48, generator=g)))
    (folder / "copy.png").write_bytes((folder / "3.png").read_bytes())  # the same content twice, in two shards
    units = [UnitTarget("act2", c) for c in range(4)]
    whole = mine_many(tiny_spec, units, folder, patch=16, progress=False, cache_dir=tmp_path / "c1")
    files, _ = image_paths(folder)
    lists = write_shards(tmp_path / "job", "act2", files, shard_size=3)
    assert len(lists) == 3
    for lst in lists:
        assert mine_shard(tiny_spec, units, lst, patch=16, stride=None, device="cpu").is_file()
    for unit, one in zip(units, whole, strict=True):
        parts = merged(lists[0].parent, unit)
        assert parts.params["shards"] == 3 and parts.params["images"] == 8
        assert [(e["sha256"], e["score"], e["box"]) for e in parts.top(5)] == \
            [(e["sha256"], e["score"], e["box"]) for e in one.top(5)]
