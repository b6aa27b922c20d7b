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
    plain = references.resolve(colour_spec, ClassTarget("red"), tmp_path, n=8, augment=True, crops="random")
    assert "crops" not in plain.describe() and plain.boxes is None
    few = references.resolve(colour_spec, ClassTarget("red"), tmp_path, n=8)  # no augmentation: nothing to choose
    assert few.count == 1 and "crops" not in few.describe()
    with pytest.raises(VitalError, match="--crops must be one of evidence, random"):
        references.resolve(colour_spec, ClassTarget("red"), tmp_path, n=8, crops="best")


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
