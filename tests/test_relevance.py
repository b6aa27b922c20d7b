import pytest
import torch
from torch import nn

from vital_fv.errors import VitalError
from vital_fv.features import as_channels_positions, capture
from vital_fv.relevance import (
    Relevance,
    channel_importance,
    conservation,
    normalize_relevance,
    parse_method,
    silent,
)
from vital_fv.targets import DirectionTarget, UnitTarget


def _families():
    """Random-weight members of each family, small inputs: (model, matched layers, unit layer, size, tolerance).
    Relevance is lost only to z+ outputs without positive contributions and to stabilizers: 1e-3 of the start."""
    import timm
    import torchvision.models as tvm
    from torchvision.models.vision_transformer import VisionTransformer

    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=4, num_heads=2, hidden_dim=32, mlp_dim=64)
    nn.init.normal_(vit.heads.head.weight, std=0.1)  # torchvision zero-initializes the head
    blocks = [f"encoder.layers.encoder_layer_{i}" for i in range(3)]
    return {
        "resnet50": (tvm.resnet50(), ["conv1", "layer1", "layer2", "layer3"], "layer4", 64, 1e-3),
        "densenet121": (tvm.densenet121(), ["features.conv0", "features.denseblock1", "features.transition1",
                                             "features.denseblock2"], "features.denseblock3", 64, 1e-3),
        "efficientnet_lite0": (timm.create_model("tf_efficientnet_lite0"), ["conv_stem", "blocks.1", "blocks.2",
                                                                             "blocks.4"], "blocks.5", 64, 1e-3),
        "convnext": (tvm.convnext_tiny(), ["features.0", "features.1", "features.3", "features.5"], "features.7",
                     64, 1e-3),
        "vit": (vit, blocks, "encoder.layers.encoder_layer_3", 32, 1e-3),
    }


FAMILIES = ["resnet50", "densenet121", "efficientnet_lite0", "convnext", "vit"]


@pytest.fixture(scope="module")
def families():
    torch.manual_seed(0)
    return {k: (m.eval(), *rest) for k, (m, *rest) in _families().items()}


@pytest.mark.parametrize("family", FAMILIES)
def test_lrp_conserves_relevance_for_every_start(families, family):
    model, layers, top, size, tol = families[family]
    x = torch.randn(2, 3, size, size)
    tokens = family == "vit"
    with Relevance(model, layers, "lrp") as rel:
        with torch.no_grad(), capture(model, [top]) as f:
            model(x)
            channels = as_channels_positions(f[top]).shape[1]
        v = torch.rand(channels) + 0.1
        starts = {
            "class": [3, 7],
            "channel": [UnitTarget(top, 3), UnitTarget(top, 5)],
            "neuron": [UnitTarget(top, 3, (1,) if tokens else (0, 0))] * 2,
            "direction": [DirectionTarget(top, v, "d")] * 2,
        }
        for kind, targets in starts.items():
            out = rel(x, targets)
            assert out.start.abs().sum() > 0, kind
            for layer, ratio in conservation(out).items():
                assert ratio == pytest.approx(1.0, abs=tol), (family, kind, layer)
    assert not model._forward_hooks and all(not m._forward_hooks for m in model.modules())


