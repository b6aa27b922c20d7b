"""The relevance engine (SPEC §4): ``Relevance`` on a private, canonized copy of the model, one forward up to the
target and one backward under the rules; the start relevance of each target kind; the normalizations VITAL uses.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ..errors import VitalError
from ..features import as_channels_positions, resolve_layers
from ..objectives import LOGITS, ClassTarget, DirectionTarget, Objective, UnitTarget
from ..zoo import families as _builtin_families  # noqa: F401 - registers the built-in families' canonizers
from ..zoo.registry import canonizers_for
from .canonizers import Canonizer, Gate, sequential_chains
from .rules import guided_composite, link_chains, lrp_composite

METHODS = ("lrp", "guided_backprop")


def parse_method(method: str | None) -> str | None:
    """'lrp' | 'guided_backprop' (or 'guided-backprop') | None / 'none'."""
    if method is None or str(method).lower() in ("none", ""):
        return None
    m = str(method).lower().replace("-", "_")
    if m not in METHODS:
        raise VitalError(f"unknown relevance '{method}': choose lrp, guided-backprop or none")
    return m


def prepare_copy(module: nn.Module, gate: Gate | None = None) -> tuple[nn.Module, list[Canonizer]]:
    """A deep copy of ``module`` with in-place ops off and every matching family's rewrites applied (values
    unchanged). Returns the copy and the canonizers that rewrote it."""
    m = copy.deepcopy(module).eval().requires_grad_(False)
    for sub in m.modules():
        if hasattr(sub, "inplace") and isinstance(sub.inplace, bool):
            sub.inplace = False
    matched = canonizers_for(m)
    for c in matched:
        c.apply(m, gate or Gate())
    return m, matched


class _Stop(Exception):
    """Raised by a hook to end a forward pass once the target layer has run."""


@dataclass
class RelevanceOutput:
    """Per matched layer, activations and relevance as (B, C, P); ``start`` is each item's start relevance total;
    ``outputs``: each layer's output as the copy made it (attached to the graph with ``keep_graph``), where a
    gradient hook can reach it."""

    acts: dict[str, torch.Tensor]
    rel: dict[str, torch.Tensor]
    start: torch.Tensor
    outputs: dict[str, torch.Tensor] = field(default_factory=dict)


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
        self._gate = Gate()
        self.module, canonizers = prepare_copy(module, self._gate)
        self.family = canonizers[-1].family if canonizers else "generic"
        self._resolved: tuple[list[str], list[nn.Module]] = ([], [])
        self._composite = lrp_composite(canonizers) if self.method == "lrp" else guided_composite()
        self._composite.register(self.module)
        for hook in self._composite.hook_refs:
            hook.gate = self._gate  # rules apply in the relevance pass's thread only
        pairs = sequential_chains(self.module) + [p for c in canonizers for p in c.chains(self.module)]
        self._links = link_chains(self._composite, self.module, pairs)

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
        on_relevance: Callable[[str, torch.Tensor, torch.Tensor, bool], None] | None = None,
    ) -> RelevanceOutput:
        """``x``: (B, 3, H, W) normalized images; ``targets``: one per item (class indices, or units/directions of
        one layer). ``keep_graph``: ``x`` must require grad; activations come back attached to its graph.
        ``on_relevance(layer, acts, rel, last)``, both (B, C, P) and detached, is called for each layer as soon as
        the relevance backward reaches it (the deepest first), so work on a layer can start while it goes on;
        ``last``: no other layer is to come."""
        if self._composite is None:
            raise VitalError("this Relevance was closed")
        if len(targets) != x.shape[0]:
            raise VitalError(f"{len(targets)} targets for a batch of {x.shape[0]}")
        layer = _target_layer(targets)
        names = list(dict.fromkeys(self.layers + ([layer] if layer else [])))
        if names != self._resolved[0]:  # resolved once per layer set, not on every optimization step
            self._resolved = (names, resolve_layers(self.module, names, self.model_name))
            for link in self._links:  # a producer whose output is read keeps its own rule node
                link.on = not any(link.producer is m for m in self._resolved[1])
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
                if on_relevance is not None:
                    arrived: set[str] = set()
                    total = len(set(self.layers))
                    for n in self.layers:
                        handles.append(outs[n].register_hook(self._arrival(n, outs[n], on_relevance, arrived,
                                                                           total)))
                self._gate.open = False
                try:
                    grads = torch.autograd.grad(top, [outs[n] for n in self.layers], grad_outputs=seed,
                                                allow_unused=True, retain_graph=keep_graph)
                finally:
                    self._gate.open = True
        finally:
            for h in handles:
                h.remove()
            for link in self._links:
                link.clear()
        acts, rel, raw = {}, {}, {}
        for name, g in zip(self.layers, grads, strict=True):
            raw[name] = a = outs[name] if keep_graph else outs[name].detach()
            acts[name] = as_channels_positions(a, self.skip_tokens)
            rel[name] = as_channels_positions(torch.zeros_like(a) if g is None else g.detach(), self.skip_tokens)
        return RelevanceOutput(acts, rel, start.detach().flatten(1).sum(1), raw)

    def _arrival(self, name: str, out: torch.Tensor, call: Callable[[str, torch.Tensor, torch.Tensor, bool], None],
                 arrived: set[str], total: int) -> Any:
        def hook(grad: torch.Tensor) -> None:
            if self._gate.open:  # a plain backward in another thread
                return
            arrived.add(name)
            call(name, as_channels_positions(out.detach(), self.skip_tokens),
                 as_channels_positions(grad.detach(), self.skip_tokens), len(arrived) == total)

        return hook


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

