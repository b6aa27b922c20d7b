"""The types that describe a model to vital-fv: ``Preprocess`` (how an image becomes its input), ``LayerPreset``
(which layers to match), ``Architecture`` (layout facts), ``ModelSpec`` (the module with all of these), and the unit
preset rule (SPEC §4) that every family shares. No loading and no family knowledge here: ``loaders`` builds specs,
``families/`` holds what is particular to each architecture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from ..errors import VitalError


@dataclass(frozen=True)
class Preprocess:
    """How an image becomes the model's input: resize the short side, center-crop, normalize."""

    input_size: int
    resize_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"

    def normalize(self, x01: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x01.device, dtype=x01.dtype).view(1, 3, 1, 1)
        return (x01 - mean) / std

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        mean = torch.tensor(self.mean, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        std = torch.tensor(self.std, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
        return x * std + mean

    def bounds(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (low, high) of the normalized image of [0, 1], shaped (1, 3, 1, 1)."""
        lo = self.normalize(torch.zeros(1, 3, 1, 1, device=device))
        hi = self.normalize(torch.ones(1, 3, 1, 1, device=device))
        return lo, hi

    def as_dict(self) -> dict[str, Any]:
        return {
            "input_size": self.input_size,
            "resize_size": self.resize_size,
            "mean": list(self.mean),
            "std": list(self.std),
            "interpolation": self.interpolation,
        }


@dataclass(frozen=True)
class LayerPreset:
    """Which layers to match, with what loss weights, and the regularizer strengths (SPEC §3)."""

    layers: tuple[str, ...]
    weights: tuple[float, ...]
    tv: float = 0.0
    l2: float = 0.0
    source: str = ""

    def __post_init__(self) -> None:
        if len(self.layers) != len(self.weights):
            raise VitalError(
                f"{len(self.layers)} layers but {len(self.weights)} layer weights: give one weight per layer"
            )
        if not self.layers:
            raise VitalError("a layer preset needs at least one layer")

    @classmethod
    def user(
        cls, layers: list[str], weights: list[float] | None, base: LayerPreset | None, source: str = "user"
    ) -> LayerPreset:
        """The user's layers (weights default to 1), keeping the regularizers of the model's own preset."""
        lw = tuple(float(w) for w in weights) if weights else (1.0,) * len(layers)
        return cls(tuple(layers), lw, tv=base.tv if base else 0.0, l2=base.l2 if base else 0.0, source=source)

    def as_dict(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "weights": list(self.weights),
            "tv": self.tv,
            "l2": self.l2,
            "source": self.source,
        }


@dataclass(frozen=True)
class Architecture:
    """What vital-fv needs to know about a network's layout, filled in by the loader (module names).

    ``stem`` and ``stages`` (outputs, input to output) give presets; ``last_hidden`` is the last layer whose output
    is still a map over positions before the head pools it (concepts, circuits); ``head`` is the classifier's final
    Linear (penultimate features for metrics); ``tokens`` says layers are (B, T, D) token sequences. A fact left
    None is found from the module tree when asked (``ModelSpec.last_hidden_layer``, ``ModelSpec.classifier_head``).
    """

    family: str = "generic"
    stem: str | None = None
    stages: tuple[str, ...] = ()
    last_hidden: str | None = None
    head: str | None = None
    tokens: bool = False

    def as_dict(self) -> dict[str, Any]:
        return {"family": self.family, "stem": self.stem, "stages": list(self.stages),
                "last_hidden": self.last_hidden, "head": self.head, "tokens": self.tokens}



def discover_last_hidden(module: nn.Module, input_size: int, model_name: str = "") -> str:
    """The last module whose output is still a map over positions (conv features or tokens), from one forward of a
    blank image: what ``Architecture.last_hidden`` holds for the known families."""
    order: list[tuple[str, tuple[int, ...]]] = []
    handles = []

    def hook(name: str):  # noqa: ANN202
        def fn(_m: nn.Module, _i: object, out: object) -> None:
            out = out[0] if isinstance(out, (tuple, list)) and out else out
            if isinstance(out, torch.Tensor):
                order.append((name, tuple(out.shape[1:])))
        return fn

    try:
        for name, m in module.named_modules():
            if name:
                handles.append(m.register_forward_hook(hook(name)))
        from ..device import frozen_on

        first = next(iter(module.parameters()), None)
        with frozen_on(module), torch.no_grad():  # eval: a training model's BatchNorm statistics stay as they were
            module(torch.zeros(1, 3, input_size, input_size, device=first.device if first is not None else "cpu",
                               dtype=first.dtype if first is not None and first.is_floating_point() else None))
    finally:
        for h in handles:
            h.remove()
    maps = [n for n, shape in order if len(shape) in (2, 3) and math.prod(shape[1:] if len(shape) == 3
                                                                          else shape[:1]) > 1]
    if not maps:
        raise VitalError(f"cannot find a hidden layer with spatial positions in {model_name or 'the model'}: give "
                         f"--layer (`vital layers --model {model_name}` lists them)")
    return maps[-1]


def last_linear(module: nn.Module) -> str:
    """The name of the module's last Linear layer (the classifier head of a plain classifier)."""
    names = [n for n, m in module.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise VitalError("the model has no Linear layer to read penultimate features from")
    return names[-1]


# Intermediate units (SPEC §4): the class preset's layers that run below the unit, the first at weight 0.1 and the
# rest at 1, TV = l2 = 3e-6 (the paper's ResNet50 setting; the authors' code used 3e-7). One rule for every family.
UNIT_RULE = {"first_weight": 0.1, "weight": 1.0, "tv": 3e-6, "l2": 3e-6}


@dataclass
class ModelSpec:
    """A frozen classifier plus its preprocessing, class names and default layer preset."""

    name: str
    module: nn.Module
    preprocess: Preprocess
    class_names: list[str] = field(default_factory=list)
    preset: LayerPreset | None = None
    weights_id: str = "unknown"
    weights_source: str = ""
    class_synonyms: list[list[str]] | None = None
    prefix_tokens: int = 0  # leading non-patch tokens of token layers (a ViT's class token)
    class_token: bool = True  # match prefix tokens too (the authors did); False drops them
    fixed_size: bool = False  # the model only takes its own input size (ViT position embeddings)
    preprocess_source: str = ""  # where ``preprocess`` comes from (which weights' metadata), for the record
    arch: Architecture = field(default_factory=Architecture)  # layout facts (stem, stages, last hidden, head)

    @property
    def skip_tokens(self) -> int:
        return 0 if self.class_token else self.prefix_tokens

    @property
    def device(self) -> torch.device:
        for p in self.module.parameters():
            return p.device
        return torch.device("cpu")

    def to(self, device: torch.device | str) -> ModelSpec:
        self.module.to(device)
        return self

    def last_hidden_layer(self) -> str:
        """The last layer with positions before the head pools them (``bn2`` on Lite0, ``layer4`` on ResNet)."""
        if self.arch.last_hidden is None:
            from ..device import frozen_on

            with frozen_on(self.module):
                found = discover_last_hidden(self.module, self.preprocess.input_size, self.name)
            self.arch = replace(self.arch, last_hidden=found)
        return self.arch.last_hidden

    def classifier_head(self) -> nn.Module:
        """The classifier's final Linear layer, whose input is the penultimate representation."""
        if self.arch.head is None:
            self.arch = replace(self.arch, head=last_linear(self.module))
        return dict(self.module.named_modules())[self.arch.head]

    @torch.no_grad()
    def top5(self, images01: torch.Tensor) -> list[list[dict[str, Any]]]:
        """The model's top-5 classes for each image in [0, 1], with probabilities (empty lists without logits)."""
        from ..device import frozen_on

        with frozen_on(self.module):
            logits = self.module(self.preprocess.normalize(images01.to(self.device)))
        if logits.dim() != 2:
            return [[] for _ in range(images01.shape[0])]
        probs = logits.float().softmax(-1)
        p, i = probs.topk(min(5, probs.shape[-1]), dim=-1)
        names = self.class_names
        return [
            [
                {"index": int(c), "name": names[int(c)] if c < len(names) else str(int(c)), "p": round(float(q), 5)}
                for q, c in zip(pr, ix, strict=True)
            ]
            for pr, ix in zip(p.cpu(), i.cpu(), strict=True)
        ]

    def find_classes(self, word: str = "") -> list[tuple[int, str, list[str]]]:
        """(index, name, other synonyms) of every class whose name or a synonym contains ``word`` (any case)."""
        if not self.class_names:
            raise VitalError(f"model {self.name} has no class names")
        word = word.lower()
        synonyms = self.class_synonyms or [[] for _ in self.class_names]
        hits = [
            (i, n, [w for w in syn if w != n])
            for i, (n, syn) in enumerate(zip(self.class_names, synonyms, strict=True))
            if word in n.lower() or any(word in w.lower() for w in syn)
        ]
        if not hits:
            raise VitalError(f"no class name of {self.name} contains '{word}'")
        return hits

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "weights_sha256": self.weights_id,
            "weights_source": self.weights_source,
            "preprocess": self.preprocess.as_dict(),
            "preprocess_source": self.preprocess_source,
            "num_classes": len(self.class_names),
            "class_token_matched": self.class_token if self.prefix_tokens else None,
        }


def predecessor(module: nn.Module, layer: str) -> str | None:
    """The sibling block that runs just before ``layer`` in its stage (``blocks.5.1`` for ``blocks.5.2``,
    ``layer4.1`` for ``layer4.2``); None for the first block of a stage and for top-level modules (in a flat
    model the sibling would be the unit's own pre-activation)."""
    parent, _, child = layer.rpartition(".")
    container = dict(module.named_modules()).get(parent) if parent else None
    if container is None:
        return None
    names = [n for n, _ in container.named_children()]
    i = names.index(child) if child in names else -1
    return f"{parent}.{names[i - 1]}" if i > 0 else None


def preceding_stage(module: nn.Module, layer: str) -> str | None:
    """For a top-level layer after the stages (EfficientNet's ``conv_head``/``bn2``), the nearest top-level module
    before it that holds parametrized blocks (``blocks``); None for nested layers and when there is none."""
    if "." in layer:
        return None
    names = [n for n, _ in module.named_children()]
    if layer not in names:
        return None
    children = dict(module.named_children())
    for name in reversed(names[: names.index(layer)]):
        if any(any(True for _ in c.parameters()) for c in children[name].children()):
            return name
    return None


def unit_preset(spec: ModelSpec, unit_layer: str, with_predecessor: bool = True) -> LayerPreset:
    """The preset for a unit (channel or neuron) of ``unit_layer``: the model's preset layers below it (the
    paper's rule), plus, by default, the block just before the unit in its stage.

    The paper's rule alone leaves whole blocks between the last matched layer and the unit (ResNet50 layer4.2:
    matched up to layer3; Lite0 blocks.5.2: up to blocks.4), and the unit is then loosely constrained: on Lite0
    units the images often did not activate the unit at all (benchmarks/README.md compares both rules).
    """
    from ..features import layers_below

    if spec.preset is None:
        raise VitalError(f"model {spec.name} has no layer preset to take the layers below {unit_layer} from: "
                         "give --layers")
    candidates = list(spec.preset.layers)
    before = None
    if with_predecessor:
        # Without the block just before the unit, the top matched layer can sit a whole stage below it (Lite0 bn2:
        # blocks.4, with blocks.5-6 free), and concept directions at bn2 reached cosine 0.21 instead of 0.54.
        before = predecessor(spec.module, unit_layer) or preceding_stage(spec.module, unit_layer)
    if before and before not in candidates:
        candidates.append(before)
    below = layers_below(spec.module, unit_layer, candidates, spec.preprocess.input_size, spec.name)
    if not below:
        raise VitalError(
            f"no preset layer of {spec.name} runs below '{unit_layer}' (preset: {', '.join(spec.preset.layers)}): "
            "give --layers with layers before the unit"
        )
    weights = (UNIT_RULE["first_weight"],) + (UNIT_RULE["weight"],) * (len(below) - 1)
    rule = "paper's unit rule" + (f" + predecessor {before}" if before in below else "")
    return LayerPreset(tuple(below), weights, tv=UNIT_RULE["tv"], l2=UNIT_RULE["l2"],
                       source=f"{rule}: layers below {unit_layer} (from {spec.preset.source})")



def imagenet_preprocess(size: int = 224, resize: int = 256) -> Preprocess:
    return Preprocess(size, resize, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")

