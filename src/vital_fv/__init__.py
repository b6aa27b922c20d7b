"""vital-fv: VITAL feature visualization for PyTorch.

    from vital_fv import load_model, visualize
    model = load_model("efficientnet_lite0")
    result = visualize(model, "espresso", preset="quick")            # bundled photo as references
    results = visualize(model, 967, "photos/espresso", method="maco", seeds=[0, 1], out="out/")
"""

from . import methods, references
from .api import visualize
from .errors import VitalError
from .methods import Job, Method, NonFiniteLossError, get_method, method_names, register, run_method
from .methods.vital import OPTIM_PRESETS, OptimPreset, visualize_batch
from .result import Result
from .targets import ClassTarget, DirectionTarget, UnitTarget
from .version import __version__
from .zoo import PRESETS, LayerPreset, ModelSpec, Preprocess, list_models, load_model

__all__ = [
    "OPTIM_PRESETS",
    "PRESETS",
    "ClassTarget",
    "DirectionTarget",
    "Job",
    "LayerPreset",
    "Method",
    "ModelSpec",
    "NonFiniteLossError",
    "OptimPreset",
    "Preprocess",
    "Result",
    "UnitTarget",
    "VitalError",
    "__version__",
    "get_method",
    "list_models",
    "load_model",
    "method_names",
    "methods",
    "references",
    "register",
    "run_method",
    "visualize",
    "visualize_batch",
]
