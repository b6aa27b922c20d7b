"""Objectives: what to visualize, as functions of the captured activations (Lucent's objectives, Horama's callables).

An objective maps the activations of one forward pass (a dict layer -> tensor, batch first; the logits under
``LOGITS``) to one score per batch item, knows which layers it reads (so they are captured) and has a readable
name for records and file names. Class logits (``ClassTarget``), a channel's mean or one neuron (``UnitTarget``) and
a saved concept's direction (``DirectionTarget``) are the built-in ones; they add, subtract, scale and negate
(``channel("blocks.5.2", 17) - channel("blocks.5.2", 3)``, ``logit("espresso") - logit("cup")``, ``sum([...])``),
and ``objective(fn, layers=[...])`` wraps any function of the activations. Every method takes one: the baselines
ascend it; VITAL ranks its references by it and takes its relevance from its gradient (a class alone keeps the
class references and class relevance). Built-in objectives and their algebra round-trip through JSON
(``to_json`` / ``from_json``); a custom callable cannot, and says so.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .device import holds_model
from .errors import VitalError, close_matches
from .features import capture
from .options import split_objective

LOGITS = "@logits"  # the model's output in an activations dict (no module name starts with @)
Activations = Mapping[str, torch.Tensor]


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise VitalError(f"{what}: an objective can be scaled by a finite number only, not {value!r:.60}")
    return float(value)


def _file_safe(text: str) -> str:
    out = "".join(c if c.isalnum() or c in "._" else "-" for c in text)
    return re.sub("-{2,}", "-", out).strip("-") or "objective"


class Objective:
    """Base of every objective: ``obj(acts) -> (B,)`` scores, ``layers`` read, a name, and the algebra.

    ``acts`` holds each read layer's output (batch first; a module's tuple output as its first tensor) and the
    logits under ``LOGITS``. Subclasses set ``layers`` and ``__call__``; ``to_json`` where they can be written."""

    kind = "objective"  # the record's and the methods' target kind: class, unit, direction, objective

    @property
    def layers(self) -> tuple[str, ...]:
        raise NotImplementedError

    def __call__(self, acts: Activations) -> torch.Tensor:
        raise NotImplementedError

    def label(self) -> str:
        raise NotImplementedError

    def slug(self, *_: object) -> str:
        return _file_safe(self.label())

    def describe(self) -> dict[str, Any]:
        """The record's ``target``: kind, readable name, layers read and the JSON form where there is one."""
        try:
            spec: dict[str, Any] | None = self.to_json()
        except VitalError:
            spec = None
        return {"kind": "objective", "name": self.label(), "layers": list(self.layers), "objective": spec,
                **({} if spec is not None else {"code": self.cache_id()})}

    def to_json(self) -> dict[str, Any]:
        raise VitalError(f"objective {self.label()} cannot be written to JSON")

    def cache_id(self) -> str:
        """What identifies the objective in cache keys (its JSON form; a custom callable: its name and code)."""
        return json.dumps(self.to_json(), sort_keys=True)

    def resolved(self, class_names: Sequence[str], synonyms: Any = None) -> Objective:
        """This objective with class names replaced by the model's indices (what ``__call__`` needs)."""
        return self

    def check_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        """Fail clearly when a channel, position or size does not exist in the read layers (shapes without batch)."""

    def reads_logits(self) -> bool:
        return LOGITS in self.layers

    # --- the algebra (Lucent's): +, -, scaling by a number, negation, sum([...]) ----------------------------------
    def __add__(self, other: Any) -> Objective:
        if isinstance(other, (int, float)) and not isinstance(other, bool) and other == 0:
            return self  # sum([a, b]) starts from 0
        return Sum.of([(1.0, self), (1.0, _as_objective(other, "+"))])

    def __radd__(self, other: Any) -> Objective:
        if isinstance(other, (int, float)) and not isinstance(other, bool) and other == 0:
            return self
        return Sum.of([(1.0, _as_objective(other, "+")), (1.0, self)])

    def __sub__(self, other: Any) -> Objective:
        return Sum.of([(1.0, self), (-1.0, _as_objective(other, "-"))])

    def __rsub__(self, other: Any) -> Objective:
        return Sum.of([(1.0, _as_objective(other, "-")), (-1.0, self)])

    def __neg__(self) -> Objective:
        return Sum.of([(-1.0, self)])

    def __mul__(self, k: Any) -> Objective:
        return Sum.of([(_number(k, "*"), self)])

    __rmul__ = __mul__

    def __truediv__(self, k: Any) -> Objective:
        k = _number(k, "/")
        if k == 0:
            raise VitalError("an objective cannot be divided by 0")
        return Sum.of([(1.0 / k, self)])


