"""The paper's metrics (SPEC §7): accuracy of a model on visualizations, Fréchet distance and KID on penultimate
features, CLIP zero-shot, and CoSy's AUC / MAD for units.

The Fréchet distance is exact, without ``scipy.linalg.sqrtm`` (pytorch-fid also relies on a ``disp`` argument that
SciPy's current release removed). With S1 = AᵀA and S2 = BᵀB (A, B the centred features over sqrt(n - 1)), the
nonzero eigenvalues of S1 S2 are those of (A Bᵀ)(A Bᵀ)ᵀ, so tr(sqrt(S1 S2)) is the nuclear norm of the n × m
matrix A Bᵀ: with fewer samples than feature dimensions (visualizations: n ≪ d = 1280) one small SVD replaces an
eigendecomposition of a d × d matrix, and a bootstrap of 200 resamples takes a fraction of a second. With more
samples than dimensions the d × d route is cheaper: tr(sqrt(S1 S2)) = sum(sqrt(eig(sqrt(S1) S2 sqrt(S1)))).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch

from .device import holds_model
from .errors import VitalError


def _psd_sqrt(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets x (n, d) and y (m, d) (exact; see the module)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise VitalError(f"feature sets must be (n, d) with the same d, got {x.shape} and {y.shape}")
    if len(x) < 2 or len(y) < 2:
        raise VitalError("the Fréchet distance needs at least two items on each side")
    mu1, mu2 = x.mean(0), y.mean(0)
    a = (x - mu1) / np.sqrt(len(x) - 1)
    b = (y - mu2) / np.sqrt(len(y) - 1)
    tr1, tr2 = float((a * a).sum()), float((b * b).sum())
    d = x.shape[1]
    if len(x) * len(y) <= d * d:  # the samples' span: the nuclear norm of A Bᵀ (n x m)
        tr_sqrt = float(np.linalg.svd(a @ b.T, compute_uv=False).sum())
    else:  # the d x d route
        r1 = _psd_sqrt(a.T @ a)
        tr_sqrt = float(np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ (b.T @ b) @ r1), 0, None)).sum())
    return float(((mu1 - mu2) ** 2).sum() + tr1 + tr2 - 2 * tr_sqrt)


def kid(x: np.ndarray, y: np.ndarray, subsets: int = 50, subset_size: int = 1000, seed: int = 0) -> float:
    """Kernel Inception Distance: the unbiased MMD² with the cubic polynomial kernel (x·y / d + 1)³, averaged over
    random subsets (all items when there are fewer than ``subset_size``)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    n = min(len(x), len(y), subset_size)
    if n < 2:
        raise VitalError("KID needs at least two items on each side")
    rng = np.random.default_rng(seed)
    d = x.shape[1]
    vals = []
    for _ in range(subsets if n < min(len(x), len(y)) else 1):
        a = x[rng.choice(len(x), n, replace=False)] if len(x) > n else x
        b = y[rng.choice(len(y), n, replace=False)] if len(y) > n else y
        vals.append(_mmd2_unbiased(a, b, d))
    return float(np.mean(vals))


def _mmd2_unbiased(a: np.ndarray, b: np.ndarray, d: int) -> float:
    kaa = (a @ a.T / d + 1) ** 3
    kbb = (b @ b.T / d + 1) ** 3
    kab = (a @ b.T / d + 1) ** 3
    n, m = len(a), len(b)
    return float((kaa.sum() - np.trace(kaa)) / (n * (n - 1)) + (kbb.sum() - np.trace(kbb)) / (m * (m - 1))
                 - 2 * kab.mean())


