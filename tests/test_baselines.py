import numpy as np
import pytest
import torch
from torch import nn

from vital_fv import ClassTarget, Job, VitalError, load_model, references
from vital_fv.baselines import (
    bn_statistics_loss,
    compute_spectrum,
    fourier_image,
    fourier_scale,
    load_spectrum,
    maco_image,
    maco_spatial,
    run_baseline,
)
from vital_fv.zoo import Preprocess


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                  nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.fc = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc(self.body(x).mean(dim=(2, 3)))


def _spec(module, size=32):
    return load_model(module, preprocess=Preprocess(size, size, (0.5,) * 3, (0.25,) * 3),
                      class_names=["a", "b", "c", "d"][: module.fc.out_features], name="tiny")


def test_fourier_parameterization_gives_images_in_range():
    spec = torch.randn(2, 3, 32, 17, 2)
    img = fourier_image(spec, fourier_scale(32), 32)
    assert img.shape == (2, 3, 32, 32) and img.min() >= 0 and img.max() <= 1
    assert fourier_scale(32)[0, 0] > fourier_scale(32)[16, 16]  # 1/f: low frequencies weigh more


def test_maco_keeps_the_magnitude_and_trains_only_the_phase():
    torch.manual_seed(0)
    magnitude = torch.rand(3, 32, 17) + 0.5
    phase = torch.randn(1, 3, 32, 17)
    spatial = maco_spatial(phase, magnitude, 32)
    ratio = torch.fft.rfft2(spatial)[0].abs()[:, :, 1:16] / magnitude[:, :, 1:16]  # interior (Hermitian-free) bins
    ratio = ratio[:, 1:]  # and without the DC row
    assert torch.allclose(ratio, ratio.mean(), rtol=1e-3)
    img = maco_image(phase, magnitude, 32)
    assert img.shape == (1, 3, 32, 32) and img.min() >= 0 and img.max() <= 1


def test_maco_run_changes_phase_not_magnitude_and_keeps_a_transparency_map(tmp_path, tiny_spec):
    path = tmp_path / "mag.npy"
    mag = compute_spectrum([torch.rand(3, 40, 40) for _ in range(3)], size=32)
    np.save(path, mag.numpy())
    before = np.load(path).copy()
    (r,) = run_baseline(tiny_spec, [Job(ClassTarget(1), None, 0)], "maco", steps=3, size=48, spectrum=path,
                        progress=False)
    assert np.array_equal(np.load(path), before)
    assert r.image.shape == (3, 48, 48) and r.alpha.shape == (3, 48, 48) and r.alpha.sum() > 0
    assert r.record["spectrum"] == str(path) and r.record["method"] == "maco"
    alpha = r.transparency()
    assert alpha.max() == pytest.approx(1.0) and alpha.min() >= 0
    png, _ = r.save(tmp_path / "m.png")
    assert png.with_suffix(".rgba.png").exists() and png.with_suffix(".alpha.npy").exists()


def test_fourier_raises_the_target_logit(tiny_spec):
    (r,) = run_baseline(tiny_spec, [Job(ClassTarget(2), None, 0)], "fourier", steps=30, lr=0.1, progress=False)
    curve = r.record["loss"]["objective"]  # the negative logit
    assert curve[-1] < curve[0]
    assert r.record["references"] is None and r.image.shape == (3, 32, 32)


def test_bn_statistics_loss_is_zero_on_the_batch_that_gave_the_statistics():
    torch.manual_seed(0)
    net = BNNet()
    x = torch.randn(6, 3, 16, 16)
    stats = []
    hooks = [m.register_forward_hook(lambda m, i, o: stats.append((i[0].mean((0, 2, 3)),
                                                                 i[0].var((0, 2, 3), unbiased=False))))
             for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    net.train()
    with torch.no_grad():
        net(x)
    for h in hooks:
        h.remove()
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    for bn, (mean, var) in zip(bns, stats, strict=True):
        bn.running_mean.copy_(mean)
        bn.running_var.copy_(var)
    net.eval()
    with torch.no_grad():
        assert bn_statistics_loss(net, x).item() < 1e-4
        assert bn_statistics_loss(net, torch.randn(6, 3, 16, 16) * 3 + 1).item() > 0.1


def test_deepinversion_runs_on_a_bn_model_and_refuses_models_without_bn(tiny_spec):
    spec = _spec(BNNet())
    res = run_baseline(spec, [Job(ClassTarget(0), None, 0), Job(ClassTarget(2), None, 1)], "deepinversion",
                       steps=20, progress=False)
    assert [r.record["target"]["index"] for r in res] == [0, 2]
    assert res[1].record["loss"]["objective"][-1] < res[1].record["loss"]["objective"][0]  # cross-entropy falls
    with pytest.raises(VitalError, match="no BatchNorm layer"):
        run_baseline(tiny_spec, [Job(ClassTarget(0), None, 0)], "deepinversion", steps=1, progress=False)


def test_unknown_method_and_bad_spectrum_file(tiny_spec, tmp_path):
    with pytest.raises(VitalError, match="unknown method 'lucid'"):
        run_baseline(tiny_spec, [Job(ClassTarget(0), None, 0)], "lucid")
    bad = tmp_path / "bad.npy"
    bad.write_bytes(b"junk")
    with pytest.raises(VitalError, match="cannot read spectrum file .*bad.npy"):
        load_spectrum(bad, 32)


def test_offline_spectrum_falls_off_with_frequency():
    mag, source = load_spectrum(None, 64)
    assert source.endswith("spectrum_decorrelated.npy") and mag.shape == (3, 64, 33)
    assert mag[0, 1, 1] > 5 * mag[0, 20, 20]
    photos = references.offline_photos()
    assert len(photos) >= 10


def test_fourier_and_maco_raise_a_units_activation(tiny_spec):
    from vital_fv.targets import UnitTarget

    unit = UnitTarget("act2", 3)
    for method in ("fourier", "maco"):
        (r,) = run_baseline(tiny_spec, [Job(unit, None, 0)], method, steps=25, lr=0.2 if method == "fourier" else 1.0,
                            progress=False)
        assert r.record["target"] == {"kind": "unit", "layer": "act2", "channel": 3, "position": None}
        curve = r.record["loss"]["objective"]
        assert min(curve[-5:]) < curve[0], method
    with pytest.raises(VitalError, match="inverts classes only"):
        run_baseline(tiny_spec, [Job(unit, None, 0)], "deepinversion", steps=1, progress=False)
    with pytest.raises(VitalError, match="unknown layer 'act9'"):
        run_baseline(tiny_spec, [Job(UnitTarget("act9", 0), None, 0)], "maco", steps=1, progress=False)


def test_ctrl_c_in_a_baseline_keeps_the_image_marked_interrupted(tiny_spec):
    calls = []

    def interrupt(*_a):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt

    handle = tiny_spec.module.conv1.register_forward_hook(interrupt)
    try:
        (r,) = run_baseline(tiny_spec, [Job(ClassTarget(1), None, 0)], "fourier", steps=20, progress=False)
    finally:
        handle.remove()
    assert r.status == "interrupted" and r.record["steps_done"] == 3 and torch.isfinite(r.image).all()
