"""Which targets an atlas covers, and the errors for selections that cannot be."""

from __future__ import annotations

import pytest

from vital_fv.atlas.selection import select_classes, select_units
from vital_fv.errors import VitalError
from vital_fv.targets import ClassTarget, UnitTarget

NAMES = ["zero", "one", "two", "three"]


def test_classes_by_all_range_list_and_file(tmp_path):
    assert select_classes("all", NAMES) == [ClassTarget(i) for i in range(4)]
    assert select_classes("1-2", NAMES) == [ClassTarget(1), ClassTarget(2)]
    assert select_classes("three,0,three", NAMES) == [ClassTarget(3), ClassTarget(0)]
    f = tmp_path / "c.txt"
    f.write_text("# wanted\ntwo\n\n1\n")
    assert select_classes(str(f), NAMES) == [ClassTarget(2), ClassTarget(1)]


@pytest.mark.parametrize(("text", "message"), [
    ("0-99999", "class range 0-99999 is outside the model's 4 classes (0-3)"),
    ("3-1", "class range 3-1 is outside"),
    (" , ", "--classes names no class"),
    ("fuor", "unknown class 'fuor'"),
])
def test_bad_class_selections(text, message):
    with pytest.raises(VitalError, match=message.replace("(", r"\(").replace(")", r"\)")):
        select_classes(text, NAMES)


def test_units_by_all_range_and_list():
    def channels_of(layer):
        if layer != "act2":
            raise VitalError(f"unknown layer '{layer}'")
        return 4

    assert select_units(["act2:all"], channels_of) == [UnitTarget("act2", c) for c in range(4)]
    assert select_units(["act2:1-2", "act2:2,3"], channels_of) == [UnitTarget("act2", c) for c in (1, 2, 3)]
    for bad, message in [(["act2:0-9"], "outside the layer's 4 channels"), (["act2:7"], "channel 7 is out of range"),
                         (["act2"], "write LAYER:all"), (["nope:all"], "unknown layer 'nope'"),
                         (["act2:x"], "channels are all, A-B")]:
        with pytest.raises(VitalError, match=message):
            select_units(bad, channels_of)
