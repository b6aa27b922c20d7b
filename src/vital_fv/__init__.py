"""vital-fv: VITAL feature visualization for PyTorch.

    from vital_fv import load_model, objectives, visualize
    model = load_model("efficientnet_lite0")
    result = visualize(model, "espresso", preset="quick")            # bundled photo as references
    results = visualize(model, 967, "photos/espresso", method="maco", seeds=[0, 1], out="out/")
    result = visualize(model, objectives.channel("blocks.5.2", 17) - objectives.channel("blocks.5.2", 3),
                       images="photos/", preset="quick")             # references: its top patches
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from .errors import VitalError
from .version import __version__

if TYPE_CHECKING:  # what the lazy names below are, for type checkers and IDEs
    from . import methods, objectives, references
    from .api import rerun, run, visualize
    from .methods import Job, Method, MethodOption, NonFiniteLossError, get_method, method_names, register, run_method
    from .methods.vital import OPTIM_PRESETS, OptimPreset
    from .objectives import Objective
    from .result import Result
    from .runspec import References, ReferenceSource, RunSpec
    from .targets import ClassTarget, DirectionTarget, UnitTarget
    from .zoo import PRESETS, LayerPreset, ModelSpec, Preprocess, list_models, load_model

# Imported on first use (PEP 562): torch takes seconds to import, and `vital` answers a bad option before that.
_LAZY = {
    **dict.fromkeys(["rerun", "run", "visualize"], ".api"),
    **dict.fromkeys(["References", "ReferenceSource", "RunSpec"], ".runspec"),
    **dict.fromkeys(["Job", "Method", "MethodOption", "NonFiniteLossError", "get_method", "method_names", "register",
                     "run_method"], ".methods"),
    **dict.fromkeys(["OPTIM_PRESETS", "OptimPreset"], ".methods.vital"),
    "Objective": ".objectives",
    "Result": ".result",
    **dict.fromkeys(["ClassTarget", "DirectionTarget", "UnitTarget"], ".targets"),
    **dict.fromkeys(["PRESETS", "LayerPreset", "ModelSpec", "Preprocess", "list_models", "load_model"], ".zoo"),
}
_SUBMODULES = ("methods", "objectives", "references")


def visualize_batch(model: Any, jobs: Any, **options: Any) -> Any:
    """VITAL on a batch of ``Job``s, through the registry's door like every other entry (``run_method("vital",
    ...)``: targets and options checked before any work); ``options`` are VITAL's (preset, steps, relevance, ...)."""
    from .methods import run_method

    return run_method("vital", model, jobs, **options)


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    if name not in _LAZY:
        raise AttributeError(f"module 'vital_fv' has no attribute '{name}'")
    value = getattr(importlib.import_module(_LAZY[name], __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "OPTIM_PRESETS",
    "PRESETS",
    "ClassTarget",
    "DirectionTarget",
    "Job",
    "LayerPreset",
    "Method",
    "MethodOption",
    "ModelSpec",
    "NonFiniteLossError",
    "Objective",
    "OptimPreset",
    "Preprocess",
    "ReferenceSource",
    "References",
    "Result",
    "RunSpec",
    "UnitTarget",
    "VitalError",
    "__version__",
    "get_method",
    "list_models",
    "load_model",
    "method_names",
    "methods",
    "objectives",
    "references",
    "register",
    "rerun",
    "run",
    "run_method",
    "visualize",
    "visualize_batch",
]
