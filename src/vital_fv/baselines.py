"""The methods VITAL is compared against (SPEC §6), behind the same targets, models, records and outputs.

- ``fourier``: Olah et al. 2017 — 1/f-scaled spectrum, decorrelated colour, sigmoid, activation maximization
  under pad/jitter/scale/rotate transforms.
- ``maco``: Fel et al. 2023 — a fixed natural-image magnitude spectrum, only the phase is optimized; random crops
  resized to the input plus noise; transparency from accumulated gradients.
- ``deepinversion``: Yin et al. 2020 — pixels, BatchNorm running statistics matched plus cross-entropy, TV/l2,
  roll jitter and flips. Its items are coupled through the batch statistics, by design of the method.

Our own code from the papers' descriptions; the colour matrix is Lucid's ImageNet colour correlation (a fact).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .errors import VitalError
from .features import capture, resolve_layers
from .matching import l2_norm, total_variation
from .optimize import Job, NonFiniteLossError, _top5, frozen_on, lr_factor, resolve_device, run_steps
from .params import item_generators
from .result import Result
from .targets import UnitTarget
from .transforms import roll, sample_rolls
from .zoo import ModelSpec

# Square root (from an SVD) of ImageNet's RGB colour correlation, as published with Lucid.
COLOR_SQRT = torch.tensor(
    [[0.56282854, 0.58447580, 0.58447580], [0.19482528, 0.00000000, -0.19482528], [0.04329450, -0.10823626, 0.06494176]]
)
SPECTRUM_SIZE = 256  # side of the images a magnitude spectrum is computed at (rfft: 256 x 129 per channel)


@dataclass(frozen=True)
class MethodPreset:
    """Settings of one baseline; ``paper`` follows SPEC §6, ``quick`` is a shorter run for comparisons here."""

    steps: int
    lr: float
    optimizer: str = "adam"
    betas: tuple[float, float] = (0.9, 0.999)
    decay: bool = False  # cosine decay of the learning rate to zero
    extra: tuple[tuple[str, float], ...] = ()

    def get(self, key: str, default: float) -> float:
        return dict(self.extra).get(key, default)


METHOD_PRESETS: dict[str, dict[str, MethodPreset]] = {
    "fourier": {
        "paper": MethodPreset(512, 0.05),  # Lucid/Lucent: Adam 0.05, 512 steps
        "quick": MethodPreset(256, 0.05),
    },
    "maco": {
        "paper": MethodPreset(1000, 1.0, optimizer="nadam", extra=(("noise", 0.1), ("crops", 6))),
        "quick": MethodPreset(256, 1.0, optimizer="nadam", extra=(("noise", 0.1), ("crops", 4))),
    },
    "deepinversion": {
        "paper": MethodPreset(2000, 0.05, betas=(0.5, 0.9), decay=True,
                              extra=(("bn", 0.01), ("first_bn", 10.0), ("tv", 1e-4), ("l2", 1e-5), ("jitter", 30))),
        "quick": MethodPreset(500, 0.05, betas=(0.5, 0.9), decay=True,
                              extra=(("bn", 0.01), ("first_bn", 10.0), ("tv", 1e-4), ("l2", 1e-5), ("jitter", 30))),
    },
}
METHODS = ("vital", *METHOD_PRESETS)


# ---------------------------------------------------------------------------------------------- parameterizations
def recorrelate(x: torch.Tensor, normalized: bool = False) -> torch.Tensor:
    """Decorrelated colour (B, 3, H, W) -> RGB-correlated; ``normalized`` scales the matrix as Lucid's to_valid_rgb."""
    m = COLOR_SQRT.to(x.device, x.dtype)
    if normalized:
        m = m / m.norm(dim=0).max()
    return torch.einsum("bchw,cd->bdhw", x, m)


def decorrelate(x: torch.Tensor) -> torch.Tensor:
    """The inverse of ``recorrelate`` (unnormalized): RGB -> decorrelated colour."""
    return torch.einsum("bchw,cd->bdhw", x, torch.linalg.inv(COLOR_SQRT.to(x.device, x.dtype)))


def _standardize(t: torch.Tensor) -> torch.Tensor:
    """Per item: zero mean, unit std over all its other dimensions."""
    dims = tuple(range(1, t.dim()))
    return (t - t.mean(dims, keepdim=True)) / (t.std(dims, keepdim=True) + 1e-4)


