"""CRAFT concepts: a model whose last hidden channels are built to respond to known colour patterns must give
those patterns back as concepts, ranked by how much they drive the logit."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from vital_fv import concepts as C
from vital_fv.errors import VitalError
from vital_fv.zoo import Preprocess, load_model

# Three known patterns in a 6-channel hidden layer: red, green and blue regions each switch on their own mix.
PATTERNS = torch.tensor([[1.0, 0.5, 0.0, 0.0, 0.0, 0.2],   # red
                         [0.0, 0.0, 1.0, 0.7, 0.0, 0.0],   # green
                         [0.0, 0.1, 0.0, 0.0, 1.0, 0.6]])  # blue


class ColourConcepts(nn.Module):
    """colour detectors (1x1) -> hidden = relu(mix of the detectors) -> average pool -> linear (2 classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.detect = nn.Conv2d(3, 3, 1)
        with torch.no_grad():  # inputs are normalized to [-1, 1]; a detector fires on its own colour only
            self.detect.weight.copy_((torch.eye(3) * 2 - 1).view(3, 3, 1, 1))
            self.detect.bias.fill_(-0.5)
        self.act0 = nn.ReLU()
        self.mix = nn.Conv2d(3, 6, 1, bias=False)
        with torch.no_grad():
            self.mix.weight.copy_(PATTERNS.t().reshape(6, 3, 1, 1))
        self.hidden = nn.ReLU()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(6, 2)
        with torch.no_grad():  # class 0 reads mostly the red pattern, a little green, hardly blue
            self.fc.weight.copy_(torch.stack([PATTERNS[0] * 3 + PATTERNS[1] * 0.6 + PATTERNS[2] * 0.1,
                                              PATTERNS[2]]))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.hidden(self.mix(self.act0(self.detect(x))))).flatten(1))


def colour_spec():
    return load_model(ColourConcepts(), preprocess=Preprocess(32, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                      class_names=["reddish", "bluish"], name="colours", layers=["act0", "hidden"])


def colour_images(folder, n=6, seed=0):
    """n 64x64 pictures of 32 px red, green and blue blocks in random places."""
    rng = np.random.default_rng(seed)
    colours = np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        blocks = rng.permutation([0, 0, 1, 2])  # red twice as often
        img = np.zeros((64, 64, 3), dtype=np.uint8)
        for k, b in enumerate(blocks):
            y, x = divmod(k, 2)
            img[y * 32 : (y + 1) * 32, x * 32 : (x + 1) * 32] = colours[b]
        Image.fromarray(img).save(folder / f"img{i}.png")
    return folder


def test_the_last_hidden_layer_is_the_map_the_head_pools():
    assert colour_spec().last_hidden_layer() == "hidden"


def test_craft_recovers_the_built_in_patterns_and_ranks_the_logit_driver_first(tmp_path):
    spec = colour_spec()
    found = C.extract_concepts(spec, 0, colour_images(tmp_path / "imgs"), n_concepts=3, patch=16, progress=False)
    true = PATTERNS / PATTERNS.norm(dim=1, keepdim=True)
    cos = true @ found.directions.t()  # (patterns, concepts)
    assert cos.max(1).values.min() >= 0.9, cos
    assert int(cos[0].argmax()) == 0  # red drives the logit most: it is concept 0
    assert int(cos[2].argmax()) == 2  # blue hardly matters: last
    assert found.importance[0] > found.importance[1] > found.importance[2]
    assert found.params["head"] == "pool+linear"
    # Each concept's top crops are crops of its colour.
    for concept, colour in ((0, 0), (1, 1), (2, 2)):
        crops = found.scan.crops(found.top[concept][:3])
        assert all(int(c.float().mean((1, 2)).argmax()) == colour for c in crops)


def test_sobol_total_indices_of_a_known_function():
    # f = 4 m0 + 1 m1 + 0 m2 on uniform masks: total indices 16/17, 1/17, 0.
    masks, nb = C.sobol_masks(3, 256, seed=0)
    f = masks @ np.array([4.0, 1.0, 0.0])
    st = C.jansen_total(f, 3, nb)
    assert st == pytest.approx([16 / 17, 1 / 17, 0.0], abs=0.03)


class Scaled(ColourConcepts):
    def forward(self, x: torch.Tensor) -> torch.Tensor:  # the head is no longer pool + linear alone
        return super().forward(x) * 2 + 1


def test_a_head_that_is_not_a_pooled_linear_is_replayed_and_agrees():
    spec = load_model(Scaled(), preprocess=Preprocess(32, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)), name="scaled")
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    head = C.head_from(spec, "hidden", x)
    assert head.kind == "replay"
    with torch.no_grad():
        feats = spec.module.hidden(spec.module.mix(spec.module.act0(spec.module.detect(x))))
        assert torch.allclose(head.fn(feats.repeat(3, 1, 1, 1)), spec.module(x).repeat(3, 1), atol=1e-5)


