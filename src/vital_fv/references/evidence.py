"""Where in a reference the model's evidence for the class lies, and references chosen and weighted by it.

With one or a few photos, the augmentation's random crops keep whatever else is in the frame (a dog photographed
in front of a bicycle gives as many bicycle crops as dog crops, and the visualization copies the scene). Three
uses of the model's own evidence (Grad-CAM at the last layer with positions: no library here computes it on any
``ModelSpec`` through our hooks, so it is ours, a dozen lines):

- ``evidence_crops``: the candidates are seeded random crops of half the frame or more and, with
  ``objects=True``, crops centred where the evidence lies, down to the object's own size; the model scores each by
  its probability for the class and the best-scoring ones are kept. The record says how the crops were chosen.
- ``weight_by_evidence``: each reference's positions are weighted by the evidence when the prototypes are made
  (the paper's relevance weighting, applied on the reference side), so positions on other objects count less.
- ``evidence_maps``: the maps themselves, (N, S, S) in [0, 1].
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

import torch
import torch.nn.functional as F

from ..device import frozen_on, resolve_device
from ..features import capture
from .sets import ReferenceSet

CANDIDATES_PER_CROP = 4  # candidates scored per crop kept (measured in benchmarks/README.md, "few references")
EVIDENCE_FLOOR = 0.1  # the weight of a position without evidence, against 1 at the map's peak (weight_by_evidence)
OBJECT_SCALE = (1.0, 2.2)  # an object crop's side, in multiples of the object's extent along it
OBJECT_MIN_SIDE = 0.15  # ... and at least this fraction of the frame's side


def evidence_maps(model: Any, class_index: int, images01: torch.Tensor, *, device: Any = "auto",
                  batch_size: int = 16) -> torch.Tensor:
    """Grad-CAM maps of ``class_index`` on ``images01`` (N, 3, S, S in [0, 1]): (N, S, S), each scaled to a peak of
    1; all ones where the layer has no spatial map (token layers) or the class has no positive evidence."""
    layer = model.last_hidden_layer()
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


def _whole_views(refs: ReferenceSet, size: int) -> torch.Tensor:
    """Each original image, the whole frame stretched to size x size (the evidence is located, not judged)."""
    return torch.stack([F.interpolate(img[None].float(), size=(size, size), mode="bilinear", antialias=True)[0]
                        for img in refs.images]) / 255.0


def object_boxes(refs: ReferenceSet, maps: torch.Tensor, count: int, seed: int
                 ) -> list[tuple[int, int, int, int, int, bool]]:
    """``count`` seeded crops centred where each image's evidence lies (centres drawn in proportion to the squared
    map), each side ``OBJECT_SCALE`` times the object's extent (where the map is at least half its peak), so a
    small object gets crops of its own size instead of half the frame."""
    g = torch.Generator().manual_seed(seed + 7919)
    boxes = []
    size = maps.shape[-1]
    for k in range(max(0, count)):
        i = k % len(refs.images)
        height, width = refs.images[i].shape[-2:]
        m = maps[i]
        ys, xs = torch.nonzero(m >= 0.5, as_tuple=True)
        ext_h = (int(ys.max() - ys.min()) + 1) / size if len(ys) else 1.0
        ext_w = (int(xs.max() - xs.min()) + 1) / size if len(xs) else 1.0
        flat = (m.flatten() ** 2) + 1e-12
        c = int(torch.multinomial(flat / flat.sum(), 1, generator=g))
        cy, cx = (c // size + 0.5) / size, (c % size + 0.5) / size
        u = torch.rand(4, generator=g, dtype=torch.float64).tolist()
        scale = OBJECT_SCALE[0] + u[0] * (OBJECT_SCALE[1] - OBJECT_SCALE[0])
        aspect = math.exp((u[1] - 0.5) * math.log(16 / 9))  # 3/4 .. 4/3 around the object's own shape
        fh = min(1.0, max(OBJECT_MIN_SIDE, ext_h * scale / math.sqrt(aspect)))
        fw = min(1.0, max(OBJECT_MIN_SIDE, ext_w * scale * math.sqrt(aspect)))
        h, w = max(1, round(fh * height)), max(1, round(fw * width))
        jitter_y, jitter_x = (u[2] - 0.5) * 0.25 * h, (u[3] - 0.5) * 0.25 * w
        top = int(min(max(0, round(cy * height - h / 2 + jitter_y)), height - h))
        left = int(min(max(0, round(cx * width - w / 2 + jitter_x)), width - w))
        boxes.append((i, top, left, h, w, bool(torch.rand(1, generator=g) < 0.5)))
    return boxes


def evidence_crops(refs: ReferenceSet, model: Any, class_index: int, *, candidates: int = CANDIDATES_PER_CROP,
                   objects: bool = False, device: Any = "auto", batch_size: int = 32) -> ReferenceSet:
    """``refs`` with its augmentation crops chosen by ``model``'s probability for ``class_index``: of
    ``candidates`` × the missing count of seeded crops (random ones of half the frame or more; with ``objects``,
    half of them centred on the evidence at the object's own size), the most probable ones. Sets with no crops
    to make are returned as they are."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as TF

    extra = refs.count - len(refs.images)
    if not refs.augment or extra <= 0:
        return refs
    prep = model.preprocess
    mode, size = InterpolationMode(prep.interpolation), prep.input_size
    total = extra * max(1, candidates)
    if objects:
        maps = evidence_maps(model, class_index, _whole_views(refs, size), device=device)
        n_obj = total // 2
        pool = refs.random_boxes(total - n_obj) + object_boxes(refs, maps, n_obj, refs.seed)
    else:
        pool = refs.random_boxes(total)
    dev = resolve_device(device)
    scores: list[float] = []
    with frozen_on(model.module, dev), torch.no_grad():
        for start in range(0, len(pool), batch_size):
            batch = torch.stack([
                TF.resized_crop(refs.images[i], top, left, h, w, [size, size], interpolation=mode, antialias=True)
                for i, top, left, h, w, _ in pool[start : start + batch_size]
            ]).float() / 255.0
            logits = model.module(prep.normalize(batch.clamp(0, 1)).to(dev))
            scores += logits.float().softmax(-1)[:, class_index].cpu().tolist()
    order = sorted(range(len(pool)), key=lambda k: (-scores[k], k))[:extra]
    chosen = [pool[k] for k in order]
    kept = [scores[k] for k in order]
    n_random = len(pool) - (total // 2 if objects else 0)
    info = {**refs.info, "crops": {
        "chosen_by": "evidence", "class_index": class_index, "candidates": len(pool), "kept": len(chosen),
        "score": "model probability of the class", "kept_mean": round(sum(kept) / len(kept), 6),
        "kept_min": round(min(kept), 6), "candidates_mean": round(sum(scores) / len(scores), 6),
        "object_candidates": len(pool) - n_random, "object_kept": sum(k >= n_random for k in order),
    }}
    return replace(refs, boxes=chosen, info=info)


def weight_by_evidence(refs: ReferenceSet, model: Any, class_index: int, *, device: Any = "auto"
                       ) -> ReferenceSet:
    """``refs`` with each reference's positions weighted by the class's evidence on it (``EVIDENCE_FLOOR`` where
    there is none, 1 at the peak): ``compute_prototypes`` then averages each channel's evidence-weighted sorted
    activations, so an object beside the class in the same frame counts less."""
    images = refs.prepare(model.preprocess)
    maps = evidence_maps(model, class_index, images, device=device)
    weights = EVIDENCE_FLOOR + (1 - EVIDENCE_FLOOR) * maps
    info = {**refs.info, "weighting": {"by": "evidence (Grad-CAM)", "class_index": class_index,
                                       "layer": model.last_hidden_layer(), "floor": EVIDENCE_FLOOR,
                                       "mean": round(float(weights.mean()), 6)}}
    return replace(refs, position_weights=weights, weighting=f"evidence:{class_index}:{EVIDENCE_FLOOR}", info=info)