def _as_objective(other: Any, op: str) -> Objective:
    if not isinstance(other, Objective):
        raise VitalError(f"cannot combine an objective with {other!r:.60} by '{op}': give another objective "
                         "(vital_fv.objectives.channel, logit, neuron, direction or objective)")
    return other


def _one_layer(obj: Objective) -> str:
    """The one layer (or ``LOGITS``) a combined objective reads; VITAL needs one, to put its references and
    relevance below it (units and directions have theirs as a field)."""
    layers = obj.layers
    if len(layers) != 1:
        raise VitalError(f"objective {obj.label()} reads {len(layers)} layers ({', '.join(layers)}): VITAL needs "
                         "an objective of one layer (or of the logits); the baselines take any")
    return layers[0]


@dataclass(frozen=True, eq=False)
class Sum(Objective):
    """A weighted sum of objectives (``a - 2 * b`` is ``Sum(((1.0, a), (-2.0, b)))``); nested sums are flattened."""

    terms: tuple[tuple[float, Objective], ...]

    @classmethod
    def of(cls, terms: Iterable[tuple[float, Objective]]) -> Sum:
        flat: list[tuple[float, Objective]] = []
        for w, t in terms:
            if isinstance(t, Sum):
                flat += [(w * w2, t2) for w2, t2 in t.terms]
            else:
                flat.append((float(w), t))
        if not flat:
            raise VitalError("an empty sum is no objective")
        return cls(tuple(flat))

    @property
    def layers(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(layer for _, t in self.terms for layer in t.layers))

    @property
    def layer(self) -> str:
        return _one_layer(self)

    def __call__(self, acts: Activations) -> torch.Tensor:
        total = None
        for w, t in self.terms:
            v = t(acts) if w == 1.0 else w * t(acts)
            total = v if total is None else total + v
        return total

    def label(self) -> str:
        parts = []
        for i, (w, t) in enumerate(self.terms):
            name = t.label()
            mag = abs(w)
            factor = "" if mag == 1.0 else f"{mag:g}*"
            sign = ("-" if w < 0 else "") if i == 0 else (" - " if w < 0 else " + ")
            parts.append(f"{sign}{factor}{name}")
        return "".join(parts)

    def to_json(self) -> dict[str, Any]:
        return {"kind": "sum", "terms": [{"weight": w, "objective": t.to_json()} for w, t in self.terms]}

    def cache_id(self) -> str:
        return json.dumps({"sum": [[w, t.cache_id()] for w, t in self.terms]})

    def resolved(self, class_names: Sequence[str], synonyms: Any = None) -> Objective:
        return Sum(tuple((w, t.resolved(class_names, synonyms)) for w, t in self.terms))

    def check_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        for _, t in self.terms:
            t.check_shapes(shapes)


