"""``visualize``: everything ``vital visualize`` does, as one Python call.

It resolves the model, the targets and their references, checks every option and the output files before any
work, runs the chosen method from the registry over all targets × seeds in one batch, and (with ``out``) writes
each result atomically, also after Ctrl-C or a non-finite loss.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from . import references as refs_mod
from .cache import PrototypeCache
from .device import resolve_device
from .errors import VitalError
from .features import resolve_layers
from .methods import Job, NonFiniteLossError, get_method, get_preset, run_method
from .methods.base import check_options
from .objectives import Objective
from .options import (
    CROPS,
    DEFAULT_CROPS,
    DEFAULT_REF_WEIGHTING,
    WEIGHTINGS,
    check_alpha_percentile,
    check_choice,
    check_layer_weights,
    check_n_refs,
    check_name,
    check_numbers,
    check_seeds,
    check_size,
    check_type,
)
from .references import ReferenceSet
from .relevance import parse_method
from .result import Result, ensure_writable_dir, refuse_overwrite
from .signals import hold_signals
from .targets import ClassTarget, DirectionTarget, UnitTarget
from .zoo import LayerPreset, ModelSpec, load_model

log = logging.getLogger("vital_fv")
OUTPUT_SUFFIXES = (".png", ".json", ".rgba.png", ".alpha.npy")


def _as_target(target: Any) -> Any:
    """int / str -> ClassTarget; objectives (targets) and saved concepts as they are."""
    if isinstance(target, Objective) or hasattr(target, "target"):
        return target
    if isinstance(target, (int, str)) and not isinstance(target, bool):  # True is not class 1
        return ClassTarget(target)
    raise VitalError(f"cannot visualize {target!r}: give a class index or name, a UnitTarget, a DirectionTarget, "
                     "an objective (vital_fv.objectives) or a concept from vital_fv.concepts.load_concepts")


_PATH = (str, os.PathLike)
_NUMBER = (int, float)
# visualize's arguments that take one plain type: (kinds, what it takes, None allowed). The rest are checked below.
_ARGUMENTS: dict[str, tuple[Any, str, bool]] = {
    "weights": (_PATH, "a state dict or checkpoint file path", True),
    "method": (str, "a method name (vital_fv.method_names())", False),
    "seed": (int, "a whole number", False),
    "steps": (int, "a whole number of at least 1", True),
    "lr": (_NUMBER, "a positive number", True),
    "size": (int, "a whole number of pixels", True),
    "device": ((str, torch.device), "auto, cpu, cuda or cuda:N", False),
    "n_refs": (int, "a whole number of at least 1", False),
    "pool": (_PATH, "a folder path", True),
    "images": (_PATH, "a folder path", True),
    "augment": (bool, "True, False or None (the default for the source)", True),
    "crops": (str, "evidence, objects or random", False),
    "ref_weighting": (str, "none or evidence", False),
    "use": (str, "patches or images", False),
    "relevance": (str, "auto, lrp, guided_backprop or None", True),
    "class_token": (bool, "True, False or None (the model's default)", True),
    "spectrum": (_PATH, "a file path", True),
    "cache": ((bool, PrototypeCache), "True, False or a PrototypeCache", False),
    "cache_dir": (_PATH, "a folder path", True),
    "out": (_PATH, "a folder path", True),
    "name": (str, "a file name stem", True),
    "overwrite": (bool, "True or False", False),
    "alpha_percentile": (_NUMBER, "a number in (0, 100]", False),
    "progress": (bool, "True or False", False),
}


def _check_arguments(given: dict[str, Any]) -> None:
    """One typed check of every argument of ``visualize``, naming the argument and what it takes, before anything
    else runs (bools are not numbers, a string is not a list)."""
    for arg, (kinds, what, optional) in _ARGUMENTS.items():
        check_type(arg, given[arg], kinds, what, optional)
    preset = given["preset"]
    if not isinstance(preset, str) and not hasattr(preset, "overridden"):
        raise VitalError(f"preset must be a preset name (e.g. 'paper', 'quick') or a preset object "
                         f"(vital_fv.OPTIM_PRESETS), got {type(preset).__name__} {preset!r:.60}")
    if given["seeds"] is not None:
        if isinstance(given["seeds"], int) and not isinstance(given["seeds"], bool):
            raise VitalError(f"seeds must be a list of whole numbers: seeds=[{given['seeds']}], or seed="
                             f"{given['seeds']} for one image")
        check_seeds(given["seeds"], "seeds")
    check_seeds([given["seed"]], "seed")
    refs = given["references"]
    if not (refs is None or isinstance(refs, (ReferenceSet, *_PATH)) or (
            isinstance(refs, Sequence) and refs and all(isinstance(r, _PATH) for r in refs))):
        raise VitalError(f"references must be a ReferenceSet, a folder, or a list of image files, got "
                         f"{type(refs).__name__} {refs!r:.60}")
    layers = given["layers"]
    if not (layers is None or isinstance(layers, LayerPreset) or (
            isinstance(layers, Sequence) and not isinstance(layers, str) and all(isinstance(n, str) for n in layers))):
        raise VitalError(f"layers must be a list of layer names (or a LayerPreset), got {type(layers).__name__} "
                         f"{layers!r:.60}")
    if given["layer_weights"] is not None:
        check_numbers("layer_weights", given["layer_weights"], "a list of numbers, one per layer")


def _slug(target: Any, model: ModelSpec) -> str:
    return target.slug(model.class_names, model.class_synonyms)


def output_stems(model: ModelSpec, targets: Sequence[Any], seeds: Sequence[int], method: str,
                 name: str | None = None) -> list[str]:
    """File stems, target-major then seed (the order of the results): ``MODEL-TARGET[-METHOD]-sSEED`` by default;
    ``name`` replaces the default (with ``-TARGET`` for several targets and ``-sSEED`` for several seeds)."""
    check_name(name)
    suffix = "" if method == "vital" else f"-{method}"
    model_slug = re.sub(r"[^\w.+-]+", "-", model.name)  # timm:convnext_tiny -> timm-convnext_tiny (a file name)
    stems = []
    for t in targets:
        sl = _slug(getattr(t, "target", t), model)
        base = (f"{name}-{sl}" if len(targets) > 1 else name) if name else f"{model_slug}-{sl}{suffix}"
        stems += [base if name and len(seeds) == 1 else f"{base}-s{seed}" for seed in seeds]
    return stems


def _concept_references(model: ModelSpec, concept: Any, images: Any, n: int, device: Any, progress: bool,
                        cache_dir: Any) -> ReferenceSet:
    from .concepts import concept_references_from
    from .device import frozen_on, resolve_device

    if images is not None:
        with frozen_on(model.module, resolve_device(device)):
            return concept_references_from(model, concept, images, k=n, progress=progress, cache_dir=cache_dir)
    if model.name != concept.record["model"]:
        raise VitalError(f"the concepts were extracted on {concept.record['model']}, not {model.name}: "
                         f"use --model {concept.record['model']}")
    return concept.references()


def visualize(
    model: ModelSpec | str,
    target: Any,
    references: ReferenceSet | str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    *,
    weights: str | os.PathLike[str] | None = None,
    method: str = "vital",
    preset: str = "paper",
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    steps: int | None = None,
    lr: float | None = None,
    size: int | None = None,
    device: str = "auto",
    n_refs: int = 50,
    pool: str | os.PathLike[str] | None = None,
    images: str | os.PathLike[str] | None = None,
    augment: bool | None = None,
    crops: str = DEFAULT_CROPS,
    ref_weighting: str = DEFAULT_REF_WEIGHTING,
    use: str = "patches",
    layers: Sequence[str] | LayerPreset | None = None,
    layer_weights: Sequence[float] | None = None,
    relevance: str | None = "auto",
    class_token: bool | None = None,
    spectrum: str | os.PathLike[str] | None = None,
    cache: bool | PrototypeCache = True,
    cache_dir: str | os.PathLike[str] | None = None,
    out: str | os.PathLike[str] | None = None,
    name: str | None = None,
    overwrite: bool = False,
    alpha_percentile: float = 98.0,
    progress: bool = True,
) -> Result | list[Result]:
    """Visualize ``target`` on ``model`` with ``method`` (any registered one: vital, fourier, maco, deepinversion).

    ``model``: a ``ModelSpec`` or a zoo name (with ``weights``). ``target``: a class index or name, a ``UnitTarget``
    / ``DirectionTarget``, any objective (``vital_fv.objectives``: ``channel(...) - channel(...)``; VITAL ranks its
    references from ``images`` / ``pool`` by it), a saved concept, or a list of them (one batch). ``references``
    (VITAL): a ``ReferenceSet``, a folder or files; or ``pool`` / ``images`` (see ``references.resolve``); none: the
    bundled photo of a demo class. ``seeds`` gives one image per seed. Returns one ``Result`` for one target and no
    ``seeds``, else a list, target-major. With ``out``, each result is saved as ``out/STEM.png`` (+ ``.json``, and
    ``.rgba.png`` / ``.alpha.npy`` with a transparency map; ``name`` sets the stem), existing files are refused
    before any work unless ``overwrite``, and a Ctrl-C saves the images so far.
    """
    _check_arguments(dict(locals()))  # types first: each option's own check below then sees what it expects
    m = get_method(method)
    get_preset(m, preset, steps, lr)  # every option is checked before any work
    check_alpha_percentile(alpha_percentile)
    check_layer_weights(layers if not isinstance(layers, LayerPreset) else layers.layers, layer_weights)
    check_size(size)
    check_n_refs(n_refs)
    check_choice("--crops", crops, CROPS)
    check_choice("--ref-weighting", ref_weighting, WEIGHTINGS)
    check_choice("--use", use, ("patches", "images"))
    resolve_device(device)
    seed_list = check_seeds(seeds if seeds is not None else [seed])
    many = isinstance(target, (list, tuple))
    targets = [_as_target(t) for t in (target if many else [target])]
    if not targets:
        raise VitalError("nothing to visualize: give at least one target")
    kinds = {type(getattr(t, "target", t)) for t in targets}
    if pool is not None and kinds & {UnitTarget, DirectionTarget}:  # a pool ranks images by a class or an objective
        raise VitalError("--pool ranks images by a class's probability: for a unit or concept give --images DIR "
                         "(its top patches or crops) or --refs")
    if images is not None and ClassTarget in kinds:
        raise VitalError("--images mines references for a unit or a concept: give --unit or --concept, or --pool "
                         "DIR for a class")
    check_name(name)
    options: dict[str, Any] = {}
    if relevance != "auto" and (m.name == "vital" or relevance not in (None, "none")):
        options["relevance"] = parse_method(relevance) if m.name == "vital" else relevance
    if spectrum is not None:
        options["spectrum"] = spectrum
    if m.needs_references and (cache is not True or cache_dir is not None):  # the prototype cache
        options["cache"] = False if cache is False else (cache if cache is not True else PrototypeCache(cache_dir))
    check_options(m, {**options, "layers": layers or None})  # method-specific options, before the model loads
    out_dir = ensure_writable_dir(out) if out is not None else None
    if not isinstance(model, (ModelSpec, str)):
        raise VitalError(f"model must be a ModelSpec or a zoo name, not {type(model).__name__}: wrap a module with "
                         "vital_fv.load_model(module, preprocess=...)")
    spec = model if isinstance(model, ModelSpec) else load_model(model, weights)
    if class_token is not None:
        spec = replace(spec, class_token=class_token)
    stems = output_stems(spec, targets, seed_list, m.name, name)
    if out_dir is not None:
        refuse_overwrite([out_dir / f"{s}{ext}" for s in stems for ext in OUTPUT_SUFFIXES], overwrite)

    if layers:
        if isinstance(layers, LayerPreset):
            options["layers"] = layers
        else:
            resolve_layers(spec.module, list(layers), spec.name)
            options["layers"] = LayerPreset.user(list(layers), list(layer_weights) if layer_weights else None,
                                                 spec.preset, "user (--layers)")
    plain = [getattr(t, "target", t) for t in targets]  # a saved concept carries its DirectionTarget
    for t in targets:  # a concept's direction lives in the space of the model it was extracted on
        made_on = getattr(t, "record", {}).get("model") if t is not getattr(t, "target", t) else None
        if made_on and made_on != spec.name:
            raise VitalError(f"the concepts were extracted on {made_on}, not {spec.name}: use --model {made_on}")
    _check_targets(spec, plain, size, device)  # before any reference is read or mined
    if m.needs_references:
        shared = None
        if references is not None or pool is not None:  # one source for every target, read once
            shared = refs_mod.resolve(spec, plain[0], references, pool=pool, n=n_refs, augment=augment,
                                      crops=crops, weighting=ref_weighting, device=device, progress=progress,
                                      cache_dir=cache_dir)
        per_target = [
            shared if shared is not None else
            _concept_references(spec, t, images, n_refs, device, progress, cache_dir) if t is not p else
            refs_mod.resolve(spec, p, images=images, n=n_refs, augment=augment, crops=crops,
                             weighting=ref_weighting, use=use, device=device, progress=progress, cache_dir=cache_dir)
            for t, p in zip(targets, plain, strict=True)
        ]
    else:
        given = [f for f, v in (("refs", references), ("pool", pool), ("images", images)) if v is not None]
        if given:
            raise VitalError(f"{m.name} uses no references: drop --{given[0]}")
        per_target = [None] * len(targets)
    for original, t, r in zip(targets, plain, per_target, strict=True):
        if r is not None:
            _warn_about_references(t, r, n_refs, counted=original is t and not isinstance(references, ReferenceSet))
    jobs = [Job(t, r, s) for t, r in zip(plain, per_target, strict=True) for s in seed_list]
    log.info(_describe_run(spec, m.name, plain, per_target, preset, relevance, seed_list))

    try:
        results = run_method(m, spec, jobs, preset=preset, steps=steps, lr=lr, size=size, device=device,
                             progress=progress, **options)
    except NonFiniteLossError as exc:
        if out_dir is not None:
            _save_all(exc.results, out_dir, stems, alpha_percentile)
            exc.args = (f"{exc} Saved: {', '.join(str(r.path) for r in exc.results)}",)
        raise
    for r in results:
        r.alpha_percentile = alpha_percentile
    if out_dir is not None:
        _save_all(results, out_dir, stems, alpha_percentile)
    return results if many or seeds is not None else results[0]


def _check_targets(spec: ModelSpec, targets: list[Any], size: int | None, device: str) -> None:
    """Classes in the model's range, units and directions on an existing layer and channel, before any work."""
    from .device import frozen_on
    from .targets import check_units

    for t in targets:
        if isinstance(t, ClassTarget):
            t.resolve(spec.class_names, spec.class_synonyms)
        elif isinstance(t, Objective):
            t.resolved(spec.class_names, spec.class_synonyms)  # the class names in a combination
    units = [t for t in targets if not isinstance(t, ClassTarget)]
    if units:  # units, directions, objectives: their layers, channels, positions and classes
        dev = resolve_device(device)
        with frozen_on(spec.module, dev):
            check_units(spec, units, size or spec.preprocess.input_size, dev)


