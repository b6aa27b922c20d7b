import json

import numpy as np
import pytest
import torch

from vital_fv import metrics
from vital_fv.errors import VitalError


def _frechet_from_stats_reference(mu1, s1, mu2, s2):
    """SVD-free reference: tr sqrt(S1 S2) from the (real, non-negative) eigenvalues of the product itself."""
    eig = np.linalg.eigvals(s1 @ s2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.sqrt(np.clip(eig.real, 0, None)).sum())


def test_frechet_distance_matches_the_closed_form_for_known_gaussians():
    rng = np.random.default_rng(0)
    mu1, mu2 = np.array([0.0, 1.0, -1.0]), np.array([0.5, 0.0, 0.0])
    var1, var2 = np.array([1.0, 2.0, 0.5]), np.array([0.25, 1.0, 1.0])
    # diagonal covariances commute: FD = |mu1 - mu2|^2 + sum (sqrt(v1) - sqrt(v2))^2
    closed = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(var1) - np.sqrt(var2)) ** 2).sum()
    x = rng.normal(mu1, np.sqrt(var1), size=(200_000, 3))
    y = rng.normal(mu2, np.sqrt(var2), size=(200_000, 3))
    assert metrics.frechet_distance(x, y) == pytest.approx(closed, abs=0.02)
    assert metrics.frechet_distance(x, x) == pytest.approx(0.0, abs=1e-6)


def test_frechet_distance_matches_an_svd_free_reference_on_small_data():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(12, 4)), rng.normal(1.0, 2.0, size=(9, 4))
    ref = _frechet_from_stats_reference(x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False))
    assert metrics.frechet_distance(x, y) == pytest.approx(ref, rel=1e-6)
    # fewer items than dimensions: singular covariances, still finite and non-negative
    fd = metrics.frechet_distance(rng.normal(size=(3, 16)), rng.normal(size=(4, 16)))
    assert np.isfinite(fd) and fd >= 0
    with pytest.raises(VitalError, match="at least two"):
        metrics.frechet_distance(x[:1], y)


@pytest.mark.parametrize(("n", "m", "d"), [(20, 30, 256), (100, 60, 1280), (40, 50, 8)])
def test_the_low_rank_frechet_equals_the_exact_one(n, m, d):
    """Fewer samples than dimensions (the span route) and more (the d x d route) against the full computation."""
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) / np.sqrt(d)
    y = rng.normal(0.3, 1.5, size=(m, d))
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    exact = float(((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2)
                  - 2 * np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum())
    # the d x d route clips the square roots of round-off eigenvalues of rank-deficient products: 1e-7 relative
    assert metrics.frechet_distance(x, y) == pytest.approx(exact, rel=1e-6)


def test_kid_is_unbiased_on_identical_distributions_and_grows_with_a_shift():
    rng = np.random.default_rng(2)
    same = [metrics.kid(rng.normal(size=(60, 8)), rng.normal(size=(60, 8)), subsets=1) for _ in range(200)]
    shifted = metrics.kid(rng.normal(size=(60, 8)), rng.normal(0.7, 1.0, size=(60, 8)), subsets=1)
    assert abs(np.mean(same)) < 0.05 * shifted
    assert min(same) < 0 < max(same)  # unbiased: single estimates fall on both sides of zero


def test_auc_and_mad_by_hand():
    fv, ctrl = [3.0, 1.0], [0.0, 2.0, 4.0]
    pairs = [(f > c) + 0.5 * (f == c) for f in fv for c in ctrl]
    assert metrics.cosy_auc(fv, ctrl) == pytest.approx(sum(pairs) / len(pairs))
    assert metrics.cosy_mad(fv, ctrl) == pytest.approx((2.0 - 2.0) / np.std(ctrl))
    assert metrics.cosy_mad([6.0], ctrl) == pytest.approx(4.0 / np.std(ctrl))
    with pytest.raises(VitalError):
        metrics.cosy_mad([1.0], [2.0, 2.0])


def test_bootstrap_interval_contains_the_estimate():
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 3)), rng.normal(0.5, 1.0, size=(40, 3))
    lo, hi = metrics.bootstrap_ci(metrics.frechet_distance, x, y, n_boot=50)
    assert lo < metrics.frechet_distance(x, y) < hi


