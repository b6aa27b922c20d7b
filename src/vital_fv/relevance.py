"""Relevance of each matched layer's activations for a target (SPEC §4): LRP or Guided Backpropagation.

One interface (``Relevance``), built once per run on a private deep copy of the model, so the model whose
activations are optimized is never patched or hooked. Relevance flows as a modified gradient (zennit's design):
one forward up to the target, one backward that stops at the lowest matched layer, and the "gradient" read at
each matched layer's output is its relevance.

LRP rules (zennit hooks, one table for every family):
- Conv and Linear: z+ with biases left out, so relevance is conserved (SPEC §4: "rules z+ for conv/linear"), and the
  z-rule where an output has no positive contribution (see ``ZPlusRule``).
- BatchNorm, LayerNorm, elementwise activations (ReLU, ReLU6, GELU, SiLU...), ConvNeXt's layer scale: pass-through.
  For the norms this is AttnLRP's treatment of the normalization scale as a constant; for GELU it is AttnLRP's
  identity rule.
- Average pooling and attention's value mixing: the z-rule (relevance split in proportion to each input's
  contribution); residual sums: the same with |contributions| (see ``SumRule``).
zennit has canonizers for torchvision ResNets (its residual-sum canonizer is used) but not for the functional
residual adds of timm EfficientNets, DenseNet's functional ReLU/pooling, ConvNeXt's in-place add and layer scale or
torchvision's fused ``nn.MultiheadAttention``; those are rewritten on the copy by one ``Canonizer`` per family
(``CANONIZERS``: adding a family is one class). Attention
follows AttnLRP (Achtibat et al. 2024): softmax(q k^T) is held constant, relevance flows through the values only.
Models of other families get the generic rule table; ``conservation`` reports how well relevance is kept.
"""

from __future__ import annotations

import copy
import math
import types
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from zennit.core import Hook, RemovableHandle, RemovableHandleList

from .errors import VitalError
from .features import as_channels_positions, resolve_layers
from .objectives import LOGITS, ClassTarget, DirectionTarget, Objective, UnitTarget

METHODS = ("lrp", "guided_backprop")
ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish)


def parse_method(method: str | None) -> str | None:
    """'lrp' | 'guided_backprop' (or 'guided-backprop') | None / 'none'."""
    if method is None or str(method).lower() in ("none", ""):
        return None
    m = str(method).lower().replace("-", "_")
    if m not in METHODS:
        raise VitalError(f"unknown relevance '{method}': choose lrp, guided-backprop or none")
    return m


# --- modules that make functional operations visible to LRP rules ------------------------------------------------


class ResidualSum(nn.Module):
    """``a + b`` over a stacked input (..., 2): one module input, so a rule can split relevance between a and b."""

    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        return stacked.sum(-1)


