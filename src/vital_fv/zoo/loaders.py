"""``load_model``: a ``ModelSpec`` from a zoo name (a registered family's own models, torchvision's classifiers,
``timm:NAME``) or from any ``nn.Module``. Nothing here downloads: weights come from pip packages, the user's file, or
torchvision's local cache. What is particular to a family (its presets, layout facts, canonizer, its own models)
lives in its module under ``families/``; the loaders ask the registry.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from ..errors import VitalError, close_matches
from ..options import DEFAULT_MODEL
from . import families as _families  # noqa: F401 - registers the built-in families
from .registry import architecture_of, families, family_of_model, preset_for
from .sources import (
    file_sha256,
    imagenet_class_names,
    imagenet_synonyms,
    load_state_dict_strict,
    module_hash,
    read_state_dict,
)
from .specs import Architecture, LayerPreset, ModelSpec, Preprocess, imagenet_preprocess


def embedded_models() -> list[str]:
    """Zoo names whose family builds them with weights from installed packages (no --weights needed)."""
    return [m for f in families() for m in f.models]


EMBEDDED_MODELS = tuple(embedded_models())  # the built-in families' models (EfficientNet-Lite)


def torchvision_architecture(module: nn.Module) -> Architecture:
    """A torchvision model's layout facts from its family (``families/``), or only its class name."""
    return architecture_of(module) or Architecture(family=type(module).__name__.lower())


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


def list_models() -> list[str]:
    """Names ``load_model`` accepts: the families' own (embedded) models first, then torchvision's classifiers."""
    import torchvision.models as tvm

    return embedded_models() + sorted(tvm.list_models(module=tvm))


def as_model_spec(model: ModelSpec | str | nn.Module, weights: str | os.PathLike[str] | None = None) -> ModelSpec:
    """A ``ModelSpec`` as it is, else ``load_model(model, weights)``: what every one-call entry point accepts."""
    return model if isinstance(model, ModelSpec) else load_model(model, weights)


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
            weights_id=module_hash(model),
            weights_source="in-memory module",
        )
    elif (family := family_of_model(model)) is not None:
        spec = family.load(model, weights)
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
    from ..device import frozen_on

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


def _load_torchvision(name: str, weights: str | os.PathLike[str] | None, random_init: bool = False) -> ModelSpec:
    import torchvision.models as tvm

    known = tvm.list_models(module=tvm)
    if name not in known:
        choices = embedded_models() + known
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
        preset=preset_for(name),
        weights_id=digest or module_hash(module),
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
        preset=preset_for(name) or timm_auto_preset(module),
        weights_id=file_sha256(weights) if weights is not None else module_hash(module),
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

