"""Disentangling a polysemantic unit: a hand-built unit that fires on red and on green must come apart into a red
cluster and a green cluster, each visualized from its own patches."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vital_fv import polysemantic as P
from vital_fv.errors import VitalError
from vital_fv.targets import UnitTarget
from vital_fv.zoo import Preprocess, load_model


class RedOrGreen(nn.Module):
    """detect (red, green, blue) -> act0 -> unit layer: channel 0 = red + green (polysemantic), 1 = red, 2 = green."""

    def __init__(self) -> None:
        super().__init__()
        self.detect = nn.Conv2d(3, 3, 3, padding=1)
        with torch.no_grad():
            self.detect.weight.zero_()
            self.detect.weight[:, :, 1, 1] = torch.eye(3) * 2 - 1
            self.detect.bias.fill_(-0.5)
        self.act0 = nn.ReLU()
        self.unit = nn.Conv2d(3, 3, 1, bias=False)
        with torch.no_grad():
            self.unit.weight.copy_(torch.tensor([[1.0, 1, 0], [1, 0, 0], [0, 1, 0]]).view(3, 3, 1, 1))
        self.act1 = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(3, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.act1(self.unit(self.act0(self.detect(x))))).flatten(1))


def spec():
    torch.manual_seed(0)
    return load_model(RedOrGreen(), preprocess=Preprocess(32, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                      class_names=["a", "b"], name="redgreen", layers=["act0", "act1"])


def pictures(folder, n=8, seed=0):
    """Grey 64 px pictures, each with one 24 px square: red, green or blue (blue: the unit is silent)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    colours = {"red": (230, 20, 20), "green": (20, 230, 20), "blue": (20, 20, 230)}
    for i in range(n):
        name = ("red", "green", "blue")[i % 3]
        img = np.full((64, 64, 3), 128, dtype=np.uint8)
        y, x = rng.integers(0, 40, size=2)
        img[y : y + 24, x : x + 24] = colours[name]
        Image.fromarray(img).save(folder / f"{name}{i}.png")
    return folder


def colour_of(crop: torch.Tensor) -> int:
    return int(crop.float().mean((1, 2)).argmax())


def test_kmeans_separates_the_two_meanings_of_the_unit(tmp_path):
    s = spec()
    dis = P.disentangle(s, UnitTarget("act1", 0), pictures(tmp_path / "imgs", n=12), clusters=2, patch=16,
                        progress=False)
    assert dis.n_clusters == 2
    colours = [{colour_of(c) for c in dis.scan.crops(dis.members(k))} for k in range(2)]
    assert sorted(map(sorted, colours)) == [[0], [1]]  # one cluster is all red, the other all green
    assert all(dis.scores > 0)  # only patches on which the unit fires
    refs = dis.references(0, k=3)
    assert refs.count == 3 and refs.fit == "stretch"


def test_clustering_one_layer_below_also_separates_them(tmp_path):
    s = spec()
    dis = P.disentangle(s, UnitTarget("act1", 0), pictures(tmp_path / "imgs", n=12), clusters=2, patch=16,
                        cluster_layer="act0", progress=False)
    colours = [{colour_of(c) for c in dis.scan.crops(dis.members(k))} for k in range(2)]
    assert sorted(map(sorted, colours)) == [[0], [1]]


def test_top_patches_respect_the_per_image_limit_and_skip_silent_patches():
    scores = np.array([5.0, 4.0, 3.0, 0.0, 2.0, -1.0])
    entries = [{"sha256": h} for h in "aabbcc"]
    assert P.top_patches(scores, entries, 10) == [0, 1, 2, 4]
    assert P.top_patches(scores, entries, 10, per_image=1) == [0, 2, 4]
    assert P.top_patches(scores, entries, 2) == [0, 1]


def test_each_cluster_gets_its_own_visualization_and_files(tmp_path):
    s = spec()
    dis = P.disentangle(s, UnitTarget("act1", 0), pictures(tmp_path / "imgs", n=12), clusters=2, patch=16,
                        progress=False)
    results = P.visualize_clusters(s, dis, top=5, steps=20, progress=False, preset="quick")
    assert [r.record["cluster"]["index"] for r in results] == [0, 1]
    srcs = [set(r.record["references"]["sources"]) for r in results]
    assert srcs[0].isdisjoint(srcs[1])  # red pictures for one, green for the other
    rec_path = P.save_disentangled(dis, results, tmp_path / "out", top=5)
    rec = json.loads(rec_path.read_text())
    assert [r["cluster"] for r in rec["results"]] == [0, 1] and rec["unit"] == "act1:0"
    for name in ("cluster-0.png", "cluster-1.json", "cluster-1-patches.png", "overview.png"):
        assert (tmp_path / "out" / name).is_file()
    with pytest.raises(VitalError, match="--overwrite"):
        P.save_disentangled(dis, results, tmp_path / "out", top=5)


def test_bad_requests_get_specific_errors(tmp_path):
    s = spec()
    imgs = pictures(tmp_path / "imgs", n=3)
    with pytest.raises(VitalError, match="too few for 50 clusters"):
        P.disentangle(s, UnitTarget("act1", 0), imgs, clusters=50, patch=16, progress=False)
    with pytest.raises(VitalError, match="channel 7 is out of range"):
        P.disentangle(s, UnitTarget("act1", 7), imgs, clusters=2, patch=16, progress=False)
    with pytest.raises(VitalError, match="not one neuron"):
        P.disentangle(s, UnitTarget("act1", 0, (1, 1)), imgs, clusters=2, patch=16, progress=False)
    with pytest.raises(VitalError, match="unknown layer"):
        P.disentangle(s, UnitTarget("act9", 0), imgs, clusters=2, patch=16, progress=False)


def test_run_disentangle_is_the_whole_command_and_goes_through_the_registry(tmp_path, monkeypatch):
    from vital_fv import methods

    called = []
    real = methods.run_method
    monkeypatch.setattr(methods, "run_method", lambda m, *a, **k: called.append(m) or real(m, *a, **k))
    out = tmp_path / "out"
    with pytest.raises(VitalError, match="unknown preset"):  # options before any work
        P.run_disentangle(spec(), "act1:0", tmp_path / "none", out, preset="nope")
    run = P.run_disentangle(spec(), "act1:0", pictures(tmp_path / "imgs", n=12), out, clusters=2, patch=16,
                            n_refs=4, steps=3, preset="quick", progress=False)
    assert called == ["vital"] and len(run.results) == 2 and sum(run.sizes()) == run.disentangled.params["patches"]
    assert run.record == out / P.RECORD and (out / "cluster-1.png").is_file() and (out / "overview.png").is_file()
    with pytest.raises(VitalError, match="--overwrite"):  # before the model or the images are touched
        P.run_disentangle(spec(), "act1:0", tmp_path / "none", out)
