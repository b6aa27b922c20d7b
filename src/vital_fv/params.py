"""Image parameterizations. VITAL optimizes pixels directly, in the model's normalized input space (SPEC §3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch


def item_generators(seeds: Sequence[int]) -> list[torch.Generator]:
    """One CPU generator per batch item, so an item's randomness depends on its own seed only: seed s gives the
    same image whether it runs alone or inside a batch."""
    return [torch.Generator().manual_seed(int(s)) for s in seeds]


def init_pixels(
    generators: Sequence[torch.Generator], size: int, device: torch.device | str = "cpu", std: float = 1.0
) -> torch.Tensor:
    """N(0, std) pixels in normalized space, (B, 3, size, size), drawn per item from its own generator."""
    x = torch.stack([torch.randn(3, size, size, generator=g) * std for g in generators])
    return x.to(device).requires_grad_(True)


@torch.no_grad()
def clamp_(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """Keep every channel inside the normalized image of [0, 1], in place (the authors do this each step)."""
    return x.clamp_(lo, hi)
