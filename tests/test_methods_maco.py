import numpy as np
import pytest
import torch

from vital_fv import ClassTarget, Job, VitalError, references
from vital_fv.methods import run_method
from vital_fv.methods.maco import compute_spectrum, load_spectrum, maco_image, maco_spatial


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
    (r,) = run_method("maco", tiny_spec, [Job(ClassTarget(1), None, 0)], steps=3, size=48, spectrum=path,
                        progress=False)
    assert np.array_equal(np.load(path), before)
    assert r.image.shape == (3, 48, 48) and r.alpha.shape == (3, 48, 48) and r.alpha.sum() > 0
    assert r.record["spectrum"] == str(path) and r.record["method"] == "maco"
    alpha = r.transparency()
    assert alpha.max() == pytest.approx(1.0) and alpha.min() >= 0
    png, _ = r.save(tmp_path / "m.png")
    assert png.with_suffix(".rgba.png").exists() and png.with_suffix(".alpha.npy").exists()


def test_bad_spectrum_file_is_a_clear_error(tmp_path):
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


def test_a_seed_gives_the_same_image_alone_and_in_a_batch(tiny_spec):
    """Each item's crops and noise come from its own generator (issue 30: the noise was all drawn from the first
    item's, so a seed's image depended on its place in the batch). float32: the batch's sums differ in the last
    bits only."""
    jobs = [Job(ClassTarget(1), None, 3), Job(ClassTarget(2), None, 5)]
    together = run_method("maco", tiny_spec, jobs, steps=2, progress=False)
    for job, batched in zip(jobs, together, strict=True):
        (alone,) = run_method("maco", tiny_spec, [job], steps=2, progress=False)
        assert torch.allclose(alone.image, batched.image, atol=1e-4), job


def test_batched_crops_are_each_items_own_crops():
    from vital_fv.methods.maco import random_crops, random_crops_batch

    imgs = torch.rand(3, 3, 40, 40)
    together = random_crops_batch(imgs, [torch.Generator().manual_seed(s) for s in (0, 1, 2)], 4, 16, 0.6)
    alone = torch.cat([random_crops(img, torch.Generator().manual_seed(s), 4, 16, 0.6)
                       for img, s in zip(imgs, (0, 1, 2), strict=True)])
    assert together.shape == (12, 3, 16, 16) and torch.equal(together, alone)


def test_crops_through_the_model_in_chunks_give_the_same_images(tiny_spec):
    """A batch's crops may go through the model a chunk at a time (on a CPU more crops per pass cost more per
    crop); the gradient is the same, so the images are, up to float32 sums."""
    from dataclasses import replace

    from vital_fv.methods.maco import Maco

    quick = Maco.presets["quick"]  # 4 crops an image: 8 for the two jobs
    jobs = [Job(ClassTarget(1), None, 3), Job(ClassTarget(2), None, 5)]
    whole = run_method("maco", tiny_spec, jobs, preset=replace(quick, crop_chunk=8), steps=3, progress=False)
    rows: list[int] = []
    handle = tiny_spec.module.register_forward_pre_hook(lambda _m, args: rows.append(args[0].shape[0]))
    try:
        parts = run_method("maco", tiny_spec, jobs, preset=replace(quick, crop_chunk=3), steps=3, progress=False)
    finally:
        handle.remove()
    assert 3 in rows and max(rows) <= 3  # chunks of 3, 3, 2 crops (and the final top-5 of 2 images)
    for a, b in zip(whole, parts, strict=True):
        assert torch.allclose(a.image, b.image, atol=1e-5)
        assert a.record["loss"]["objective"] == pytest.approx(b.record["loss"]["objective"], rel=1e-4)
    with pytest.raises(VitalError, match="crop_chunk"):
        replace(quick, crop_chunk=0)