class ConstantScale(nn.Module):
    """Multiplication by a learned constant (ConvNeXt's layer scale): relevance passes through unchanged."""

    def __init__(self, scale: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("scale", scale.detach().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _alias(t: torch.Tensor) -> torch.Tensor:
    """A view of ``t`` with exactly its strides, as a custom Function's new output for an unchanged tensor.

    ``t.view_as(t)`` recomputes strides, and for a channels-last map with batch size 1 it gives the size-1 batch
    dimension stride C instead of H*W*C; torch's CPU BatchNorm backward (2.14) then returns wrong input gradients
    for it (tests/test_relevance.py has the case). An exact-stride view leaves nothing for a later op to misread.
    """
    return t.as_strided(t.size(), t.stride(), t.storage_offset())


class _Gate:
    """Shared switch: while ``open`` is False, gradients through ``gated`` tensors are cut (relevance mode)."""

    def __init__(self) -> None:
        self.open = True


class _GateFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, gate: _Gate) -> torch.Tensor:  # noqa: ANN001
        ctx.gate = gate
        return _alias(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:  # noqa: ANN001
        return (grad if ctx.gate.open else torch.zeros_like(grad)), None


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

    def __init__(self, mha: nn.MultiheadAttention, gate: _Gate) -> None:
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
        self.mix.probs = _GateFn.apply(probs, self.gate) if probs.requires_grad else probs
        v = self.v_proj(x).view(bsz, t, h, hd).transpose(1, 2)
        o = self.mix(v).transpose(1, 2).reshape(bsz, t, d)
        return self.out_proj(o), None


def _add(module: nn.Module, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return module.vital_sum(torch.stack([a, b], dim=-1))


def _encoder_block_forward(self: nn.Module, input: torch.Tensor) -> torch.Tensor:  # torchvision ViT EncoderBlock
    x = self.ln_1(input)
    x, _ = self.self_attention(x, x, x, need_weights=False)
    x = _add(self, self.dropout(x), input)
    y = self.mlp(self.ln_2(x))
    return self.vital_sum2(torch.stack([x, y], dim=-1))


def _encoder_forward(self: nn.Module, input: torch.Tensor) -> torch.Tensor:  # torchvision ViT Encoder
    x = _add(self, input, self.pos_embedding.expand_as(input))
    return self.ln(self.layers(self.dropout(x)))


def _cnblock_forward(self: nn.Module, input: torch.Tensor) -> torch.Tensor:  # torchvision ConvNeXt CNBlock
    result = self.stochastic_depth(self.vital_scale(self.block(input)))
    return _add(self, result, input)


def _densenet_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:  # torchvision DenseNet
    out = self.vital_pool(self.vital_relu(self.features(x)))
    return self.classifier(torch.flatten(out, 1))


def _skip_block_forward(self: nn.Module, x: torch.Tensor) -> torch.Tensor:  # timm EfficientNet blocks with a skip
    return _add(self, self.vital_inner(x), x)


class Canonizer:
    """One family's rewrites of the private copy (zennit's Canonizer idea): functional residual adds, pooling or
    attention become modules that rules can see, values unchanged. ``matches`` decides from the module tree;
    ``zennit_canonizers`` are zennit's own, registered with the rules. Adding a family is one subclass in
    ``CANONIZERS``."""

    family = "generic"

    def matches(self, model: nn.Module) -> bool:
        raise NotImplementedError

    def apply(self, model: nn.Module, gate: _Gate) -> None:
        """Rewrite ``model`` (the private copy) in place."""

    def zennit_canonizers(self) -> list[Any]:
        return []


class ResNetCanonizer(Canonizer):
    """torchvision ResNets: zennit's residual canonizers rewrite the blocks when the rules are registered (only
    those: merging BatchNorm into convs would change the values read at conv outputs)."""

    family = "resnet"

    def matches(self, model: nn.Module) -> bool:
        from torchvision.models.resnet import ResNet

        return isinstance(model, ResNet)

    def zennit_canonizers(self) -> list[Any]:
        from zennit.torchvision import ResNetBasicBlockCanonizer, ResNetBottleneckCanonizer

        return [ResNetBottleneckCanonizer(), ResNetBasicBlockCanonizer()]


class DenseNetCanonizer(Canonizer):
    """torchvision DenseNet: the functional ReLU and pooling after the features become modules."""

    family = "densenet"

    def matches(self, model: nn.Module) -> bool:
        from torchvision.models.densenet import DenseNet

        return isinstance(model, DenseNet)

    def apply(self, model: nn.Module, gate: _Gate) -> None:
        model.vital_relu, model.vital_pool = nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1))
        model.forward = types.MethodType(_densenet_forward, model)


class ViTCanonizer(Canonizer):
    """torchvision ViT: residual and position-embedding adds as sums, fused attention as AttnLRP's value mixing."""

    family = "vit"

    def matches(self, model: nn.Module) -> bool:
        from torchvision.models.vision_transformer import VisionTransformer

        return isinstance(model, VisionTransformer)

    def apply(self, model: nn.Module, gate: _Gate) -> None:
        from torchvision.models.vision_transformer import Encoder, EncoderBlock

        for sub in list(model.modules()):
            if isinstance(sub, Encoder):
                sub.vital_sum = ResidualSum()
                sub.forward = types.MethodType(_encoder_forward, sub)
            elif isinstance(sub, EncoderBlock):
                sub.self_attention = LRPSelfAttention(sub.self_attention, gate)
                sub.vital_sum, sub.vital_sum2 = ResidualSum(), ResidualSum()
                sub.forward = types.MethodType(_encoder_block_forward, sub)


class ConvNeXtCanonizer(Canonizer):
    """torchvision ConvNeXt blocks: layer scale as a constant scale, the in-place residual add as a sum."""

    family = "convnext"

    def matches(self, model: nn.Module) -> bool:
        from torchvision.models.convnext import CNBlock

        return any(isinstance(sub, CNBlock) for sub in model.modules())

    def apply(self, model: nn.Module, gate: _Gate) -> None:
        from torchvision.models.convnext import CNBlock

        for sub in list(model.modules()):
            if isinstance(sub, CNBlock):
                sub.vital_scale = ConstantScale(sub.layer_scale)
                sub.vital_sum = ResidualSum()
                sub.forward = types.MethodType(_cnblock_forward, sub)


class EfficientNetCanonizer(Canonizer):
    """timm EfficientNet blocks with a skip (DepthwiseSeparableConv / InvertedResidual / EdgeResidual): the
    functional residual add as a sum."""

    family = "efficientnet"

    @staticmethod
    def _skip_blocks(model: nn.Module) -> list[nn.Module]:
        return [sub for sub in model.modules() if getattr(sub, "has_skip", False) is True and hasattr(sub, "drop_path")]

    def matches(self, model: nn.Module) -> bool:
        return bool(self._skip_blocks(model))

    def apply(self, model: nn.Module, gate: _Gate) -> None:
        for sub in self._skip_blocks(model):
            sub.has_skip = False
            sub.vital_inner = type(sub).forward.__get__(sub)
            sub.vital_sum = ResidualSum()
            sub.forward = types.MethodType(_skip_block_forward, sub)


# Tried in order; every one that matches rewrites the copy. Models of other families get the generic rule table.
CANONIZERS: list[Canonizer] = [ResNetCanonizer(), DenseNetCanonizer(), ViTCanonizer(), ConvNeXtCanonizer(),
                               EfficientNetCanonizer()]


def prepare_copy(module: nn.Module, gate: _Gate | None = None) -> tuple[nn.Module, list[Canonizer]]:
    """A deep copy of ``module`` with in-place ops off and every matching family's rewrites applied (values
    unchanged). Returns the copy and the canonizers that rewrote it."""
    m = copy.deepcopy(module).eval().requires_grad_(False)
    for sub in m.modules():
        if hasattr(sub, "inplace") and isinstance(sub.inplace, bool):
            sub.inplace = False
    matched = [c for c in CANONIZERS if c.matches(m)]
    for c in matched:
        c.apply(m, gate or _Gate())
    return m, matched


class _RuleFn(torch.autograd.Function):
    """Joins a module's input ``x`` to its output ``y``. In a relevance backward (the rule's hook active) the
    module's rule maps the incoming relevance straight to ``x`` and the module's own backward never runs; in a
    plain backward (hooks inactive) the gradient flows to ``y`` and through the module as usual."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, hook: Any, module: nn.Module) -> torch.Tensor:  # noqa: ANN001
        ctx.hook, ctx.module = hook, module
        ctx.save_for_backward(x)
        return _alias(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[Any, ...]:  # noqa: ANN001
        if ctx.hook.active:
            (x,) = ctx.saved_tensors
            return ctx.hook.relevance(ctx.module, x.detach(), grad), None, None, None
        return None, grad, None, None


# --- the rules, as zennit hooks ------------------------------------------------------------------------------
# zennit's composites map them to modules, its canonizers run, and its ``inactive()`` switch turns them off. The
# propagation itself is ours: zennit's hooks let a module's true backward run and then overwrite its result, which
# doubles the cost of an LRP pass; ``_RuleFn`` skips it.

_EPS = torch.tensor(1e-6)  # the z-rule's stabilizer, signed like the denominator


class RuleHook(Hook):
    def register(self, module: nn.Module) -> Any:
        return RemovableHandleList([RemovableHandle(self), module.register_forward_hook(self._wrap)])

    def _wrap(self, module: nn.Module, input: Any, output: Any) -> Any:
        x = input[0] if isinstance(input, tuple) else input
        if not isinstance(output, torch.Tensor) or not isinstance(x, torch.Tensor) or not x.requires_grad:
            return None
        return _RuleFn.apply(x, output, self, module)

    def relevance(self, module: nn.Module, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def copy(self) -> RuleHook:
        return type(self)()

def _z_rule(module: nn.Module, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    xi = x.detach().requires_grad_(True)
    with torch.enable_grad():
        z = module.forward(xi)
    zd = z.detach()
    (g,) = torch.autograd.grad(z, xi, r / zd.add_(torch.copysign(_EPS.to(zd), zd)))
    return x * g

class PassRule(RuleHook):
    """Relevance passes through unchanged (norm scales as constants, AttnLRP's identity rule)."""

    def relevance(self, module: nn.Module, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return r

class ZRule(RuleHook):
    """z-rule for parameter-free linear maps (pooling, attention's value mixing)."""

    def relevance(self, module: nn.Module, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        return _z_rule(module, x, r)

class SumRule(RuleHook):
    """Residual sums (inputs stacked on the last axis): relevance split by each term's |contribution|.

    The signed z-rule gives both terms huge relevance of opposite signs wherever a signed residual stream
    (EfficientNet, ConvNeXt, ViT) nearly cancels its branch; relevance is used here as a min-max normalized
    weight, which such sign flips make meaningless. The |z| split conserves exactly and keeps the sign of the
    relevance it splits (on ReLU networks' non-negative streams it is the z-rule)."""

    def relevance(self, module: nn.Module, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        a = x.abs()
        return a / (a.sum(-1, keepdim=True) + 1e-12) * r.unsqueeze(-1)

class ZPlusRule(RuleHook):
    """z+ with biases out for conv/linear; for kernels without a positive weight, the z-rule.

    Plain z+ gives no relevance to an output without a positive contribution. In ResNet-style full
    convolutions that is rare, but a trained depthwise kernel (EfficientNet, ConvNeXt) is often entirely
    negative, and on non-negative inputs (after ReLU/ReLU6) z+ then drops the whole channel. Those kernels use
    the z-rule instead, which conserves; it costs nothing extra, since each output channel simply keeps its
    own weights in the twin module. Signed inputs get the full z+ (x+ w+ and x- w-). The modified weights live
    in twin modules built once, not per backward.
    """

    def __init__(self) -> None:
        super().__init__()
        self.twins: dict[str, nn.Module] | None = None
        self.signed = False  # whether this module's input was ever seen with negative values
        self.calls = 0

    @staticmethod
    def _twin(module: nn.Module, weight: torch.Tensor) -> nn.Module:
        twin = copy.copy(module)  # shallow: its own parameter dict and no hooks
        twin._parameters = dict(module._parameters)
        twin._forward_hooks = type(module._forward_hooks)()
        twin._forward_pre_hooks = type(module._forward_pre_hooks)()
        twin._parameters["weight"] = nn.Parameter(weight, requires_grad=False)
        if twin._parameters.get("bias") is not None:
            twin._parameters["bias"] = None
        return twin

    def _build(self, module: nn.Module) -> None:
        # Built on first use and shared where equal, so a ViT-L copy does not triple its weights.
        w = module.weight.detach()
        pos = w.clamp(min=0)
        no_pos = (w.flatten(1) > 0).sum(1) == 0
        self.twins = {"pos": self._twin(module, pos)}
        self.twins["mixed"] = self.twins["pos"] if not bool(no_pos.any()) else self._twin(
            module, torch.where(no_pos.view(-1, *([1] * (w.dim() - 1))), w, pos))

    def relevance(self, module: nn.Module, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        if self.twins is None:
            self._build(module)
        # An input's sign is structural (after a ReLU it is never negative; a residual stream always has
        # negatives): checked on the first calls, then every 64th, since the check costs a pass over x.
        self.calls += 1
        if not self.signed and (self.calls <= 4 or self.calls % 64 == 0):
            self.signed = bool(x.amin() < 0)
        if not self.signed:
            return _z_rule(self.twins["mixed"], x, r)  # conserves even if a negative slipped in
        if "neg" not in self.twins:
            self.twins["neg"] = self._twin(module, module.weight.detach().clamp(max=0))
        ins = [x.clamp(min=0).requires_grad_(True), x.clamp(max=0).requires_grad_(True)]
        with torch.enable_grad():
            outs = [self.twins["pos"].forward(ins[0]), self.twins["neg"].forward(ins[1])]
        # z+ >= 0; where it is 0 every positive contribution is 0, so the relevance given there is 0 too.
        s = r / (outs[0].detach() + outs[1].detach() + 1e-6)
        g0, g1 = torch.autograd.grad(outs, ins, grad_outputs=[s, s])
        return ins[0].detach() * g0 + ins[1].detach() * g1

class GuidedRule(RuleHook):
    """Guided Backpropagation at an activation: the local gradient, then only positive signals pass down."""

    def relevance(self, module: nn.Module, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        xi = x.requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(module.forward(xi), xi, r)
        return g.clamp(min=0)


def guided_composite():  # noqa: ANN201 - zennit Composite
    """Guided Backpropagation at every activation (zennit's own composite covers ``nn.ReLU`` only; ReLU6, GELU
    and SiLU networks need the same)."""
    from zennit.composites import LayerMapComposite

    return LayerMapComposite([(ACTIVATIONS, GuidedRule())])


def lrp_composite(canonizers: Sequence[Canonizer] = ()):  # noqa: ANN201 - zennit Composite
    """zennit's layer-map composite with the rule table of the module docstring, and the families' own zennit
    canonizers."""
    from zennit.composites import LayerMapComposite
    from zennit.layer import Sum

    norms = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
    layer_map = [
        (norms + ACTIVATIONS + (ConstantScale,), PassRule()),
        ((ResidualSum, Sum), SumRule()),
        ((nn.AvgPool2d, nn.AdaptiveAvgPool2d, AttentionMix), ZRule()),
        ((nn.Conv2d, nn.Linear), ZPlusRule()),
    ]
    return LayerMapComposite(layer_map, canonizers=[z for c in canonizers for z in c.zennit_canonizers()])


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the target layer has run."""


@dataclass
class RelevanceOutput:
    """Per matched layer, activations and relevance as (B, C, P); ``start`` is each item's start relevance total."""

    acts: dict[str, torch.Tensor]
    rel: dict[str, torch.Tensor]
    start: torch.Tensor


class Relevance:
    """Relevance of ``layers`` for ``targets`` (one per batch item), by LRP or Guided Backpropagation.

    Built once per run: a private copy of the model with the rules registered. ``__call__`` runs one forward
    (stopping at the target layer) and one relevance backward. With ``keep_graph=True`` the returned activations
    stay attached to ``x``'s graph, so the caller can compute its loss from them and get the true gradient under
    ``plain_gradients()``: the optimization then shares this forward instead of running its own (the rules are
    only active inside the relevance backward). ``close()`` (or a ``with`` block) removes everything.
    """

    def __init__(
        self,
        module: nn.Module,
        layers: Sequence[str],
        method: str = "lrp",
        skip_tokens: int = 0,
        model_name: str = "",
    ) -> None:
        self.method = parse_method(method)
        if self.method is None:
            raise VitalError("Relevance needs a method: lrp or guided_backprop")
        resolve_layers(module, layers, model_name)
        self.layers = list(layers)
        self.skip_tokens = skip_tokens
        self.model_name = model_name
        self._gate = _Gate()
        self.module, canonizers = prepare_copy(module, self._gate)
        self.family = canonizers[-1].family if canonizers else "generic"
        self._resolved: tuple[list[str], list[nn.Module]] = ([], [])
        self._composite = lrp_composite(canonizers) if self.method == "lrp" else guided_composite()
        self._composite.register(self.module)

    def describe(self) -> dict[str, Any]:
        rules = {"lrp": "z+ (no bias; z-rule where z+ is empty) conv/linear, pass norms/activations/layer scale, "
                        "z-rule pooling/attention values (q, k constant), |z| split of residual sums",
                 "guided_backprop": "gradient with negative signals stopped at every activation"}
        return {"method": self.method, "family": self.family, "rules": rules[self.method]}

    def close(self) -> None:
        if self._composite is not None:
            self._composite.remove()
            self._composite = None

    def __enter__(self) -> Relevance:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    @contextmanager
    def plain_gradients(self) -> Iterator[None]:
        """Within the block, backward passes through the copy compute true gradients (rules and gate off)."""
        with self._composite.inactive():
            yield

    def __call__(
        self,
        x: torch.Tensor,
        targets: Sequence[Objective | int],
        keep_graph: bool = False,
    ) -> RelevanceOutput:
        """``x``: (B, 3, H, W) normalized images; ``targets``: one per item (class indices, or units/directions of
        one layer). ``keep_graph``: ``x`` must require grad; activations come back attached to its graph."""
        if self._composite is None:
            raise VitalError("this Relevance was closed")
        if len(targets) != x.shape[0]:
            raise VitalError(f"{len(targets)} targets for a batch of {x.shape[0]}")
        layer = _target_layer(targets)
        names = list(dict.fromkeys(self.layers + ([layer] if layer else [])))
        if names != self._resolved[0]:  # resolved once per layer set, not on every optimization step
            self._resolved = (names, resolve_layers(self.module, names, self.model_name))
        mods = self._resolved[1]
        outs: dict[str, torch.Tensor] = {}
        handles = []

        def keep(name: str, stop: bool):  # noqa: ANN202
            def hook(_m: nn.Module, _i: object, out: Any) -> None:
                outs[name] = out[0] if isinstance(out, (tuple, list)) else out
                if stop and all(n in outs for n in names):
                    raise _Stop

            return hook

        try:
            for name, mod in zip(names, mods, strict=True):
                handles.append(mod.register_forward_hook(keep(name, stop=layer is not None)))
            with torch.enable_grad():
                xin = x if keep_graph else x.detach().requires_grad_(True)
                try:
                    logits = self.module(xin)
                except _Stop:
                    logits = None
                top = logits if layer is None else outs[layer]
                top = top[0] if isinstance(top, (tuple, list)) else top
                start, seed = _start(top, targets, self.method)
                self._gate.open = False
                try:
                    grads = torch.autograd.grad(top, [outs[n] for n in self.layers], grad_outputs=seed,
                                                allow_unused=True, retain_graph=keep_graph)
                finally:
                    self._gate.open = True
        finally:
            for h in handles:
                h.remove()
        acts, rel = {}, {}
        for name, g in zip(self.layers, grads, strict=True):
            a = outs[name] if keep_graph else outs[name].detach()
            acts[name] = as_channels_positions(a, self.skip_tokens)
            rel[name] = as_channels_positions(torch.zeros_like(a) if g is None else g.detach(), self.skip_tokens)
        return RelevanceOutput(acts, rel, start.detach().flatten(1).sum(1))


def _target_layer(targets: Sequence[Any]) -> str | None:
    layers = {None if isinstance(t, (int, ClassTarget)) or t.layer == LOGITS else t.layer for t in targets}
    if len(layers) != 1:
        raise VitalError("all targets of one batch must be on the same layer (or all classes)")
    return layers.pop()


def _start(top: torch.Tensor, targets: Sequence[Any], method: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Start relevance (LRP: the target's value laid out on the layer) and the backward seed for ``method``.

    LRP starts from the value itself: a class logit, a channel's activation map (its positive part: where the unit
    fires), one neuron's (positive) activation, or the direction at its best-matching position. Guided
    Backpropagation starts from the gradient of the same quantity (one-hot, or the spatial mean's uniform weights)."""
    top = top[0] if isinstance(top, (tuple, list)) else top
    act = top.detach()
    start = torch.zeros_like(act)
    seed = torch.zeros_like(act)
    for b, t in enumerate(targets):
        a = act[b]
        if isinstance(t, (int, ClassTarget)):
            c = t if isinstance(t, int) else t.cls
            if not isinstance(c, int):
                raise VitalError("relevance needs a resolved class index")
            if a.dim() != 1:
                raise VitalError(f"a class target needs logits, the model returns shape {tuple(a.shape)}")
            start[b, c] = a[c]
            seed[b, c] = 1.0
        elif isinstance(t, UnitTarget):
            t.check(tuple(a.shape))
            tokens = a.dim() == 2
            sl = (slice(None), t.channel) if tokens else (t.channel,)
            if t.position is not None:
                sl = (t.position[0], t.channel) if tokens else (t.channel, *t.position)
            start[b][sl] = a[sl].clamp(min=0)  # where the unit fires: a signed map would start with cancellations
            ones = torch.ones_like(a[sl])
            seed[b][sl] = ones / ones.numel()
        elif isinstance(t, DirectionTarget):
            t.check(tuple(a.shape))
            cp = a.flatten(1) if a.dim() == 3 else a.t()  # (C, P)
            v = t.vector.to(cp)
            p = int(nn.functional.cosine_similarity(cp, v.unsqueeze(1), dim=0).argmax())
            view = start[b].flatten(1) if a.dim() == 3 else start[b].t()
            view[:, p] = v  # views of start[b]: written in place
            sview = seed[b].flatten(1) if a.dim() == 3 else seed[b].t()
            sview[:, p] = v
        elif isinstance(t, Objective):
            # Any other objective starts from its own gradient: LRP from gradient x activation (for a sum of
            # logits or channel means, each term's value laid out where it is read, signed), Guided Backpropagation
            # from the gradient.
            g = _objective_gradient(t, a)
            start[b] = g * a
            seed[b] = g
        else:
            raise VitalError(f"cannot start relevance from {t!r}")
    return start, (start if method == "lrp" else seed)


def _objective_gradient(objective: Objective, a: torch.Tensor) -> torch.Tensor:
    """d objective / d one item's output ``a`` of the objective's layer (or the logits)."""
    shapes = {objective.layer: tuple(a.shape)}
    objective.check_shapes(shapes)
    x = a.detach().unsqueeze(0).requires_grad_(True)
    with torch.enable_grad():
        (g,) = torch.autograd.grad(objective({objective.layer: x}).sum(), x)
    return g[0]


def normalize_relevance(rel: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """R̂: min–max normalization of (B, C, P) relevance per channel over positions (a flat channel gives 0)."""
    lo = rel.amin(-1, keepdim=True)
    span = rel.amax(-1, keepdim=True) - lo
    return torch.where(span > eps, (rel - lo) / span.clamp(min=eps), torch.zeros_like(rel))


def channel_importance(rel: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(B, C) importance: each channel's max relevance over positions, min–max normalized across channels."""
    m = rel.amax(-1)
    lo = m.amin(-1, keepdim=True)
    span = m.amax(-1, keepdim=True) - lo
    return torch.where(span > eps, (m - lo) / span.clamp(min=eps), torch.ones_like(m))


def silent(rel: dict[str, torch.Tensor], start: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """(B,) bool: items whose start relevance or relevance at every layer is (near) zero — the unit is silent."""
    flat = torch.stack([r.abs().flatten(1).sum(1) for r in rel.values()]).amax(0)
    return (start.abs() <= eps) | (flat <= eps)


def conservation(out: RelevanceOutput) -> dict[str, float]:
    """Per layer, the batch's summed relevance divided by the summed start relevance (1.0 = conserved)."""
    total = float(out.start.sum())
    if abs(total) < 1e-12:
        return {n: float("nan") for n in out.rel}
    return {n: round(float(r.sum()) / total, 6) for n, r in out.rel.items()}