def fourier_scale(size: int, decay: float = 1.0) -> torch.Tensor:
    """1/f^decay amplitude of each rfft2 frequency, (size, size // 2 + 1)."""
    fy = torch.fft.fftfreq(size).unsqueeze(1)
    fx = torch.fft.rfftfreq(size).unsqueeze(0)
    freq = torch.sqrt(fx**2 + fy**2)
    return 1.0 / torch.clamp(freq, min=1.0 / size) ** decay * size


def fourier_image(spectrum: torch.Tensor, scale: torch.Tensor, size: int) -> torch.Tensor:
    """(B, 3, H, W//2+1, 2) real spectrum parameters -> (B, 3, H, W) image in [0, 1] (Lucid's parameterization)."""
    spec = torch.view_as_complex(spectrum) * scale
    img = torch.fft.irfft2(spec, s=(size, size), norm="backward") / 4.0
    return torch.sigmoid(recorrelate(img, normalized=True))


def maco_spatial(phase: torch.Tensor, magnitude: torch.Tensor, size: int) -> torch.Tensor:
    """Phase (B, 3, H, W//2+1) with a fixed magnitude (3, H, W//2+1) -> standardized decorrelated image."""
    p = _standardize(phase)
    return _standardize(torch.fft.irfft2(torch.polar(magnitude.expand_as(p), p), s=(size, size)))


def maco_image(phase: torch.Tensor, magnitude: torch.Tensor, size: int) -> torch.Tensor:
    """MACO's image in [0, 1]: the spatial image, colours recorrelated, through a sigmoid."""
    return torch.sigmoid(recorrelate(maco_spatial(phase, magnitude, size)))


