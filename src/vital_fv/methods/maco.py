"""MACO (Fel et al. 2023): a fixed natural-image magnitude spectrum, only the phase is optimized; random crops
resized to the input plus noise; transparency from accumulated gradients."""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import VitalError
from ..zoo import ModelSpec
from .ascent import Ascent, AscentPreset, Optimized, Scorer, ascend
from .base import MethodOption, Updater, run_steps
from .fourier import decorrelate, recorrelate

SPECTRUM_SIZE = 256  # side of the images a magnitude spectrum is computed at (rfft: 256 x 129 per channel)


def _standardize(t: torch.Tensor) -> torch.Tensor:
    """Per item: zero mean, unit std over all its other dimensions."""
    dims = tuple(range(1, t.dim()))
    return (t - t.mean(dims, keepdim=True)) / (t.std(dims, keepdim=True) + 1e-4)


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


def write_spectrum(
    out: str | os.PathLike[str],
    folder: str | os.PathLike[str] | None = None,
    offline_photos: bool = False,
    overwrite: bool = False,
) -> tuple[Path, torch.Tensor, int]:
    """``vital spectrum``: the average magnitude spectrum of a folder's images (or of the photos shipped with
    scikit-image/scikit-learn) saved as .npy for ``spectrum=``; returns the path, the spectrum and the image count."""
    import io

    from .. import references
    from ..result import atomic_write_bytes, refuse_overwrite

    path = Path(out)
    refuse_overwrite([path], overwrite)
    if (folder is None) == (not offline_photos):
        raise VitalError("give a folder of images, or --offline-photos (not both)")
    images = references.offline_photos() if offline_photos else references.from_folder(folder, n=10**9).images
    mag = compute_spectrum(images)
    buf = io.BytesIO()
    np.save(buf, mag.numpy())
    atomic_write_bytes(path, buf.getvalue())
    return path, mag, len(images)


def default_spectrum_path() -> Path:
    return Path(__file__).parent.parent / "data" / "spectrum_decorrelated.npy"


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


def random_crops(img: torch.Tensor, gen: torch.Generator, n: int, out: int, mean_frac: float) -> torch.Tensor:
    """``n`` random square crops of one image (3, S, S), each resized to ``out`` (MACO's crops)."""
    return random_crops_batch(img.unsqueeze(0), [gen], n, out, mean_frac)


def random_crops_batch(
    imgs: torch.Tensor, gens: Sequence[torch.Generator], n: int, out: int, mean_frac: float
) -> torch.Tensor:
    """``n`` random square crops of each image (B, 3, S, S), item k's from ``gens[k]``, each resized to ``out``:
    (B * n, 3, out, out), item-major. One ``roi_align`` over the batch: a call per item made each item's backward
    write a gradient the size of the whole batch (quadratic in the batch)."""
    from torchvision.ops import roi_align

    s = imgs.shape[-1]
    boxes = []
    for k, gen in enumerate(gens):
        frac = (torch.randn(n, generator=gen) * 0.1 + mean_frac).clamp(0.1, 1.0)
        cx = (0.5 + torch.randn(n, generator=gen) * 0.15).clamp(frac / 2, 1 - frac / 2)
        cy = (0.5 + torch.randn(n, generator=gen) * 0.15).clamp(frac / 2, 1 - frac / 2)
        box = torch.stack([torch.zeros(n), cx - frac / 2, cy - frac / 2, cx + frac / 2, cy + frac / 2], 1) * s
        box[:, 0] = k
        boxes.append(box)
    return roi_align(imgs, torch.cat(boxes).to(imgs.device, imgs.dtype), output_size=(out, out), aligned=True)


@dataclass(frozen=True)
class MacoPreset(AscentPreset):
    optimizer: str = "nadam"
    noise: float = 0.1  # uniform noise amplitude added to each crop
    crops: int = 6  # random crops per image and step
    # Crops through the model per forward+backward; None: CPU_CROP_CHUNK on a CPU, all of them elsewhere.
    crop_chunk: int | None = None

    def __post_init__(self) -> None:
        c = self.crop_chunk
        if c is not None and (isinstance(c, bool) or not isinstance(c, int) or c < 1):
            raise VitalError(f"preset: crop_chunk must be a whole number >= 1 (crops per forward pass) or None "
                             f"(chosen by device), got {c!r}")


