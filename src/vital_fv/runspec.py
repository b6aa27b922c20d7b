"""``RunSpec``: one typed description of a visualization run, from the CLI, the Python API and the atlas alike.

A run is a model, targets, where their references come from, a method with its preset, its changes and its own
options, seeds, a device and where the files go. ``vital visualize`` builds one from its arguments,
``vital_fv.visualize`` from its keywords, an atlas item stores one per target and seed; ``api.run`` runs it.
Every check that needs no model is here, once (``RunSpec.check``); the checks that need the model (a class in
range, a layer that exists) run in ``api.run`` before any reference is read.

Each result's record keeps the run description of its own job (one target, one seed, its file stem), so
``vital visualize --from RECORD.json`` (``vital_fv.rerun``) makes that image again. Targets and reference
sources are tagged JSON: ``{"kind": "class", ...}``, ``{"kind": "folder", "path": ...}``; a new target kind is
registered with ``register_target_kind`` (its JSON both ways and the kind of target a method must show).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from .cache import PrototypeCache
from .device import resolve_device
from .errors import VitalError
from .methods.base import (
    Method,
    Preset,
    check_kinds,
    check_options,
    declared_options,
    get_method,
    get_preset,
)
from .methods.batching import check_batch
from .objectives import Objective
from .objectives import from_json as objective_from_json
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
    check_reference_source,
    check_seeds,
    check_size,
    check_type,
)
from .references import ReferenceSet
from .targets import ClassTarget, DirectionTarget, UnitTarget
from .zoo import LayerPreset, ModelSpec

SPEC_VERSION = 1


# ---------------------------------------------------------------------------------------------------- targets
@dataclass(frozen=True)
class TargetKind:
    """One kind of target as a run description holds it: how to recognize it, write it and read it back as JSON,
    and which kind of target a method must be able to show for it (``Method.targets``: class, unit, direction)."""

    name: str
    matches: Callable[[Any], bool]
    to_json: Callable[[Any], dict[str, Any]]
    from_json: Callable[[dict[str, Any]], Any]
    shows_as: str


_TARGET_KINDS: dict[str, TargetKind] = {}


def register_target_kind(kind: TargetKind, *, replace_existing: bool = False) -> TargetKind:
    """Make a target kind known to run descriptions (checked first-registered first, so register a narrower kind
    after the kinds it must not be taken for only if its ``matches`` excludes them)."""
    if kind.name in _TARGET_KINDS and not replace_existing:
        raise VitalError(f"a target kind named '{kind.name}' is already registered")
    _TARGET_KINDS[kind.name] = kind
    return kind


def target_kinds() -> list[str]:
    return list(_TARGET_KINDS)


def kind_of(target: Any) -> TargetKind:
    """The registered kind of ``target``; anything else is refused naming what a target can be."""
    for kind in _TARGET_KINDS.values():
        if kind.matches(target):
            return kind
    raise VitalError(f"cannot visualize {target!r:.80}: give a class index or name, a UnitTarget, a DirectionTarget, "
                     "an objective (vital_fv.objectives) or a concept from vital_fv.concepts.load_concepts")


def target_to_json(target: Any) -> dict[str, Any]:
    kind = kind_of(target)
    return {"kind": kind.name, **kind.to_json(target)}


def target_from_json(data: Mapping[str, Any]) -> Any:
    name = data.get("kind") if isinstance(data, Mapping) else None
    if name not in _TARGET_KINDS:
        raise VitalError(f"unknown target kind {name!r} in a run description: known kinds are "
                         f"{', '.join(_TARGET_KINDS)}")
    return _TARGET_KINDS[name].from_json({k: v for k, v in data.items() if k != "kind"})


def _is_concept(t: Any) -> bool:  # a saved concept (concepts.SavedConcept): its direction, record and crops
    return all(hasattr(t, a) for a in ("target", "record", "folder", "index")) and isinstance(t.target,
                                                                                           DirectionTarget)


def _concept_to_json(t: Any) -> dict[str, Any]:
    from .concepts import CONCEPTS_FILE

    return {"file": os.path.abspath(Path(t.folder) / CONCEPTS_FILE), "index": int(t.index)}


def _concept_from_json(d: dict[str, Any]) -> Any:
    from .concepts import load_concept

    return load_concept(f"{d['file']}:{d['index']}")


for _kind in (
    TargetKind("class", lambda t: isinstance(t, ClassTarget), lambda t: {"class": t.cls},
               lambda d: ClassTarget(d["class"]), "class"),
    TargetKind("unit", lambda t: isinstance(t, UnitTarget) and t.position is None,
               lambda t: {"layer": t.layer, "channel": t.channel}, lambda d: UnitTarget(d["layer"], int(d["channel"])),
               "unit"),
    TargetKind("neuron", lambda t: isinstance(t, UnitTarget) and t.position is not None,
               lambda t: {"layer": t.layer, "channel": t.channel, "position": list(t.position)},
               lambda d: UnitTarget(d["layer"], int(d["channel"]), tuple(int(p) for p in d["position"])), "unit"),
    TargetKind("direction", lambda t: isinstance(t, DirectionTarget),
               lambda t: {"layer": t.layer, "name": t.name, "vector": t.vector.tolist()},
               lambda d: DirectionTarget(d["layer"], torch.tensor(d["vector"], dtype=torch.float32), d["name"]),
               "direction"),
    TargetKind("concept", _is_concept, _concept_to_json, _concept_from_json, "direction"),
    # any other objective (a sum, a custom callable): last, since classes, units and directions are objectives too
    TargetKind("objective", lambda t: isinstance(t, Objective), lambda t: {"objective": t.to_json()},
               lambda d: objective_from_json(d["objective"]), "objective"),
):
    register_target_kind(_kind)


def as_target(target: Any) -> Any:
    """int / str -> ClassTarget; targets of a registered kind as they are."""
    if isinstance(target, (int, str)) and not isinstance(target, bool):  # True is not class 1
        return ClassTarget(target)
    kind_of(target)
    return target


def plain_target(target: Any) -> Any:
    """What a method sees: a saved concept's direction, any other target itself."""
    return target.target if _is_concept(target) else target


