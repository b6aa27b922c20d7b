"""The pieces a family's canonizer rewrites the private copy with (zennit's Canonizer idea): modules that make
functional operations visible to the LRP rules, values unchanged.

``Canonizer`` is the base of one family's rewrites; each family's module (``zoo/families/``) holds its own subclass
and its forward functions, and ``zoo.registry.canonizers_for`` says which apply to a model. This module imports
nothing of the families or of the engine, so a family may import it.
"""

from __future__ import annotations

import itertools
import math
import threading
from typing import Any

import torch
from torch import nn

from ..errors import VitalError


class ResidualSum(nn.Module):
    """``a + b`` as a module, so a rule can split relevance between a and b: ``forward(a, b)``, or
    ``forward(stacked)`` over a stacked input (..., 2)."""

    def forward(self, a: torch.Tensor, b: torch.Tensor | None = None) -> torch.Tensor:
        return a.sum(-1) if b is None else a + b


def batched_mm(w: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``w`` (M, K) times each item of ``x`` (B, K, N); a single item through ``mm`` (torch's batched product of
    one item took 1.6x as long at Lite0's 12544 positions)."""
    return torch.mm(w, x[0]).unsqueeze(0) if x.shape[0] == 1 else torch.matmul(w, x)


def is_pointwise(module: nn.Module) -> bool:
    """A bias-free 1x1 ``nn.Conv2d`` without stride, padding, dilation or groups: a matrix product over
    positions. The rules compute such a layer's relevance with ``batched_mm``: at one thread torch runs 1x1
    convolutions and their input gradients through its unfold path, and the product gives the same bits with less
    work around it (at two threads oneDNN's sums come in another order)."""
    return (type(module) is nn.Conv2d and module.bias is None and module.groups == 1
            and module.padding_mode == "zeros" and module.kernel_size == (1, 1) and module.stride == (1, 1)
            and module.padding == (0, 0) and module.dilation == (1, 1))


class ConstantScale(nn.Module):
    """Multiplication by a learned constant (ConvNeXt's layer scale): relevance passes through unchanged."""

    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def alias_view(t: torch.Tensor) -> torch.Tensor:
    """A view of ``t`` with exactly its strides, as a custom Function's new output for an unchanged tensor.

    ``t.view_as(t)`` recomputes strides, and for a channels-last map with batch size 1 it gives the size-1 batch
    dimension stride C instead of H*W*C; torch's CPU BatchNorm backward (2.14) then returns wrong input gradients
    for it (tests/test_relevance_canonizers.py has the case). An exact-stride view leaves nothing for a later op
    to misread.
    """
    return t.as_strided(t.size(), t.stride(), t.storage_offset())


class Gate:
    """Shared switch: while ``open`` is False, gradients through ``gated`` tensors are cut (relevance mode), and the
    rules of the ``Relevance`` that owns it apply. Per thread: a plain backward in another thread (the loss's,
    beside the relevance pass) sees it open."""

    def __init__(self) -> None:
        self._local = threading.local()

    @property
    def open(self) -> bool:
        return getattr(self._local, "open", True)

    @open.setter
    def open(self, value: bool) -> None:
        self._local.open = value


class GateFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, gate: Gate) -> torch.Tensor:  # noqa: ANN001
        ctx.gate = gate
        return alias_view(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor | None, None]:  # noqa: ANN001
        return (grad if ctx.gate.open else None), None  # cut: undefined, so nothing below computes on zeros


class AttentionMix(nn.Module):
    """Attention probabilities (set by the owner before each call) applied to the values. The z-rule sees them as
    constants; the owner's gate cuts their gradient during the relevance pass (AttnLRP: q and k constant)."""

    def __init__(self) -> None:
        super().__init__()
        self.probs: torch.Tensor | None = None

    def forward(self, v: torch.Tensor) -> torch.Tensor:
        return self.probs @ v


class LRPSelfAttention(nn.Module):
    """torchvision's ``nn.MultiheadAttention`` (self-attention, batch first) split into modules LRP can see:
    q and k under no_grad (constant), a ``v_proj`` Linear, the constant mixing, and the original ``out_proj``."""

    def __init__(self, mha: nn.MultiheadAttention, gate: Gate) -> None:
        super().__init__()
        self.gate = gate
        d, h = mha.embed_dim, mha.num_heads
        if mha.in_proj_weight is None or not mha.batch_first:
            raise VitalError("relevance: only packed, batch-first self-attention is supported")
        w, b = mha.in_proj_weight.detach(), mha.in_proj_bias
        b = torch.zeros(3 * d, device=w.device) if b is None else b.detach()
        self.heads = h
        self.register_buffer("qk_weight", w[: 2 * d].clone())
        self.register_buffer("qk_bias", b[: 2 * d].clone())
        self.v_proj = nn.Linear(d, d, device=w.device, dtype=w.dtype)
        with torch.no_grad():
            self.v_proj.weight.copy_(w[2 * d :])
            self.v_proj.bias.copy_(b[2 * d :])
        self.mix = AttentionMix()
        self.out_proj = mha.out_proj

    def forward(self, x: torch.Tensor, *_: Any, **__: Any) -> tuple[torch.Tensor, None]:
        bsz, t, d = x.shape
        h, hd = self.heads, d // self.heads
        q, k = nn.functional.linear(x, self.qk_weight, self.qk_bias).chunk(2, dim=-1)
        q = q.view(bsz, t, h, hd).transpose(1, 2)
        k = k.view(bsz, t, h, hd).transpose(1, 2)
        probs = (q @ k.transpose(-2, -1) / math.sqrt(hd)).softmax(-1)
        self.mix.probs = GateFn.apply(probs, self.gate) if probs.requires_grad else probs
        v = self.v_proj(x).view(bsz, t, h, hd).transpose(1, 2)
        o = self.mix(v).transpose(1, 2).reshape(bsz, t, d)
        return self.out_proj(o), None



def residual_add(module: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a + b`` through the ``vital_sum`` module a canonizer gave ``module``."""
    return module.vital_sum(a, b)


def sequential_chains(model: nn.Module) -> list[tuple[str, str]]:
    """Consecutive children of every ``nn.Sequential`` in ``model`` that runs ``nn.Sequential``'s own forward
    (torchvision's ``Conv2dNormActivation`` too): each child's output goes only into the next one."""
    pairs = []
    for name, sub in model.named_modules():
        if isinstance(sub, nn.Sequential) and type(sub).forward is nn.Sequential.forward:
            kids = [f"{name}.{k}" if name else k for k in sub._modules]
            pairs += list(itertools.pairwise(kids))
    return pairs


class Canonizer:
    """One family's rewrites of the private copy (zennit's Canonizer idea): functional residual adds, pooling or
    attention become modules that rules can see, values unchanged. ``matches`` decides from the module tree;
    ``zennit_canonizers`` are zennit's own, registered with the rules. A family's module holds its subclass and
    registers it with the family (``zoo.registry.register_family``)."""

    family = "generic"

    def matches(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def apply(self, model: nn.Module, gate: Gate) -> None:
        """Rewrite ``model`` (the private copy) in place."""

    def zennit_canonizers(self) -> list[Any]:
        return []

    def chains(self, model: nn.Module) -> list[tuple[str, str]]:
        """``(producer, consumer)`` module names of ``model`` (the private copy, rewritten) where the producer's
        output goes only into the consumer: a convolution into its norm, written in a block's ``forward``. Where
        the consumer has a pass rule the two share one rule node (``rules.Link``); the facts are the family's,
        since nothing else can see a ``forward``'s data flow. Pairs inside an ``nn.Sequential`` need no listing
        (``sequential_chains``)."""
        return []

    def rules(self) -> list[tuple[tuple[type, ...], Any]]:
        """The family's own LRP rule choices, (module types, zennit rule hook) pairs tried before the common table
        (``rules.lrp_composite``): a family whose modules need another rule says so here."""
        return []