def compute_spectrum(images: Sequence[torch.Tensor], size: int = SPECTRUM_SIZE) -> torch.Tensor:
    """Average amplitude spectrum (3, size, size//2+1) of natural images in decorrelated colour space.

    Each image (uint8 or [0, 1], 3 x H x W) is center-cropped to a square and resized to ``size``.
    """
    from torchvision.transforms import functional as TF

    total = torch.zeros(3, size, size // 2 + 1, dtype=torch.float64)
    for img in images:
        x = img.float() / 255.0 if img.dtype == torch.uint8 else img.float()
        side = min(x.shape[-2:])
        x = TF.resize(TF.center_crop(x, [side, side]), [size, size], antialias=True)
        x = decorrelate(((x - x.mean()) / (x.std() + 1e-6)).unsqueeze(0))[0]
        total += torch.fft.rfft2(x).abs().double()
    return (total / len(images)).float()


def default_spectrum_path() -> Path:
    return Path(__file__).parent / "data" / "spectrum_decorrelated.npy"


def load_spectrum(path: str | os.PathLike[str] | None, size: int) -> tuple[torch.Tensor, str]:
    """A magnitude spectrum file (.npy, (3, H, W)), resized to the rfft shape of a ``size`` image."""
    p = Path(path) if path else default_spectrum_path()
    try:
        mag = torch.from_numpy(np.load(p).astype(np.float32))
    except (OSError, ValueError) as exc:
        raise VitalError(f"cannot read spectrum file {p}: {exc}; make one with `vital spectrum DIR --out FILE`") \
            from None
    if mag.dim() != 3 or mag.shape[0] != 3:
        raise VitalError(f"spectrum file {p} holds shape {tuple(mag.shape)}; expected (3, H, W//2+1)")
    target = (size, size // 2 + 1)
    if tuple(mag.shape[1:]) != target:
        mag = F.interpolate(mag.unsqueeze(0), size=target, mode="bilinear", align_corners=False, antialias=True)[0]
    return mag, str(p)


# ------------------------------------------------------------------------------------------------------ transforms
def _random_crops(img: torch.Tensor, gen: torch.Generator, n: int, out: int, mean_frac: float) -> torch.Tensor:
    """``n`` random square crops of one image (3, S, S), each resized to ``out`` (MACO's crops)."""
    from torchvision.ops import roi_align

    s = img.shape[-1]
    frac = (torch.randn(n, generator=gen) * 0.1 + mean_frac).clamp(0.1, 1.0)
    cx = (0.5 + torch.randn(n, generator=gen) * 0.15).clamp(frac / 2, 1 - frac / 2)
    cy = (0.5 + torch.randn(n, generator=gen) * 0.15).clamp(frac / 2, 1 - frac / 2)
    boxes = torch.stack([torch.zeros(n), cx - frac / 2, cy - frac / 2, cx + frac / 2, cy + frac / 2], 1) * s
    boxes[:, 0] = 0
    return roi_align(img.unsqueeze(0), boxes.to(img.device, img.dtype), output_size=(out, out), aligned=True)


def _lucid_transforms(img: torch.Tensor, gen: torch.Generator, out: int) -> torch.Tensor:
    """Lucid's standard transforms on one image: pad 12, jitter 8, scale, rotate, jitter 4, back to ``out``."""
    x = F.pad(img.unsqueeze(0), (12, 12, 12, 12), value=0.5)

    def jitter(x: torch.Tensor, d: int) -> torch.Tensor:
        dy, dx = (int(v) for v in torch.randint(0, d + 1, (2,), generator=gen))
        return x[..., dy : x.shape[-2] - d + dy, dx : x.shape[-1] - d + dx]

    x = jitter(x, 8)
    scale = 1 + (int(torch.randint(0, 11, (), generator=gen)) - 5) / 50
    angle = math.radians(int(torch.randint(-10, 11, (), generator=gen)))
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    theta = torch.tensor([[cos, -sin, 0.0], [sin, cos, 0.0]], device=x.device, dtype=x.dtype).unsqueeze(0)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="reflection", align_corners=False)
    x = jitter(x, 4)
    return F.interpolate(x, size=(out, out), mode="bilinear", align_corners=False)


# -------------------------------------------------------------------------------------------------------- methods
def run_baseline(
    model: ModelSpec,
    jobs: Sequence[Job],
    method: str,
    *,
    preset: str = "paper",
    steps: int | None = None,
    lr: float | None = None,
    size: int | None = None,
    device: str | torch.device = "auto",
    progress: bool = True,
    spectrum: str | os.PathLike[str] | None = None,
) -> list[Result]:
    """Run ``method`` (fourier, maco, deepinversion) on ``jobs``; one ``Result`` per job, as ``visualize_batch``."""
    if method not in METHOD_PRESETS:
        raise VitalError(f"unknown method '{method}': choose one of {', '.join(METHODS)}")
    if preset not in METHOD_PRESETS[method]:
        raise VitalError(f"unknown preset '{preset}' for {method}: choose one of {', '.join(METHOD_PRESETS[method])}")
    mp = METHOD_PRESETS[method][preset]
    if steps is not None:
        mp = replace(mp, steps=steps)
    if lr is not None:
        mp = replace(mp, lr=lr)
    input_size = model.preprocess.input_size
    size = size or input_size
    if method != "maco" and size != input_size:
        raise VitalError(f"--size applies to maco only (it optimizes a large image and crops it); {method} "
                         f"works at the model's input size {input_size}")
    units = [j.target for j in jobs if isinstance(j.target, UnitTarget)]
    if units and method == "deepinversion":
        raise VitalError("deepinversion inverts classes only (it needs a class's cross-entropy): use fourier or maco "
                         "for units")
    if units:
        resolve_layers(model.module, [u.layer for u in units], model.name)
    if method == "deepinversion" and not any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                             for m in model.module.modules()):
        raise VitalError(f"deepinversion matches BatchNorm statistics, and {model.name} has no BatchNorm layer "
                         "(ViTs and ConvNeXt use LayerNorm): choose --method vital, fourier or maco")
    dev = resolve_device(device)
    described = [
        j.target.describe() if isinstance(j.target, UnitTarget)
        else dict(zip(("index", "name"), j.target.resolve(model.class_names, model.class_synonyms), strict=True),
                  kind="class")
        for j in jobs
    ]
    classes = torch.tensor([d.get("index", 0) for d in described], device=dev)
    gens = item_generators([j.seed for j in jobs])
    info: dict[str, Any] = {}
    with frozen_on(model.module, dev):
        run = {"fourier": _fourier, "maco": _maco, "deepinversion": _deepinversion}[method]
        score = _scorer(model, jobs, classes)
        images, curve, step_times, status, alpha = run(model, mp, gens, score, classes, size, dev, progress,
                                                       spectrum, info)
        top5 = _top5(model, F.interpolate(images, size=(input_size, input_size), mode="bilinear",
                                          align_corners=False) if size != input_size else images)
    out = []
    for b, job in enumerate(jobs):
        record = {
            "vital_fv": __version__,
            "method": method,
            "status": status,
            "steps_done": len(step_times),
            "target": described[b],
            "seed": job.seed,
            "model": model.describe(),
            "optimizer": {"preset": preset, **asdict(mp)},
            "resolution": size,
            "device": str(dev),
            "references": None,
            "loss": {"objective": [round(float(v), 6) for v in curve[:, b]]},
            "seconds_per_step": round(sum(step_times) / max(1, len(step_times)), 5),
            "step_seconds": [round(t, 5) for t in step_times],
            "seconds_total": round(sum(step_times), 3),
            "top5": top5[b],
            **info,
        }
        out.append(Result(images[b], record, alpha=None if alpha is None else alpha[b]))
    if status == "nonfinite":
        raise NonFiniteLossError(f"the {method} loss became non-finite after {len(step_times)} steps; the last "
                                 "finite images are kept", out)
    return out