# ------------------------------------------------------------------------------------------ reference sources
# kind: (what it reads, the target kinds it serves, JSON fields)
SOURCE_KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "default": ("the bundled photo of a demo class, a saved concept's own crops", ("class", "concept")),
    "bundled": ("the bundled photo of a demo class", ("class",)),
    "folder": ("a folder of images (a `vital mine` folder for units)", ()),
    "files": ("image files", ()),
    "pool": ("an unlabelled folder, ranked by the model's probability for the class (or by the objective)",
             ("class", "objective")),
    "mine": ("a folder to mine a unit's (an objective's) top patches, a concept's top crops, from",
             ("unit", "neuron", "concept", "objective")),
    "mined": ("an atlas job's mining shards of a layer, merged", ("unit", "neuron")),
    "concept": ("a saved concept's own top crops", ("concept",)),
    "set": ("a ReferenceSet given in Python (not stored: a rerun needs the files)", ()),
}


@dataclass(frozen=True)
class ReferenceSource:
    """Where a target's references come from: a tagged source (``kind`` one of ``SOURCE_KINDS``), a path or
    files where it has them, or a ``ReferenceSet`` given in Python (kind ``set``)."""

    kind: str = "default"
    path: str | None = None
    paths: tuple[str, ...] = ()
    given: ReferenceSet | None = field(default=None, compare=False)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind}
        if self.path is not None:
            out["path"] = os.path.abspath(self.path)  # a rerun from another folder reads the same files
        if self.paths:
            out["paths"] = [os.path.abspath(p) for p in self.paths]
        if self.given is not None:
            out["label"] = self.given.label
            out["content_sha256"] = self.given.content_hash()
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ReferenceSource:
        kind = data.get("kind")
        if kind not in SOURCE_KINDS:
            raise VitalError(f"unknown reference source {kind!r} in a run description: known sources are "
                             f"{', '.join(SOURCE_KINDS)}")
        if kind == "set":
            raise VitalError(f"the references were a ReferenceSet given in Python ({data.get('label')}), which a "
                             "run description does not hold: give the same references (spec.references.source) "
                             "to rerun it")
        return cls(kind, data.get("path"), tuple(data.get("paths") or ()))

    def label(self) -> str:
        """What a person reads (the atlas ledger's ``refs`` column): ``bundled``, ``pool:DIR``, a folder, ..."""
        if self.kind == "folder":
            return str(Path(self.path or "").resolve())
        if self.kind in ("pool", "mined", "mine"):
            return f"{'images' if self.kind == 'mine' else self.kind}:{Path(self.path or '').resolve()}"
        return self.kind