@dataclass(frozen=True, eq=False)
class Custom(Objective):
    """Any function of the activations (Horama's objectives): ``fn(acts) -> (B,)``, reading ``layers``
    (module names, or ``LOGITS``). Not serializable: a record keeps its name and a digest of its code."""

    fn: Callable[[Activations], torch.Tensor]
    reads: tuple[str, ...]
    name: str

    @property
    def layers(self) -> tuple[str, ...]:
        return self.reads

    @property
    def layer(self) -> str:
        return _one_layer(self)

    def __call__(self, acts: Activations) -> torch.Tensor:
        out = self.fn(acts)
        batch = next(iter(acts.values())).shape[0]
        if not isinstance(out, torch.Tensor) or tuple(out.shape) != (batch,):
            shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
            raise VitalError(f"objective {self.name} must return one score per batch item, a tensor of shape "
                             f"({batch},); it returned {shape}")
        return out

    def label(self) -> str:
        return self.name

    def to_json(self) -> dict[str, Any]:
        raise VitalError(f"objective {self.name} is a custom callable: it cannot be written to JSON (a run with it "
                         "cannot be stored or rerun from a record); combine the built-in objectives instead "
                         "(channel, neuron, logit, direction) where you need that")

    def cache_id(self) -> str:
        code = getattr(self.fn, "__code__", None)
        digest = hashlib.sha256(code.co_code + repr(code.co_consts).encode()).hexdigest()[:16] if code else "?"
        return json.dumps({"custom": self.name, "layers": list(self.reads), "code": digest})


# --- the built-in objectives (also the targets of the CLI and of saved records) -----------------------------------


@dataclass(frozen=True)
class ClassTarget(Objective):
    """A class logit, by index or by name (names are matched case-insensitively against the model's classes).

    Alone, VITAL shows it through its references (SPEC §3: no logit term); in a sum it is the logit."""

    cls: int | str
    kind = "class"

    @property
    def layers(self) -> tuple[str, ...]:
        return (LOGITS,)

    def resolve(self, class_names: list[str], synonyms: list[list[str]] | None = None) -> tuple[int, str]:
        return resolve_class(self.cls, class_names, synonyms)

    def resolved(self, class_names: Sequence[str], synonyms: Any = None) -> Objective:
        return ClassTarget(self.resolve(list(class_names), synonyms)[0])

    def slug(self, class_names: list[str] | None = None, synonyms: list[list[str]] | None = None) -> str:
        index, name = self.resolve(class_names or [], synonyms)
        clean = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
        while "--" in clean:
            clean = clean.replace("--", "-")
        return f"{index}-{clean}" if clean else str(index)

    def label(self) -> str:
        return str(self.cls)

    def describe(self) -> dict[str, Any]:
        return {"kind": "class", "index": self.cls, "name": str(self.cls)}

    def __call__(self, acts: Activations) -> torch.Tensor:
        index = self.cls.strip() if isinstance(self.cls, str) else self.cls
        if isinstance(index, str) and not index.lstrip("-").isdigit():
            raise VitalError(f"class '{self.cls}' is a name: resolve it against the model's classes first "
                             "(objective.resolved(model.class_names))")
        return acts[LOGITS][:, int(index)]

    def to_json(self) -> dict[str, Any]:
        return {"kind": "class", "class": self.cls}

    def check_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        out = shapes.get(LOGITS)
        if out is not None and isinstance(self.cls, int) and not 0 <= self.cls < out[-1]:
            raise VitalError(f"class index {self.cls} is out of range: the model has {out[-1]} classes")


def resolve_class(
    cls: int | str, class_names: list[str], synonyms: list[list[str]] | None = None
) -> tuple[int, str]:
    """(index, name) for an index, a digit string or a class name; unknown names get close suggestions.

    ``synonyms`` (per class, e.g. WordNet's 'tabby, tabby cat' for ImageNet) are accepted when unambiguous.
    """
    if isinstance(cls, str) and cls.strip().lstrip("-").isdigit():
        cls = int(cls.strip())
    if isinstance(cls, int):
        if class_names and not 0 <= cls < len(class_names):
            raise VitalError(f"class index {cls} is out of range: the model has {len(class_names)} classes")
        if cls < 0:
            raise VitalError(f"class index {cls} is negative")
        return cls, class_names[cls] if class_names else str(cls)
    if not class_names:
        raise VitalError(f"class '{cls}' given by name, but the model has no class names: give an index")
    wanted = cls.strip().lower()
    exact = [i for i, n in enumerate(class_names) if n.lower() == wanted]
    if exact:
        return exact[0], class_names[exact[0]]
    if synonyms:
        hits = sorted({i for i, words in enumerate(synonyms) if wanted in (w.lower() for w in words)})
        if len(hits) == 1:
            return hits[0], class_names[hits[0]]
    near = close_matches(cls, class_names)
    hint = f" Did you mean: {', '.join(repr(n) for n in near)}?" if near else ""
    raise VitalError(f"unknown class '{cls}'.{hint} `vital classes --grep WORD` searches the class names.")