def bootstrap_ci(
    stat: Callable[[np.ndarray, np.ndarray], float],
    x: np.ndarray,
    y: np.ndarray,
    n_boot: int = 200,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``stat(x, y)``, resampling both sets with replacement."""
    rng = np.random.default_rng(seed)
    vals = [stat(x[rng.integers(0, len(x), len(x))], y[rng.integers(0, len(y), len(y))]) for _ in range(n_boot)]
    lo, hi = np.percentile(vals, [50 * (1 - level), 50 * (1 + level)])
    return float(lo), float(hi)


def cosy_auc(fv: Sequence[float], controls: Sequence[float]) -> float:
    """CoSy AUC: ROC-AUC separating visualizations (label 1) from the unit's top natural images (label 0) by the
    unit's activation; 0.5 = indistinguishable, above = the visualizations activate it more."""
    from sklearn.metrics import roc_auc_score

    if not fv or not controls:
        raise VitalError("AUC needs visualizations and controls")
    return float(roc_auc_score([1] * len(fv) + [0] * len(controls), [*fv, *controls]))


def cosy_mad(fv: Sequence[float], controls: Sequence[float]) -> float:
    """CoSy MAD: (mean act(FV) - mean act(controls)) / std(controls)."""
    c = np.asarray(controls, np.float64)
    sd = c.std()
    if len(c) < 2 or sd == 0:
        raise VitalError("MAD needs at least two controls with different activations")
    return float((np.mean(fv) - c.mean()) / sd)


def topk_hits(logits: torch.Tensor, labels: Sequence[int], k: int) -> list[bool]:
    """Whether each item's label is among its top-k logits."""
    top = logits.topk(min(k, logits.shape[-1]), dim=-1).indices.cpu()
    return [int(lab) in row.tolist() for lab, row in zip(labels, top, strict=True)]


@holds_model
@torch.no_grad()
def logits_and_features(spec: Any, images01: torch.Tensor, batch_size: int = 32) -> tuple[torch.Tensor, np.ndarray]:
    """Logits and penultimate features (the classifier head's input) of images in [0, 1] at any size: each is
    resized to the model's input size first."""
    from torch.nn import functional as F

    module = spec.module
    device = next(module.parameters()).device
    head = spec.classifier_head()
    store: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _m, inp: store.append(inp[0].flatten(1).float().cpu()))
    size = spec.preprocess.input_size
    logits = []
    try:
        for i in range(0, len(images01), batch_size):
            x = images01[i : i + batch_size].float()
            if x.shape[-1] != size or x.shape[-2] != size:
                x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
            logits.append(module(spec.preprocess.normalize(x.clamp(0, 1)).to(device)).float().cpu())
    finally:
        handle.remove()
    return torch.cat(logits), torch.cat(store).numpy()


class ClipZeroShot:
    """CLIP zero-shot classification (the paper's transfer metric): per class, the text embeddings of the prompt
    templates are normalized, averaged and normalized again; an image's class scores are cosine similarities.

    ``model`` is an open_clip model (``encode_image``/``encode_text``), ``tokenizer`` its tokenizer; templates and
    class names default to those that ship with open_clip (80 ImageNet templates, ImageNet class names).
    """

    def __init__(self, model: Any, tokenizer: Any, image_size: int = 224,
                 mean: Sequence[float] = (0.48145466, 0.4578275, 0.40821073),
                 std: Sequence[float] = (0.26862954, 0.26130258, 0.27577711),
                 class_names: Sequence[str] | None = None, templates: Sequence[Callable[[str], str]] | None = None,
                 batch_size: int = 100) -> None:
        import open_clip

        self.model = model.eval()
        self.image_size = image_size
        self.mean = torch.tensor(mean).view(1, 3, 1, 1)
        self.std = torch.tensor(std).view(1, 3, 1, 1)
        self.class_names = list(class_names or open_clip.IMAGENET_CLASSNAMES)
        templates = list(templates or open_clip.OPENAI_IMAGENET_TEMPLATES)
        device = next(model.parameters()).device
        weights = []
        with torch.no_grad():
            for name in self.class_names:
                tokens = tokenizer([t(name) for t in templates]).to(device)
                emb = []
                for i in range(0, len(tokens), batch_size):
                    emb.append(model.encode_text(tokens[i : i + batch_size]).float())
                e = torch.cat(emb)
                e = e / e.norm(dim=-1, keepdim=True)
                e = e.mean(0)
                weights.append(e / e.norm())
        self.text = torch.stack(weights)  # (classes, dim)

    @torch.no_grad()
    def logits(self, images01: torch.Tensor, batch_size: int = 32) -> torch.Tensor:
        from torch.nn import functional as F

        device = self.text.device
        out = []
        for i in range(0, len(images01), batch_size):
            x = images01[i : i + batch_size].float()
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bicubic", antialias=True,
                              align_corners=False).clamp(0, 1)
            x = ((x - self.mean) / self.std).to(device)
            e = self.model.encode_image(x).float()
            out.append((e / e.norm(dim=-1, keepdim=True)) @ self.text.t())
        return torch.cat(out).cpu()


