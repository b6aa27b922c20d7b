"""The cache: entries read back as written, damaged ones recomputed with a warning, an unwritable cache survived."""

import os

import pytest
import torch

from vital_fv.cache import PrototypeCache, cache_key, default_cache_dir


def test_entries_read_back_as_written_and_keys_are_stable(tmp_path):
    cache = PrototypeCache(tmp_path)
    protos = {"a": torch.randn(3, 5), "used": torch.tensor(4)}
    path = cache.save("k", protos, {"why": "test"})
    back = cache.load("k")
    assert path == tmp_path / "prototypes" / "k.safetensors"
    assert back is not None and torch.equal(back["a"], protos["a"]) and int(back["used"]) == 4
    assert cache.load("missing") is None
    assert cache_key({"b": 1, "a": [1, 2]}) == cache_key({"a": [1, 2], "b": 1}) != cache_key({"a": [2, 1], "b": 1})


def test_a_damaged_entry_that_still_loads_is_recomputed_with_a_warning(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    cache = PrototypeCache(tmp_path)
    path = cache.save("k", {"a": torch.ones(2, 3)}, {})
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tampered = load_file(str(path))
    tampered["a"][0, 0] = float("nan")  # still a valid file, with the old digest
    save_file(tampered, str(path), metadata=meta)
    with pytest.warns(UserWarning, match="is damaged.*recomputing"):
        assert cache.load("k") is None
    path.write_bytes(b"junk")
    with pytest.warns(UserWarning, match="is damaged"):
        assert cache.load("k") is None


def test_an_unwritable_cache_warns_once_and_the_work_goes_on(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    cache = PrototypeCache(blocker)
    with pytest.warns(UserWarning, match="cannot write the prototype cache") as caught:
        assert cache.save("k", {"a": torch.ones(1)}, {}) is None
        assert cache.save("k2", {"a": torch.ones(1)}, {}) is None
    assert len(caught) == 1


def test_cache_root_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("VITAL_CACHE_DIR", str(tmp_path / "v"))
    assert default_cache_dir() == tmp_path / "v"
    monkeypatch.delenv("VITAL_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "x"))
    assert default_cache_dir() == tmp_path / "x" / "vital-fv"
    assert os.fspath(PrototypeCache(tmp_path / "c").root) == str(tmp_path / "c")
