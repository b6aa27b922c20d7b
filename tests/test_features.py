import pytest
import torch

from vital_fv.errors import VitalError
from vital_fv.features import as_channels_positions, capture, layer_shapes, resolve_layers


def _hook_count(module):
    return sum(len(m._forward_hooks) for m in module.modules())


def test_capture_reads_layers_and_removes_hooks(tiny_spec):
    m = tiny_spec.module
    with capture(m, ["act1", "act2"]) as feats:
        m(torch.randn(2, 3, 32, 32))
        assert feats["act1"].shape == (2, 8, 32, 32)
        assert feats["act2"].shape == (2, 16, 16, 16)
        assert _hook_count(m) == 2
    assert _hook_count(m) == 0


def test_hooks_are_removed_after_an_exception(tiny_spec):
    m = tiny_spec.module
    with pytest.raises(RuntimeError), capture(m, ["act1"]):
        m(torch.randn(1, 5, 32, 32))  # wrong channel count
    assert _hook_count(m) == 0


def test_unknown_layer_names_close_matches_and_the_listing_command(tiny_spec):
    with pytest.raises(VitalError, match=r"unknown layer 'act3'.*act1.*vital layers --model tiny"):
        resolve_layers(tiny_spec.module, ["act3"], "tiny")


def test_channels_positions_views():
    assert as_channels_positions(torch.zeros(2, 5, 3, 4)).shape == (2, 5, 12)
    tokens = torch.arange(2 * 7 * 6.0).view(2, 7, 6)  # (B, T, D)
    cp = as_channels_positions(tokens)
    assert cp.shape == (2, 6, 7) and cp[1, 4, 3] == tokens[1, 3, 4]


def test_layer_shapes_lists_modules_in_tree_order(tiny_spec):
    shapes = dict(layer_shapes(tiny_spec.module, 32))
    assert shapes["conv2"] == (16, 16, 16) and shapes["fc"] == (4,)
    assert _hook_count(tiny_spec.module) == 0
