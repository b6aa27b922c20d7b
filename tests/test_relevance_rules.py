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
        assert not rel.module[1].act._forward_hooks  # the nested rule is not even registered
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


def _unlinked(monkeypatch: pytest.MonkeyPatch, model: nn.Module, layers: list[str]) -> Relevance:
    """A Relevance whose producer -> norm chains are not linked: every ruled module keeps its own rule node."""
    from vital_fv.relevance import engine

    with monkeypatch.context() as m:
        m.setattr(engine, "link_chains", lambda *a, **k: [])
        return Relevance(model, layers, "lrp")


@pytest.mark.parametrize("layers", [["conv_stem", "blocks.1", "blocks.2"], ["blocks.1.0.conv_pw", "blocks.2"]])
def test_chained_convolutions_and_norms_give_the_relevance_of_their_rules_in_turn(monkeypatch, layers):
    """A convolution feeding its norm shares one rule node with it (rules.Link): the relevance is bit for bit that
    of the two rules in turn, also at a matched convolution inside a chain (its link is off)."""
    import timm

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0").eval()
    x = torch.randn(2, 3, 64, 64)
    with Relevance(model, layers, "lrp") as linked, _unlinked(monkeypatch, model, layers) as plain:
        assert len(linked._links) > 30 and not plain._links
        for targets in ([3, 7], [UnitTarget("blocks.4", 2)] * 2):
            a, b = linked(x, targets), plain(x, targets)
            for n in layers:
                assert b.rel[n].abs().sum() > 0
                assert torch.equal(a.rel[n], b.rel[n]), n
        on = {link.names[0]: link.on for link in linked._links}
        assert on["conv_head"] and on["blocks.2.0.conv_pw"]
        for conv in ("conv_stem", "blocks.1.0.conv_pw"):  # a matched convolution keeps its own rule node
            assert on[conv] == (conv not in layers)


class _TwoConvs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1, self.n1 = nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.BatchNorm2d(4)
        self.c2, self.n2 = nn.Conv2d(4, 4, 1, bias=False), nn.BatchNorm2d(4)
        self.head = nn.Conv2d(4, 2, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.n2(self.c2(torch.relu(self.n1(self.c1(x)))))))


def test_declared_chains_join_only_a_producer_to_the_module_that_takes_its_output():
    from vital_fv.errors import VitalError
    from vital_fv.relevance.rules import link_chains

    torch.manual_seed(0)
    model = _TwoConvs().eval()
    x = torch.randn(1, 3, 8, 8)
    with Relevance(model, ["c1"], "lrp") as plain:
        want = plain(x, [UnitTarget("head", 1)]).rel["c1"]
    with Relevance(model, ["c1"], "lrp") as rel:
        # ("head", "c2"): c2 has no pass rule; ("c2", "n1"): c2 already feeds n2
        rel._links = link_chains(rel._composite, rel.module, [("c2", "n2"), ("head", "c2"), ("c2", "n1")])
        assert [link.names for link in rel._links] == [("c2", "n2")]
        assert torch.equal(rel(x, [UnitTarget("head", 1)]).rel["c1"], want)
    with Relevance(model, ["n1"], "lrp") as rel:
        rel._links = link_chains(rel._composite, rel.module, [("c1", "n2")])  # n2 takes c2's output, not c1's
        with pytest.raises(VitalError, match="'n2' did not take 'c1''s output"):
            rel(x, [UnitTarget("head", 1)])


class _Generic(nn.Conv2d):
    """A convolution the rules do not recognise as plain: they take the autograd path through its forward."""


@pytest.mark.parametrize("signed", [False, True])
def test_pointwise_zplus_as_matrix_products_equals_the_generic_path(signed):
    from vital_fv.relevance.rules import ZPlusRule

    torch.manual_seed(0)
    conv = nn.Conv2d(6, 5, 1, bias=False)
    with torch.no_grad():
        conv.weight[2].neg_().abs_().neg_()  # output channel 2: no positive weight
    generic = _Generic(6, 5, 1, bias=False)
    generic.weight = conv.weight
    x = torch.randn(2, 6, 7, 7)
    x = x if signed else x.abs()
    r = torch.rand(2, 5, 7, 7)
    fast, slow = ZPlusRule(), ZPlusRule()
    a, b = fast.relevance(conv, x, r), slow.relevance(generic, x, r)
    assert fast.signed == slow.signed == signed
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    if not signed:  # on positive inputs every output has a contribution, channel 2 through its z-rule
        torch.testing.assert_close(a.sum(), r.sum(), rtol=1e-4, atol=0)


