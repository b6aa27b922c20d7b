"""torchvision DenseNets: the paper's DenseNet121 preset, the layout facts, and the canonizer that makes the
functional ReLU and pooling after the features visible to LRP."""

from __future__ import annotations

import types

import torch
from torch import nn

from ...relevance.canonizers import Canonizer, Gate
from ..registry import Family, register_family
from ..specs import Architecture, LayerPreset


def _is_densenet(module: nn.Module) -> bool:
    from torchvision.models.densenet import DenseNet

    return isinstance(module, DenseNet)


def _densenet_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:  # torchvision DenseNet
    out = self.vital_pool(self.vital_relu(self.features(x)))
    return self.classifier(torch.flatten(out, 1))


class DenseNetCanonizer(Canonizer):
    """torchvision DenseNet: the functional ReLU and pooling after the features become modules."""

    family = "densenet"

    def matches(self, model: nn.Module) -> bool:
        return _is_densenet(model)

    def apply(self, model: nn.Module, gate: Gate) -> None:
        model.vital_relu, model.vital_pool = nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1))
        model.forward = types.MethodType(_densenet_forward, model)


def architecture(module: nn.Module) -> Architecture | None:
    if not _is_densenet(module):
        return None
    return Architecture("densenet", "features.conv0", tuple(f"features.denseblock{i}" for i in range(1, 5)),
                        "features", "classifier")


FAMILY = register_family(Family(
    "densenet",
    presets={"densenet121": LayerPreset(
        ("features.conv0", "features.denseblock1", "features.denseblock2", "features.denseblock3",
         "features.denseblock4"),
        (1, 1, 1, 1, 100),
        source="paper (authors' code)",
    )},
    architecture=architecture,
    canonizer=DenseNetCanonizer(),
))