def load_clip(checkpoint: str, arch: str = "ViT-B-32", device: str | torch.device = "cpu",
              class_names: Sequence[str] | None = None) -> ClipZeroShot:
    """A CLIP judge from a user's open_clip checkpoint file (nothing is downloaded); ImageNet classes by default."""
    from pathlib import Path

    try:
        import open_clip
    except ImportError:
        raise VitalError("CLIP needs open_clip: pip install open_clip_torch") from None
    if not Path(checkpoint).is_file():
        raise VitalError(f"CLIP checkpoint {checkpoint} not found: give the path of an open_clip {arch} file")
    model, _, preprocess = open_clip.create_model_and_transforms(arch, pretrained=str(checkpoint), device=device)
    size = model.visual.image_size
    size = size[0] if isinstance(size, (tuple, list)) else size
    return ClipZeroShot(model, open_clip.get_tokenizer(arch), image_size=int(size), class_names=class_names)


# --- image spectra: how much fine-scale energy an image has beside natural photos ------------------------------------


def radial_power(image: torch.Tensor | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Radially averaged power spectrum of an image (3, H, W) or (H, W) in [0, 1]: (frequencies in cycles per
    pixel, mean power at each), on the luminance with its mean removed and a Hann window against edge leakage."""
    x = image.detach().float().cpu().numpy() if isinstance(image, torch.Tensor) else np.asarray(image, np.float64)
    if x.ndim == 3:
        x = 0.299 * x[0] + 0.587 * x[1] + 0.114 * x[2]
    h, w = x.shape
    x = (x - x.mean()) * np.outer(np.hanning(h), np.hanning(w))
    power = np.abs(np.fft.fftshift(np.fft.fft2(x))) ** 2
    fy = np.fft.fftshift(np.fft.fftfreq(h))[:, None]
    fx = np.fft.fftshift(np.fft.fftfreq(w))[None, :]
    r = np.sqrt(fy**2 + fx**2)
    bins = np.linspace(0, 0.5, min(h, w) // 2 + 1)
    idx = np.digitize(r.ravel(), bins) - 1
    keep = (idx >= 0) & (idx < len(bins) - 1)
    total = np.bincount(idx[keep], power.ravel()[keep], minlength=len(bins) - 1)
    count = np.bincount(idx[keep], minlength=len(bins) - 1)
    centres = (bins[:-1] + bins[1:]) / 2
    ok = count > 0
    return centres[ok], total[ok] / count[ok]


def spectrum_stats(image: torch.Tensor | np.ndarray, high: float = 0.25) -> dict[str, float]:
    """``slope``: the log-log slope of the radial power spectrum between 1/32 and 1/2 cycles per pixel (natural
    photos: about -2; white noise: 0); ``hf_share``: the share of the power above ``high`` cycles per pixel (half
    the Nyquist frequency), where fine hatching and pixel noise live."""
    f, p = radial_power(image)
    band = (f >= 1 / 32) & (f <= 0.5) & (p > 0)
    slope = float(np.polyfit(np.log(f[band]), np.log(p[band]), 1)[0]) if band.sum() >= 2 else float("nan")
    # power per bin times the bin's ring area (∝ f) gives each ring's share of the total
    ring = p * f
    total = float(ring.sum())
    share = float(ring[f > high].sum() / total) if total > 0 else float("nan")
    return {"slope": round(slope, 4), "hf_share": round(share, 5)}