@dataclass(frozen=True)
class UnitTarget(Objective):
    """A channel of a layer (its spatially averaged activation), or one neuron of it at ``position`` (y, x)
    — for token layers, position is (token,)."""

    layer: str
    channel: int
    position: tuple[int, ...] | None = None
    kind = "unit"

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer,)

    @classmethod
    def parse(cls, text: str) -> UnitTarget:
        """'layer:channel' or 'layer:channel@y,x' (as on the command line)."""
        try:
            head, _, pos = text.partition("@")
            layer, _, channel = head.rpartition(":")
            position = tuple(int(p) for p in pos.split(",")) if pos else None
            if not layer:
                raise ValueError
            return cls(layer, int(channel), position)
        except ValueError:
            raise VitalError(f"cannot read unit '{text}': write LAYER:CHANNEL or LAYER:CHANNEL@Y,X "
                             "(e.g. blocks.5.2:17 or layer3.5:100@7,7)") from None

    def label(self) -> str:
        pos = "@" + ",".join(map(str, self.position)) if self.position else ""
        return f"{self.layer}:{self.channel}{pos}"

    def describe(self) -> dict:
        return {"kind": "unit", "layer": self.layer, "channel": self.channel,
                "position": list(self.position) if self.position else None}

    def slug(self, *_: object) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.label())

    def to_json(self) -> dict[str, Any]:
        return {"kind": "unit", "layer": self.layer, "channel": self.channel,
                "position": list(self.position) if self.position else None}

    def cache_id(self) -> str:
        return self.label()

    def __call__(self, acts: Activations) -> torch.Tensor:
        out = _first(acts[self.layer])
        return torch.stack([self.value(out[b]) for b in range(out.shape[0])])

    def value(self, act: object) -> object:
        """The unit's value in one item's layer output: (C, H, W) maps or (T, D) tokens."""
        if act.dim() == 3:
            if not 0 <= self.channel < act.shape[0]:
                raise VitalError(f"unit {self.label()}: channel out of range, the layer has {act.shape[0]}")
            return act[self.channel][self.position] if self.position else act[self.channel].mean()
        if act.dim() == 2:
            if not 0 <= self.channel < act.shape[1]:
                raise VitalError(f"unit {self.label()}: channel out of range, the layer has {act.shape[1]}")
            return act[self.position[0], self.channel] if self.position else act[:, self.channel].mean()
        raise VitalError(f"unit {self.label()}: cannot read a layer output of shape {tuple(act.shape)}")

    def check_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.check(shapes[self.layer])

    def check(self, act_shape: tuple[int, ...]) -> None:
        """Fail clearly when the channel or position does not exist in a layer output of ``act_shape`` (no batch)."""
        channels = act_shape[0] if len(act_shape) == 3 else act_shape[-1]
        if not 0 <= self.channel < channels:
            raise VitalError(f"unit {self.label()}: channel {self.channel} is out of range, layer {self.layer} "
                             f"has {channels} channels (0..{channels - 1})")
        if self.position is not None:
            grid = act_shape[1:] if len(act_shape) == 3 else act_shape[:1]
            pairs = list(zip(self.position, grid, strict=False))
            inside = len(self.position) == len(grid) and all(0 <= p < g for p, g in pairs)
            if not inside:
                where = "Y,X" if len(grid) == 2 else "TOKEN"
                at = "@" + ",".join(map(str, self.position))
                raise VitalError(f"unit {self.label()}: position {at} is outside layer {self.layer}'s "
                                 f"{'x'.join(map(str, grid))} grid: write @{where} within it")


