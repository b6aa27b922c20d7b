"""The LRP and Guided Backpropagation rules, as zennit hooks, and the composites that map them to modules.

One rule table for every family (see ``relevance/__init__``); a family's canonizer makes its functional operations
visible to these rules and may add zennit canonizers of its own (``Canonizer.zennit_canonizers``).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from zennit.core import Hook, RemovableHandle, RemovableHandleList

from .canonizers import AttentionMix, Canonizer, ConstantScale, ResidualSum, alias_view

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish)


class _RuleFn(torch.autograd.Function):
    """Joins a module's input ``x`` to its output ``y``. In a relevance backward (the rule's hook active) the
    module's rule maps the incoming relevance straight to ``x`` and the module's own backward never runs; in a
    plain backward (hooks inactive) the gradient flows to ``y`` and through the module as usual."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, hook: Any, module: nn.Module) -> torch.Tensor:  # noqa: ANN001
        ctx.hook, ctx.module = hook, module
        ctx.save_for_backward(x)
        # A rule nested in a ruled module (the activation inside timm's BatchNormAct2d) gets no relevance: the
        # outer rule sends it all to the outer input. Left undefined, nothing below it runs; materialized as zeros,
        # the zeros went through the rule, the norm's backward and a sum at the outer input on every step.
        ctx.set_materialize_grads(False)
        return alias_view(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None) -> tuple[Any, ...]:  # noqa: ANN001
        if grad is None:
            return None, None, None, None
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

def _plain_conv(module: nn.Module) -> bool:
    """A bias-free ``nn.Conv2d`` (a rule's twin) whose input gradient ``_conv_input_grad`` can compute directly."""
    return (type(module) is nn.Conv2d and module.bias is None and module.padding_mode == "zeros"
            and not isinstance(module.padding, str))


def _conv(module: nn.Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x, module.weight, None, module.stride, module.padding, module.dilation, module.groups)


def _conv_input_grad(module: nn.Conv2d, x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """The input gradient of ``_conv`` at ``x``: the very call autograd's convolution backward makes, without a
    graph or a nested ``autograd.grad`` inside the relevance backward (that engine re-entry cost more than the
    arithmetic of the smaller layers)."""
    return torch.ops.aten.convolution_backward(grad, x, module.weight, None, module.stride, module.padding,
                                               module.dilation, False, [0] * len(module.stride), module.groups,
                                               [True, False, False])[0]


def _z_rule(module: nn.Module, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    if _plain_conv(module):
        z = _conv(module, x)
        return x * _conv_input_grad(module, x, r / z.add_(torch.copysign(_EPS.to(z), z)))
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
        pos, neg = self.twins["pos"], self.twins["neg"]
        if _plain_conv(pos) and _plain_conv(neg):
            xp, xn = x.clamp(min=0), x.clamp(max=0)
            s = r / (_conv(pos, xp) + _conv(neg, xn) + 1e-6)
            return xp * _conv_input_grad(pos, xp, s) + xn * _conv_input_grad(neg, xn, s)
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
    """zennit's layer-map composite with the rule table of the module docstring (after the families' own rule
    choices, ``Canonizer.rules``: the first matching entry rules a module), and the families' own zennit
    canonizers."""
    from zennit.composites import LayerMapComposite
    from zennit.layer import Sum

    norms = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
    layer_map = [entry for c in canonizers for entry in c.rules()] + [
        (norms + ACTIVATIONS + (ConstantScale,), PassRule()),
        ((ResidualSum, Sum), SumRule()),
        ((nn.AvgPool2d, nn.AdaptiveAvgPool2d, AttentionMix), ZRule()),
        ((nn.Conv2d, nn.Linear), ZPlusRule()),
    ]
    return LayerMapComposite(layer_map, canonizers=[z for c in canonizers for z in c.zennit_canonizers()])