# On a CPU a forward+backward of more crops than this costs more per crop (cache-bound: Lite0's per-image step
# at batch 1, 2, 4, 8 with 4 crops each was 178, 170, 212, 337 ms, benchmarks/README.md), so a batch's crops go
# through the model in chunks, each chunk's gradient gathered before one backward through the image.
CPU_CROP_CHUNK = 8


class Maco(Ascent):
    name = "maco"
    description = "Fel et al. 2023: fixed natural magnitude spectrum, phase optimized, random crops; transparency"
    presets = {
        "paper": MacoPreset(1000, 1.0, crops=6),
        "quick": MacoPreset(256, 1.0, crops=4),
    }
    transparency = True
    any_size = True

    options = (MethodOption("spectrum", (str, os.PathLike), None,
                            "maco: magnitude spectrum file from `vital spectrum` (default: the shipped one)",
                            flag="--spectrum", what="a file path"),)

    def optimize(self, model: ModelSpec, preset: MacoPreset, gens: list[torch.Generator], score: Scorer,
                 classes: torch.Tensor, size: int, device: torch.device, progress: bool,
                 spectrum: str | os.PathLike[str] | None = None, **_: Any) -> Optimized:
        b = len(gens)
        magnitude, source = load_spectrum(spectrum, size)
        magnitude = magnitude.to(device)
        phase = torch.stack([torch.randn(3, size, size // 2 + 1, generator=g) for g in gens]).to(device)
        phase.requires_grad_(True)
        input_size = model.preprocess.input_size
        mean_frac = min(1.0, max(0.25, input_size / size))
        alpha = torch.zeros(b, 3, size, size, device=device)
        current: dict[str, torch.Tensor] = {}  # this step's image, whose gradient feeds the transparency map
        optimizer = preset.make_optimizer([phase])
        update = Updater(*optimizer, alpha=alpha, grad_of=lambda: current["img"])
        # chunked: the crops' gradient is gathered chunk by chunk first, then one backward through the image
        chunked = Updater(*optimizer, alpha=alpha, grad_of=lambda: current["img"],
                          backward=lambda _loss: current["crops"].backward(current["grad"]))
        curve = torch.zeros(preset.steps, b)
        owners = [k for k in range(b) for _ in range(preset.crops)]
        chunk = preset.crop_chunk or (CPU_CROP_CHUNK if device.type == "cpu" else len(owners))

        def step(i: int) -> float:
            img = maco_image(phase, magnitude, size)
            img.retain_grad()
            current["img"] = img
            crops = random_crops_batch(img, gens, preset.crops, input_size, mean_frac)
            # Each item's noise from its own generator, so a seed gives the same image alone or in a batch.
            shape = (preset.crops, *crops.shape[1:])
            noise = torch.cat([torch.rand(shape, generator=g) for g in gens]).to(device)
            crops = crops + (noise - 0.5) * 2 * preset.noise
            if len(owners) <= chunk:
                return ascend(update, score(crops, owners).view(b, preset.crops).mean(1), curve, i)
            leaves, values = [], []
            for start in range(0, len(owners), chunk):
                leaf = crops[start : start + chunk].detach().requires_grad_(True)
                value = score(leaf, owners[start : start + chunk])
                (value.sum() / -preset.crops).backward()  # this chunk's part of -sum(per-item mean)
                leaves.append(leaf)
                values.append(value.detach())
            current["crops"], current["grad"] = crops, torch.cat([leaf.grad for leaf in leaves])
            return ascend(chunked, torch.cat(values).view(b, preset.crops).mean(1), curve, i)

        status, times = run_steps(preset.steps, step, progress, self.name)
        with torch.no_grad():
            images = maco_image(phase, magnitude, size).cpu()
        return Optimized(images, curve[: len(times)], times, status, alpha.cpu(), {"spectrum": source})

