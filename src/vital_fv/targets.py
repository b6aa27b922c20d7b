"""What to visualize, by the names the CLI, the records and earlier code use: the built-in objectives.

A class target is its logit, a unit target a channel's mean or one neuron, a direction target a concept's direction;
they are ``objectives.Objective``s (one concept, ``objectives`` holds them) and combine with the objectives' algebra.
A class target alone enters VITAL only through its references (SPEC §3: no logit term).
"""

from __future__ import annotations

from .objectives import ClassTarget, DirectionTarget, Objective, UnitTarget, check_units, resolve_class

__all__ = ["ClassTarget", "DirectionTarget", "Objective", "UnitTarget", "check_units", "resolve_class"]
