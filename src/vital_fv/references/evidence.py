"""Where in a reference the model's evidence for the class lies, and references chosen and weighted by it.

With one or a few photos, the augmentation's random crops keep whatever else is in the frame (a dog photographed
in front of a bicycle gives as many bicycle crops as dog crops, and the visualization copies the scene). Three
uses of the model's own evidence:

- ``evidence_crops``: the candidates are seeded random crops of half the frame or more and, with
  ``objects=True``, crops drawn around the windows of a multi-scale scan where the model finds the class most
  probable (an object of a fifth of the frame gets crops of its own size); the model scores each candidate by its
  probability for the class and the best-scoring ones are kept. The record says how the crops were chosen.
- ``weight_by_evidence``: each reference's positions are weighted by Grad-CAM when the prototypes are made (the
  paper's relevance weighting, applied on the reference side), so positions on other objects count less.
- ``evidence_maps``: the Grad-CAM maps themselves, (N, S, S) in [0, 1] (no library here computes Grad-CAM on any
  ``ModelSpec`` through our hooks, so it is ours, a dozen lines).

Why a scan and not Grad-CAM to place the object crops: at the last spatial layer (7x7 on EfficientNet-Lite) the
map cannot find an object of a fifth of the frame inside a larger photo (benchmarks/README.md, "scenes"); the
classifier's own probability on windows of a quarter to 0.6 of the frame finds it on every bundled scene.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from ..device import frozen_on, resolve_device
from ..errors import VitalError
from ..features import capture
from .sets import ReferenceSet

CANDIDATES_PER_CROP = 4  # candidates scored per crop kept (measured in benchmarks/README.md, "few references")
EVIDENCE_FLOOR = 0.1  # the weight of a position without evidence, against 1 at the map's peak (weight_by_evidence)
OBJECT_SCALE = (0.8, 1.6)  # an object crop's side, in multiples of the scan window it is drawn around
SCAN_SIDES = (0.25, 0.4, 0.6)  # the scan's window sides, fractions of the image's shorter side (few photos)
SCAN_SIDES_EACH = (0.4, 0.6)  # ... and for a folder as large as --n-refs (a third of the cost a photo)


def evidence_maps(model: Any, class_index: int, images01: torch.Tensor, *, device: Any = "auto",
                  batch_size: int = 16, layer: str | None = None) -> torch.Tensor:
    """Grad-CAM maps of ``class_index`` on ``images01`` (N, 3, S, S in [0, 1]): (N, S, S), each scaled to a peak of
    1; all ones where the layer has no spatial map (token layers) or the class has no positive evidence. ``layer``:
    where Grad-CAM is read (default: the model's last spatial layer)."""
    layer = layer or model.last_hidden_layer()
    dev = resolve_device(device)
    size = images01.shape[-1]
    maps = []
    with frozen_on(model.module, dev), torch.enable_grad(), capture(model.module, [layer], model.name) as feats:
        for start in range(0, images01.shape[0], batch_size):
            x = model.preprocess.normalize(images01[start : start + batch_size].clamp(0, 1)).to(dev)
            x.requires_grad_(True)  # builds the graph up to the layer (the parameters are frozen)
            logits = model.module(x)
            act = feats[layer][0] if isinstance(feats[layer], (tuple, list)) else feats[layer]
            if act.dim() != 4:
                maps.append(torch.ones(x.shape[0], size, size))
                continue
            (grad,) = torch.autograd.grad(logits[:, class_index].sum(), act)
            cam = (grad.mean((2, 3), keepdim=True) * act).sum(1, keepdim=True).relu().detach().float()
            cam = F.interpolate(cam, size=(size, size), mode="bilinear", align_corners=False)[:, 0].cpu()
            peak = cam.flatten(1).amax(1).view(-1, 1, 1)
            maps.append(torch.where(peak > 0, cam / peak.clamp(min=1e-12), torch.ones_like(cam)))
    return torch.cat(maps)


def _score(refs: ReferenceSet, boxes: list, model: Any, class_index: int, device: Any, batch_size: int
           ) -> list[float]:
    """The model's probability for ``class_index`` on each box of ``refs`` resized to its input."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    prep = model.preprocess
    mode, size = InterpolationMode(prep.interpolation), prep.input_size
    dev = resolve_device(device)
    scores: list[float] = []
    with frozen_on(model.module, dev), torch.no_grad():
        for start in range(0, len(boxes), batch_size):
            batch = torch.stack([
                TF.resized_crop(refs.images[b[0]], b[1], b[2], b[3], b[4], [size, size], interpolation=mode,
                                antialias=True)
                for b in boxes[start : start + batch_size]
            ]).float() / 255.0
            logits = model.module(prep.normalize(batch.clamp(0, 1)).to(dev))
            scores += logits.float().softmax(-1)[:, class_index].cpu().tolist()
    return scores


def scan_windows(refs: ReferenceSet, sides: tuple[float, ...] = SCAN_SIDES) -> list[tuple[int, int, int, int, int]]:
    """Square windows over every image, ``sides`` of its shorter side, half a window apart (the last one
    flush with the edge): the scan that finds where a small object is."""
    out = []
    for i, img in enumerate(refs.images):
        height, width = img.shape[-2:]
        for frac in sides:
            side = max(1, round(frac * min(height, width)))
            step = max(1, side // 2)
            tops = sorted({*range(0, height - side + 1, step), height - side})
            lefts = sorted({*range(0, width - side + 1, step), width - side})
            out += [(i, t, left, side, side) for t in tops for left in lefts]
    return out


def object_boxes(refs: ReferenceSet, windows: list[tuple[int, int, int, int, int]], scores: list[float],
                 count: int, seed: int) -> list[tuple[int, int, int, int, int, bool]]:
    """``count`` seeded crops around the scan's windows, drawn in proportion to the squared class probability
    (so the best windows give most crops), each ``OBJECT_SCALE`` times its window's side with its own aspect and
    shift: a small object gets crops of its own size instead of half the frame."""
    g = torch.Generator().manual_seed(seed + 7919)
    weights = torch.tensor(scores, dtype=torch.float64) ** 2 + 1e-12
    boxes = []
    for _ in range(max(0, count)):
        i, t, left, side, _ = windows[int(torch.multinomial(weights / weights.sum(), 1, generator=g))]
        height, width = refs.images[i].shape[-2:]
        u = torch.rand(5, generator=g, dtype=torch.float64).tolist()
        scale = OBJECT_SCALE[0] + u[0] * (OBJECT_SCALE[1] - OBJECT_SCALE[0])
        aspect = math.exp((u[1] - 0.5) * math.log(16 / 9))  # 3/4 .. 4/3
        h = max(1, min(height, round(side * scale / math.sqrt(aspect))))
        w = max(1, min(width, round(side * scale * math.sqrt(aspect))))
        cy = t + side / 2 + (u[2] - 0.5) * 0.3 * side
        cx = left + side / 2 + (u[3] - 0.5) * 0.3 * side
        top = int(min(max(0, round(cy - h / 2)), height - h))
        lft = int(min(max(0, round(cx - w / 2)), width - w))
        boxes.append((i, top, lft, h, w, u[4] < 0.5))
    return boxes


def evidence_crops(refs: ReferenceSet, model: Any, class_index: int, *, candidates: int = CANDIDATES_PER_CROP,
                   objects: bool = False, device: Any = "auto", batch_size: int = 32) -> ReferenceSet:
    """``refs`` with its augmentation crops chosen by ``model``'s probability for ``class_index``: of
    ``candidates`` × the missing count of seeded random crops (half the frame or more), the most probable ones.
    Sets with no crops to make are returned as they are.

    ``objects``: every reference becomes a chosen crop, the originals are not used whole (their frames hold the
    other objects): the candidates add each whole frame and crops drawn around the windows of a multi-scale scan
    where the class is most probable, at the object's own size. A set with as many photos as ``n`` gets each photo
    cropped to its most probable candidate."""
    if not refs.augment or (refs.count <= len(refs.images) and not objects):
        return refs
    if not objects:
        return _most_probable(refs, refs.random_boxes((refs.count - len(refs.images)) * max(1, candidates)),
                              model, class_index, refs.count - len(refs.images), device, batch_size, {})
    windows = scan_windows(refs, SCAN_SIDES if refs.count > len(refs.images) else SCAN_SIDES_EACH)
    window_scores = _score(refs, windows, model, class_index, device, batch_size)
    best = max(range(len(windows)), key=lambda k: (window_scores[k], -k))
    scan = {"scan_windows": len(windows), "scan_best": list(windows[best]),
            "scan_best_score": round(window_scores[best], 6)}
    frames = [(i, 0, 0, *img.shape[-2:], False) for i, img in enumerate(refs.images)]
    if refs.count > len(refs.images):  # few photos: the most probable of many crops over all of them
        total = refs.count * max(1, candidates)
        around = object_boxes(refs, windows, window_scores, total // 2, refs.seed)
        return _most_probable(refs, refs.random_boxes(total - total // 2 - len(frames)) + frames + around,
                              model, class_index, refs.count, device, batch_size, scan, len(around))
    # as many photos as references: each photo's own most probable crop (the whole frame among its candidates),
    # all candidates scored in one pass
    pools = []
    for i in range(len(refs.images)):
        mine = [k for k, w in enumerate(windows) if w[0] == i]
        pools.append([frames[i], *object_boxes(refs, [windows[k] for k in mine], [window_scores[k] for k in mine],
                                               max(1, candidates), refs.seed + i)])
    flat = [b for pool in pools for b in pool]
    scores = _score(refs, flat, model, class_index, device, batch_size)
    chosen, kept, n_around, start = [], [], 0, 0
    for pool in pools:
        mine = scores[start : start + len(pool)]
        k = max(range(len(pool)), key=lambda j: (mine[j], -j))
        chosen.append(pool[k])
        kept.append(mine[k])
        n_around += k > 0
        start += len(pool)
    info = _crops_info(class_index, len(flat), kept, scores, len(flat) - len(pools), n_around, scan)
    return replace(refs, boxes=chosen, whole=False, info={**refs.info, "crops": info})


def _crops_info(class_index: int, candidates: int, kept: list[float], scores: list[float], object_candidates: int,
                object_kept: int, scan: dict[str, Any]) -> dict[str, Any]:
    """What the record says about how the crops were chosen."""
    return {"chosen_by": "evidence", "class_index": class_index, "candidates": candidates, "kept": len(kept),
            "score": "model probability of the class", "kept_mean": round(sum(kept) / len(kept), 6),
            "kept_min": round(min(kept), 6), "candidates_mean": round(sum(scores) / len(scores), 6),
            "object_candidates": object_candidates, "object_kept": object_kept, **scan}


def _most_probable(refs: ReferenceSet, pool: list, model: Any, class_index: int, keep: int, device: Any,
                   batch_size: int, scan: dict[str, Any], n_around: int = 0) -> ReferenceSet:
    """``refs`` with the ``keep`` most probable boxes of ``pool`` (the last ``n_around`` drawn around the scan's
    windows); with a scan, the boxes are every reference (``whole`` off)."""
    scores = _score(refs, pool, model, class_index, device, batch_size)
    order = sorted(range(len(pool)), key=lambda k: (-scores[k], k))[:keep]
    info = _crops_info(class_index, len(pool), [scores[k] for k in order], scores, n_around,
                       sum(k >= len(pool) - n_around for k in order), scan)
    return replace(refs, boxes=[pool[k] for k in order], info={**refs.info, "crops": info}, whole=not scan)


def weight_by_evidence(refs: ReferenceSet, model: Any, class_index: int, *, device: Any = "auto"
                       ) -> ReferenceSet:
    """``refs`` with each reference's positions weighted by the class's evidence on it (``EVIDENCE_FLOOR`` where
    there is none, 1 at the peak): ``compute_prototypes`` then averages each channel's evidence-weighted sorted
    activations, so an object beside the class in the same frame counts less."""
    try:
        layer = model.last_hidden_layer()
    except VitalError as e:  # no layer with positions (a model of pooled features): nothing to weight by
        return replace(refs, info={**refs.info, "weighting": {"by": "none", "why": str(e)}})
    images = refs.prepare(model.preprocess)
    maps = evidence_maps(model, class_index, images, device=device)
    weights = EVIDENCE_FLOOR + (1 - EVIDENCE_FLOOR) * maps
    info = {**refs.info, "weighting": {"by": "evidence (Grad-CAM)", "class_index": class_index,
                                       "layer": layer, "floor": EVIDENCE_FLOOR,
                                       "mean": round(float(weights.mean()), 6)}}
    return replace(refs, position_weights=weights, weighting=f"evidence:{class_index}:{EVIDENCE_FLOOR}", info=info)
