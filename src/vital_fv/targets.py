"""What to visualize. A class target enters VITAL only through its references (SPEC §3: no logit term)."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from .device import holds_model
from .errors import VitalError, close_matches


@dataclass(frozen=True)
class ClassTarget:
    """A class neuron, by index or by name (names are matched case-insensitively against the model's classes)."""

    cls: int | str

    def resolve(self, class_names: list[str], synonyms: list[list[str]] | None = None) -> tuple[int, str]:
        return resolve_class(self.cls, class_names, synonyms)

    def slug(self, class_names: list[str], synonyms: list[list[str]] | None = None) -> str:
        index, name = self.resolve(class_names, synonyms)
        clean = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
        while "--" in clean:
            clean = clean.replace("--", "-")
        return f"{index}-{clean}" if clean else str(index)


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
class UnitTarget:
    """A channel of a layer (its spatially averaged activation), or one neuron of it at ``position`` (y, x)
    — for token layers, position is (token,)."""

    layer: str
    channel: int
    position: tuple[int, ...] | None = None

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
class DirectionTarget:
    """A direction in a layer's channel space (a concept vector, SPEC §5), read at the position of highest cosine
    similarity in each image."""

    layer: str
    vector: torch.Tensor
    name: str = "direction"

    def __post_init__(self) -> None:
        v = torch.as_tensor(self.vector, dtype=torch.float32).flatten()
        if v.numel() == 0 or not torch.isfinite(v).all() or float(v.norm()) == 0:
            raise VitalError(f"direction '{self.name}' must be a finite, non-zero vector")
        object.__setattr__(self, "vector", v)

    def label(self) -> str:
        return f"{self.layer}:{self.name}"

    def describe(self) -> dict:
        return {"kind": "direction", "layer": self.layer, "name": self.name, "dim": int(self.vector.numel()),
                "sha256": hashlib.sha256(self.vector.numpy().tobytes()).hexdigest()[:16]}

    def slug(self, *_: object) -> str:
        return "".join(c if c.isalnum() else "-" for c in self.label())

    def check(self, act_shape: tuple[int, ...]) -> None:
        channels = act_shape[0] if len(act_shape) == 3 else act_shape[-1]
        if self.vector.numel() != channels:
            raise VitalError(f"direction '{self.name}' has {self.vector.numel()} entries, but layer {self.layer} "
                             f"has {channels} channels: give a vector of that layer's size")

    def value(self, act: torch.Tensor) -> torch.Tensor:
        """Highest cosine similarity over positions between the direction and one item's activation vectors."""
        cp = act.flatten(1) if act.dim() == 3 else act.t()
        return torch.nn.functional.cosine_similarity(cp, self.vector.to(cp).unsqueeze(1), dim=0).max()


@holds_model
def check_units(model: Any, units: Sequence[UnitTarget | DirectionTarget], size: int, device: Any) -> None:
    """Fail clearly, before any work, when a unit's channel or position (or a direction's size) does not exist in
    its layer's output at ``size`` px; every unit must be on one layer."""
    from .features import capture

    layer = units[0].layer
    with torch.no_grad(), capture(model.module, [layer], model.name) as feats:
        model.module(torch.zeros(1, 3, size, size, device=device))
        out = feats[layer][0] if isinstance(feats[layer], (tuple, list)) else feats[layer]
    for u in units:
        u.check(tuple(out.shape[1:]))