def _optimizer(mp: MethodPreset, params: list[torch.Tensor]) -> tuple[torch.optim.Optimizer, Any]:
    cls = torch.optim.NAdam if mp.optimizer == "nadam" else torch.optim.Adam
    opt = cls(params, lr=mp.lr, betas=mp.betas)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, mp.steps, 0) if mp.decay else 1.0)
    return opt, sched


def _ascend(obj: torch.Tensor, opt: torch.optim.Optimizer, sched: Any, curve: torch.Tensor, i: int,
            after_backward: Any = None) -> float:
    """One gradient-ascent update on the per-item objectives ``obj`` (B,); NaN, and no update, if not finite."""
    loss = -obj.sum()
    value = float(loss.detach())
    if not math.isfinite(value):
        return math.nan
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if after_backward is not None:
        after_backward()
    opt.step()
    sched.step()
    curve[i] = -obj.detach().cpu()
    return value / obj.shape[0]


def _scorer(model: ModelSpec, jobs: Sequence[Job], classes: torch.Tensor):  # noqa: ANN202
    """``score(x01, owners)``: per row of ``x01``, the objective of the job that owns it (a class logit, or a
    unit's activation), from one forward pass."""
    layers = sorted({j.target.layer for j in jobs if isinstance(j.target, UnitTarget)})

    def score(x01: torch.Tensor, owners: list[int]) -> torch.Tensor:
        with capture(model.module, layers, model.name) as feats:
            logits = model.module(model.preprocess.normalize(x01))
            values = []
            for row, b in enumerate(owners):
                t = jobs[b].target
                if isinstance(t, UnitTarget):
                    out = feats[t.layer]
                    values.append(t.value(out[0][row] if isinstance(out, (tuple, list)) else out[row]))
                else:
                    values.append(logits[row, classes[b]])
        return torch.stack(values)

    return score