def test_a_residual_sum_of_two_inputs_splits_like_the_stacked_one():
    from vital_fv.relevance import ResidualSum, SumRule

    torch.manual_seed(0)
    a, b, r = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    s = ResidualSum()
    assert torch.equal(s(a, b), s(torch.stack([a, b], -1)))
    ra, rb = SumRule().relevance(s, (a, b), r)
    stacked = SumRule().relevance(s, torch.stack([a, b], -1), r)
    assert torch.equal(ra, stacked[..., 0]) and torch.equal(rb, stacked[..., 1])
    torch.testing.assert_close(ra + rb, r)


def _signed_layer(ill: bool) -> tuple[nn.Conv2d, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    conv = nn.Conv2d(24, 40, 1, bias=False).requires_grad_(False)
    x = torch.randn(2, 24, 9, 9)
    if ill:  # every output nearly all negative contributions: z+ is a tiny part of |W||x|
        x = x.abs()
        x[:, 0] = -1e-3
        conv.weight.copy_(-conv.weight.abs())
        conv.weight[:, 1] = 1e-4
    return conv, x, torch.rand(2, 40, 9, 9)


@pytest.mark.parametrize("ill", [False, True])
def test_signed_pointwise_zplus_from_the_layers_output_only_where_it_measured_exact(ill):
    """z+ = (Wx + |W||x|) / 2 saves one product a step on a signed 1x1 layer; it is measured against the exact sum
    on the first calls (and every 64th) and used only where it came within SHORTCUT_TOLERANCE."""
    from vital_fv.relevance.rules import SHORTCUT_TOLERANCE, ZPlusRule

    conv, x, r = _signed_layer(ill)
    y = conv(x)
    exact = ZPlusRule().relevance(conv, x, r)  # no output given: always the exact sum
    rule = ZPlusRule()
    for _ in range(6):
        got = rule.relevance(conv, x, r, y)
    assert rule.signed and rule.shortcut == (not ill)
    if ill:
        assert torch.equal(got, exact)
        shortcut = rule._signed_pointwise_from_output(conv, x, r, y)
        assert (shortcut - exact).abs().amax() > SHORTCUT_TOLERANCE * exact.abs().amax()  # what it kept out
    else:
        torch.testing.assert_close(got, exact, rtol=0, atol=1e-5 * float(exact.abs().amax()))


class _GenericLinear(nn.Linear):
    """An ``nn.Linear`` subclass: the rules' generic (nested autograd) path."""


@pytest.mark.parametrize("rows", ["one", "all"])
def test_linear_zplus_directly_equals_the_generic_path(rows):
    """A linear layer's z+ without the nested autograd pass gives the generic path's relevance bit for bit, also
    where relevance starts at one output (a class logit: the product over that row alone)."""
    from vital_fv.relevance.rules import ZPlusRule

    torch.manual_seed(0)
    linear = nn.Linear(12, 9)
    with torch.no_grad():
        linear.weight[4].neg_().abs_().neg_()  # output 4: no positive weight
    generic = _GenericLinear(12, 9)
    generic.load_state_dict(linear.state_dict())
    x = torch.rand(3, 12)
    r = torch.rand(3, 9) if rows == "all" else torch.zeros(3, 9).index_fill_(1, torch.tensor([4]), 1.0)
    fast, slow = ZPlusRule(), ZPlusRule()
    a, b = fast.relevance(linear, x, r), slow.relevance(generic, x, r)
    assert torch.equal(a, b)
    torch.testing.assert_close(a.sum(), r.sum(), rtol=1e-4, atol=0)