def test_relevance_copy_leaves_the_model_alone_and_reads_the_same_activations(families):
    model, layers, top, size, _ = families["efficientnet_lite0"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    forward = model.forward
    x = torch.randn(2, 3, size, size)
    with Relevance(model, layers, "lrp") as rel:
        out = rel(x, [UnitTarget(top, 0)] * 2)
    with torch.no_grad(), capture(model, layers) as feats:
        model(x)
        for n in layers:
            torch.testing.assert_close(out.acts[n], as_channels_positions(feats[n]))
    assert model.forward == forward
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("layout", ["contiguous", "channels_last"])
def test_plain_gradients_through_the_copy_are_the_models_own(families, family, layout):
    """The optimization takes its loss gradient through the relevance copy's forward: it must be the gradient of the
    model itself, at batch 1 too, and for a channels-last model (where a restrided view once made torch's CPU
    BatchNorm backward return wrong gradients)."""
    model, layers, top, size, _ = families[family]
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    model.to(memory_format=fmt)
    try:
        with Relevance(model, layers, "lrp") as rel:
            for batch in (1, 2):
                x0 = torch.randn(batch, 3, size, size).contiguous(memory_format=fmt)
                x = x0.clone().requires_grad_(True)
                out = rel(x, [UnitTarget(top, 1)] * batch, keep_graph=True)
                w = {n: torch.randn(out.acts[n].shape, generator=torch.Generator().manual_seed(i))
                     for i, n in enumerate(layers)}
                with rel.plain_gradients():
                    sum((out.acts[n] * w[n]).sum() for n in layers).backward()
                xr = x0.clone().requires_grad_(True)
                with capture(model, layers) as feats:
                    model(xr)
                    sum((as_channels_positions(feats[n]) * w[n]).sum() for n in layers).backward()
                torch.testing.assert_close(x.grad, xr.grad, rtol=1e-4, atol=1e-5 * float(xr.grad.abs().max()))
    finally:
        model.to(memory_format=torch.contiguous_format)


def test_neuron_relevance_stays_in_the_neurons_receptive_field():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
    x = torch.rand(1, 3, 16, 16)
    with Relevance(net, ["1"], "lrp") as rel:
        out = rel(x, [UnitTarget("3", 1, (8, 8))])
    r = out.rel["1"].view(4, 16, 16)
    inside = r[:, 7:10, 7:10].abs().sum()
    assert inside > 0 and float(r.abs().sum() - inside) == pytest.approx(0.0, abs=1e-6)


def test_zplus_keeps_relevance_of_an_all_negative_depthwise_kernel():
    """zennit's plain z+ drops the relevance of outputs with no positive contribution; ours falls back to z."""
    from zennit.composites import LayerMapComposite
    from zennit.rules import ZPlus

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1, groups=4, bias=False),
                        nn.Conv2d(4, 1, 1, bias=False), nn.ReLU())
    with torch.no_grad():
        net[0].bias.fill_(1.0)  # inputs of the depthwise conv: positive everywhere
        net[2].weight.abs_()
        net[2].weight[1].neg_()  # channel 1's depthwise kernel: all negative, so its output is negative
        net[3].weight.fill_(0.5)
        net[3].weight[0, 1] = -0.5  # ... and it drives the unit up
    x = torch.rand(1, 3, 8, 8)
    with Relevance(net, ["1"], "lrp") as rel:
        ours = conservation(rel(x, [UnitTarget("4", 0)]))["1"]
    assert ours == pytest.approx(1.0, abs=1e-4)
    with Relevance(net, ["1"], "lrp") as rel:  # same copy, zennit's ZPlus in place of ours
        rel._composite.remove()
        rel._composite = LayerMapComposite([((nn.Conv2d,), ZPlus(zero_params="bias"))])
        rel._composite.register(rel.module)
        theirs = conservation(rel(x, [UnitTarget("4", 0)]))["1"]
    assert theirs < 0.9


def _guided_direct(net: nn.Sequential, x: torch.Tensor, cls: int, layer: int) -> torch.Tensor:
    """Guided Backprop by hand: module by module, true local gradients, negatives cut after every ReLU."""
    inputs = []
    h = x
    for m in net:
        inputs.append(h)
        h = m(h)
    g = torch.zeros_like(h)
    g[:, cls] = 1.0
    for i in range(len(net) - 1, layer, -1):
        inp = inputs[i].detach().requires_grad_(True)
        (g,) = torch.autograd.grad(net[i](inp), inp, g)
        if isinstance(net[i], nn.ReLU):
            g = g.clamp(min=0)
    return g


