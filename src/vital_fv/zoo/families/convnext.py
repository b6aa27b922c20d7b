"""torchvision ConvNeXts: the paper's ConvNeXt-Base preset, the layout facts, and the canonizer: layer scale as a
constant scale, the in-place residual add as a sum."""

from __future__ import annotations

import types

import torch
from torch import nn

from ...relevance.canonizers import Canonizer, ConstantScale, Gate, ResidualSum, residual_add
from ..registry import Family, register_family
from ..specs import Architecture, LayerPreset


def _cnblock_forward(self: nn.Module, input: torch.Tensor) -> torch.Tensor:  # torchvision ConvNeXt CNBlock
    result = self.stochastic_depth(self.vital_scale(self.block(input)))
    return residual_add(self, result, input)


class ConvNeXtCanonizer(Canonizer):
    """torchvision ConvNeXt blocks (in any model that has them): layer scale as a constant scale, the in-place
    residual add as a sum."""

    family = "convnext"

    def matches(self, model: nn.Module) -> bool:
        from torchvision.models.convnext import CNBlock

        return any(isinstance(sub, CNBlock) for sub in model.modules())

    def apply(self, model: nn.Module, gate: Gate) -> None:
        from torchvision.models.convnext import CNBlock

        for sub in list(model.modules()):
            if isinstance(sub, CNBlock):
                sub.vital_scale = ConstantScale(sub.layer_scale)
                sub.vital_sum = ResidualSum()
                sub.forward = types.MethodType(_cnblock_forward, sub)


def architecture(module: nn.Module) -> Architecture | None:
    from torchvision.models.convnext import ConvNeXt

    if not isinstance(module, ConvNeXt):
        return None
    return Architecture("convnext", "features.0", ("features.1", "features.3", "features.5", "features.7"),
                        "features", "classifier.2")


FAMILY = register_family(Family(
    "convnext",
    presets={"convnext_base": LayerPreset(
        ("features.0", "features.2.1", "features.4.1", "features.6.1", "features.7.2"),
        (10, 1, 1, 1, 1),
        source="paper (authors' code)",
    )},
    architecture=architecture,
    canonizer=ConvNeXtCanonizer(),
))