@dataclass(frozen=True)
class References:
    """A run's references: the source and how a class's few images are completed and weighted (SPEC §3)."""

    source: ReferenceSource = ReferenceSource()
    n: int = 50
    augment: bool | None = None
    crops: str = DEFAULT_CROPS
    weighting: str = DEFAULT_REF_WEIGHTING
    use: str = "patches"

    def to_json(self) -> dict[str, Any]:
        return {"source": self.source.to_json(), "n": self.n, "augment": self.augment, "crops": self.crops,
                "weighting": self.weighting, "use": self.use}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> References:
        return cls(ReferenceSource.from_json(data["source"]), int(data["n"]), data.get("augment"),
                   data.get("crops", DEFAULT_CROPS), data.get("weighting", DEFAULT_REF_WEIGHTING),
                   data.get("use", "patches"))

    @classmethod
    def given(cls, refs: Any = None, *, pool: Any = None, images: Any = None, **how: Any) -> References:
        """From the API's and CLI's spelling: ``refs`` (a ReferenceSet, a folder or files), ``pool`` or ``images``
        (one of them; none: the default source). Values are kept as given: ``RunSpec.check`` judges them."""
        check_reference_source([name for name, v in (("refs", refs), ("pool", pool), ("images", images))
                                if v is not None], ())
        if isinstance(refs, ReferenceSet):
            source = ReferenceSource("set", given=refs)
        elif isinstance(refs, (str, os.PathLike)):
            path = os.fspath(refs)
            source = ReferenceSource("folder", path) if Path(path).is_dir() else ReferenceSource("files",
                                                                                                 paths=(path,))
        elif refs is not None:
            if not (isinstance(refs, Sequence) and refs and all(isinstance(r, (str, os.PathLike)) for r in refs)):
                raise VitalError(f"references must be a ReferenceSet, a folder, or a list of image files, got "
                                 f"{type(refs).__name__} {refs!r:.60}")
            paths = [os.fspath(r) for r in refs]
            one_dir = len(paths) == 1 and Path(paths[0]).is_dir()
            source = ReferenceSource("folder", paths[0]) if one_dir else ReferenceSource("files", paths=tuple(paths))
        elif pool is not None:
            source = ReferenceSource("pool", pool if not isinstance(pool, os.PathLike) else os.fspath(pool))
        elif images is not None:
            source = ReferenceSource("mine", images if not isinstance(images, os.PathLike) else os.fspath(images))
        else:
            source = ReferenceSource()
        return cls(source, **how)

    def check(self, target_kinds: Sequence[str], needs_references: bool = True) -> None:
        """The options' values, and a source that can serve every target (before anything is read)."""
        check_type("n_refs", self.n, int, "a whole number of at least 1")
        check_n_refs(self.n)
        check_type("augment", self.augment, bool, "True, False or None (the default for the source)", True)
        check_type("crops", self.crops, str, "evidence, objects or random")
        check_choice("--crops", self.crops, CROPS)
        check_type("ref_weighting", self.weighting, str, "none or evidence")
        check_choice("--ref-weighting", self.weighting, WEIGHTINGS)
        check_type("use", self.use, str, "patches or images")
        check_choice("--use", self.use, ("patches", "images"))
        src = self.source
        for name, value in (("pool", src.path if src.kind == "pool" else None),
                            ("images", src.path if src.kind in ("mine", "mined") else None)):
            check_type(name, value, str, "a folder path", True)
        kinds = set(target_kinds)
        flag = {"default": [], "pool": ["pool"], "mine": ["images"]}.get(src.kind, ["refs"])
        check_reference_source(flag, sorted(kinds), needs_references)
        if not needs_references:
            return
        serves = SOURCE_KINDS[src.kind][1]
        if serves and kinds - set(serves):
            raise VitalError(f"references from {src.kind} ({SOURCE_KINDS[src.kind][0]}) cannot serve "
                             f"{', '.join(sorted(kinds - set(serves)))} targets")


# ----------------------------------------------------------------------------------------------- the run
# RunSpec's fields that take one plain type: (kinds, what it takes, None allowed), named as the API's keywords.
_PATH = (str, os.PathLike)
_NUMBER = (int, float)
_FIELDS: dict[str, tuple[Any, str, bool]] = {
    "weights": (_PATH, "a state dict or checkpoint file path", True),
    "method": (str, "a method name (vital_fv.method_names())", False),
    "steps": (int, "a whole number of at least 1", True),
    "lr": (_NUMBER, "a positive number", True),
    "size": (int, "a whole number of pixels", True),
    "device": ((str, torch.device), "auto, cpu, cuda or cuda:N", False),
    "class_token": (bool, "True, False or None (the model's default)", True),
    "cache": ((bool, PrototypeCache), "True, False or a PrototypeCache", False),
    "cache_dir": (_PATH, "a folder path", True),
    "out": (_PATH, "a folder path", True),
    "name": (str, "a file name stem", True),
    "overwrite": (bool, "True or False", False),
    "alpha_percentile": (_NUMBER, "a number in (0, 100]", False),
    "progress": (bool, "True or False", False),
}


