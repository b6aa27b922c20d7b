"""Patch scans: every patch of a folder's images with its activations at some layers (concepts, polysemantic
units), and how images are cut into patches (shared with mining)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..cache import cache_key, cache_root
from ..device import holds_model
from ..errors import VitalError
from ..features import as_channels_positions, capture
from ..options import check_positive
from .scan import TensorStore, scan_images
from .sets import ReferenceSet, crop, image_paths, read_image


def patch_boxes(h: int, w: int, patch: int, stride: int) -> list[tuple[int, int, int, int]]:
    """Patch boxes (x0, y0, x1, y1) covering an h x w image, the last row/column flush with the border."""
    def starts(n: int) -> list[int]:
        if n <= patch:
            return [0]
        s = list(range(0, n - patch + 1, stride))
        return s if s[-1] == n - patch else [*s, n - patch]

    return [(x, y, x + patch, y + patch) for y in starts(h) for x in starts(w)]


def image_patches(
    img: torch.Tensor, preprocess: Any, patch: int, stride: int, batch_size: int = 32
) -> Iterator[tuple[list[list[int]], torch.Tensor]]:
    """Cut a uint8 image into patches as mining and concept extraction see them: the image scaled so its short side
    is the model's input size, ``patch`` px squares every ``stride`` px, each resized to the input size.

    Yields (boxes in source pixels [x0, y0, x1, y1], (n, 3, S, S) patches in [0, 1]) per batch."""
    from torch.nn import functional as F

    size = preprocess.input_size
    mode = preprocess.interpolation
    corners = {"align_corners": False} if mode in ("bilinear", "bicubic") else {}
    h, w = img.shape[-2:]
    scale = size / min(h, w)
    sh, sw = max(size, round(h * scale)), max(size, round(w * scale))
    x = F.interpolate(img[None].float() / 255, size=(sh, sw), mode=mode, antialias=True, **corners)
    boxes = patch_boxes(sh, sw, patch, stride)
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i : i + batch_size]
        crops = torch.cat([x[..., y0:y1, x0:x1] for x0, y0, x1, y1 in chunk])
        crops = F.interpolate(crops, size=(size, size), mode=mode, **corners).clamp(0, 1)
        src = [[round(v / scale) for v in b] for b in chunk]
        yield [[b[0], b[1], min(w, b[2]), min(h, b[3])] for b in src], crops


@dataclass
class PatchScan:
    """Every patch of a folder's images with its spatially averaged activations at some layers.

    ``entries[i]`` = {"source", "sha256", "box"}; ``acts[layer][i]`` is patch i's (C,) mean activation vector."""

    entries: list[dict[str, Any]]
    acts: dict[str, torch.Tensor]
    params: dict[str, Any]
    cache: str = "miss"

    def __len__(self) -> int:
        return len(self.entries)

    @property
    def images(self) -> int:
        return len({e["sha256"] for e in self.entries})

    def crops(self, indices: Sequence[int]) -> list[torch.Tensor]:
        """The patches (uint8, at source resolution) of ``indices``, each source read once and checked."""
        loaded: dict[str, torch.Tensor] = {}
        out = []
        for i in indices:
            e = self.entries[i]
            if e["sha256"] not in loaded:
                img, h = read_image(e["source"])
                if h != e["sha256"]:
                    raise VitalError(f"{e['source']} changed since it was scanned: scan again")
                loaded[e["sha256"]] = img
            out.append(crop(loaded[e["sha256"]], e["box"]))
        return out

    def references(self, indices: Sequence[int], label: str, info: dict[str, Any] | None = None) -> ReferenceSet:
        """The patches of ``indices`` as a reference set (stretched to the model input, as mined patches)."""
        crops = self.crops(indices)
        hashes = [hashlib.sha256(c.numpy().tobytes()).hexdigest() for c in crops]
        return ReferenceSet(crops, [self.entries[i]["source"] for i in indices], hashes, n=len(crops), label=label,
                            fit="stretch", info={"patches": {"boxes": [self.entries[i]["box"] for i in indices],
                                                             **(info or {})}})


@holds_model
def scan_patches(
    model: Any,
    layers: Sequence[str],
    images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]],
    patch: int = 64,
    stride: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> PatchScan:
    """Cut every image (a folder, searched recursively, or files) into patches as ``mine`` does and keep each patch's
    spatially averaged activations at ``layers``.

    Each image's result is cached on its own (keyed by model, layers, patch, stride and the image's content), so an
    interrupted scan resumes where it stopped, and a second command over the same images does no forward pass.
    """
    stride = stride or patch
    check_positive("--patch", patch, 8, " px")
    check_positive("--stride", stride, 1, " px")
    paths, where = image_paths(images)
    layers = list(layers)
    parts = {"model": model.name, "weights": model.weights_id, "layers": layers, "patch": patch, "stride": stride,
             "preprocess": model.preprocess.as_dict(), "skip_tokens": model.skip_tokens}
    key = cache_key(parts)
    store = TensorStore(cache_root(cache_dir) / "patches" / key, parts,
                        required=[*(f"act/{n}" for n in layers), "boxes"])
    device = model.device

    with torch.no_grad(), capture(model.module, layers, model.name) as feats:

        def activations(batch: list[tuple[Path, str, torch.Tensor]]) -> list[dict[str, torch.Tensor]]:
            out = []
            for _, _, img in batch:
                acts: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
                boxes: list[list[int]] = []
                for chunk, crops in image_patches(img, model.preprocess, patch, stride, batch_size):
                    model.module(model.preprocess.normalize(crops).to(device))
                    for n in layers:
                        acts[n].append(as_channels_positions(feats[n], model.skip_tokens).float().mean(-1).cpu())
                    boxes += chunk
                out.append({**{f"act/{n}": torch.cat(v) for n, v in acts.items()},
                            "boxes": torch.tensor(boxes, dtype=torch.int64)})
            return out

        outcome = scan_images(paths, store, activations, desc=f"scanning patches ({', '.join(layers)})",
                              progress=progress, what="scan")
    if not outcome.entries:
        raise VitalError(f"no readable image in {where}")
    entries = [{"source": str(outcome.sources[sha]), "sha256": sha, "box": box}
               for sha, stored in outcome.entries.items() for box in stored["boxes"].tolist()]
    acts = {n: torch.cat([stored[f"act/{n}"] for stored in outcome.entries.values()]) for n in layers}
    params = {"model": model.name, "layers": layers, "images": where, "image_count": len(outcome.entries),
              "patch": patch, "stride": stride, "input_size": model.preprocess.input_size, "patches": len(entries),
              "cache_key": key}
    return PatchScan(entries, acts, params, outcome.cache)
