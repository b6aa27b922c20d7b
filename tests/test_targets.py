import pytest

from vital_fv.errors import VitalError
from vital_fv.targets import ClassTarget, resolve_class

NAMES = ["tench", "goldfish", "tabby", "tiger cat", "Egyptian cat", "espresso"]


def test_index_name_and_digit_string():
    assert resolve_class(5, NAMES) == (5, "espresso")
    assert resolve_class("5", NAMES) == (5, "espresso")
    assert resolve_class("Tiger Cat", NAMES) == (3, "tiger cat")


def test_unknown_name_suggests_close_names():
    with pytest.raises(VitalError, match=r"unknown class 'tabby cat'.*'tabby'.*vital classes"):
        resolve_class("tabby cat", NAMES)


def test_out_of_range_index():
    with pytest.raises(VitalError, match="out of range: the model has 6 classes"):
        resolve_class(6, NAMES)


def test_slug_is_file_safe():
    assert ClassTarget("Egyptian cat").slug(NAMES) == "4-egyptian-cat"


def test_wordnet_synonyms_are_accepted_when_unambiguous(lite0):
    assert ClassTarget("tabby cat").resolve(lite0.class_names, lite0.class_synonyms) == (281, "tabby")
    with pytest.raises(VitalError, match="unknown class"):
        resolve_class("tabby cat", lite0.class_names)  # no synonyms given


def test_unit_targets_parse_and_read_values():
    import torch

    from vital_fv.targets import UnitTarget

    u = UnitTarget.parse("layer3.5:100@7,7")
    assert u == UnitTarget("layer3.5", 100, (7, 7)) and u.label() == "layer3.5:100@7,7"
    assert UnitTarget.parse("blocks.5.2:17").position is None
    with pytest.raises(VitalError, match="LAYER:CHANNEL"):
        UnitTarget.parse("blocks.5.2")
    act = torch.arange(2 * 3 * 4.0).view(2, 3, 4)
    assert UnitTarget("l", 1).value(act) == act[1].mean()
    assert UnitTarget("l", 1, (2, 3)).value(act) == act[1, 2, 3]
    tokens = torch.arange(5 * 6.0).view(5, 6)  # (T, D)
    assert UnitTarget("l", 4).value(tokens) == tokens[:, 4].mean()
    with pytest.raises(VitalError, match="channel out of range"):
        UnitTarget("l", 9).value(act)
