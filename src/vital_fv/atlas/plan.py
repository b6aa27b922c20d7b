"""``vital atlas plan``: a whole model's targets × methods × seeds as items in a new job ledger, every option and
every target's reference source checked before the job exists."""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..concepts import CONCEPTS_FILE
from ..errors import VitalError
from ..options import (
    CROPS,
    DEFAULT_CROPS,
    DEFAULT_REF_WEIGHTING,
    WEIGHTINGS,
    check_choice,
    check_n_refs,
    check_positive,
    check_seeds,
    check_type,
)
from ..targets import ClassTarget, UnitTarget
from ..version import __version__
from .ledger import Ledger
from .mining import MINE, layer_dir, write_shards
from .selection import select_classes, select_units

IMAGES_DIR = "images"


def target_json(target: Any) -> dict[str, Any]:
    """The ledger's ``target`` column: what makes an item unique and what status shows (the worker reads the
    item's run description, ``spec``)."""
    if isinstance(target, ClassTarget):
        return {"kind": "class", "index": int(target.cls)}
    if isinstance(target, UnitTarget):
        return {"kind": "unit", "layer": target.layer, "channel": target.channel}
    return {"kind": "concept", "file": str((target.folder / CONCEPTS_FILE).resolve()), "index": target.index}


def _class_folder(root: Path, index: int, name: str) -> Path | None:
    """A class's reference folder under ``root``: named by index, by name, or by name with '_' for spaces."""
    for key in (str(index), f"{index:04d}", name, name.replace(" ", "_"), name.lower().replace(" ", "_")):
        if (root / key).is_dir():
            return root / key
    return None


def check_out(out: Path) -> None:
    """``--out``: a folder (new, or existing) that can be made and written, refused by name before anything is
    loaded: not a file, not below one, not a broken link, not in a folder this user cannot write."""
    for p in (out, *out.parents):
        if p.is_symlink() and not p.exists():
            raise VitalError(f"--out {out}: {p} is a link to nothing: give a folder for the job")
        if not p.exists():
            continue
        if not p.is_dir():
            where = "is a file" if p == out else f"is inside {p}, a file"
            raise VitalError(f"--out {out} {where}, not a folder: give a new folder (or an existing one) for the job")
        if not os.access(p, os.W_OK | os.X_OK):
            raise VitalError(f"--out {out}: cannot write in {p} (permission denied): give a folder you can write")
        return


