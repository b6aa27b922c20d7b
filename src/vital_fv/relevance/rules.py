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
from zennit.core import Composite, Hook, RemovableHandle, RemovableHandleList

from ..errors import VitalError
from .canonizers import (
    AttentionMix,
    Canonizer,
    ConstantScale,
    ResidualSum,
    alias_view,
    batched_mm,
    is_pointwise,
)

ACTIVATIONS = (nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Hardswish, nn.LeakyReLU, nn.ELU, nn.Mish)


class _RuleFn(torch.autograd.Function):
    """Joins a module's inputs ``xs`` to its output ``y``. In a relevance backward (the rule's hook active) the
    module's rule maps the incoming relevance straight to the inputs and the module's own backward never runs; in
    a plain backward (hooks inactive) the gradient flows to ``y`` and through the module as usual."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, hook: Any, module: nn.Module, *xs: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.hook, ctx.module = hook, module
        ctx.nones = (None,) * (2 + len(xs))  # the plain backward's tail, made here: it runs on every step
        ctx.save_for_backward(*xs)
        # Where no relevance arrives (a path the attention gate cut), the gradient stays undefined, so nothing below
        # computes on zeros.
        ctx.set_materialize_grads(False)
        return alias_view(y)

    @staticmethod
    def backward(ctx, grad: torch.Tensor | None) -> tuple[Any, ...]:  # noqa: ANN001
        if grad is None:
            return (None, *ctx.nones)
        hook = ctx.hook
        if not hook.active or (hook.gate is not None and hook.gate.open):
            return (grad, *ctx.nones)
        xs = [t.detach() for t in ctx.saved_tensors]
        own = (xs.pop(),) if ctx.hook.wants_output else ()  # the module's own output comes last
        r = ctx.hook.relevance(ctx.module, xs[0] if len(xs) == 1 else tuple(xs), grad, *own)
        return None, None, None, *((r,) if len(xs) == 1 else r), *(None for _ in own)

# --- the rules, as zennit hooks ------------------------------------------------------------------------------
# zennit's composites map them to modules, its canonizers run, and its ``inactive()`` switch turns them off. The
# propagation itself is ours: zennit's hooks let a module's true backward run and then overwrite its result, which
# doubles the cost of an LRP pass; ``_RuleFn`` skips it.

_EPS = torch.tensor(1e-6)  # the z-rule's stabilizer, signed like the denominator


class Link:
    """A chain ``producer -> consumer`` where the producer's output goes only into the consumer and the consumer
    has a pass rule (a convolution into its norm). While ``on``, the producer adds no node of its own: the
    consumer's output is joined to the producer's input under the producer's rule, which is the same relevance
    as the two rules in turn (the pass rule hands relevance on unchanged), with one node less in every forward
    and both backwards. ``on`` is off while the producer's own output is read (a matched layer)."""

    def __init__(self, producer: str, consumer: str, module: nn.Module) -> None:
        self.names = (producer, consumer)
        self.producer = module
        self.on = True
        self.y: torch.Tensor | None = None  # the producer's output in this forward, not yet consumed
        # what the consumer joins: the producer's inputs, rule, module and own output
        self.src: tuple[tuple[torch.Tensor, ...], RuleHook, nn.Module, torch.Tensor] | None = None

    def clear(self) -> None:
        self.y = self.src = None


