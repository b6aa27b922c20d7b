"""Checks of the options that need neither a model nor torch, shared by the CLI and the Python API.

The CLI runs them before it imports anything heavy, so a bad number is answered in a fraction of a second (torch
alone takes seconds to import); the API runs the same functions, so both say the same thing, with the option's CLI
name and the accepted range. Checks that need the model (layer names, channels, classes) live with the model.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence

from .errors import VitalError

DEFAULT_MODEL = "efficientnet_lite0"
CROPS = ("evidence", "objects", "random")  # how a class's augmentation crops are chosen (``references.resolve``)
WEIGHTINGS = ("none", "evidence")  # how a class reference's positions count in its prototypes (the same)
# the defaults of both, measured on the scenes benchmark (benchmarks/README.md, "scenes")
DEFAULT_CROPS = "objects"
DEFAULT_REF_WEIGHTING = "evidence"
MIN_SIZE, MAX_SIZE = 16, 4096  # generated resolution, px: below, a stride-32 network has no positions left
_DEVICE = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_steps(steps: int | None, preset_steps: int | None = None) -> None:
    if steps is not None and (not isinstance(steps, int) or isinstance(steps, bool) or steps < 1):
        raise VitalError(f"--steps must be at least 1 (got {steps})"
                         + (f"; the preset's is {preset_steps}" if preset_steps else ""))


def check_lr(lr: float | None, preset_lr: float | None = None) -> None:
    if lr is not None and (isinstance(lr, bool) or not isinstance(lr, (int, float)) or not math.isfinite(lr)
                           or lr <= 0):
        raise VitalError(f"--lr must be a positive number (got {lr})"
                         + (f"; the preset's is {preset_lr}" if preset_lr else ""))


def check_size(size: int | None) -> None:
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE):
        raise VitalError(f"--size must be between {MIN_SIZE} and {MAX_SIZE} px (got {size}); leave it out for the "
                         "model's own input size")


SEED_LIMIT = 2**63  # a seed is a torch generator's seed: |seed| below this


def check_seeds(seeds: Sequence[int], option: str = "--seeds") -> list[int]:
    """The seeds as a list: whole numbers (not bools) below 2**63, at least one, none repeated (each seed is one
    image, one file)."""
    if isinstance(seeds, (str, bytes)) or not isinstance(seeds, Sequence):
        raise VitalError(f"{option} must be a list of whole numbers, got {type(seeds).__name__} {seeds!r:.40}")
    for s in seeds:
        if isinstance(s, bool) or not isinstance(s, int) or not -SEED_LIMIT <= s < SEED_LIMIT:
            raise VitalError(f"{option}: each seed must be a whole number between -2**63 and 2**63-1, got "
                             f"{type(s).__name__} {s!r:.40}")
    seed_list = [int(s) for s in seeds]
    if not seed_list:
        raise VitalError("--seeds is empty: give at least one seed")
    if len(set(seed_list)) != len(seed_list):
        raise VitalError(f"--seeds repeats a seed ({','.join(map(str, seed_list))}): each seed gives one image")
    return seed_list


def check_alpha_percentile(alpha_percentile: float) -> None:
    check_type("--alpha-percentile", alpha_percentile, (int, float), "a number in (0, 100]")
    if not 0 < alpha_percentile <= 100:  # also refuses NaN
        raise VitalError(f"--alpha-percentile must be in (0, 100], got {alpha_percentile}")


MAX_REFS = 100_000  # references a class can hold: more is a typo (each is an image in memory and a forward pass)


def check_n_refs(n: int) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise VitalError(f"--n-refs must be at least 1 (got {n})")
    if n > MAX_REFS:
        raise VitalError(f"--n-refs must be at most {MAX_REFS} (got {n}): each reference is an image held in memory")


def check_layer_weights(layers: Sequence[str] | None, weights: Sequence[float] | None) -> None:
    if weights is None:
        return
    check_numbers("--layer-weights", weights, "a list of numbers, one per layer")
    if not layers:
        raise VitalError("--layer-weights needs --layers")
    if len(weights) != len(layers):
        raise VitalError(f"--layer-weights gives {len(weights)} weights for {len(layers)} layers: one per layer")
    if any(not math.isfinite(w) or w < 0 for w in weights):
        raise VitalError(f"--layer-weights must be finite and not negative (got {','.join(map(str, weights))})")


def check_name(name: str | None) -> None:
    """``--name`` is a file name stem inside ``--out``: no folders, nothing hidden or empty."""
    if name is not None and (not name or name in (".", "..") or "/" in name or os.sep in name or "\x00" in name
                             or name.startswith(".")):
        raise VitalError(f"--name '{name}' must be a plain file name stem (no folders, not hidden, not '.' or '..'); "
                         "the folder is --out")


def check_device_name(device: object) -> None:
    """The spelling only; whether the device exists is ``device.resolve_device``'s (it needs torch)."""
    if isinstance(device, str) and not _DEVICE.fullmatch(device):
        raise VitalError(f"--device '{device}' is not a device: use auto, cpu, cuda or cuda:N")


