"""torchvision Vision Transformers: the paper's ViT-L presets, the layout facts (token layers; the stages are the
encoder blocks, as many as the model has), and the canonizer: residual and position-embedding adds as sums, the
fused attention as AttnLRP's value mixing (softmax(q k^T) held constant)."""

from __future__ import annotations

import types

import torch
from torch import nn

from ...relevance.canonizers import Canonizer, Gate, LRPSelfAttention, ResidualSum, residual_add
from ..registry import Family, register_family
from ..specs import Architecture, LayerPreset


def _is_vit(module: nn.Module) -> bool:
    from torchvision.models.vision_transformer import VisionTransformer

    return isinstance(module, VisionTransformer)


def _encoder_block_forward(self: nn.Module, input: torch.Tensor) -> torch.Tensor:  # torchvision ViT EncoderBlock
    x = self.ln_1(input)
    x, _ = self.self_attention(x, x, x, need_weights=False)
    x = residual_add(self, self.dropout(x), input)
    y = self.mlp(self.ln_2(x))
    return self.vital_sum2(x, y)


def _encoder_forward(self: nn.Module, input: torch.Tensor) -> torch.Tensor:  # torchvision ViT Encoder
    x = residual_add(self, input, self.pos_embedding.expand_as(input))
    return self.ln(self.layers(self.dropout(x)))


class ViTCanonizer(Canonizer):
    """torchvision ViT: residual and position-embedding adds as sums, fused attention as AttnLRP's value mixing."""

    family = "vit"

    def matches(self, model: nn.Module) -> bool:
        return _is_vit(model)

    def apply(self, model: nn.Module, gate: Gate) -> None:
        from torchvision.models.vision_transformer import Encoder, EncoderBlock

        for sub in list(model.modules()):
            if isinstance(sub, Encoder):
                sub.vital_sum = ResidualSum()
                sub.forward = types.MethodType(_encoder_forward, sub)
            elif isinstance(sub, EncoderBlock):
                sub.self_attention = LRPSelfAttention(sub.self_attention, gate)
                sub.vital_sum, sub.vital_sum2 = ResidualSum(), ResidualSum()
                sub.forward = types.MethodType(_encoder_block_forward, sub)


def architecture(module: nn.Module) -> Architecture | None:
    if not _is_vit(module):
        return None
    stages = tuple(f"encoder.layers.{n}" for n, _ in module.encoder.layers.named_children())
    return Architecture("vit", "conv_proj", stages, "encoder", "heads.head", tokens=True)


_VIT_L = ("conv_proj", "encoder.layers.encoder_layer_2", "encoder.layers.encoder_layer_9",
          "encoder.layers.encoder_layer_20", "encoder.layers.encoder_layer_23")

FAMILY = register_family(Family(
    "vit",
    presets={
        "vit_l_16": LayerPreset(_VIT_L, (1, 1, 1, 1, 1), tv=3e-3, l2=3e-3, source="paper (authors' code)"),
        "vit_l_32": LayerPreset(_VIT_L, (1, 1, 1, 1, 0.1), tv=3e-4, l2=3e-4, source="paper (authors' code)"),
    },
    architecture=architecture,
    canonizer=ViTCanonizer(),
))
