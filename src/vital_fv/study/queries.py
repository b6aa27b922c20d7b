"""The 2AFC's queries as Zimmermann et al. (2021) and the paper's appendix chose them: for each target, the most
and the least activating natural image of a scan of a whole image folder, never shown in another part.

Each image is read whole (short side resized to the model's resize size, center-cropped to its input size: the
model's own preprocessing) and scored once for every target: a class by its logit, a unit by its spatially
averaged activation (as mining scores a patch). Images of which a crop is shown elsewhere (a unit's reference
crops) are left out, and each image is the query of one target at most, so no participant sees one twice.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import VitalError


def model_input(img: torch.Tensor, preprocess: Any) -> torch.Tensor:
    """A uint8 (3, H, W) image as the model sees it, in [0, 1] (1, 3, S, S): the model's own resize and center crop,
    as every reference gets them (``ReferenceSet.prepare``)."""
    from ..references import from_tensor

    return from_tensor(img[None]).prepare(preprocess)


def parse_target(target: str) -> tuple[str, Any]:
    """``class:967`` -> ("class", 967); ``unit:act2:0`` -> ("unit", UnitTarget("act2", 0))."""
    from ..targets import UnitTarget

    kind, _, rest = target.partition(":")
    if kind == "class":
        return kind, int(rest)
    layer, _, channel = rest.rpartition(":")
    return "unit", UnitTarget(layer, int(channel))


@torch.no_grad()
def activations(spec: Any, targets: Sequence[str], paths: Sequence[Path], batch_size: int = 16
                ) -> torch.Tensor:
    """(targets, images) activations of every image in ``paths`` for every target (see the module)."""
    from ..device import frozen_on
    from ..features import capture
    from ..references import read_image
    from ..references.mining import _unit_scores

    parsed = [parse_target(t) for t in targets]
    layers = sorted({u.layer for kind, u in parsed if kind == "unit"})
    device = next(spec.module.parameters()).device
    cols = []
    with frozen_on(spec.module), capture(spec.module, layers, spec.name) as feats:
        for i in range(0, len(paths), batch_size):
            x = torch.cat([model_input(read_image(p)[0], spec.preprocess) for p in paths[i : i + batch_size]])
            logits = spec.module(spec.preprocess.normalize(x).to(device)).float().cpu()
            cols.append(torch.stack([logits[:, t] if kind == "class" else
                                     _unit_scores(feats[t.layer], t).float().cpu() for kind, t in parsed]))
    return torch.cat(cols, 1) if cols else torch.empty(len(targets), 0)


def choose_queries(acts: torch.Tensor, candidates: Sequence[int]) -> list[tuple[int, int] | None]:
    """Per target (row), the (strongest, weakest) candidate column, each column used once over all targets;
    None when fewer than two are left."""
    free = list(candidates)
    out: list[tuple[int, int] | None] = []
    for row in acts:
        if len(free) < 2:
            out.append(None)
            continue
        vals = row[free]
        strong = free[int(vals.argmax())]
        weak = free[int(vals.argmin())]
        if strong == weak:  # every candidate scores the same: no query tells them apart
            out.append(None)
            continue
        out.append((strong, weak))
        free = [c for c in free if c not in (strong, weak)]
    return out


@functools.lru_cache(maxsize=1)
def _model(name: str, device: str) -> Any:
    """The scanning model, loaded once per process (studies made one after another reuse it)."""
    from ..device import resolve_device
    from ..zoo import load_model

    spec = load_model(name)
    spec.module.to(resolve_device(device)).eval()
    return spec


def scan_queries(model: str, targets: Sequence[str], folder: str | os.PathLike[str], shown: set[str],
                 device: str = "cpu") -> dict[str, dict[str, Any]]:
    """For each target, its strongest and weakest image of ``folder`` (none of them with a sha256 in ``shown``):
    {target: {"strong": {"path", "activation", "rank"}, "weak": {...}, "images": n}}."""
    from ..references import list_images
    from ..zoo import file_sha256

    paths = list_images(folder)
    if not paths:
        raise VitalError(f"--images {folder}: no images to take the 2AFC's queries from")
    shas = [file_sha256(p) for p in paths]
    firsts = {s: i for i, s in reversed(list(enumerate(shas)))}  # the same picture twice counts once
    candidates = sorted(i for s, i in firsts.items() if s not in shown)
    acts = activations(_model(model, device), targets, paths)
    out = {}
    for t, row, pick in zip(targets, acts, choose_queries(acts, candidates), strict=True):
        if pick is None:
            continue
        order = sorted(candidates, key=lambda c: -float(row[c]))
        out[t] = {kind: {"path": str(paths[c]), "activation": float(row[c]), "rank": order.index(c)}
                  for kind, c in zip(("strong", "weak"), pick, strict=True)}
        out[t]["images"] = len(candidates)
    return out
