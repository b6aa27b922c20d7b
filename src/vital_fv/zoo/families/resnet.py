"""torchvision ResNets: the paper's ResNet50 preset, the layout facts, and zennit's residual canonizers for LRP."""

from __future__ import annotations

from typing import Any

from torch import nn

from ...relevance.canonizers import Canonizer
from ..registry import Family, register_family
from ..specs import Architecture, LayerPreset


def _is_resnet(module: nn.Module) -> bool:
    from torchvision.models.resnet import ResNet

    return isinstance(module, ResNet)


class ResNetCanonizer(Canonizer):
    """torchvision ResNets: zennit's residual canonizers rewrite the blocks when the rules are registered (only
    those: merging BatchNorm into convs would change the values read at conv outputs)."""

    family = "resnet"

    def matches(self, model: nn.Module) -> bool:
        return _is_resnet(model)

    def zennit_canonizers(self) -> list[Any]:
        from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

        return [ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer()]


def architecture(module: nn.Module) -> Architecture | None:
    if not _is_resnet(module):
        return None
    return Architecture("resnet", "conv1", ("layer1", "layer2", "layer3", "layer4"), "layer4", "fc")


FAMILY = register_family(Family(
    "resnet",
    # The authors' layer preset for class neurons (SPEC §3), with torchvision module names.
    presets={"resnet50": LayerPreset(("conv1", "layer1", "layer2", "layer3", "layer4"), (1, 1, 1, 1, 1),
                                     source="paper (authors' code)")},
    architecture=architecture,
    canonizer=ResNetCanonizer(),
))
