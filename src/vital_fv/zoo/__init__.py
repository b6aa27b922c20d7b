"""Models and what vital-fv knows about them: a ``ModelSpec`` bundles a frozen module with its preprocessing, class
names, layer preset and layout facts.

- ``specs``: the types (``Preprocess``, ``LayerPreset``, ``Architecture``, ``ModelSpec``) and the unit preset rule
- ``registry``: ``Family`` and ``register_family``, the lookups the loaders and the relevance engine use
- ``families/``: one module per architecture family (its presets, facts, canonizer, own models)
- ``sources``: weight files and their hashes, ImageNet class names and synonyms from installed packages
- ``loaders``: ``load_model``, ``as_model_spec`` and ``list_models``
"""

from .loaders import (
    EMBEDDED_MODELS,
    as_model_spec,
    embedded_models,
    list_models,
    load_model,
    timm_architecture,
    timm_auto_preset,
    torchvision_architecture,
)
from .registry import (
    PRESETS,
    Family,
    architecture_of,
    canonizers_for,
    families,
    family_of_model,
    get_family,
    preset_for,
    register_family,
    unregister_family,
)
from .sources import file_sha256, imagenet_class_names, imagenet_synonyms, load_state_dict_strict, read_state_dict
from .specs import (
    UNIT_RULE,
    Architecture,
    LayerPreset,
    ModelSpec,
    Preprocess,
    discover_last_hidden,
    imagenet_preprocess,
    last_linear,
    preceding_stage,
    predecessor,
    unit_preset,
)

__all__ = [
    "EMBEDDED_MODELS",
    "PRESETS",
    "UNIT_RULE",
    "Architecture",
    "Family",
    "LayerPreset",
    "ModelSpec",
    "Preprocess",
    "architecture_of",
    "canonizers_for",
    "discover_last_hidden",
    "embedded_models",
    "families",
    "family_of_model",
    "file_sha256",
    "get_family",
    "imagenet_class_names",
    "imagenet_preprocess",
    "imagenet_synonyms",
    "last_linear",
    "list_models",
    "as_model_spec",
    "load_model",
    "load_state_dict_strict",
    "preceding_stage",
    "predecessor",
    "preset_for",
    "read_state_dict",
    "register_family",
    "timm_architecture",
    "timm_auto_preset",
    "torchvision_architecture",
    "unit_preset",
    "unregister_family",
]
