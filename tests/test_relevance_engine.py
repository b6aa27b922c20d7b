import pytest
import torch
from torch import nn

from vital_fv.errors import VitalError
from vital_fv.relevance import (
    Relevance,
    channel_importance,
    normalize_relevance,
    parse_method,
    silent,
)
from vital_fv.targets import DirectionTarget, UnitTarget


def test_neuron_relevance_stays_in_the_neurons_receptive_field():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1), nn.ReLU())
    x = torch.rand(1, 3, 16, 16)
    with Relevance(net, ["1"], "lrp") as rel:
        out = rel(x, [UnitTarget("3", 1, (8, 8))])
    r = out.rel["1"].view(4, 16, 16)
    inside = r[:, 7:10, 7:10].abs().sum()
    assert inside > 0 and float(r.abs().sum() - inside) == pytest.approx(0.0, abs=1e-6)


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