def check_positive(option: str, value: int | None, least: int = 1, unit: str = "") -> None:
    """A count or size option (``--k``, ``--top``, ``--patch`` ...): a whole number of at least ``least``."""
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
        raise VitalError(f"{option} must be at least {least}{unit} (got {value})")


def check_choice(option: str, value: object, choices: Sequence[str]) -> None:
    if value not in choices:
        raise VitalError(f"{option} must be one of {', '.join(choices)} (got '{value}')")


def check_type(option: str, value: object, kinds: type | tuple[type, ...], what: str, optional: bool = False) -> None:
    """``value`` is one of ``kinds`` (``None`` too where ``optional``); a bool is never taken for a number."""
    if value is None and optional:
        return
    kinds = kinds if isinstance(kinds, tuple) else (kinds,)
    if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
        raise VitalError(f"{option} must be {what}, got {type(value).__name__} {value!r:.60}")


def check_numbers(option: str, values: object, what: str) -> None:
    """A list or tuple of numbers (not a string of them, not bools)."""
    if (isinstance(values, (str, bytes)) or not isinstance(values, Sequence)
            or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values)):
        raise VitalError(f"{option} must be {what}, got {type(values).__name__} {values!r:.60}")


def check_reference_source(given: Sequence[str], kinds: Sequence[str], needs_references: bool = True) -> None:
    """Where references may come from for these target kinds ("class", "unit", "neuron", "direction", "concept",
    "objective"),
    named as the flags a user gave (``refs``, ``pool``, ``images``; none: the default source): one source, a pool
    only for classes, a folder to mine only for units and concepts, a unit's own references where none is given.
    The one place these refusals are written (``RunSpec.check``, ``references.resolve``)."""
    if len(given) > 1:
        raise VitalError(f"give one reference source, not {' and '.join('--' + g for g in given)}")
    kinds = set(kinds)
    if "pool" in given and kinds - {"class", "objective"}:  # a pool is ranked by a class or an objective
        raise VitalError("--pool ranks images by a class's probability: for a unit or concept give --images DIR "
                         "(its top patches or crops) or --refs FOLDER from `vital mine`")
    if "images" in given and kinds & {"class", "direction"}:
        raise VitalError("--images mines references for a unit or a concept: give --unit or --concept, or --pool "
                         "DIR for a class")
    if needs_references and not given and kinds & {"unit", "neuron"}:
        raise VitalError("a VITAL visualization of a unit needs the unit's references: --images DIR (mines them) "
                         "or --refs FOLDER from `vital mine`")
    if needs_references and not given and "objective" in kinds:
        raise VitalError("a VITAL visualization of an objective needs references ranked by it: --images DIR (mines "
                         "its top patches) or --pool DIR (its top images), or --refs FOLDER")
_OBJECTIVE_HELP = ("write terms joined by ' + ' or ' - ' (spaces around), each a unit LAYER:CHANNEL[@Y,X] or a class "
                   "name or index, with an optional NUMBER* factor: e.g. \"blocks.5.2:17 - blocks.5.2:3\", "
                   "\"espresso - cup\", \"2*blocks.5.2:17 + blocks.5.2:3\"")


def split_objective(text: object) -> list[tuple[float, str]]:
    """``--objective``'s terms as (weight, term text), checked before any work (``objectives.parse`` builds them)."""
    if not isinstance(text, str) or not text.strip():
        raise VitalError(f"--objective is empty: {_OBJECTIVE_HELP}")
    body = text.strip()
    sign = 1.0
    if body.startswith("-") and not body[1:2].isdigit():  # a leading minus; "-3" alone is no class
        sign, body = -1.0, body[1:].lstrip()
    parts = re.split(r"\s+([+-])\s+", body)
    out = []
    for i in range(0, len(parts), 2):
        op = 1.0 if i == 0 else (1.0 if parts[i - 1] == "+" else -1.0)
        term = parts[i].strip()
        factor, star, rest = term.partition("*")
        weight = 1.0
        if star:
            try:
                weight = float(factor)
            except ValueError:
                raise VitalError(f"--objective: cannot read the factor '{factor.strip()}' of '{term}': "
                                 f"{_OBJECTIVE_HELP}") from None
            if not math.isfinite(weight):
                raise VitalError(f"--objective: the factor of '{term}' must be a finite number")
            term = rest.strip()
        if not term or term in "+-" or "*" in term:
            raise VitalError(f"--objective: cannot read '{text}': {_OBJECTIVE_HELP}")
        if ":" in term:
            head, _, pos = term.partition("@")
            layer, _, ch = head.rpartition(":")
            if not layer or not ch.strip().isdigit() or (pos and not re.fullmatch(r"\d+(,\d+)*", pos.strip())):
                raise VitalError(f"--objective: cannot read the unit '{term}': write LAYER:CHANNEL or "
                                 "LAYER:CHANNEL@Y,X (e.g. blocks.5.2:17)")
        out.append(((sign if i == 0 else 1.0) * op * weight, term))
    return out
