"""vital-fv: VITAL feature visualization for PyTorch.

    from vital_fv import load_model, references, visualize, ClassTarget
    model = load_model("efficientnet_lite0")
    result = visualize(model, ClassTarget("espresso"), references.bundled("espresso"), preset="quick")
    result.save("out/espresso.png")
"""

__version__ = "0.1.0"

from . import references  # noqa: E402
from .errors import VitalError  # noqa: E402
from .optimize import OPTIM_PRESETS, Job, NonFiniteLossError, OptimPreset, visualize, visualize_batch  # noqa: E402
from .result import Result  # noqa: E402
from .targets import ClassTarget  # noqa: E402
from .zoo import PRESETS, LayerPreset, ModelSpec, Preprocess, list_models, load_model  # noqa: E402

__all__ = [
    "OPTIM_PRESETS",
    "PRESETS",
    "ClassTarget",
    "Job",
    "LayerPreset",
    "ModelSpec",
    "NonFiniteLossError",
    "OptimPreset",
    "Preprocess",
    "Result",
    "VitalError",
    "list_models",
    "load_model",
    "references",
    "visualize",
    "visualize_batch",
]