class RuleHook(Hook):
    """A rule: ``relevance(module, x, r)`` maps the relevance ``r`` at the module's output to its input ``x`` (a
    tuple of the first ``inputs`` positional inputs where a rule takes more than one)."""

    link_in: Link | None = None
    link_out: Link | None = None
    gate: Any = None  # the owning Relevance's Gate: where given, the rule applies only in a thread it closed
    inputs = 1
    wants_output = False  # whether ``relevance`` also takes the module's own output (``y``)

    def register(self, module: nn.Module) -> Any:
        self.module_id = id(module)
        return RemovableHandleList([RemovableHandle(self), module.register_forward_hook(self._wrap)])

    def _wrap(self, module: nn.Module, input: Any, output: Any) -> Any:
        # Runs for every ruled module in every forward: plain loops, no generators.
        xs = input[: self.inputs] if isinstance(input, tuple) else (input,)
        if not xs or not isinstance(output, torch.Tensor):
            return None
        grad = False
        for x in xs:
            if not isinstance(x, torch.Tensor):
                return None
            grad = grad or x.requires_grad
        if not grad:
            return None
        src = (xs, self, module, output)
        link = self.link_in
        if link is not None and link.y is not None:
            if link.y is not xs[0]:
                raise VitalError(f"relevance: '{link.names[1]}' did not take '{link.names[0]}''s output as its "
                                 "input, so the two cannot share one rule (a family's Canonizer.chains names a "
                                 "pair its model does not have)")
            src = link.src
            link.clear()
        if self.link_out is not None and self.link_out.on:
            self.link_out.y, self.link_out.src = output, src
            return None
        xs, hook, owner, own = src
        return _RuleFn.apply(output, hook, owner, *xs, *((own,) if hook.wants_output else ()))

    def relevance(self, module: nn.Module, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def copy(self) -> RuleHook:
        return type(self)()


def link_chains(composite: Composite, model: nn.Module, pairs: Sequence[tuple[str, str]]) -> list[Link]:
    """Link each ``(producer, consumer)`` pair of ``model``'s module names whose consumer has a pass rule (see
    ``Link``); pairs without rules on both, or with a module already linked that way, are left as they are."""
    hooks = {hook.module_id: hook for hook in composite.hook_refs if isinstance(hook, RuleHook)}
    links = []
    for producer, consumer in pairs:
        try:
            first, second = model.get_submodule(producer), model.get_submodule(consumer)
        except AttributeError:
            continue
        a, b = hooks.get(id(first)), hooks.get(id(second))
        if a is None or not isinstance(b, PassRule) or a.link_out is not None or b.link_in is not None:
            continue
        a.link_out = b.link_in = Link(producer, consumer, first)
        links.append(a.link_out)
    return links


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


def _stabilize(z: torch.Tensor, eps: torch.Tensor | None) -> torch.Tensor:
    """``z`` plus the z-rule's stabilizer signed like ``z``, in place. ``eps``: per output channel (dim 1), when
    each channel's sign is known from its weights (one pass less than ``copysign``)."""
    if eps is None:
        return z.add_(torch.copysign(_EPS.to(z), z))
    return z.add_(eps.view(-1, *([1] * (z.dim() - 2))))


def _z_rule(module: nn.Module, x: torch.Tensor, r: torch.Tensor, eps: torch.Tensor | None = None) -> torch.Tensor:
    if is_pointwise(module):
        w = module.weight.flatten(1)
        z = _stabilize(batched_mm(w, x.flatten(2)), eps)
        return x * batched_mm(w.t(), torch.div(r.flatten(2), z, out=z)).view(x.shape)
    if _plain_conv(module):
        z = _stabilize(_conv(module, x), eps)
        return x * _conv_input_grad(module, x, torch.div(r, z, out=z))
    if type(module) is nn.Linear and module.bias is None and x.dim() == 2:
        # The calls autograd makes for a linear layer, without a nested autograd pass; the stabilizer's sign from
        # z as in the generic path. Outputs without relevance (a class logit's: all but one) add only exact zeros
        # to W^T s, so its product is taken over the others alone (1 of 1000 rows of a classifier).
        w = module.weight
        z = _stabilize(F.linear(x, w), None)
        s = torch.div(r, z, out=z)
        rows = r.ne(0).any(0)
        if int(rows.sum()) * 4 < rows.numel():
            return x * torch.mm(s[:, rows], w[rows])
        return x * torch.mm(s, w)
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
    """Residual sums (two inputs, or inputs stacked on the last axis): relevance split by each term's
    |contribution|.

    The signed z-rule gives both terms huge relevance of opposite signs wherever a signed residual stream
    (EfficientNet, ConvNeXt, ViT) nearly cancels its branch; relevance is used here as a min-max normalized
    weight, which such sign flips make meaningless. The |z| split conserves exactly and keeps the sign of the
    relevance it splits (on ReLU networks' non-negative streams it is the z-rule)."""

    inputs = 2

    def relevance(self, module: nn.Module, x: Any, r: torch.Tensor) -> Any:
        if isinstance(x, tuple):
            a, b = x[0].abs(), x[1].abs()
            total = (a + b).add_(1e-12)
            return a.div_(total).mul_(r), b.div_(total).mul_(r)
        a = x.abs()
        return a / (a.sum(-1, keepdim=True) + 1e-12) * r.unsqueeze(-1)

# How close z+ from a layer's own output must come to the exact sum (max difference over max relevance) for the
# layer to use it: 1e-7-3e-7 on Lite0's signed 1x1 layers but one, where it was 3e-2 (16 input channels).
SHORTCUT_TOLERANCE = 1e-5


class ZPlusRule(RuleHook):
    """z+ with biases out for conv/linear; for kernels without a positive weight, the z-rule.

    Plain z+ gives no relevance to an output without a positive contribution. In ResNet-style full
    convolutions that is rare, but a trained depthwise kernel (EfficientNet, ConvNeXt) is often entirely
    negative, and on non-negative inputs (after ReLU/ReLU6) z+ then drops the whole channel. Those kernels use
    the z-rule instead, which conserves; it costs nothing extra, since each output channel simply keeps its
    own weights in the twin module. Signed inputs get the full z+ (x+ w+ and x- w-). The modified weights live
    in twin modules built once, not per backward.
    """

    wants_output = True

    def __init__(self) -> None:
        super().__init__()
        self.twins: dict[str, nn.Module] | None = None
        self.eps: torch.Tensor | None = None
        self.cat: torch.Tensor | None = None  # [W+ | W-] of a signed 1x1 layer
        self.signed_cat: torch.Tensor | None = None  # [W | |W|] of the same
        self.shortcut = False  # whether the signed 1x1 layer's z+ may come from its own output
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
        # On non-negative inputs the mixed twin's z is >= 0 where a channel keeps positive weights, <= 0 where it
        # has none: the stabilizer's sign per channel, known once.
        self.eps = torch.where(no_pos, -_EPS, _EPS).to(w)

    def _signed_pointwise(self, x: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
        """z+ of a 1x1 layer on a signed input: one product over [x+, x-] and [W+ | W-] instead of two, the same
        sum of non-negative terms in another order (float rounding apart); at these layers' few input channels
        the doubled inner dimension makes the product efficient (Lite0's 16 -> 96 layer at 112 px: 5.3 -> 2.9 ms)."""
        if self.cat is None:
            self.cat = torch.cat([self.twins["pos"].weight.flatten(1), self.twins["neg"].weight.flatten(1)], 1)
        xf, c = x.flatten(2), x.shape[1]
        xc = x.new_empty(x.shape[0], 2 * c, xf.shape[-1])
        torch.clamp(xf, min=0, out=xc[:, :c])
        torch.clamp(xf, max=0, out=xc[:, c:])
        z = batched_mm(self.cat, xc).add_(1e-6)
        g = batched_mm(self.cat.t(), torch.div(r.flatten(2), z, out=z))
        return torch.addcmul(xc[:, :c] * g[:, :c], xc[:, c:], g[:, c:]).view(x.shape)

    def _signed_pointwise_from_output(self, module: nn.Module, x: torch.Tensor, r: torch.Tensor,
                                      y: torch.Tensor) -> torch.Tensor:
        """The same z+ from the layer's own output y = Wx: z+ = (Wx + |W||x|) / 2, and the relevance
        (x W^T s + |x| |W|^T s) / 2, so one product of the forward is y's, already made (a quarter of the
        layer's products saved). Where z+ is a tiny part of |W||x| the difference loses digits, so ``relevance``
        uses it only for a layer where it measured within ``SHORTCUT_TOLERANCE`` of the exact sum."""
        c = x.shape[1]
        if self.signed_cat is None:
            w = module.weight.detach().flatten(1)
            self.signed_cat = torch.cat([w, w.abs()], 1)  # [W | |W|]
        xf = x.flatten(2)
        ax = xf.abs()
        z = batched_mm(self.signed_cat[:, c:], ax)
        z.add_(y.flatten(2) if module.bias is None else (y - module.bias.view(-1, 1, 1)).flatten(2))
        z.mul_(0.5).clamp_(min=0).add_(1e-6)
        g = batched_mm(self.signed_cat.t(), torch.div(r.flatten(2), z, out=z))
        return torch.addcmul(xf * g[:, :c], ax, g[:, c:]).mul_(0.5).view(x.shape)

    def relevance(self, module: nn.Module, x: torch.Tensor, r: torch.Tensor,
                  y: torch.Tensor | None = None) -> torch.Tensor:
        if self.twins is None:
            self._build(module)
        # An input's sign is structural (after a ReLU it is never negative; a residual stream always has
        # negatives): checked on the first calls, then every 64th, since the check costs a pass over x; the
        # shortcut of a signed 1x1 layer is measured on the same calls.
        self.calls += 1
        checking = self.calls <= 4 or self.calls % 64 == 0
        if not self.signed and checking:
            self.signed = bool(x.amin() < 0)
        if not self.signed:
            return _z_rule(self.twins["mixed"], x, r, self.eps)
        if "neg" not in self.twins:
            self.twins["neg"] = self._twin(module, module.weight.detach().clamp(max=0))
        pos, neg = self.twins["pos"], self.twins["neg"]
        if is_pointwise(pos):
            if y is None or y.shape != r.shape:
                return self._signed_pointwise(x, r)
            if checking:  # the shortcut measured against the exact sum
                want, got = self._signed_pointwise(x, r), self._signed_pointwise_from_output(module, x, r, y)
                self.shortcut = bool((got - want).abs().amax() <= SHORTCUT_TOLERANCE * want.abs().amax())
                return want
            if self.shortcut:
                return self._signed_pointwise_from_output(module, x, r, y)
            return self._signed_pointwise(x, r)
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


def _outermost(layer_map: list[tuple[tuple[type, ...], RuleHook]]) -> Any:
    """A zennit ``module_map``: a module's first matching rule of ``layer_map``, and none inside a module that has
    one. The outer rule sends all relevance to the outer input, so an inner rule (the activation inside timm's
    ``BatchNormAct2d``) would only add a node to every forward and backward."""

    def module_map(ctx: dict, name: str, module: nn.Module) -> RuleHook | None:
        ruled = ctx.setdefault("ruled", set())
        parts = name.split(".")
        if any(".".join(parts[:i]) in ruled for i in range(1, len(parts))):
            return None
        hook = next((hook for types, hook in layer_map if isinstance(module, types)), None)
        if hook is not None:
            ruled.add(name)
        return hook

    return module_map


def guided_composite() -> Composite:
    """Guided Backpropagation at every activation (zennit's own composite covers ``nn.ReLU`` only; ReLU6, GELU
    and SiLU networks need the same)."""
    return Composite(_outermost([(ACTIVATIONS, GuidedRule())]))


def lrp_composite(canonizers: Sequence[Canonizer] = ()) -> Composite:
    """A zennit composite with the rule table of the module docstring (after the families' own rule choices,
    ``Canonizer.rules``: the first matching entry rules a module; none inside a ruled module), and the families'
    own zennit canonizers."""
    from zennit.layer import Sum

    norms = (nn.modules.batchnorm._BatchNorm, nn.LayerNorm, nn.GroupNorm)
    layer_map = [entry for c in canonizers for entry in c.rules()] + [
        (norms + ACTIVATIONS + (ConstantScale,), PassRule()),
        ((ResidualSum, Sum), SumRule()),
        ((nn.AvgPool2d, nn.AdaptiveAvgPool2d, AttentionMix), ZRule()),
        ((nn.Conv2d, nn.Linear), ZPlusRule()),
    ]
    return Composite(_outermost(layer_map), canonizers=[z for c in canonizers for z in c.zennit_canonizers()])

