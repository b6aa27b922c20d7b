"""``visualize``: everything ``vital visualize`` does, as one Python call.

It resolves the model, the targets and their references, checks every option and the output files before any
work, runs the chosen method from the registry over all targets × seeds in one batch, and (with ``out``) writes
each result atomically, also after Ctrl-C or a non-finite loss.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from . import references as refs_mod
from .cache import PrototypeCache
from .device import resolve_device
from .errors import VitalError
from .features import resolve_layers
from .methods import NonFiniteLossError, get_method, run_method
from .methods.base import Job, Method, file_suffix
from .methods.batching import check_batch, choose_for_jobs, chunks
from .objectives import Objective
from .options import DEFAULT_CROPS, DEFAULT_REF_WEIGHTING, check_name, check_type
from .references import ReferenceSet
from .result import Result, ensure_writable_dir, refuse_overwrite
from .runspec import References, RunSpec, as_target, plain_target, target_to_json
from .signals import hold_signals
from .targets import ClassTarget, UnitTarget
from .zoo import LayerPreset, ModelSpec, as_model_spec

log = logging.getLogger("vital_fv")
OUTPUT_SUFFIXES = (".png", ".json", ".rgba.png", ".alpha.npy")


def _slug(target: Any, model: ModelSpec) -> str:
    return target.slug(model.class_names, model.class_synonyms)


def output_stems(model: ModelSpec, targets: Sequence[Any], seeds: Sequence[int], method: str | Method,
                 name: str | None = None) -> list[str]:
    """File stems, target-major then seed (the order of the results): ``MODEL-TARGET[-METHOD]-sSEED`` by default;
    ``name`` replaces the default (with ``-TARGET`` for several targets and ``-sSEED`` for several seeds)."""
    check_name(name)
    suffix = file_suffix(get_method(method) if isinstance(method, str) else method)
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
    options: Mapping[str, Any] | None = None,
    batch_size: int | str | None = "auto",
) -> Result | list[Result]:
    """Visualize ``target`` on ``model`` with ``method`` (any registered one: vital, fourier, maco, deepinversion).

    ``model``: a ``ModelSpec`` or a zoo name (with ``weights``). ``target``: a class index or name, a ``UnitTarget``
    / ``DirectionTarget``, any objective (``vital_fv.objectives``: ``channel(...) - channel(...)``; VITAL ranks its
    references from ``images`` / ``pool`` by it), a saved concept, or a list of them (one batch). ``references``
    (VITAL): a ``ReferenceSet``, a folder or files; or ``pool`` / ``images`` (see ``references.resolve``); none: the
    bundled photo of a demo class. ``seeds`` gives one image per seed. Returns one ``Result`` for one target and no
    ``seeds``, else a list, target-major. With ``out``, each result is saved as ``out/STEM.png`` (+ ``.json``, and
    ``.rgba.png`` / ``.alpha.npy`` with a transparency map; ``name`` sets the stem), existing files are refused
    before any work unless ``overwrite``, and a Ctrl-C saves the images so far. ``options``: the method's own
    (its ``options`` declaration; ``relevance`` and ``spectrum`` have keywords of their own). The keywords make a
    ``RunSpec`` that ``run`` runs; each record keeps its job's (``rerun`` makes the image again). ``batch_size``:
    images optimized together; "auto" times a few steps at sizes 1, 2, 4, ... and takes the fastest per image
    (``methods.batching``; cached, said in the log and each record's ``batch``); None: all in one batch.
    """
    check_type("seed", seed, int, "a whole number")
    many = isinstance(target, (list, tuple))
    if relevance != "auto":  # VITAL's own option; "none" (no relevance) is no option for a method without it
        options = {"relevance": "none" if relevance is None else relevance, **(options or {})}
    if spectrum is not None:
        options = {"spectrum": spectrum, **(options or {})}
    spec = RunSpec(
        model, tuple(as_target(t) for t in (target if many else [target])),
        References.given(references, pool=pool, images=images, n=n_refs, augment=augment, crops=crops,
                         weighting=ref_weighting, use=use),
        method=method, preset=preset, steps=steps, lr=lr, size=size, layers=layers, layer_weights=layer_weights,
        class_token=class_token, options=options if options is not None else {},
        seeds=seeds if seeds is not None else [seed], device=device, weights=weights, cache=cache,
        cache_dir=cache_dir, out=out, name=name, overwrite=overwrite, alpha_percentile=alpha_percentile,
        progress=progress, batch_size=batch_size)
    results = run(spec)
    return results if many or seeds is not None else results[0]


def rerun(record: str | os.PathLike[str] | Mapping[str, Any], *, model: ModelSpec | None = None,
          out: str | os.PathLike[str] | None = None, name: str | None = None, overwrite: bool = False,
          device: str | None = None, progress: bool = True) -> Result:
    """Make a result again from its record (``NAME.json`` or the dict): the same model, target, seed, references,
    method, preset and options, optimized with the same batch (an atlas item with its batch's other items), so
    the same image on the same device. ``model``: the ``ModelSpec`` where the record's model was built in Python;
    ``out`` / ``name``: where to write it (default: not written; the record's stem)."""
    if out is not None:
        check_type("out", out, (str, os.PathLike), "a folder path")
    check_name(name)
    items, index = RunSpec.batch_from_record(record, model)
    if items is None:  # a run of vital visualize or the API: itself, or its batch with only this job kept
        spec = RunSpec.from_record(record, model)
        spec = replace(spec, out=out, overwrite=overwrite, progress=progress, device=device or spec.device,
                       **({"kept_name": name} if spec.keep is not None else {"name": name or spec.name}))
        return run(spec)[0]
    items = [replace(s, device=device or s.device, progress=progress) for s in items]
    stem = name or items[index].name or "rerun"
    out_dir = ensure_writable_dir(out) if out is not None else None
    if out_dir is not None:
        refuse_overwrite([out_dir / f"{stem}{ext}" for ext in OUTPUT_SUFFIXES], overwrite)
    first = items[0]
    loaded = as_model_spec(first.model, first.weights)
    result = run_jobs(items, loaded)[index]
    result.record["spec"] = dict(record["spec"] if isinstance(record, Mapping) else
                                 json.loads(Path(record).read_text())["spec"])
    if out_dir is not None:
        _save_all([result], out_dir, [stem], first.alpha_percentile)
    return result


def run_jobs(specs: Sequence[RunSpec], model: ModelSpec) -> list[Result]:
    """Jobs of one method, preset and options, each its own ``RunSpec`` (target, seed, references), optimized
    together in one batch (an atlas worker's batch); nothing is saved. References are read once per target and
    source."""
    first = specs[0]
    m, jobs = jobs_of(specs, model)
    return run_method(m, model, jobs, preset=first.preset, steps=first.steps, lr=first.lr, size=first.size,
                      device=first.device, progress=first.progress, **first.method_options(m))


def jobs_of(specs: Sequence[RunSpec], model: ModelSpec) -> tuple[Method, list[Job]]:
    """The method and one ``Job`` per ``RunSpec`` (its target, seed and references, read once per target and
    source), each spec checked: what ``run_jobs`` optimizes, and what a batch-size measurement times."""
    m = specs[0].check()
    refs: dict[str, Any] = {}
    jobs = []
    for s in specs:
        s.check()
        target, plain = s.targets[0], plain_target(s.targets[0])
        key = json.dumps([target_to_json(target), s.references.to_json()], sort_keys=True)
        if key not in refs:
            refs[key] = references_of(s, model, [target], [plain])[0] if m.needs_references else None
        jobs.append(Job(plain, refs[key], s.seeds[0]))
    return m, jobs


def run(spec: RunSpec) -> list[Result]:
    """Run a ``RunSpec``: every option checked first (``RunSpec.check``), then the model loaded, the targets
    checked against it, each target's references read, one batch of target × seed jobs through the method
    registry, and each result saved (with ``out``) with its own run description in its record."""
    if not isinstance(spec, RunSpec):
        raise VitalError(f"run takes a RunSpec, not {type(spec).__name__}: vital_fv.visualize takes keywords")
    m = spec.check()
    seed_list = list(spec.seeds)
    opts = spec.method_options(m)
    out_dir = ensure_writable_dir(spec.out) if spec.out is not None else None
    if not isinstance(spec.model, (ModelSpec, str)):
        raise VitalError(f"model must be a ModelSpec or a zoo name, not {type(spec.model).__name__}: wrap a module "
                         "with vital_fv.load_model(module, preprocess=...)")
    model = as_model_spec(spec.model, spec.weights)
    if spec.class_token is not None:
        model = replace(model, class_token=spec.class_token)
    targets = list(spec.targets)
    stems = output_stems(model, targets, seed_list, m, spec.name)
    kept = list(range(len(stems))) if spec.keep is None else list(spec.keep)
    saved = [spec.kept_name if spec.kept_name and len(kept) == 1 else stems[i] for i in kept]
    if out_dir is not None:
        refuse_overwrite([out_dir / f"{stem}{ext}" for stem in saved for ext in OUTPUT_SUFFIXES], spec.overwrite)

    layers = spec.layers
    if layers and not isinstance(layers, LayerPreset):
        resolve_layers(model.module, list(layers), model.name)
        weights = list(spec.layer_weights) if spec.layer_weights else None
        opts["layers"] = LayerPreset.user(list(layers), weights, model.preset, "user (--layers)")
    plain = [plain_target(t) for t in targets]  # a saved concept carries its DirectionTarget
    for t in targets:  # a concept's direction lives in the space of the model it was extracted on
        made_on = getattr(t, "record", {}).get("model") if t is not plain_target(t) else None
        if made_on and made_on != model.name:
            raise VitalError(f"the concepts were extracted on {made_on}, not {model.name}: use --model {made_on}")
    _check_targets(model, plain, spec.size, spec.device)  # before any reference is read or mined
    per_target = references_of(spec, model, targets, plain) if m.needs_references else [None] * len(targets)
    given_set = spec.references.source.kind == "set"
    for original, t, r in zip(targets, plain, per_target, strict=True):
        if r is not None:
            _warn_about_references(t, r, spec.references.n, counted=original is t and not given_set)
    jobs = [Job(t, r, s) for t, r in zip(plain, per_target, strict=True) for s in seed_list]
    log.info(_describe_run(model, m, plain, per_target, spec.preset, spec.options.get("relevance", "auto"),
                           seed_list))

    choice = choose_for_jobs(m, model, jobs, device=spec.device, preset=spec.preset, steps=spec.steps,
                             forced=len(jobs) if spec.batch_size is None else check_batch(spec.batch_size,
                                                                                          "batch_size"),
                             size=spec.size, cache_dir=spec.cache_dir, **opts)
    # the batches as they ran (the chosen size made explicit): a record's rerun optimizes the same batches
    whole = replace(spec, keep=None, kept_name=None, batch_size=choice.size)
    results: list[Result] = []
    try:
        for part in chunks(jobs, choice.size):
            done = run_method(m, model, part, preset=spec.preset, steps=spec.steps, lr=spec.lr, size=spec.size,
                              device=spec.device, progress=spec.progress, **opts)
            for r in done:
                r.record["batch"] = choice.describe()
            results += done
            if any(r.status == "interrupted" for r in done):  # Ctrl-C: the images so far are saved, no more run
                break
    except NonFiniteLossError as exc:
        exc.results = results + exc.results
        exc.results = _kept(exc.results, kept, whole, stems)
        if out_dir is not None:
            _save_all(exc.results, out_dir, saved, spec.alpha_percentile)
            exc.args = (f"{exc} Saved: {', '.join(str(r.path) for r in exc.results)}",)
        raise
    results = _kept(results, kept, whole, stems)
    for r in results:
        r.alpha_percentile = spec.alpha_percentile
    if out_dir is not None:
        _save_all(results, out_dir, saved, spec.alpha_percentile)
    return results


def _kept(results: list[Result], kept: list[int], whole: RunSpec, stems: list[str]) -> list[Result]:
    """The jobs asked for, each record keeping its own job's run description (``vital visualize --from``)."""
    kept = [i for i in kept if i < len(results)]  # a stop (Ctrl-C) between batches: the ones made
    for i in kept:
        try:
            results[i].record["spec"] = whole.job_json(i, stems[i])
        except VitalError:  # a custom callable objective has no JSON form: no rerun from this record
            break
    return [results[i] for i in kept]


def references_of(spec: RunSpec, model: ModelSpec, targets: list[Any], plain: list[Any]) -> list[ReferenceSet]:
    """Each target's references from the run's source: a set, folder, files or pool read once for every target,
    a folder mined per unit (a concept: its crops that express it most), a job's mining shards merged, the
    bundled photo of a demo class, a concept's saved crops."""
    how = spec.references
    src = how.source
    opts = {"n": how.n, "augment": how.augment, "crops": how.crops, "weighting": how.weighting,
            "device": spec.device, "progress": spec.progress, "cache_dir": spec.cache_dir}
    if src.kind in ("set", "folder", "files", "pool"):  # one source for every target, read once
        given = src.given if src.kind == "set" else src.path if src.kind == "folder" else list(src.paths)
        shared = refs_mod.resolve(model, plain[0], given if src.kind != "pool" else None,
                                  pool=src.path if src.kind == "pool" else None, **opts)
        return [shared] * len(targets)
    out = []
    for t, p in zip(targets, plain, strict=True):
        if t is not p:  # a saved concept
            out.append(_concept_references(model, t, src.path if src.kind == "mine" else None, how.n, spec.device,
                                           spec.progress, spec.cache_dir))
        elif src.kind == "mined":
            out.append(refs_mod.mined_references(refs_mod.merge_shards(src.path, p), k=how.n))
        else:
            out.append(refs_mod.resolve(model, p, images=src.path if src.kind == "mine" else None, use=how.use,
                                        **opts))
    return out


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


def _describe_run(spec: ModelSpec, m: Method, targets: list[Any], refs: list[Any], preset: Any,
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
    if not m.needs_references:
        return f"visualizing {what} on {spec.name} with {m.name}, preset {preset}, seeds {seeds_text}"
    counts = ", ".join(dict.fromkeys(str(r.count) for r in refs))
    noun = "reference" if counts == "1" else "references"
    sources = "; ".join(dict.fromkeys(f"{r.summary()}, {r.label}" if r.count > len(r.images) else r.label
                                      for r in refs))
    rel = relevance if relevance != "auto" else ("none" if isinstance(targets[0], ClassTarget) else "lrp")
    return (f"visualizing {what} on {spec.name} from {counts} {noun} ({sources}), preset {preset}, relevance "
            f"{rel or 'none'}, seeds {seeds_text}")
