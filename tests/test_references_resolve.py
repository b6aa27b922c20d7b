"""Reference sources resolve in the library, for the CLI and Python alike: exactly one source, checked first."""

import pytest

from vital_fv import ClassTarget, UnitTarget, VitalError, references


def test_reference_sources_resolve_in_the_library(tiny_spec, refs_dir):
    unit = UnitTarget("act2", 0)
    with pytest.raises(VitalError, match="--pool ranks images by a class"):
        references.resolve(tiny_spec, unit, pool=refs_dir)
    with pytest.raises(VitalError, match="give one reference source, not --refs and --pool"):
        references.resolve(tiny_spec, ClassTarget(1), refs_dir, pool=refs_dir)
    with pytest.raises(VitalError, match="--images mines references for a unit"):
        references.resolve(tiny_spec, ClassTarget(1), images=refs_dir)
    with pytest.raises(VitalError, match="needs the unit's references"):
        references.resolve(tiny_spec, unit)
    with pytest.raises(VitalError, match="no references for 'one'"):
        references.resolve(tiny_spec, ClassTarget(1))
    folder = references.resolve(tiny_spec, ClassTarget(1), refs_dir, n=2)
    assert folder.count == 2 and folder.describe()["label"] == str(refs_dir)
    files = references.resolve(tiny_spec, ClassTarget(1), sorted(refs_dir.iterdir())[:2])
    assert files.describe()["label"] == "files" and len(files.images) == 2
    pooled = references.resolve(tiny_spec, ClassTarget(1), pool=refs_dir, n=2)
    assert pooled.count == 2 and "pool_scores" in pooled.info
    mined = references.resolve(tiny_spec, unit, images=refs_dir, n=2, progress=False)
    assert mined.info["mining"]["unit"] == "act2:0" and len(mined.images) == 2
