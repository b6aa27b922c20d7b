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
