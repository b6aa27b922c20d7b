import torch

from vital_fv import ClassTarget, Job
from vital_fv.methods import run_method
from vital_fv.methods.fourier import fourier_image, fourier_scale


def test_fourier_parameterization_gives_images_in_range():
    spec = torch.randn(2, 3, 32, 17, 2)
    img = fourier_image(spec, fourier_scale(32), 32)
    assert img.shape == (2, 3, 32, 32) and img.min() >= 0 and img.max() <= 1
    assert fourier_scale(32)[0, 0] > fourier_scale(32)[16, 16]  # 1/f: low frequencies weigh more


def test_fourier_raises_the_target_logit(tiny_spec):
    (r,) = run_method("fourier", tiny_spec, [Job(ClassTarget(2), None, 0)], steps=30, lr=0.1, progress=False)
    curve = r.record["loss"]["objective"]  # the negative logit
    assert curve[-1] < curve[0]
    assert r.record["references"] is None and r.image.shape == (3, 32, 32)


def test_a_preset_object_runs_and_its_record_saves(tiny_spec, tmp_path):
    """A changed preset (dataclasses.replace of a registry entry) is recorded field by field and saves as JSON."""
    import json
    from dataclasses import replace

    from vital_fv.methods import get_method

    preset = replace(get_method("fourier").presets["quick"], steps=3)
    (r,) = run_method("fourier", tiny_spec, [Job(ClassTarget(2), None, 0)], preset=preset, progress=False)
    png, record = r.save(tmp_path / "f.png")
    saved = json.loads(record.read_text())["optimizer"]
    assert saved["preset"] == "custom" and saved["steps"] == 3
