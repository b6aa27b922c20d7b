"""Crops chosen by the model's own evidence for the target, for runs with few references.

With one or a few photos, the augmentation's random crops keep whatever else is in the frame (a dog photographed
beside a bicycle gives as many bicycle crops as dog crops, and the visualization copies the scene). Here the
candidates are the same seeded random resized crops, several times as many as needed; the model scores each by
its probability for the target class, and the best-scoring ones are kept. The record lists how the crops were
chosen and their scores.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import torch

from ..device import frozen_on, resolve_device
from .sets import ReferenceSet

CANDIDATES_PER_CROP = 4  # candidates scored per crop kept (measured in benchmarks/README.md, "few references")


def evidence_crops(refs: ReferenceSet, model: Any, class_index: int, *, candidates: int = CANDIDATES_PER_CROP,
                   device: Any = "auto", batch_size: int = 32) -> ReferenceSet:
    """``refs`` with its augmentation crops chosen by ``model``'s probability for ``class_index``: of
    ``candidates`` × the missing count of seeded random crops, the most probable ones. Sets with no crops to make
    are returned as they are."""
    from torchvision.transforms import InterpolationMode
    from torchvision.transforms import functional as F

    extra = refs.count - len(refs.images)
    if not refs.augment or extra <= 0:
        return refs
    pool = refs.random_boxes(extra * max(1, candidates))
    prep = model.preprocess
    mode, size = InterpolationMode(prep.interpolation), prep.input_size
    dev = resolve_device(device)
    scores: list[float] = []
    with frozen_on(model.module, dev), torch.no_grad():
        for start in range(0, len(pool), batch_size):
            batch = torch.stack([
                F.resized_crop(refs.images[i], top, left, h, w, [size, size], interpolation=mode, antialias=True)
                for i, top, left, h, w, _ in pool[start : start + batch_size]
            ]).float() / 255.0
            logits = model.module(prep.normalize(batch.clamp(0, 1)).to(dev))
            scores += logits.float().softmax(-1)[:, class_index].cpu().tolist()
    order = sorted(range(len(pool)), key=lambda k: (-scores[k], k))[:extra]
    chosen = [pool[k] for k in order]
    kept = [scores[k] for k in order]
    info = {**refs.info, "crops": {
        "chosen_by": "evidence", "class_index": class_index, "candidates": len(pool), "kept": len(chosen),
        "score": "model probability of the class", "kept_mean": round(sum(kept) / len(kept), 6),
        "kept_min": round(min(kept), 6), "candidates_mean": round(sum(scores) / len(scores), 6),
    }}
    return replace(refs, boxes=chosen, info=info)
