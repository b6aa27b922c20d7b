"""Visualization methods behind one interface (``Method``) and a registry.

VITAL and the three baselines it is compared against register themselves here; a new method is a class with the
``Method`` attributes and ``run``, passed to ``register`` (see ``base``), after which ``vital_fv.visualize(...,
method=NAME)``, ``vital visualize --method NAME``, ``vital evaluate`` and the benchmarks know it.
"""

from .base import (
    Job,
    Method,
    MethodOption,
    NonFiniteLossError,
    Preset,
    Updater,
    build_record,
    describe_target,
    get_method,
    get_preset,
    keep_last_finite,
    lr_factor,
    method_names,
    preset_names,
    register,
    run_method,
    run_steps,
    schedule,
    unregister,
)
from .deepinversion import DeepInversion
from .fourier import Fourier
from .maco import Maco
from .vital import Vital

for _method in (Vital(), Fourier(), Maco(), DeepInversion()):  # the registry's order is the CLI's order
    register(_method)

__all__ = [
    "DeepInversion",
    "Fourier",
    "Maco",
    "Vital",
    "Job",
    "Method",
    "MethodOption",
    "NonFiniteLossError",
    "Preset",
    "Updater",
    "build_record",
    "describe_target",
    "get_method",
    "get_preset",
    "keep_last_finite",
    "lr_factor",
    "method_names",
    "preset_names",
    "register",
    "run_method",
    "run_steps",
    "schedule",
    "unregister",
]