class _StandInClip(torch.nn.Module):
    """A CLIP stand-in: a bag-of-tokens text encoder and an image 'encoder' that returns a chosen vector."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb = torch.nn.Embedding(49408, 16)
        self.image_vector = torch.zeros(16)

    def encode_text(self, tokens):
        return self.emb(tokens).sum(1)

    def encode_image(self, x):
        return self.image_vector.expand(x.shape[0], -1)


def test_clip_zero_shot_gives_the_class_whose_text_embedding_matches():
    open_clip = pytest.importorskip("open_clip")
    model = _StandInClip()
    zs = metrics.ClipZeroShot(model, open_clip.get_tokenizer("ViT-B-32"), image_size=32,
                              class_names=["goldfish", "tabby cat", "espresso", "volcano"])
    assert zs.text.shape == (4, 16)
    torch.testing.assert_close(zs.text.norm(dim=-1), torch.ones(4))
    model.image_vector = zs.text[2] * 3.0
    logits = zs.logits(torch.rand(2, 3, 40, 40))
    assert logits.argmax(-1).tolist() == [2, 2]
    assert metrics.topk_hits(logits, [2, 0], 1) == [True, False]


def test_clip_loads_a_users_checkpoint_file(tmp_path):
    """The loading path with a small random open_clip model saved to disk (no CLIP weights exist offline)."""
    open_clip = pytest.importorskip("open_clip")
    cfg = {"embed_dim": 16, "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16,
                                           "head_width": 16},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
    (tmp_path / "cfg").mkdir()
    (tmp_path / "cfg" / "vital-tiny-clip.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / "cfg")
    torch.save(open_clip.create_model("vital-tiny-clip").state_dict(), tmp_path / "tiny.pt")
    zs = metrics.load_clip(str(tmp_path / "tiny.pt"), arch="vital-tiny-clip", class_names=["dog", "cat", "car"])
    assert zs.image_size == 32 and zs.text.shape == (3, 16)
    assert zs.logits(torch.rand(3, 3, 64, 64)).shape == (3, 3)
    with pytest.raises(VitalError, match="not found"):
        metrics.load_clip(str(tmp_path / "missing.pt"))


def test_penultimate_features_and_logits(tiny_spec):
    logits, feats = metrics.logits_and_features(tiny_spec, torch.rand(5, 3, 50, 50), batch_size=2)
    assert logits.shape == (5, 4) and feats.shape == (5, 16)
    head = tiny_spec.classifier_head()
    torch.testing.assert_close(head(torch.from_numpy(feats)), logits, rtol=1e-4, atol=1e-5)


def test_spectrum_measure_tells_white_noise_from_one_over_f_images():
    rng = np.random.default_rng(0)
    n = 128
    fy, fx = np.fft.fftfreq(n)[:, None], np.fft.fftfreq(n)[None, :]
    r = np.sqrt(fx**2 + fy**2)
    r[0, 0] = 1
    pink = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(n, n))) / r))  # amplitude 1/f: power 1/f^2
    pink = (pink - pink.min()) / (pink.max() - pink.min())
    white = metrics.spectrum_stats(rng.random((3, n, n)))
    natural = metrics.spectrum_stats(torch.from_numpy(np.stack([pink] * 3)))
    assert abs(white["slope"]) < 0.3 and abs(natural["slope"] + 2) < 0.3
    assert white["hf_share"] > 0.6 > 0.2 > natural["hf_share"]
    freqs, power = metrics.radial_power(pink)
    assert freqs.min() > 0 and freqs.max() <= 0.5 and power[0] > 100 * power[-1]