@dataclass(frozen=True, eq=False)
class DirectionTarget(Objective):
    """A direction in a layer's channel space (a concept vector, SPEC §5), read at the position of highest cosine
    similarity in each image."""

    layer: str
    vector: torch.Tensor
    name: str = "direction"
    kind = "direction"

    def __post_init__(self) -> None:
        v = torch.as_tensor(self.vector, dtype=torch.float32).flatten()
        if v.numel() == 0 or not torch.isfinite(v).all() or float(v.norm()) == 0:
            raise VitalError(f"direction '{self.name}' must be a finite, non-zero vector")
        object.__setattr__(self, "vector", v)

    @property
    def layers(self) -> tuple[str, ...]:
        return (self.layer,)

    def label(self) -> str:
        return f"{self.layer}:{self.name}"

    def describe(self) -> dict:
        return {"kind": "direction", "layer": self.layer, "name": self.name, "dim": int(self.vector.numel()),
                "sha256": hashlib.sha256(self.vector.numpy().tobytes()).hexdigest()[:16]}

    def slug(self, *_: object) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.label())

    def to_json(self) -> dict[str, Any]:
        return {"kind": "direction", "layer": self.layer, "name": self.name, "vector": self.vector.tolist()}

    def cache_id(self) -> str:
        return json.dumps(self.describe(), sort_keys=True)

    def check_shapes(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        self.check(shapes[self.layer])

    def check(self, act_shape: tuple[int, ...]) -> None:
        channels = act_shape[0] if len(act_shape) == 3 else act_shape[-1]
        if self.vector.numel() != channels:
            raise VitalError(f"direction '{self.name}' has {self.vector.numel()} entries, but layer {self.layer} "
                             f"has {channels} channels: give a vector of that layer's size")

    def __call__(self, acts: Activations) -> torch.Tensor:
        out = _first(acts[self.layer])
        return torch.stack([self.value(out[b]) for b in range(out.shape[0])])

    def value(self, act: torch.Tensor) -> torch.Tensor:
        """Highest cosine similarity over positions between the direction and one item's activation vectors."""
        cp = act.flatten(1) if act.dim() == 3 else act.t()
        return torch.nn.functional.cosine_similarity(cp, self.vector.to(cp).unsqueeze(1), dim=0).max()


# --- constructors (the names users write) -------------------------------------------------------------------------


def logit(cls: int | str) -> ClassTarget:
    """A class logit, by index or name ("espresso"); ``logit("espresso") - logit("cup")``."""
    return ClassTarget(cls)


def channel(layer: str, index: int) -> UnitTarget:
    """The mean of a channel over positions (Lucent's ``channel``)."""
    return UnitTarget(layer, index)


def neuron(layer: str, index: int, position: Sequence[int]) -> UnitTarget:
    """One position of a channel: (y, x) for maps, (token,) for token layers."""
    return UnitTarget(layer, index, tuple(int(p) for p in position))


def direction(layer: str, vector: Any, name: str = "direction") -> DirectionTarget:
    """A direction in a layer's channel space (e.g. a concept from ``vital concepts``), at its best position."""
    return DirectionTarget(layer, vector, name)


def objective(fn: Callable[[Activations], torch.Tensor], layers: Sequence[str], name: str | None = None) -> Custom:
    """Any function of the activations: ``fn(acts)`` gets a dict of the ``layers``' outputs (batch first; the
    logits under ``LOGITS``) and returns one score per batch item."""
    if not callable(fn):
        raise VitalError(f"objective needs a function of the activations, not {fn!r:.60}")
    if isinstance(layers, str) or not layers or not all(isinstance(n, str) and n for n in layers):
        raise VitalError("objective needs layers=[...]: the names of the layers fn reads (LOGITS for the logits)")
    label = name or getattr(fn, "__name__", "objective")
    if label == "<lambda>":
        label = "custom"
    return Custom(fn, tuple(dict.fromkeys(layers)), label)


def as_objective(target: Any) -> Objective:
    """An objective for a target as users give it: an objective as it is, an int or a name as a class."""
    if isinstance(target, Objective):
        return target
    if isinstance(target, (int, str)) and not isinstance(target, bool):
        return ClassTarget(target)
    raise VitalError(f"not an objective: {target!r:.60} (give a class, vital_fv.objectives.channel(...), ...)")


def kind_of(target: Any) -> str:
    """The target kind methods declare they show: class, unit, direction, or objective (any other)."""
    if not isinstance(target, Objective):
        raise VitalError(f"not a target: {target!r} (give a ClassTarget, UnitTarget, DirectionTarget or an "
                         "objective from vital_fv.objectives)")
    return target.kind


# --- JSON -----------------------------------------------------------------------------------------------------------


def from_json(data: Mapping[str, Any]) -> Objective:
    """The objective ``to_json`` wrote (a class, unit, direction or a weighted sum of them)."""
    if not isinstance(data, Mapping) or "kind" not in data:
        raise VitalError(f"not an objective's JSON form: {data!r:.80} (needs a 'kind')")
    kind = data["kind"]
    try:
        if kind == "class":
            return ClassTarget(data["class"])
        if kind == "unit":
            pos = data.get("position")
            return UnitTarget(str(data["layer"]), int(data["channel"]), tuple(int(p) for p in pos) if pos else None)
        if kind == "direction":
            return DirectionTarget(str(data["layer"]), torch.tensor(data["vector"], dtype=torch.float32),
                                   str(data.get("name", "direction")))
        if kind == "sum":
            return Sum.of([(_number(t["weight"], "weight"), from_json(t["objective"])) for t in data["terms"]])
    except (KeyError, TypeError, ValueError) as exc:
        raise VitalError(f"cannot read objective {data!r:.80}: missing or bad field {exc}") from None
    raise VitalError(f"unknown objective kind '{kind}': one of class, unit, direction, sum")


# --- the command line's spelling: "blocks.5.2:17 - blocks.5.2:3", "espresso - cup", "2*layer:1 + layer:2@3,3" -------


def parse(text: str) -> Objective:
    """An objective from ``--objective``: terms joined by `` + `` / `` - `` (spaces around: class names and layers
    hold hyphens), each an optional ``NUMBER*`` factor and a unit (``LAYER:CHANNEL[@Y,X]``) or a class (name or
    index)."""
    terms = []
    for weight, term in split_objective(text):
        target: Objective = UnitTarget.parse(term) if ":" in term else ClassTarget(term)
        terms.append((weight, target))
    if len(terms) == 1 and terms[0][0] == 1.0:
        return terms[0][1]
    return Sum.of(terms)


# --- reading activations for objectives ---------------------------------------------------------------------------


def read_layers(objectives: Iterable[Objective]) -> list[str]:
    """The module names the objectives read (the logits need no hook)."""
    return sorted({layer for o in objectives for layer in o.layers} - {LOGITS})


def forward(model: Any, objectives: Sequence[Objective], x: torch.Tensor) -> dict[str, torch.Tensor]:
    """One forward of ``model`` (a ``ModelSpec``) on normalized ``x`` with the activations the objectives read."""
    layers = read_layers(objectives)
    with capture(model.module, layers, model.name) as feats:
        logits = model.module(x)
        acts = {n: _first(feats[n]) for n in layers}
    acts[LOGITS] = logits
    return acts


def per_item(objectives: Sequence[Objective], acts: Activations) -> torch.Tensor:
    """(B,) scores where item b is scored by ``objectives[b]`` (each on its own row)."""
    # Rows by unbind, not slicing: each sliced row's backward writes a gradient the size of the whole batch
    # (quadratic in the batch); unbind's backward is one stack.
    split = {k: v.unbind(0) for k, v in acts.items()}
    rows = [o({k: v[b].unsqueeze(0) for k, v in split.items()})[0] for b, o in enumerate(objectives)]
    return torch.stack(rows)


@holds_model
def check_units(model: Any, units: Sequence[Objective], size: int, device: Any) -> None:
    """Fail clearly, before any work, when an objective's layer, channel, position or class (or a direction's size)
    does not exist in its layers' outputs at ``size`` px."""
    with torch.no_grad():
        acts = forward(model, units, torch.zeros(1, 3, size, size, device=device))
    shapes = {k: tuple(v.shape[1:]) for k, v in acts.items()}
    for u in units:
        u.check_shapes(shapes)
