"""One walk over a results folder: results with their images, and every other JSON file named with why."""

from __future__ import annotations

import pytest
from gallery_helpers import results_folder

from vital_fv.errors import VitalError
from vital_fv.records import find_results


def test_results_and_problems(tmp_path):
    root = results_folder(tmp_path / "r")
    (root / ".hidden").mkdir()
    (root / ".hidden" / "x.json").write_text("{")
    found, problems = find_results(root, skip=lambda p: p.name == "circuit.json")
    assert len(found) == 9 and all(p.with_suffix(".png").is_file() for p, _ in found)
    kinds = {p.path.name: p.kind for p in problems}
    assert kinds == {"broken.json": "unreadable", "notes.json": "other", "orphan.json": "no-image"}
    with pytest.raises(VitalError, match="is not a folder"):
        find_results(tmp_path / "nope")