def _warn_about_references(target: Any, refs: ReferenceSet, n_refs: int, counted: bool) -> None:
    """Say so when a run gets fewer references than asked for, or references mined for another unit."""
    import warnings

    mined_for = (refs.info.get("mining") or {}).get("unit")
    if mined_for and isinstance(target, UnitTarget) and mined_for != target.label():
        warnings.warn(f"the references were mined for {mined_for}, not {target.label()}: mine {target.label()}'s "
                      "own (`vital mine` or --images DIR)", stacklevel=3)
    if counted and not mined_for and refs.count < n_refs:  # read from a source by --n-refs (not a set given)
        warnings.warn(f"{refs.count} reference image{'s' if refs.count != 1 else ''} where --n-refs asks for "
                      f"{n_refs} ({refs.describe()['label']}): add images, or --augment to fill up with crops",
                      stacklevel=3)


def _save_all(results: list[Result], out_dir: Path, stems: list[str], alpha_percentile: float) -> None:
    with hold_signals():  # a second Ctrl-C (or SIGTERM) waits until every file is complete
        for r, stem in zip(results, stems, strict=True):
            r.alpha_percentile = alpha_percentile
            r.save(out_dir / f"{stem}.png", overwrite=True)  # the overwrite check ran before the work started


def _describe_run(spec: ModelSpec, method: str, targets: list[Any], refs: list[Any], preset: str,
                  relevance: str | None, seeds: list[int]) -> str:
    labels = []
    for t in targets:
        if isinstance(t, ClassTarget):
            index, cname = t.resolve(spec.class_names, spec.class_synonyms)
            labels.append(f"{cname} ({index})")
        else:
            labels.append(t.label())
    what = ", ".join(labels)
    seeds_text = ",".join(map(str, seeds))
    if method != "vital":
        return f"visualizing {what} on {spec.name} with {method}, preset {preset}, seeds {seeds_text}"
    counts = ", ".join(dict.fromkeys(str(r.count) for r in refs))
    noun = "reference" if counts == "1" else "references"
    sources = "; ".join(dict.fromkeys(f"{r.summary()}, {r.label}" if r.count > len(r.images) else r.label
                                      for r in refs))
    rel = relevance if relevance != "auto" else ("none" if isinstance(targets[0], ClassTarget) else "lrp")
    return (f"visualizing {what} on {spec.name} from {counts} {noun} ({sources}), preset {preset}, relevance "
            f"{rel or 'none'}, seeds {seeds_text}")