def test_guided_backprop_matches_a_direct_computation():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(3, 6, 3), nn.ReLU(), nn.Conv2d(6, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                        nn.Flatten(), nn.Linear(8, 5), nn.ReLU(), nn.Linear(5, 4)).eval()
    x = torch.randn(2, 3, 12, 12)
    with Relevance(net, ["0", "2"], "guided_backprop") as rel:
        out = rel(x, [2, 2])
    for layer in (0, 2):
        direct = _guided_direct(net, x, 2, layer)
        torch.testing.assert_close(out.rel[str(layer)], as_channels_positions(direct))
    # and it differs from the plain gradient somewhere (the guided cut is real)
    xin = x.clone().requires_grad_(True)
    with capture(net, ["2"]) as f:
        logits = net(xin)
        (plain,) = torch.autograd.grad(logits[:, 2].sum(), f["2"])
    assert not torch.allclose(as_channels_positions(plain), out.rel["2"])


def test_silent_unit_is_detected():
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU(), nn.Conv2d(2, 2, 1), nn.ReLU())
    with torch.no_grad():
        net[2].weight.zero_()
        net[2].bias.fill_(-1.0)  # channel never fires
    with Relevance(net, ["1"], "lrp") as rel:
        out = rel(torch.rand(2, 3, 8, 8), [UnitTarget("3", 0)] * 2)
    assert silent(out.rel, out.start).all()


def test_normalization_helpers():
    r = torch.tensor([[[1.0, 3.0, 2.0], [5.0, 5.0, 5.0]]])
    torch.testing.assert_close(normalize_relevance(r), torch.tensor([[[0.0, 1.0, 0.5], [0.0, 0.0, 0.0]]]))
    torch.testing.assert_close(channel_importance(r), torch.tensor([[0.0, 1.0]]))


def test_bad_inputs_are_named():
    net = nn.Sequential(nn.Conv2d(3, 2, 1), nn.ReLU())
    with pytest.raises(VitalError, match="guided-backprop"):
        parse_method("gradcam")
    assert parse_method("none") is None and parse_method("guided-backprop") == "guided_backprop"
    with Relevance(net, ["0"], "lrp") as rel:
        with pytest.raises(VitalError, match="out of range"):
            rel(torch.rand(1, 3, 4, 4), [UnitTarget("1", 9)])
        with pytest.raises(VitalError, match="entries"):
            rel(torch.rand(1, 3, 4, 4), [DirectionTarget("1", torch.ones(5))])
    with pytest.raises(VitalError, match="unknown layer"):
        Relevance(net, ["nope"], "lrp")


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


def test_adding_a_family_is_one_canonizer_class(monkeypatch):
    import types

    from vital_fv import relevance
    from vital_fv.relevance import CANONIZERS, Canonizer, ResidualSum

    class FunctionalResidualCanonizer(Canonizer):
        family = "functional-residual"

        def matches(self, model):
            return isinstance(model, _FunctionalResidual)

        def apply(self, model, gate):
            model.vital_sum = ResidualSum()

            def forward(self, x):
                h = torch.relu(self.stem(x))
                return self.head(self.vital_sum(torch.stack([h, self.branch(h)], dim=-1)))

            model.forward = types.MethodType(forward, model)

    torch.manual_seed(0)
    model = _FunctionalResidual().eval()
    x = torch.rand(2, 3, 8, 8)
    with Relevance(model, ["stem"], "lrp") as rel:
        before = conservation(rel(x, [0, 1]))["stem"]
        assert rel.family == "generic"
    monkeypatch.setattr(relevance, "CANONIZERS", [*CANONIZERS, FunctionalResidualCanonizer()])
    with Relevance(model, ["stem"], "lrp") as rel:
        out = rel(x, [0, 1])
        assert rel.family == "functional-residual" and rel.describe()["family"] == "functional-residual"
    assert abs(conservation(out)["stem"] - 1) < 1e-3 < abs(before - 1)  # the add was invisible to the rules
    assert not hasattr(model, "vital_sum") and not model._forward_hooks  # the caller's model is untouched
