"""Architecture families: the built-in ones carry the paper's presets and layout facts, and a family of one's own
is one ``register_family`` in one module (here: this test file) that load_model, relevance and visualize use."""

import json
import types

import pytest
import torch
from torch import nn

from vital_fv import references
from vital_fv.errors import VitalError
from vital_fv.relevance import Canonizer, Relevance, ResidualSum, SumRule, conservation
from vital_fv.targets import UnitTarget
from vital_fv.zoo import (
    PRESETS,
    Architecture,
    Family,
    LayerPreset,
    ModelSpec,
    Preprocess,
    discover_last_hidden,
    embedded_models,
    families,
    last_linear,
    list_models,
    load_model,
    register_family,
    unregister_family,
)


class _FunctionalResidual(nn.Module):
    """A residual add written in ``forward`` (no module a rule can see), as timm and others write them."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 3, padding=1)
        self.branch = nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3))

    def forward(self, x):
        h = torch.relu(self.stem(x))
        return self.head(h + self.branch(h))


def _residual_forward(self, x):
    h = torch.relu(self.stem(x))
    return self.head(self.vital_sum(torch.stack([h, self.branch(h)], dim=-1)))


class _CountedSumRule(SumRule):
    """The toy family's rule choice for its sums: the common split, counted, so a test sees it was the one used."""

    calls: list[int] = []

    def relevance(self, module, x, r):
        _CountedSumRule.calls.append(1)
        return super().relevance(module, x, r)


class _ToyCanonizer(Canonizer):
    family = "toy"

    def rules(self):
        return [((ResidualSum,), _CountedSumRule())]

    def matches(self, model):
        return isinstance(model, _FunctionalResidual)

    def apply(self, model, gate):
        model.vital_sum = ResidualSum()
        model.forward = types.MethodType(_residual_forward, model)


_TOY_PRESET = LayerPreset(("stem", "branch"), (1.0, 1.0), source="the toy family")


def _load_toy(name, weights):
    torch.manual_seed(0)
    module = _FunctionalResidual().eval().requires_grad_(False)
    return ModelSpec(name=name, module=module, preprocess=Preprocess(32, 36, (0.5,) * 3, (0.25,) * 3),
                     class_names=["zero", "one", "two"], preset=_TOY_PRESET, weights_id="toy",
                     weights_source="built by the toy family", arch=_toy_architecture(module))


def _toy_architecture(module):
    return Architecture("toy", "stem", ("stem", "branch"), "branch", "head.2") if isinstance(
        module, _FunctionalResidual) else None


@pytest.fixture
def toy_family():
    family = register_family(Family("toy", models=("toy-residual",), load=_load_toy,
                                    presets={"toy-residual": _TOY_PRESET}, architecture=_toy_architecture,
                                    canonizer=_ToyCanonizer()))
    try:
        yield family
    finally:
        unregister_family("toy")


