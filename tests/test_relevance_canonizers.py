import pytest
import torch
from torch import nn

from vital_fv.features import as_channels_positions, capture
from vital_fv.relevance import (
    Relevance,
    conservation,
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