def plan_atlas(
    model: str,
    out: str | os.PathLike[str],
    *,
    weights: str | os.PathLike[str] | None = None,
    classes: str | None = None,
    units: Sequence[str] | None = None,
    concepts: Sequence[str] | None = None,
    refs: str | os.PathLike[str] | None = None,
    pool: str | os.PathLike[str] | None = None,
    images: str | os.PathLike[str] | None = None,
    methods: Sequence[str] = ("vital",),
    preset: str = "quick",
    seeds: Sequence[int] = (0,),
    steps: int | None = None,
    lr: float | None = None,
    n_refs: int = 50,
    augment: bool | None = None,
    crops: str = DEFAULT_CROPS,
    ref_weighting: str = DEFAULT_REF_WEIGHTING,
    shard_size: int = 256,
    patch: int = 64,
    overwrite: bool = False,
    options: Mapping[str, Any] | None = None,
) -> Ledger:
    """Plan an atlas job in ``out``: ``classes`` (all | A-B | names/indices | FILE) and/or ``units``
    (LAYER:all | LAYER:A-B | LAYER:LIST) × ``methods`` × ``seeds``. VITAL's class references: ``refs`` (a folder
    with one sub-folder per class, named by index or name), ``pool`` (an unlabelled folder) or the bundled photos;
    its unit references are mined from ``images`` in one pass per layer, split into shards of ``shard_size``
    images (items of their own, run before the units by the same executors). ``options``: the methods' own
    (``Method.options``, as ``vital visualize`` takes them), each given to the methods that declare it. Every item
    holds its ``RunSpec`` (one target, one seed, its file stem), which a worker runs. Returns the new job's
    ledger."""
    from ..api import output_stems
    from ..features import layer_shapes
    from ..methods import get_method, get_preset, method_names
    from ..methods.base import check_options, method_options
    from ..references import BUNDLED
    from ..runspec import References, ReferenceSource, RunSpec, kind_of
    from ..zoo import load_model

    if not classes and not units and not concepts:
        raise VitalError("an atlas needs targets: give --classes (all, 0-99, names or a file), --units (LAYER:all) "
                         "and/or --concepts (FILE:all)")
    ms = [get_method(m) for m in dict.fromkeys(methods)]
    if not ms:
        raise VitalError("--methods is empty: give at least one, e.g. vital,fourier")
    for m in ms:
        get_preset(m, preset, steps, lr)
    options = dict(options or {})
    for key, value in options.items():
        if value is not None and not any(key in method_options(m) for m in ms):
            takers = [n for n in method_names() if key in method_options(get_method(n))]
            raise VitalError(f"option '{key}' applies to none of --methods {','.join(m.name for m in ms)}"
                             + (f" (only to {', '.join(takers)})" if takers else ""))
    seed_list = check_seeds(seeds)
    check_n_refs(n_refs)
    check_type("--augment", augment, bool, "True, False or None (on for classes with few references)", True)
    check_choice("--crops", crops, CROPS)
    check_choice("--ref-weighting", ref_weighting, WEIGHTINGS)
    check_positive("--shard-size", shard_size)
    check_positive("--patch", patch, 8, " px")
    if refs is not None and pool is not None:
        raise VitalError("give one class reference source, not --refs and --pool")
    for option, folder in (("--refs", refs), ("--pool", pool), ("--images", images)):
        if folder is not None and not Path(folder).is_dir():
            raise VitalError(f"{option} {folder} is not a folder")
    out = Path(out)
    check_out(out)
    if (out / "atlas.sqlite").exists() and not overwrite:
        raise VitalError(f"{out} already holds an atlas job: `vital atlas run {out}` continues it; pass --overwrite "
                         "to plan it anew")

    spec = load_model(model, weights)
    targets: list[Any] = []
    if classes:
        targets += select_classes(classes, spec.class_names, spec.class_synonyms)
    if units:
        shapes = dict(layer_shapes(spec.module, spec.preprocess.input_size))

        def channels_of(layer: str) -> int:
            from ..features import resolve_layers

            resolve_layers(spec.module, [layer], spec.name)  # unknown layers: our error with close matches
            if layer not in shapes:
                raise VitalError(f"layer {layer} does not run in a forward pass of {spec.name}")
            shape = shapes[layer]
            return int(shape[0] if len(shape) == 3 else shape[-1])

        targets += select_units(units, channels_of)
    for text in concepts or []:
        from ..concepts import load_concepts

        for concept in load_concepts(text):  # FILE:all or FILE:0,2: saved by `vital concepts`
            if concept.record.get("model") != spec.name:
                raise VitalError(f"--concepts {text}: extracted on {concept.record.get('model')}, not {spec.name}")
            targets.append(concept)

    kinds = {"class" if isinstance(t, ClassTarget) else "unit" if isinstance(t, UnitTarget) else "direction"
             for t in targets}
    for m in ms:
        cannot = sorted(kinds - set(m.targets))
        if cannot:
            words = {"class": "classes", "unit": "units", "direction": "concepts"}
            raise VitalError(f"--methods {m.name} cannot show {' or '.join(words[k] for k in cannot)} ({m.name} shows: "
                             f"{', '.join(m.targets)}): plan those with other --methods, in a job of their own")
    own = {m.name: {k: v for k, v in options.items() if k in method_options(m) and v is not None} for m in ms}
    for m in ms:
        check_options(m, own[m.name], sorted({kind_of(t).shows_as for t in targets}))
    uses_refs = any(m.needs_references for m in ms)
    class_refs: dict[int, ReferenceSource] = {}
    if uses_refs:
        missing = []
        for t in targets:
            if not isinstance(t, (ClassTarget, UnitTarget)):
                continue  # a concept's references are its saved top crops
            if isinstance(t, UnitTarget):
                if images is None:
                    raise VitalError(f"VITAL needs references for the units ({t.label()} ...): give --images DIR to "
                                     "mine them from, or plan only baseline --methods")
                continue
            index, name = t.resolve(spec.class_names, spec.class_synonyms)
            if refs is not None:
                folder = _class_folder(Path(refs), index, name)
                if folder is None:
                    missing.append(f"{index} {name}")
                else:
                    class_refs[index] = ReferenceSource("folder", str(folder.resolve()))
            elif pool is not None:
                class_refs[index] = ReferenceSource("pool", str(Path(pool).resolve()))
            elif name.lower() in BUNDLED:
                class_refs[index] = ReferenceSource("bundled")
            else:
                missing.append(f"{index} {name}")
        if missing:
            where = (f"no sub-folder of {refs} for" if refs is not None else "no references for")
            raise VitalError(f"{where} {len(missing)} of the classes ({', '.join(missing[:5])}"
                             f"{' ...' if len(missing) > 5 else ''}): give --refs DIR with one sub-folder per class "
                             "(named by index or name), or --pool DIR")

    items: list[dict[str, Any]] = []
    mining: dict[str, Any] = {}
    unit_layers = list(dict.fromkeys(t.layer for t in targets if isinstance(t, UnitTarget)))
    if uses_refs and unit_layers:
        from ..references import image_paths

        files, _ = image_paths(images)  # type: ignore[arg-type]
        for layer in unit_layers:
            lists = write_shards(out, layer, files, shard_size)
            mining[layer] = {"channels": [t.channel for t in targets if isinstance(t, UnitTarget) and t.layer == layer],
                             "patch": patch, "stride": None, "shards": len(lists), "images": len(files),
                             "dir": str(layer_dir(out, layer).relative_to(out))}
            items += [{"target": {"kind": "shard", "layer": layer, "index": i}, "method": MINE, "seed": 0,
                       "label": f"mine {layer} shard {i + 1}/{len(lists)}", "refs": str(lst.resolve()),
                       "stem": f"{MINE}-{layer_dir(out, layer).name}-{i:04d}"} for i, lst in enumerate(lists)]
    how = {"n": n_refs, "augment": augment, "crops": crops, "weighting": ref_weighting}
    for t in targets:
        for m in ms:
            stems = output_stems(spec, [t], seed_list, m.name)
            for seed, stem in zip(seed_list, stems, strict=True):
                if not m.needs_references:
                    source = ReferenceSource()
                elif isinstance(t, UnitTarget):
                    source = ReferenceSource("mined", str(layer_dir(out, t.layer).resolve()))
                elif isinstance(t, ClassTarget):
                    source = class_refs[int(t.cls)]
                else:
                    source = ReferenceSource("concept")
                label = ("{} {}".format(*t.resolve(spec.class_names, spec.class_synonyms)) if isinstance(t, ClassTarget)
                         else t.label() if isinstance(t, UnitTarget) else t.target.label())
                run = RunSpec(model, (t,), References(source, **how), method=m.name, preset=preset, steps=steps,
                              lr=lr, options=own[m.name], seeds=(seed,), weights=weights, name=stem)
                run.check()  # what the worker will run is sound (the checks of `vital visualize`)
                items.append({"target": target_json(t), "label": label, "method": m.name, "seed": seed,
                              "refs": source.label() if m.needs_references else None, "stem": stem,
                              "spec": run.to_json()})
    plan = {
        "vital_fv": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "model": spec.name, "weights": str(Path(weights).resolve()) if weights else None,
        "weights_sha256": spec.weights_id, "methods": [m.name for m in ms], "preset": preset, "steps": steps,
        "lr": lr, "seeds": seed_list, "n_refs": n_refs,
        "references": {"augment": augment, "crops": crops, "weighting": ref_weighting}, "options": options,
        "sources": {"refs": str(Path(refs).resolve()) if refs else None,
                    "pool": str(Path(pool).resolve()) if pool else None,
                    "images": str(Path(images).resolve()) if images else None},
        "targets": {"classes": classes, "units": list(units or []), "concepts": list(concepts or [])},
        "mining": mining,
    }
    return Ledger.create(out, plan, items, overwrite=overwrite)