def test_saved_concepts_load_back_as_a_direction_target_with_their_crops(tmp_path):
    spec = colour_spec()
    found = C.extract_concepts(spec, 0, colour_images(tmp_path / "imgs"), n_concepts=3, patch=16, top=4,
                               progress=False)
    path = C.save_concepts(found, tmp_path / "out")
    rec = json.loads((tmp_path / "out" / C.CONCEPTS_RECORD).read_text())
    assert [c["index"] for c in rec["concepts"]] == [0, 1, 2] and rec["layer"] == "hidden"
    assert (tmp_path / "out" / "contact_sheet.png").is_file()
    saved = C.load_concept(f"{path}:1")
    assert torch.allclose(saved.target.vector, found.directions[1])
    refs = saved.references()
    assert refs.count == 4 and refs.fit == "stretch"
    # From another folder: that folder's crops that express the concept most.
    other = C.concept_references_from(spec, saved, colour_images(tmp_path / "more", n=3, seed=5), k=5,
                                      progress=False)
    assert all(int(img.float().mean((1, 2)).argmax()) == 1 for img in other.images)
    assert [c.index for c in C.load_concepts(f"{path}:all")] == [0, 1, 2]
    assert [c.index for c in C.load_concepts(f"{tmp_path / 'out'}:2,0")] == [2, 0]  # the folder works too
    with pytest.raises(VitalError, match="give one index"):
        C.load_concept(f"{path}:0,1")
    with pytest.raises(VitalError, match="exists|there are 3"):
        C.load_concept(f"{path}:7")
    with pytest.raises(VitalError, match="FILE:INDEX"):
        C.load_concept(str(path))
    with pytest.raises(VitalError, match="cannot read concepts file"):
        C.load_concept(f"{tmp_path / 'missing.safetensors'}:0")
    with pytest.raises(VitalError, match="already exist|--overwrite"):
        C.save_concepts(found, tmp_path / "out")


def test_too_few_crops_for_the_concepts_is_a_clear_error(tmp_path):
    spec = colour_spec()
    with pytest.raises(VitalError, match="too few for 10 concepts"):
        C.extract_concepts(spec, 0, colour_images(tmp_path / "imgs", n=1), n_concepts=10, patch=32, progress=False)


def test_a_direction_of_the_wrong_size_is_refused():
    from vital_fv.targets import DirectionTarget

    with pytest.raises(VitalError, match="has 4 entries, but layer hidden has 6 channels"):
        DirectionTarget("hidden", torch.ones(4)).check((6, 8, 8))


def test_concept_scan_resumes_from_the_per_image_cache(tmp_path):
    spec = colour_spec()
    imgs = colour_images(tmp_path / "imgs", n=4)
    first = C.extract_concepts(spec, 0, imgs, n_concepts=2, patch=16, progress=False)
    again = C.extract_concepts(spec, 0, imgs, n_concepts=2, patch=16, progress=False)
    assert first.params["scan_cache"] == "miss" and again.params["scan_cache"] == "hit"
    assert torch.allclose(first.directions, again.directions)


class Tokens(nn.Module):
    """A token model: 8 px patches embedded as tokens (B, T, D), a token-wise block, mean over tokens, linear."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, 6, 8, stride=8)
        self.block = nn.Sequential(nn.Linear(6, 6), nn.ReLU())
        self.head = nn.Linear(6, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.block(self.embed(x).flatten(2).transpose(1, 2))
        return self.head(t.mean(1))


def test_token_layers_work_through_a_replayed_head(tmp_path):
    torch.manual_seed(0)
    spec = load_model(Tokens(), preprocess=Preprocess(32, 32, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
                      class_names=["a", "b"], name="tokens", layers=["embed", "block"])
    assert spec.last_hidden_layer() == "block"
    found = C.extract_concepts(spec, 0, colour_images(tmp_path / "imgs"), n_concepts=2, patch=16, nb_design=16,
                               progress=False)
    assert found.params["head"] == "replay" and found.directions.shape == (2, 6)
    assert torch.isfinite(found.importance).all() and float(found.importance.sum()) > 0

