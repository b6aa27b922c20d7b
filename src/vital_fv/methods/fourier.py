"""Fourier (Olah et al. 2017, Lucid's parameterization): a 1/f-scaled spectrum in decorrelated colour through a
sigmoid, activation maximization under pad/jitter/scale/rotate transforms.

The colour matrix is Lucid's ImageNet colour correlation (a fact); the code is ours.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..zoo import ModelSpec
from .ascent import Ascent, AscentPreset, Optimized, Scorer, ascend
from .base import Updater, run_steps

# Square root (from an SVD) of ImageNet's RGB colour correlation, as published with Lucid.
COLOR_SQRT = torch.tensor(
    [[0.56282854, 0.58447580, 0.58447580], [0.19482528, 0.00000000, -0.19482528], [0.04329450, -0.10823626, 0.06494176]]
)


def recorrelate(x: torch.Tensor, normalized: bool = False) -> torch.Tensor:
    """Decorrelated colour (B, 3, H, W) -> RGB-correlated; ``normalized`` scales the matrix as Lucid's to_valid_rgb."""
    m = COLOR_SQRT.to(x.device, x.dtype)
    if normalized:
        m = m / m.norm(dim=0).max()
    return torch.einsum("bchw,cd->bdhw", x, m)


def decorrelate(x: torch.Tensor) -> torch.Tensor:
    """The inverse of ``recorrelate`` (unnormalized): RGB -> decorrelated colour."""
    return torch.einsum("bchw,cd->bdhw", x, torch.linalg.inv(COLOR_SQRT.to(x.device, x.dtype)))


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


def lucid_transforms(img: torch.Tensor, gen: torch.Generator, out: int) -> torch.Tensor:
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


@dataclass(frozen=True)
class FourierPreset(AscentPreset):
    pass


class Fourier(Ascent):
    name = "fourier"
    description = "Olah et al. 2017: 1/f spectrum, decorrelated colour, activation maximization (Lucid)"
    presets = {
        "paper": FourierPreset(512, 0.05),  # Lucid/Lucent: Adam 0.05, 512 steps
        "quick": FourierPreset(256, 0.05),
    }

    def optimize(self, model: ModelSpec, preset: FourierPreset, gens: list[torch.Generator], score: Scorer,
                 classes: torch.Tensor, size: int, device: torch.device, progress: bool, **_: Any) -> Optimized:
        b = len(gens)
        spec = torch.stack([torch.randn(3, size, size // 2 + 1, 2, generator=g) * 0.01 for g in gens]).to(device)
        spec.requires_grad_(True)
        scale = fourier_scale(size).to(device)
        update = Updater(*preset.make_optimizer([spec]))
        curve = torch.zeros(preset.steps, b)

        def step(i: int) -> float:
            img = fourier_image(spec, scale, size)
            # unbind, not img[k]: each indexed item's backward wrote a gradient the size of the whole batch.
            x = torch.cat([lucid_transforms(item, g, size) for item, g in zip(img.unbind(0), gens, strict=True)])
            return ascend(update, score(x, list(range(b))), curve, i)

        status, times = run_steps(preset.steps, step, progress, self.name)
        with torch.no_grad():
            images = fourier_image(spec, scale, size).cpu()
        return Optimized(images, curve[: len(times)], times, status)