def _fourier(model, mp, gens, score, classes, size, dev, progress, spectrum, info):  # noqa: ANN001, ANN202
    b = len(gens)
    spec = torch.stack([torch.randn(3, size, size // 2 + 1, 2, generator=g) * 0.01 for g in gens]).to(dev)
    spec.requires_grad_(True)
    scale = fourier_scale(size).to(dev)
    opt, sched = _optimizer(mp, [spec])
    curve = torch.zeros(mp.steps, b)

    def step(i: int) -> float:
        img = fourier_image(spec, scale, size)
        x = torch.cat([_lucid_transforms(img[k], gens[k], size) for k in range(b)])
        obj = score(x, list(range(b)))
        return _ascend(obj, opt, sched, curve, i)

    status, times = run_steps(mp.steps, step, progress, "fourier")
    with torch.no_grad():
        images = fourier_image(spec, scale, size).cpu()
    return images, curve[: len(times)], times, status, None


def _maco(model, mp, gens, score, classes, size, dev, progress, spectrum, info):  # noqa: ANN001, ANN202
    b = len(gens)
    magnitude, source = load_spectrum(spectrum, size)
    info["spectrum"] = source
    magnitude = magnitude.to(dev)
    phase = torch.stack([torch.randn(3, size, size // 2 + 1, generator=g) for g in gens]).to(dev)
    phase.requires_grad_(True)
    opt, sched = _optimizer(mp, [phase])
    input_size = model.preprocess.input_size
    mean_frac = min(1.0, max(0.25, input_size / size))
    n_crops = int(mp.get("crops", 6))
    noise = mp.get("noise", 0.1)
    alpha = torch.zeros(b, 3, size, size, device=dev)
    curve = torch.zeros(mp.steps, b)
    owners = [k for k in range(b) for _ in range(n_crops)]

    def step(i: int) -> float:
        img = maco_image(phase, magnitude, size)
        img.retain_grad()
        crops = torch.cat([_random_crops(img[k], gens[k], n_crops, input_size, mean_frac) for k in range(b)])
        crops = crops + (torch.rand(crops.shape, generator=gens[0]).to(dev) - 0.5) * 2 * noise
        obj = score(crops, owners).view(b, n_crops).mean(1)
        return _ascend(obj, opt, sched, curve, i, after_backward=lambda: alpha.add_(img.grad.abs()))

    status, times = run_steps(mp.steps, step, progress, "maco")
    with torch.no_grad():
        images = maco_image(phase, magnitude, size).cpu()
    return images, curve[: len(times)], times, status, alpha.cpu()


def _deepinversion(model, mp, gens, score, classes, size, dev, progress, spectrum, info):  # noqa: ANN001, ANN202
    b = len(gens)
    x = torch.stack([torch.randn(3, size, size, generator=g) for g in gens]).to(dev).requires_grad_(True)
    lo, hi = model.preprocess.bounds(dev)
    opt, sched = _optimizer(mp, [x])
    bns = [m for m in model.module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    stats: list[torch.Tensor] = []
    handles = [m.register_forward_hook(_bn_hook(stats)) for m in bns]
    weights = torch.tensor([mp.get("first_bn", 10.0)] + [1.0] * (len(bns) - 1), device=dev)
    jitter = int(mp.get("jitter", 30))
    curve = torch.zeros(mp.steps, b)
    try:

        def step(i: int) -> float:
            stats.clear()
            xj = roll(x, sample_rolls(gens, jitter))
            flips = torch.tensor([bool(torch.rand((), generator=g) < 0.5) for g in gens], device=dev)
            xj = torch.where(flips.view(-1, 1, 1, 1), xj.flip(-1), xj)
            logits = model.module(xj)
            ce = F.cross_entropy(logits, classes, reduction="none")
            bn = (weights * torch.stack(stats)).sum()
            loss = ce.sum() + mp.get("bn", 0.01) * bn + mp.get("tv", 1e-4) * total_variation(x).sum() \
                + mp.get("l2", 1e-5) * l2_norm(x).sum()
            if not math.isfinite(float(loss.detach())):
                return math.nan
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                x.clamp_(lo, hi)
            curve[i] = ce.detach().cpu()
            return float(loss.detach()) / b

        status, times = run_steps(mp.steps, step, progress, "deepinversion")
    finally:
        for h in handles:
            h.remove()
    info["note"] = "DeepInversion couples batch items through its BatchNorm statistics (by design)"
    images = model.preprocess.denormalize(x.detach()).clamp(0, 1).cpu()
    return images, curve[: len(times)], times, status, None


def _bn_hook(terms: list[torch.Tensor]):  # noqa: ANN202
    """A forward hook that appends |running mean - batch mean| + |running var - batch var| of a BN layer's input."""

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        z = inp[0]
        dims = [0] + list(range(2, z.dim()))
        terms.append(torch.norm(m.running_mean - z.mean(dims), 2)
                     + torch.norm(m.running_var - z.var(dims, unbiased=False), 2))

    return hook


def bn_statistics_loss(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Sum over BatchNorm layers of the statistics distance for input ``x`` (zero on the batch they came from)."""
    terms: list[torch.Tensor] = []
    handles = [m.register_forward_hook(_bn_hook(terms)) for m in module.modules()
               if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    try:
        module(x)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(terms).sum()
