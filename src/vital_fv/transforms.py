"""Random transforms applied to the image at each step. The authors' VITAL uses a circular roll only (SPEC §3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def sample_rolls(generators: Sequence[torch.Generator], max_shift: int) -> list[tuple[int, int]]:
    """A (dy, dx) offset in [-max_shift, max_shift] per item, from that item's own generator."""
    if max_shift <= 0:
        return [(0, 0)] * len(generators)
    return [
        (int(torch.randint(-max_shift, max_shift + 1, (), generator=g)),
         int(torch.randint(-max_shift, max_shift + 1, (), generator=g)))
        for g in generators
    ]


def roll(x: torch.Tensor, shifts: Sequence[tuple[int, int]]) -> torch.Tensor:
    """Circularly shift each item by its own offset; one ``torch.roll`` when all offsets agree."""
    if all(s == shifts[0] for s in shifts):
        return torch.roll(x, shifts=shifts[0], dims=(2, 3)) if shifts[0] != (0, 0) else x
    return torch.stack([torch.roll(xi, shifts=s, dims=(1, 2)) for xi, s in zip(x, shifts, strict=True)])


def sample_scales(generators: Sequence[torch.Generator], max_rel: float) -> list[float]:
    """A zoom factor in [1 - max_rel, 1 + max_rel] per item, from that item's own generator."""
    if max_rel <= 0:
        return [1.0] * len(generators)
    return [1.0 + max_rel * (2 * float(torch.rand((), generator=g)) - 1) for g in generators]


def zoom(x: torch.Tensor, scales: Sequence[float]) -> torch.Tensor:
    """Zoom each item about its centre by its own factor, bilinear, same size (reflected at the border).

    Sub-pixel resampling moves the image against the model's pixel grid, so the stride-2 stem cannot be fed a
    pattern at the grid's own period (the hatching that roll jitter, an integer shift, leaves in place)."""
    if all(s == 1.0 for s in scales):
        return x
    theta = torch.zeros(len(scales), 2, 3, device=x.device, dtype=x.dtype)
    inv = torch.tensor([1.0 / s for s in scales], device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = inv
    theta[:, 1, 1] = inv
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    return torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


class GaussianBlur:
    """``torchvision``'s ``gaussian_blur`` (reflect padding, depthwise conv) with the kernel built once: the same
    operations on the same kernel, so the same values, without rebuilding the kernel at every step."""

    def __init__(self, kernel_size: int, sigma: float) -> None:
        self.kernel_size, self.sigma = kernel_size, sigma
        self._kernels: dict[tuple[torch.device, torch.dtype, int], torch.Tensor] = {}

    def kernel(self, device: torch.device, dtype: torch.dtype, channels: int) -> torch.Tensor:
        key = (device, dtype, channels)
        if key not in self._kernels:
            half = (self.kernel_size - 1) * 0.5
            x = torch.linspace(-half, half, steps=self.kernel_size, dtype=dtype, device=device)
            pdf = torch.exp(-0.5 * (x / self.sigma).pow(2))
            k1 = pdf / pdf.sum()
            k2 = torch.mm(k1[:, None], k1[None, :])
            self._kernels[key] = k2.expand(channels, 1, self.kernel_size, self.kernel_size)
        return self._kernels[key]

    def __call__(self, img: torch.Tensor) -> torch.Tensor:
        """``img`` (B, C, H, W), floating point."""
        pad = self.kernel_size // 2
        x = torch.nn.functional.pad(img, [pad, pad, pad, pad], mode="reflect")
        return torch.nn.functional.conv2d(x, self.kernel(img.device, img.dtype, img.shape[-3]), groups=img.shape[-3])