def test_the_built_in_families_in_the_order_their_canonizers_are_tried():
    assert [f.name for f in families()] == ["resnet", "densenet", "vit", "convnext", "efficientnet"]
    assert embedded_models() == ["efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"]
    assert set(PRESETS) == {"resnet50", "densenet121", "vit_l_16", "vit_l_32", "convnext_base",
                            "efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}


def test_a_registered_family_is_known_to_the_zoo_and_gone_when_unregistered(toy_family):
    spec = load_model("toy-residual")
    assert spec.preset == _TOY_PRESET == PRESETS["toy-residual"]
    assert spec.arch.family == "toy" and spec.last_hidden_layer() == "branch"
    assert "toy-residual" in list_models() and "toy-residual" in embedded_models()
    unregister_family("toy")
    try:
        with pytest.raises(VitalError, match="unknown model 'toy-residual'"):
            load_model("toy-residual")
        assert "toy-residual" not in PRESETS
    finally:
        register_family(toy_family)


def test_relevance_uses_a_registered_familys_canonizer(toy_family):
    torch.manual_seed(0)
    model = _FunctionalResidual().eval()
    x = torch.rand(2, 3, 8, 8)
    unregister_family("toy")
    try:
        with Relevance(model, ["stem"], "lrp") as rel:
            before = conservation(rel(x, [0, 1]))["stem"]
            assert rel.family == "generic"
    finally:
        register_family(toy_family)
    _CountedSumRule.calls.clear()
    with Relevance(model, ["stem"], "lrp") as rel:
        out = rel(x, [0, 1])
        assert rel.family == "toy" and rel.describe()["family"] == "toy"
    assert _CountedSumRule.calls  # the family's own rule choice ruled its sum
    assert abs(conservation(out)["stem"] - 1) < 1e-3 < abs(before - 1)  # the add was invisible to the rules
    assert not hasattr(model, "vital_sum") and not model._forward_hooks  # the caller's model is untouched


def test_a_short_visualize_through_a_registered_family(toy_family, refs_dir, tmp_path):
    from vital_fv import cli

    code = cli.main(["visualize", "--model", "toy-residual", "--class", "two", "--refs", str(refs_dir),
                     "--relevance", "lrp", "--steps", "2", "--preset", "quick", "--out", str(tmp_path / "out"),
                     "--name", "toy", "--quiet", "--no-cache", "--device", "cpu"])
    assert code == 0
    rec = json.loads((tmp_path / "out" / "toy.json").read_text())
    assert rec["model"]["name"] == "toy-residual" and rec["target"]["name"] == "two"
    assert rec["layers"]["layers"] == ["stem", "branch"] and rec["layers"]["source"] == "the toy family"
    assert rec["relevance"]["family"] == "toy"


def test_register_family_refuses_what_does_not_fit(toy_family):
    with pytest.raises(VitalError, match="a family named 'toy' is already registered"):
        register_family(Family("toy"))
    with pytest.raises(VitalError, match="efficientnet_lite0 already belong to family 'efficientnet'"):
        register_family(Family("lite-again", models=("efficientnet_lite0",), load=_load_toy))
    with pytest.raises(VitalError, match="resnet50 already belong to family 'resnet'"):
        register_family(Family("resnet-again", presets={"resnet50": _TOY_PRESET}))
    with pytest.raises(VitalError, match="models and load go together"):
        register_family(Family("no-loader", models=("x",)))
    with pytest.raises(VitalError, match="canonizer must be a relevance Canonizer"):
        register_family(Family("odd", canonizer=object()))
    with pytest.raises(VitalError, match="the presets of x are not LayerPresets"):
        register_family(Family("odd", presets={"x": ("stem",)}))
    with pytest.raises(VitalError, match="register_family takes a Family"):
        register_family("toy")
    with pytest.raises(VitalError, match="no family named 'nope'"):
        unregister_family("nope")
    assert [f.name for f in families()][-1] == "toy"  # nothing half-registered


# SPEC §3, written out again on purpose: the presets must equal the paper's table, not just themselves.
PAPER = {
    "resnet50": (["conv1", "layer1", "layer2", "layer3", "layer4"], [1, 1, 1, 1, 1], 0.0,
                 [64, 256, 512, 1024, 2048]),
    "densenet121": (["features.conv0", "features.denseblock1", "features.denseblock2", "features.denseblock3",
                     "features.denseblock4"], [1, 1, 1, 1, 100], 0.0, [64, 256, 512, 1024, 1024]),
    "convnext_base": (["features.0", "features.2.1", "features.4.1", "features.6.1", "features.7.2"],
                      [10, 1, 1, 1, 1], 0.0, [128, 256, 512, 1024, 1024]),
    "vit_l_16": (["conv_proj"] + [f"encoder.layers.encoder_layer_{i}" for i in (2, 9, 20, 23)], [1, 1, 1, 1, 1],
                 3e-3, [1024] * 5),
    "vit_l_32": (["conv_proj"] + [f"encoder.layers.encoder_layer_{i}" for i in (2, 9, 20, 23)], [1, 1, 1, 1, 0.1],
                 3e-4, [1024] * 5),
}


@pytest.mark.parametrize(
    "name",
    ["resnet50", "densenet121",
     pytest.param("convnext_base", marks=pytest.mark.slow),
     pytest.param("vit_l_16", marks=pytest.mark.slow),
     pytest.param("vit_l_32", marks=pytest.mark.slow)],
)
def test_paper_architectures_presets_shapes_independence_and_a_few_steps(name):
    from vital_fv import ClassTarget, Job, visualize_batch
    from vital_fv.features import as_channels_positions, capture

    layers, weights, reg, channels = PAPER[name]
    torch.manual_seed(0)
    spec = load_model(name, random_init=True)
    assert list(spec.preset.layers) == layers and list(spec.preset.weights) == weights
    # the loader's architecture facts are what the module tree says
    assert spec.arch.last_hidden == discover_last_hidden(spec.module, 224)
    assert spec.arch.head == last_linear(spec.module)
    assert spec.arch.stem == layers[0] and spec.arch.stages and spec.arch.tokens == name.startswith("vit")
    assert spec.preset.tv == reg and spec.preset.l2 == reg
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad(), capture(spec.module, layers) as feats:
        spec.module(x)
        both = {n: as_channels_positions(feats[n]) for n in layers}
        spec.module(x[1:])
        second = {n: as_channels_positions(feats[n]) for n in layers}
    for n, c in zip(layers, channels, strict=True):
        assert both[n].shape[1] == c
        assert torch.allclose(both[n][1:], second[n], atol=1e-4, rtol=1e-3)  # items never mix in eval mode
    refs = references.from_tensor(torch.rand(2, 3, 240, 240))
    # a few small steps (the paper's lr 1.0 needs its warm-up; 4 steps have none)
    res = visualize_batch(spec, [Job(ClassTarget(1), refs, 0)], steps=4, lr=0.05, progress=False, cache=False)
    rec = res[0].record
    assert rec["layers"]["layers"] == layers and rec["layers"]["weights"] == weights
    total = [sum(w * rec["loss"][n][i] for n, w in zip(layers, weights, strict=True)) for i in range(4)]
    assert total[-1] < total[0]


def test_efficientnet_same_convolutions_become_padding_and_a_plain_convolution(monkeypatch):
    """timm's TF "same" convolutions in the relevance copy: a pre-hook's padding and a plain ``nn.Conv2d`` (the
    rules' direct path). The copy computes the model's values, and the relevance is bit for bit that of a copy that
    keeps ``Conv2dSame`` (the generic autograd path), at an input size whose padding is asymmetric."""
    import importlib

    import timm
    from timm.layers import Conv2dSame

    from vital_fv.relevance.rules import _plain_conv

    eff = importlib.import_module("vital_fv.zoo.families.efficientnet")
    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0").eval()
    same = [n for n, m in model.named_modules() if type(m) is Conv2dSame]
    layers = ["blocks.1", "blocks.3"]
    x = torch.randn(2, 3, 72, 72)
    with monkeypatch.context() as m:
        m.setattr(eff, "_explicit_same_padding", lambda model: None)
        kept = Relevance(model, layers, "lrp")
    with Relevance(model, layers, "lrp") as rel, kept:
        assert len(same) >= 4 and all(type(kept.module.get_submodule(n)) is Conv2dSame for n in same)
        for n in same:
            conv = rel.module.get_submodule(n)
            assert type(conv) is nn.Conv2d and conv._forward_pre_hooks and _plain_conv(conv)
        with torch.no_grad():
            torch.testing.assert_close(rel.module(x), model(x), rtol=0, atol=0)
        for targets in ([3, 7], [UnitTarget("blocks.5", 2)] * 2):
            a, b = rel(x, targets), kept(x, targets)
            for n in layers:
                assert b.rel[n].abs().sum() > 0
                assert torch.equal(a.rel[n], b.rel[n]), n
    assert all(type(model.get_submodule(n)) is Conv2dSame and not model.get_submodule(n)._forward_pre_hooks
               for n in same)
