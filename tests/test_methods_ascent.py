import pytest
import torch

from vital_fv import ClassTarget, Job, VitalError
from vital_fv.methods import run_method


def test_fourier_and_maco_raise_a_units_activation(tiny_spec):
    from vital_fv.targets import UnitTarget

    unit = UnitTarget("act2", 3)
    for method in ("fourier", "maco"):
        (r,) = run_method(method, tiny_spec, [Job(unit, None, 0)], steps=25, lr=0.2 if method == "fourier" else 1.0,
                            progress=False)
        assert r.record["target"] == {"kind": "unit", "layer": "act2", "channel": 3, "position": None}
        curve = r.record["loss"]["objective"]
        assert min(curve[-5:]) < curve[0], method
    with pytest.raises(VitalError, match="deepinversion cannot show a unit target"):
        run_method("deepinversion", tiny_spec, [Job(unit, None, 0)], steps=1, progress=False)
    with pytest.raises(VitalError, match="unknown layer 'act9'"):
        run_method("maco", tiny_spec, [Job(UnitTarget("act9", 0), None, 0)], steps=1, progress=False)


def test_ctrl_c_in_a_baseline_keeps_the_image_marked_interrupted(tiny_spec):
    calls = []

    def interrupt(*_a):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt

    handle = tiny_spec.module.conv1.register_forward_hook(interrupt)
    try:
        (r,) = run_method("fourier", tiny_spec, [Job(ClassTarget(1), None, 0)], steps=20, progress=False)
    finally:
        handle.remove()
    assert r.status == "interrupted" and r.record["steps_done"] == 3 and torch.isfinite(r.image).all()
