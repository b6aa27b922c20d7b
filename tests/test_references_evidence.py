"""Crops chosen by the model's evidence: on a two-object image the target's object is kept, the other left out."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from vital_fv import references
from vital_fv.errors import VitalError
from vital_fv.references.evidence import evidence_crops
from vital_fv.targets import ClassTarget
from vital_fv.zoo import Preprocess, load_model


class ColourNet(nn.Module):
    """Class 0 = red, class 1 = blue: logits from the mean colour (a model whose evidence we know)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        m = x.mean((2, 3))
        return 8 * torch.stack([m[:, 0] - m[:, 2], m[:, 2] - m[:, 0]], 1)


@pytest.fixture
def colour_spec():
    return load_model(ColourNet(), layers=[], preprocess=Preprocess(32, 32, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
                      class_names=["red", "blue"], name="colours")


def two_objects() -> torch.Tensor:
    """A 3:1 image: red on the left third, blue on the rest (the object and its bigger distractor)."""
    img = torch.zeros(1, 3, 60, 180, dtype=torch.uint8)
    img[0, 0, :, :60] = 220
    img[0, 2, :, 60:] = 220
    return img


def red_share(x: torch.Tensor) -> float:
    return float((x[:, 0] > x[:, 2]).float().mean())


def test_evidence_keeps_the_target_object_and_random_crops_do_not(colour_spec):
    refs = references.from_tensor(two_objects(), n=20, augment=True, seed=1)
    chosen = evidence_crops(refs, colour_spec, 0, device="cpu")
    got = chosen.prepare(colour_spec.preprocess)[1:]  # the original (centre crop) first, then the crops
    random = refs.prepare(colour_spec.preprocess)[1:]
    assert len(got) == len(random) == 19
    assert red_share(got) > 0.7 and red_share(random) < 0.45
    crops = chosen.describe()["crops"]
    assert crops["chosen_by"] == "evidence" and crops["kept"] == 19 and crops["candidates"] == 76
    assert crops["kept_min"] >= crops["candidates_mean"]
    assert chosen.content_hash() != refs.content_hash()  # prototypes are cached per crop choice
    blue = evidence_crops(refs, colour_spec, 1, device="cpu").prepare(colour_spec.preprocess)[1:]
    assert red_share(blue) < 0.2


def test_resolve_uses_evidence_for_a_class_and_random_on_request(colour_spec, tmp_path):
    from vital_fv.result import png_bytes

    (tmp_path / "a.png").write_bytes(png_bytes(two_objects()[0].float() / 255))
    ev = references.resolve(colour_spec, ClassTarget("red"), tmp_path, n=8, augment=True)
    assert ev.describe()["crops"]["chosen_by"] == "evidence"
    assert ev.weighting is None and ev.describe()["weighting"]["by"] == "none"  # no layer with positions
    plain = references.resolve(colour_spec, ClassTarget("red"), tmp_path, n=8, augment=True, crops="random")
    assert "crops" not in plain.describe() and plain.boxes is None
    few = references.resolve(colour_spec, ClassTarget("red"), tmp_path, n=8)  # few references: completed
    assert few.count == 8 and few.describe()["crops"]["chosen_by"] == "evidence"
    assert few.describe()["summary"] == "1 photo: 8 crops around the class, chosen by the model's evidence"
    old = references.resolve(colour_spec, ClassTarget("red"), tmp_path, n=8, crops="evidence")  # the whole photo kept
    assert old.whole and old.describe()["summary"] == "1 photo: 7 crops chosen by the model's evidence"
    kept = references.resolve(colour_spec, ClassTarget("red"), tmp_path, n=8, augment=False)  # --no-augment
    assert kept.count == 1 and "crops" not in kept.describe() and kept.describe()["summary"] == "1 image"
    with pytest.raises(VitalError, match="--crops must be one of evidence, objects, random"):
        references.resolve(colour_spec, ClassTarget("red"), tmp_path, n=8, crops="best")
    with pytest.raises(VitalError, match="--ref-weighting must be one of none, evidence"):
        references.resolve(colour_spec, ClassTarget("red"), tmp_path, n=8, weighting="lrp")


class ColourMapNet(nn.Module):
    """Class 0 = red, class 1 = blue, through a map with positions: ``map`` is ReLU(R - B), ReLU(B - R) per pixel,
    the logits its spatial means, so the class's evidence (Grad-CAM at ``map``) is where its colour is."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, 1, bias=False)
        with torch.no_grad():
            self.conv.weight.copy_(torch.tensor([[1.0, 0, -1], [-1, 0, 1]]).view(2, 3, 1, 1))
        self.map = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 8 * self.map(self.conv(x)).mean((2, 3))


@pytest.fixture
def map_spec():
    return load_model(ColourMapNet(), layers=["map"], preprocess=Preprocess(32, 32, (0.0,) * 3, (1.0,) * 3),
                      class_names=["red", "blue"], name="colour-map")


def small_object() -> torch.Tensor:
    """A red square of a ninth of the frame in a blue frame: the class object small, its distractor large."""
    img = torch.zeros(1, 3, 90, 90, dtype=torch.uint8)
    img[0, 2] = 220
    img[0, :, 10:40, 50:80] = 0
    img[0, 0, 10:40, 50:80] = 220
    return img


def test_evidence_maps_find_the_object_and_object_crops_are_its_size(map_spec):
    from vital_fv.references.evidence import evidence_maps

    maps = evidence_maps(map_spec, 0, small_object().float() / 255, device="cpu")
    assert maps.shape == (1, 90, 90) and float(maps.max()) == pytest.approx(1.0)
    inside, outside = maps[0, 12:38, 52:78].mean(), maps[0, 50:, :40].mean()
    assert inside > 0.8 and outside < 0.05
    refs = references.from_tensor(small_object(), n=20, augment=True, seed=2)
    scene = evidence_crops(refs, map_spec, 0, device="cpu").prepare(map_spec.preprocess)[1:]
    chosen = evidence_crops(refs, map_spec, 0, objects=True, device="cpu")
    objects = chosen.prepare(map_spec.preprocess)  # every reference a crop: the blue frame is not kept whole
    assert len(objects) == 20 and not chosen.whole and "whole_originals" in chosen.describe()
    # crops of half the frame or more cannot be mostly the ninth-of-a-frame object; crops at its size can
    assert red_share(scene) < 0.3 and red_share(objects) > 0.5
    info = chosen.describe()["crops"]
    assert info["object_candidates"] == 40 and info["object_kept"] >= 15
    assert chosen.summary() == "1 photo: 20 crops around the class, chosen by the model's evidence"
    top, left, h, w = info["scan_best"][1:]  # the scan's best window lies on the object (rows 10-40, cols 50-80)
    assert 10 - h / 2 <= top <= 40 - h / 2 and 50 - w / 2 <= left <= 80 - w / 2 and h <= 60
    boxes = [b for b in chosen.boxes if b[3] * b[4] < 0.5 * 90 * 90]
    assert boxes and all(b[3] <= 70 and b[4] <= 70 for b in boxes)


def test_evidence_maps_read_at_a_chosen_layer(map_spec):
    from vital_fv.references.evidence import evidence_maps

    maps = evidence_maps(map_spec, 0, small_object().float() / 255, device="cpu", layer="conv")
    assert maps[0, 12:38, 52:78].mean() > 0.8 and maps[0, 50:, :40].mean() < 0.05
    with pytest.raises(VitalError, match="unknown layer 'nope'"):
        evidence_maps(map_spec, 0, small_object().float() / 255, device="cpu", layer="nope")


def test_reference_positions_weighted_by_evidence_make_the_prototype_the_object_s(map_spec):
    from vital_fv.matching import compute_prototypes
    from vital_fv.references.evidence import weight_by_evidence

    refs = references.from_tensor(small_object(), n=1)
    weighted = weight_by_evidence(refs, map_spec, 0, device="cpu")
    assert weighted.content_hash() != refs.content_hash() and weighted.describe()["weighting"]["floor"] == 0.1
    images = map_spec.preprocess.normalize(refs.prepare(map_spec.preprocess))
    plain = compute_prototypes(map_spec.module, ["map"], images)["map"]
    by_evidence = compute_prototypes(map_spec.module, ["map"], images, weights=weighted.position_weights)["map"]
    # channel 0 (red): most positions are blue, so its plain median is 0; weighted, the object's positions dominate
    assert float(plain[0, 512]) == 0.0 and float(by_evidence[0, 512]) > 0.5
    assert float(by_evidence[1].mean()) < float(plain[1].mean())  # the blue distractor counts less


@settings(max_examples=60, deadline=None)
@given(p=st.integers(1, 40), seed=st.integers(0, 9))
def test_weighted_sorted_is_sort_for_equal_weights_and_ignores_weightless_positions(p, seed):
    from vital_fv.matching import weighted_sorted

    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 3, p, generator=g)
    assert torch.equal(weighted_sorted(z, torch.ones(2, p)), torch.sort(z, dim=-1).values)
    w = (torch.rand(2, p, generator=g) > 0.5).float()
    w[:, 0] = 1.0
    out = weighted_sorted(z, w)
    assert torch.all(out[..., 1:] >= out[..., :-1])  # still sorted
    for n in range(2):
        allowed = set(z[n][:, w[n] > 0].flatten().tolist())
        assert set(out[n].flatten().tolist()) <= allowed


@settings(max_examples=60, deadline=None)
@given(h=st.integers(8, 300), w=st.integers(8, 900), lo=st.floats(0.05, 1.0), seed=st.integers(0, 5))
def test_random_crops_fit_any_image_and_vary(h, w, lo, seed):
    refs = references.from_tensor(torch.zeros(1, 3, h, w, dtype=torch.uint8), n=12, augment=True, seed=seed)
    refs.crop_scale = (lo, 1.0)
    boxes = refs.random_boxes(12)
    for i, top, left, bh, bw, _ in boxes:
        assert i == 0 and top >= 0 and top + bh <= h and left >= 0 and left + bw <= w and bh >= 1 and bw >= 1
    if min(h, w) >= 64 and lo < 0.9:
        assert len({b[1:5] for b in boxes}) > 1  # not one fallback crop repeated (a wide image included)


def test_objects_crop_each_photo_of_a_full_folder_to_the_class(map_spec):
    """Item 5: as many photos as references, the class small in each at its own place: each is cropped to it."""
    photos = []
    for k in range(4):
        img = torch.zeros(3, 90, 120, dtype=torch.uint8)
        img[2] = 220
        top, left = 5 + 15 * k, 10 + 25 * k
        img[:, top : top + 30, left : left + 30] = 0
        img[0, top : top + 30, left : left + 30] = 220
        photos.append(img)
    refs = references.from_tensor(torch.stack(photos), n=4, augment=True, seed=3)
    plain = refs.prepare(map_spec.preprocess)
    chosen = evidence_crops(refs, map_spec, 0, objects=True, device="cpu")
    got = chosen.prepare(map_spec.preprocess)
    assert len(got) == len(plain) == 4 and [b[0] for b in chosen.boxes] == [0, 1, 2, 3]  # one crop per photo
    assert red_share(plain) < 0.2 and red_share(got) > 0.5
    assert chosen.summary() == "4 photos: each cropped where the model finds the class"
    assert chosen.content_hash() != refs.content_hash()
    assert evidence_crops(refs, map_spec, 0, device="cpu") is refs  # evidence crops only complete few photos
