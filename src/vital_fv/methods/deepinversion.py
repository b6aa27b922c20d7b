"""DeepInversion (Yin et al. 2020): pixels, BatchNorm running statistics matched plus cross-entropy, TV/l2, roll
jitter and flips. Its items are coupled through the batch statistics, by design of the method."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import VitalError
from ..matching import l2_norm, total_variation
from ..transforms import roll, sample_rolls
from ..zoo import ModelSpec
from .ascent import Ascent, AscentPreset, Optimized, Scorer
from .base import Updater, run_steps


@dataclass(frozen=True)
class DeepInversionPreset(AscentPreset):
    betas: tuple[float, float] = (0.5, 0.9)
    decay: bool = True
    bn: float = 0.01  # weight of the BatchNorm statistics term
    first_bn: float = 10.0  # extra weight of the first BatchNorm layer's term
    tv: float = 1e-4
    l2: float = 1e-5
    jitter: int = 30  # roll jitter, px


def _bn_hook(terms: list[torch.Tensor]):  # noqa: ANN202
    """A forward hook that appends |running mean - batch mean| + |running var - batch var| of a BN layer's input."""

    def hook(m: nn.Module, inp: tuple[torch.Tensor, ...], _out: torch.Tensor) -> None:
        z = inp[0]
        dims = [0] + list(range(2, z.dim()))
        terms.append(torch.norm(m.running_mean - z.mean(dims), 2)
                     + torch.norm(m.running_var - z.var(dims, unbiased=False), 2))

    return hook


def _batchnorms(module: nn.Module) -> list[nn.Module]:
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


def bn_statistics_loss(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Sum over BatchNorm layers of the statistics distance for input ``x`` (zero on the batch they came from)."""
    terms: list[torch.Tensor] = []
    handles = [m.register_forward_hook(_bn_hook(terms)) for m in _batchnorms(module)]
    try:
        module(x)
    finally:
        for h in handles:
            h.remove()
    return torch.stack(terms).sum()


class DeepInversion(Ascent):
    name = "deepinversion"
    description = "Yin et al. 2020: BatchNorm statistics + cross-entropy on pixels (classes, BatchNorm models)"
    presets = {
        "paper": DeepInversionPreset(2000, 0.05),
        "quick": DeepInversionPreset(500, 0.05),
    }
    targets = ("class",)
    coupled_batch = True  # the batch statistics couple the items: splitting a batch changes its images

    def check(self, model: ModelSpec) -> None:
        if not _batchnorms(model.module):
            raise VitalError(f"deepinversion matches BatchNorm statistics, and {model.name} has no BatchNorm layer "
                             "(ViTs and ConvNeXt use LayerNorm): choose --method vital, fourier or maco")

    def optimize(self, model: ModelSpec, preset: DeepInversionPreset, gens: list[torch.Generator], score: Scorer,
                 classes: torch.Tensor, size: int, device: torch.device, progress: bool, **_: Any) -> Optimized:
        b = len(gens)
        x = torch.stack([torch.randn(3, size, size, generator=g) for g in gens]).to(device).requires_grad_(True)
        lo, hi = model.preprocess.bounds(device)

        def clamp() -> None:
            with torch.no_grad():
                x.clamp_(lo, hi)

        update = Updater(*preset.make_optimizer([x]), after_step=clamp)
        bns = _batchnorms(model.module)
        stats: list[torch.Tensor] = []
        handles = [m.register_forward_hook(_bn_hook(stats)) for m in bns]
        weights = torch.tensor([preset.first_bn] + [1.0] * (len(bns) - 1), device=device)
        curve = torch.zeros(preset.steps, b)
        try:

            def step(i: int) -> float:
                stats.clear()
                xj = roll(x, sample_rolls(gens, preset.jitter))
                flips = torch.tensor([bool(torch.rand((), generator=g) < 0.5) for g in gens], device=device)
                xj = torch.where(flips.view(-1, 1, 1, 1), xj.flip(-1), xj)
                ce = F.cross_entropy(model.module(xj), classes, reduction="none")
                bn = (weights * torch.stack(stats)).sum()
                loss = ce.sum() + preset.bn * bn + preset.tv * total_variation(x).sum() + preset.l2 * l2_norm(x).sum()
                value = update(loss, b)
                if not math.isfinite(value):
                    return math.nan
                curve[i] = ce.detach().cpu()
                return value

            status, times = run_steps(preset.steps, step, progress, self.name)
        finally:
            for h in handles:
                h.remove()
        images = model.preprocess.denormalize(x.detach()).clamp(0, 1).cpu()
        return Optimized(images, curve[: len(times)], times, status,
                         info={"note": "DeepInversion couples batch items through its BatchNorm statistics "
                                       "(by design)"})

