import pytest
import torch
from torch import nn

from vital_fv.features import as_channels_positions, capture
from vital_fv.relevance import (
    Relevance,
    conservation,
)
from vital_fv.targets import UnitTarget


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


class _NormAct(nn.BatchNorm2d):
    """timm's BatchNormAct2d in small: a norm with its activation inside, both ruled (the outer rule wins)."""

    def __init__(self, c: int) -> None:
        super().__init__(c)
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(super().forward(x))


def test_a_rule_nested_in_a_ruled_module_computes_nothing_in_a_relevance_pass():
    """The activation inside a ruled norm gets no relevance; its branch must not run on materialized zeros (the
    norm's backward ran on zeros for every such module on every step, and LRP gave the same numbers)."""
    from torch.profiler import ProfilerActivity, profile

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), _NormAct(4), nn.Conv2d(4, 2, 1, bias=False), nn.ReLU())
    net.eval()
    x = torch.rand(2, 3, 8, 8)
    with Relevance(net, ["0", "1"], "lrp") as rel:
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            out = rel(x, [UnitTarget("3", 0), UnitTarget("3", 1)])
        names = [e.name for e in prof.events()]
        assert "aten::native_batch_norm_backward" not in names
        assert conservation(out)["1"] == pytest.approx(1.0, abs=1e-4)  # through the bias-free z+
        assert out.rel["0"].abs().sum() > 0  # and on through the norm (its rule passes relevance to its input)
        # the true gradient through the same copy still goes through the norm
        xg = x.clone().requires_grad_(True)
        kept = rel(xg, [UnitTarget("3", 0), UnitTarget("3", 1)], keep_graph=True)
        with rel.plain_gradients():
            kept.acts["0"].sum().backward()
    with capture(net, ["0"]) as feats:
        xr = x.clone().requires_grad_(True)
        net(xr)
        feats["0"].sum().backward()
    assert torch.allclose(xg.grad, xr.grad, atol=1e-6)
