"""Where a run's references come from: one of a reference set, a folder or files, an unlabelled pool, a folder to
mine a unit's patches from, or the bundled photo of a demo class."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import VitalError
from ..options import (
    CROPS,
    DEFAULT_CROPS,
    DEFAULT_REF_WEIGHTING,
    WEIGHTINGS,
    check_choice,
    check_n_refs,
    check_reference_source,
)
from ..targets import ClassTarget, DirectionTarget, UnitTarget
from .evidence import evidence_crops, weight_by_evidence
from .mining import mine_checked, mined_references
from .sets import BUNDLED, ReferenceSet, bundled, from_files, from_folder, from_pool


def resolve(
    model: Any,
    target: Any,
    refs: ReferenceSet | str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | None = None,
    *,
    pool: str | os.PathLike[str] | None = None,
    images: str | os.PathLike[str] | None = None,
    n: int = 50,
    augment: bool | None = None,
    use: str = "patches",
    crops: str = DEFAULT_CROPS,
    weighting: str = DEFAULT_REF_WEIGHTING,
    device: Any = "auto",
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ReferenceSet:
    """The references of a class or unit target, from exactly one source (as ``vital visualize`` takes them).

    ``refs``: a ``ReferenceSet``, a folder (a ``vital mine`` folder is read as such) or image files; ``pool``: an
    unlabelled folder, ranked by the model's probability for the class; ``images``: a folder the unit's top patches
    are mined from (cached and resumable); none of them: the bundled photo of a demo class. ``augment`` fills
    missing references with crops: by default on for a class (a folder or files with fewer images than ``n``, the
    bundled photo), off for units and concepts; ``augment=False`` uses the images as they are. For a class,
    ``crops="evidence"`` keeps the crops the model rates most probable for it (``references.evidence``),
    ``"objects"`` makes every reference such a crop, among candidates that include crops around where a multi-scale
    scan finds the class, at the object's own size (a folder of ``n`` photos or more: each photo cropped to the
    class), ``"random"`` keeps random ones. ``weighting="evidence"`` weights each reference's positions by the
    class's evidence when the prototypes are made.
    """
    given = [name for name, v in (("refs", refs), ("pool", pool), ("images", images)) if v is not None]
    kind = ("class" if isinstance(target, ClassTarget) else "unit" if isinstance(target, UnitTarget) else
            "direction" if isinstance(target, DirectionTarget) else "objective")
    check_reference_source(given, [kind])
    check_n_refs(n)
    check_choice("--crops", crops, CROPS)
    check_choice("--ref-weighting", weighting, WEIGHTINGS)
    if augment is None:
        augment = isinstance(target, ClassTarget)
    found = _source(model, target, refs, pool, images, n, augment, use, device, progress, cache_dir)
    makes_crops = found.augment and found.count > len(found.images) and found.boxes is None
    chooses = makes_crops and crops == "evidence" or found.augment and found.boxes is None and crops == "objects"
    if isinstance(target, ClassTarget) and (chooses or weighting == "evidence"):
        index, _ = target.resolve(model.class_names, model.class_synonyms)
        if chooses:
            found = evidence_crops(found, model, index, objects=crops == "objects", device=device)
        if weighting == "evidence":
            found = weight_by_evidence(found, model, index, device=device)
    return found


def _source(model: Any, target: Any, refs: Any, pool: Any, images: Any, n: int, augment: bool | None, use: str,
            device: Any, progress: bool, cache_dir: Any) -> ReferenceSet:
    if isinstance(refs, ReferenceSet):
        return refs
    if images is not None:
        result = mine_checked(model, target, images, device=device, progress=progress, cache_dir=cache_dir)
        return mined_references(result, k=n, use=use)
    if pool is not None:
        if not isinstance(target, ClassTarget):  # an objective: the images it scores highest
            return from_pool(pool, model, target, n=n, progress=progress)
        index, _ = target.resolve(model.class_names, model.class_synonyms)
        return from_pool(pool, model, index, n=n, progress=progress)
    if refs is not None:
        paths = [Path(refs)] if isinstance(refs, (str, os.PathLike)) else [Path(r) for r in refs]
        if len(paths) == 1 and paths[0].is_dir():
            return from_folder(paths[0], n=n, augment=augment)
        return from_files(paths, n=n, augment=augment)
    if isinstance(target, ClassTarget):
        _, name = target.resolve(model.class_names, model.class_synonyms)
        if name.lower() not in BUNDLED:
            raise VitalError(f"no references for '{name}': give --refs DIR (images of the class) or --pool DIR. "
                             f"Bundled photos exist for: {', '.join(BUNDLED)}")
        return bundled(name, n=n, augment=augment)
    raise VitalError(f"a VITAL visualization of {target.label()} needs the unit's references: --images DIR (mines "
                     "them) or --refs FOLDER from `vital mine`" + ("" if isinstance(target, UnitTarget) else
                                                                   ", or --pool DIR (its top images)"))