@dataclass(frozen=True)
class RunSpec:
    """Everything a run needs, checked once by ``check``; ``to_json`` / ``from_json`` round-trip it (a model,
    preset, layer preset or reference set given as a Python object is written by name, and refused on reading
    back where the name is not enough to make the same run)."""

    model: str | ModelSpec
    targets: tuple[Any, ...]
    references: References = References()
    method: str = "vital"
    preset: str | Preset = "paper"
    steps: int | None = None
    lr: float | None = None
    size: int | None = None
    layers: Sequence[str] | LayerPreset | None = None
    layer_weights: Sequence[float] | None = None
    class_token: bool | None = None
    options: Mapping[str, Any] = field(default_factory=dict)  # the method's own (``Method.options``)
    seeds: Sequence[int] = (0,)
    device: str | torch.device = "auto"
    weights: str | os.PathLike[str] | None = None
    cache: bool | PrototypeCache = True
    cache_dir: str | os.PathLike[str] | None = None
    out: str | os.PathLike[str] | None = None
    name: str | None = None
    overwrite: bool = False
    alpha_percentile: float = 98.0
    progress: bool = True
    # jobs optimized together: "auto" (the fastest per image, measured: ``methods.batching``), a number, or None
    # (all in one batch, as a record written before batch sizes were chosen ran)
    batch_size: int | str | None = "auto"
    # which jobs (target-major, then seed) to return and save, None: all. A record's run is its whole batch with
    # only its own job kept: jobs optimized together are not bit-for-bit those optimized alone (floating point)
    keep: tuple[int, ...] | None = None
    kept_name: str | None = None  # the file stem of the one job kept (default: the stem it had in the batch)

    # ------------------------------------------------------------------------------------------ checking
    def check(self) -> Method:
        """Every check that needs no model, before any work, each naming the option; returns the method."""
        for arg, (kinds, what, optional) in _FIELDS.items():
            check_type(arg, getattr(self, arg), kinds, what, optional)
        if not isinstance(self.preset, str) and not hasattr(self.preset, "overridden"):
            raise VitalError(f"preset must be a preset name (e.g. 'paper', 'quick') or a preset object "
                             f"(vital_fv.OPTIM_PRESETS), got {type(self.preset).__name__} {self.preset!r:.60}")
        if isinstance(self.seeds, int) and not isinstance(self.seeds, bool):
            raise VitalError(f"seeds must be a list of whole numbers: seeds=[{self.seeds}], or seed={self.seeds} "
                             "for one image")
        check_seeds(self.seeds, "seeds")
        check_batch(self.batch_size, "batch_size")
        layers = self.layers
        if not (layers is None or isinstance(layers, LayerPreset) or (
                isinstance(layers, Sequence) and not isinstance(layers, str) and all(isinstance(n, str)
                                                                                    for n in layers))):
            raise VitalError(f"layers must be a list of layer names (or a LayerPreset), got {type(layers).__name__} "
                             f"{layers!r:.60}")
        if self.layer_weights is not None:
            check_numbers("layer_weights", self.layer_weights, "a list of numbers, one per layer")
        if not isinstance(self.options, Mapping):
            raise VitalError(f"options must be a mapping of the method's own options, got "
                             f"{type(self.options).__name__}")
        m = get_method(self.method)
        get_preset(m, self.preset, self.steps, self.lr)
        check_alpha_percentile(self.alpha_percentile)
        check_layer_weights(layers if not isinstance(layers, LayerPreset) else layers.layers, self.layer_weights)
        check_size(self.size)
        resolve_device(self.device)
        if not self.targets:
            raise VitalError("nothing to visualize: give at least one target")
        kinds = [kind_of(t) for t in self.targets]
        check_kinds(m, [k.shows_as for k in kinds])
        self.references.check([k.name for k in kinds], m.needs_references)
        if not m.needs_references:
            src = self.references.source
            if src.kind != "default":
                flag = {"pool": "pool", "mine": "images", "mined": "images"}.get(src.kind, "refs")
                raise VitalError(f"{m.name} uses no references: drop --{flag}")
        check_name(self.name)
        check_name(self.kept_name)
        check_options(m, self.method_options(m), [k.shows_as for k in kinds])
        jobs = len(self.targets) * len(self.seeds)
        if self.keep is not None and (not self.keep or any(not isinstance(i, int) or not 0 <= i < jobs
                                                           for i in self.keep)):
            raise VitalError(f"keep must name jobs of the run (0..{jobs - 1}), got {self.keep!r:.60}")
        return m

    def method_options(self, m: Method) -> dict[str, Any]:
        """The options the method gets beyond the common ones: its own (``options``), the layers it matches and
        the prototype cache where it declares them (a value of None or "none" for an option the method does not
        declare is no option)."""
        own = {o.name for o in declared_options(m)}
        out = {k: v for k, v in self.options.items() if k in own or v not in (None, "none")}
        if self.layers:
            out["layers"] = self.layers
        if "cache" in own and (self.cache is not True or self.cache_dir is not None):  # the prototype cache
            out["cache"] = False if self.cache is False else (
                self.cache if self.cache is not True else PrototypeCache(self.cache_dir))
        return out

    # ------------------------------------------------------------------------------------------ one job
    def for_job(self, target: Any, seed: int, stem: str) -> RunSpec:
        """The description of one result: its target, its seed and its file stem (``name``), the default source
        made explicit (the bundled photo, a concept's crops), nothing written until asked (``out`` None)."""
        refs = self.references
        if refs.source.kind == "default" and get_method(self.method).needs_references:
            refs = replace(refs, source=ReferenceSource("concept" if _is_concept(target) else "bundled"))
        return replace(self, targets=(target,), seeds=(seed,), name=stem, references=refs, out=None,
                       overwrite=False, keep=None, kept_name=None)

    def job_json(self, index: int, stem: str) -> dict[str, Any]:
        """What a result's record keeps (``spec``): its own job's description, and where the run optimized more
        jobs together, the whole run (``batch``) and the job's place in it, which ``from_record`` runs again."""
        seeds = list(self.seeds)
        target = self.targets[index // len(seeds)]
        out = self.for_job(target, seeds[index % len(seeds)], stem).to_json()
        if len(self.targets) * len(seeds) > 1:
            whole = replace(self, out=None, overwrite=False, keep=None, kept_name=None)
            out["batch"] = {**whole.to_json(), "index": index}
        return out

    # --------------------------------------------------------------------------------------------- JSON
    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict; ``rerun`` says whether ``from_json`` can make the same run from it (and why not)."""
        why = []
        if isinstance(self.model, ModelSpec):
            model = {"name": self.model.name, "weights_sha256": self.model.weights_id}
        else:
            model = {"name": self.model}
        preset = self.preset if isinstance(self.preset, str) else getattr(self.preset, "name", "custom")
        if not isinstance(self.preset, str):
            why.append("the preset was a Python object")
        layers: Any = list(self.layers) if self.layers and not isinstance(self.layers, LayerPreset) else None
        if isinstance(self.layers, LayerPreset):
            why.append("the layers were a LayerPreset object")
        if self.references.source.kind == "set":
            why.append("the references were a ReferenceSet given in Python")
        options = {}
        paths = _path_options(self.method)
        for k, v in self.options.items():
            if isinstance(v, os.PathLike) or (k in paths and isinstance(v, str)):
                v = os.path.abspath(v)  # a rerun from another folder reads the same file
            try:
                json.dumps(v)
            except TypeError:
                why.append(f"option '{k}' is not JSON")
                continue
            options[k] = v
        return {
            "runspec": SPEC_VERSION,
            "model": {**model, "weights": os.path.abspath(self.weights) if self.weights else None},
            "targets": [target_to_json(t) for t in self.targets],
            "references": self.references.to_json(),
            "method": self.method, "preset": preset, "steps": self.steps, "lr": self.lr, "size": self.size,
            "layers": layers, "layer_weights": list(self.layer_weights) if self.layer_weights else None,
            "class_token": self.class_token, "options": options, "seeds": list(self.seeds),
            "device": str(self.device), "cache": self.cache is not False,
            "cache_dir": os.path.abspath(self.cache_dir) if self.cache_dir else None,
            "name": self.name, "alpha_percentile": self.alpha_percentile,
            "keep": list(self.keep) if self.keep is not None else None, "batch_size": self.batch_size,
            "rerun": {"possible": not why, "why": "; ".join(why)} if why else {"possible": True},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], model: ModelSpec | None = None) -> RunSpec:
        """The run ``data`` describes (``model``: the ModelSpec to use where the description names a model built
        in Python, not a zoo name)."""
        if not isinstance(data, Mapping) or "runspec" not in data:
            raise VitalError("not a run description (no 'runspec' field)")
        if int(data["runspec"]) > SPEC_VERSION:
            raise VitalError(f"the run description is of version {data['runspec']}, this vital-fv reads up to "
                             f"{SPEC_VERSION}: upgrade vital-fv")
        rerun = data.get("rerun") or {}
        if not rerun.get("possible", True):
            raise VitalError(f"this run cannot be made again from its description: {rerun.get('why')}")
        m = data["model"]
        return cls(
            model if model is not None else m["name"], tuple(target_from_json(t) for t in data["targets"]),
            References.from_json(data["references"]), method=data["method"], preset=data["preset"],
            steps=data.get("steps"), lr=data.get("lr"), size=data.get("size"),
            layers=tuple(data["layers"]) if data.get("layers") else None,
            layer_weights=tuple(data["layer_weights"]) if data.get("layer_weights") else None,
            class_token=data.get("class_token"), options=dict(data.get("options") or {}),
            seeds=tuple(data["seeds"]), device=data.get("device", "auto"),
            weights=m.get("weights") if model is None else None, cache=bool(data.get("cache", True)),
            cache_dir=data.get("cache_dir"), name=data.get("name"),
            alpha_percentile=data.get("alpha_percentile", 98.0),
            keep=tuple(data["keep"]) if data.get("keep") is not None else None,
            batch_size=data.get("batch_size"))

    @classmethod
    def batch_from_record(cls, record: str | os.PathLike[str] | Mapping[str, Any], model: ModelSpec | None = None) \
            -> tuple[list[RunSpec] | None, int]:
        """For a record of an atlas item optimized with other items (``spec.batch.items``): every item's run and
        this one's place among them; else ``(None, 0)`` (``from_record`` gives its run)."""
        data = _read_record(record)
        batch = data["spec"].get("batch")
        if not (isinstance(batch, Mapping) and "items" in batch):
            return None, 0
        return [cls.from_json(item, model) for item in batch["items"]], int(batch["index"])

    @classmethod
    def from_record(cls, record: str | os.PathLike[str] | Mapping[str, Any], model: ModelSpec | None = None) \
            -> RunSpec:
        """The run that made a result, from its record (a ``NAME.json`` path or the dict): one target, one seed,
        its file stem; refused with what to do for a record written before records kept their run."""
        where = "" if isinstance(record, Mapping) else f"{record}: "
        record = _read_record(record)
        own = record["spec"]
        batch = own.get("batch")
        if isinstance(batch, Mapping) and "items" not in batch:  # optimized with other jobs: the whole run, only
            # this job kept (an atlas item's batch is several runs: ``batch_from_record``, ``api.rerun``)
            spec = replace(cls.from_json(batch, model), keep=(int(batch["index"]),))
        else:
            spec = cls.from_json(own, model)
        if model is not None and isinstance(spec.model, ModelSpec):
            sha = own["model"].get("weights_sha256")
            if sha and model.weights_id != sha:
                raise VitalError(f"{where}the model given is not the one the record was made with (weights sha256 "
                                 f"{model.weights_id[:12]}, the record's {sha[:12]})")
        return spec


def _read_record(record: str | os.PathLike[str] | Mapping[str, Any]) -> Mapping[str, Any]:
    """A result record (a path or the dict) that holds a run description, or our error saying what to do."""
    where = ""
    if not isinstance(record, Mapping):
        where = f"{record}: "
        try:
            record = json.loads(Path(record).read_text())
        except (OSError, ValueError) as exc:
            raise VitalError(f"cannot read the record {record}: {exc}") from None
    if not isinstance(record, Mapping) or not isinstance(record.get("spec"), Mapping):
        raise VitalError(f"{where}the record holds no run description ('spec'): it was made before vital-fv "
                         "kept them, or by another tool; run the command again with its options (the record's "
                         "method, target, seed, optimizer and references say what they were)")
    return record


def _path_options(method: str) -> set[str]:
    """The options of ``method`` that take a file path (declared with ``os.PathLike`` among their types)."""
    try:
        declared = declared_options(get_method(method))
    except VitalError:  # a method no longer registered: its options are written as they are
        return set()
    return {o.name for o in declared if os.PathLike in (o.kind if isinstance(o.kind, tuple) else (o.kind,))}
