"""Reference images: the real images whose feature distributions a visualization must match.

A ``ReferenceSet`` keeps the images at their own size; each model applies its own preprocessing (resize, center
crop) when the set is used, so one set serves any model.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import random
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import VitalError, close_matches

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class ReferenceSet:
    """Images (uint8, 3 x H x W, native size) with where they came from and how many the run should use.

    When ``augment`` is set and the set holds fewer images than ``n``, random resized crops and flips of the
    images (seeded) make up the difference; the record says so.
    """

    images: list[torch.Tensor]
    sources: list[str]
    hashes: list[str]
    n: int
    augment: bool = False
    seed: int = 0
    label: str = ""
    crop_scale: tuple[float, float] = (0.5, 1.0)
    info: dict[str, Any] = field(default_factory=dict)
    fit: str = "crop"  # "crop": the model's resize + center crop; "stretch": straight to the input size (patches)

    def __post_init__(self) -> None:
        if not self.images:
            raise VitalError(f"reference set {self.label or ''} is empty: give at least one readable image")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def count(self) -> int:
        """How many reference images the run uses (originals plus any augmented crops)."""
        return max(self.n, len(self.images)) if self.augment else len(self.images)

    def content_hash(self) -> str:
        parts = [self.hashes, self.count, self.augment, self.seed, list(self.crop_scale)]
        if self.fit != "crop":
            parts.append(self.fit)
        blob = json.dumps(parts).encode()
        return hashlib.sha256(blob).hexdigest()

    def prepare(self, preprocess: Any) -> torch.Tensor:
        """(count, 3, S, S) float images in [0, 1], with the model's resize and center crop."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        mode = InterpolationMode(preprocess.interpolation)
        size = preprocess.input_size
        out = []
        for img in self.images:
            if self.fit == "stretch":
                out.append(F.resize(img, [size, size], interpolation=mode, antialias=True))
                continue
            x = F.resize(img, [preprocess.resize_size], interpolation=mode, antialias=True)
            out.append(F.center_crop(x, [size, size]))
        extra = self.count - len(self.images)
        if extra > 0:
            from torchvision.transforms import RandomResizedCrop

            g = torch.Generator().manual_seed(self.seed)
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                for k in range(extra):
                    img = self.images[k % len(self.images)]
                    top, left, h, w = RandomResizedCrop.get_params(img, scale=self.crop_scale, ratio=(3 / 4, 4 / 3))
                    x = F.resized_crop(img, top, left, h, w, [size, size], interpolation=mode, antialias=True)
                    if torch.rand((), generator=g) < 0.5:
                        x = x.flip(-1)
                    out.append(x)
        return (torch.stack(out).float() / 255.0).clamp(0, 1)

    def describe(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "sources": self.sources,
            "sha256": self.hashes,
            "originals": len(self.images),
            "count": self.count,
            "augmented": self.augment and self.count > len(self.images),
            "augment_seed": self.seed,
            "crop_scale": list(self.crop_scale),
            "content_hash": self.content_hash(),
            "fit": self.fit,
            **self.info,
        }


def _to_uint8_chw(img: Image.Image) -> torch.Tensor:
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def read_image(path: str | os.PathLike[str]) -> tuple[torch.Tensor, str]:
    """Decode one image file to uint8 (3, H, W) and the sha256 of its bytes; VitalError names unreadable files."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise VitalError(f"cannot read image {p}: {exc}") from None
    return decode_image(data, p), hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, name: str | os.PathLike[str]) -> torch.Tensor:
    """Decode image bytes already read (``name`` for the error) to uint8 (3, H, W)."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return _to_uint8_chw(im)
    except (OSError, UnidentifiedImageError, ValueError) as exc:
        raise VitalError(f"cannot read image {name}: {exc}") from None


def list_images(folder: str | os.PathLike[str]) -> list[Path]:
    root = Path(folder)
    if not root.is_dir():
        raise VitalError(f"reference folder {root} does not exist or is not a folder")
    return sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))


def image_paths(images: str | os.PathLike[str] | Sequence[str | os.PathLike[str]]) -> tuple[list[Path], str]:
    """The image files of a folder (searched recursively) or of a list of files, and how to name them in messages;
    an error when there are none."""
    if isinstance(images, (str, os.PathLike)):
        paths, where = [p for p in list_images(images) if p.suffix.lower() in IMAGE_SUFFIXES], str(images)
    else:
        paths = [Path(p) for p in images]
        where = f"{len(paths)} files"
    if not paths:
        raise VitalError(f"image folder {where} holds no image files (JPEG/PNG/...)")
    return paths, where


def _load_many(paths: Sequence[Path], label: str) -> tuple[list[torch.Tensor], list[str], list[str]]:
    images, sources, hashes = [], [], []
    for p in paths:
        try:
            img, h = read_image(p)
        except VitalError as exc:
            warnings.warn(f"skipping {p}: {exc}", stacklevel=3)
            continue
        images.append(img)
        sources.append(str(p))
        hashes.append(h)
    if not images:
        raise VitalError(f"no readable images in {label}: give a folder or files with JPEG/PNG images")
    return images, sources, hashes


def from_files(
    files: Sequence[str | os.PathLike[str]], n: int | None = None, augment: bool = False, seed: int = 0
) -> ReferenceSet:
    """References from explicit files (unreadable ones are skipped with a warning naming them)."""
    paths = [Path(f) for f in files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise VitalError(f"reference files not found: {', '.join(missing[:5])}")
    images, sources, hashes = _load_many(paths, "the given files")
    return ReferenceSet(images, sources, hashes, n=n or len(images), augment=augment, seed=seed, label="files")


def from_folder(
    folder: str | os.PathLike[str], n: int = 50, augment: bool = False, seed: int = 0
) -> ReferenceSet:
    """Up to ``n`` images of a folder (searched recursively), a seeded random sample when it holds more.

    The authors draw N random images of the class; the seed makes the draw repeatable and is recorded.
    """
    if (Path(folder) / MINING_RECORD).is_file():
        return from_mining(folder)
    paths = list_images(folder)
    paths = [p for p in paths if p.suffix.lower() in IMAGE_SUFFIXES] or paths
    if not paths:
        raise VitalError(f"reference folder {folder} holds no files")
    # Sample more than n so skipped (corrupt) files still leave n images where the folder has them.
    order = list(range(len(paths)))
    random.Random(seed).shuffle(order)
    images, sources, hashes = [], [], []
    for i in order:
        if len(images) >= n:
            break
        try:
            img, h = read_image(paths[i])
        except VitalError as exc:
            warnings.warn(f"skipping {paths[i]}: {exc}", stacklevel=2)
            continue
        images.append(img)
        sources.append(str(paths[i]))
        hashes.append(h)
    if not images:
        raise VitalError(f"no readable images in {folder}: give a folder with JPEG/PNG images")
    return ReferenceSet(images, sources, hashes, n=n, augment=augment, seed=seed, label=str(folder))


def from_tensor(images: torch.Tensor, n: int | None = None, augment: bool = False, seed: int = 0) -> ReferenceSet:
    """References from a tensor (N, 3, H, W): uint8, or float in [0, 1]."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise VitalError(f"reference tensor must be (N, 3, H, W), got {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        images = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
    imgs = [im.cpu().contiguous() for im in images]
    hashes = [hashlib.sha256(im.numpy().tobytes()).hexdigest() for im in imgs]
    sources = [f"tensor[{i}]" for i in range(len(imgs))]
    return ReferenceSet(imgs, sources, hashes, n=n or len(imgs), augment=augment, seed=seed, label="tensor")


# Photos that ship inside scikit-image and scikit-learn, each a real example of one ImageNet class that
# EfficientNet-Lite0 classifies correctly: the offline demo classes.
BUNDLED: dict[str, tuple[str, str]] = {
    "espresso": ("skimage", "coffee"),
    "tripod": ("skimage", "camera"),
    "missile": ("skimage", "rocket"),
    "palace": ("sklearn", "china.jpg"),
    "moped": ("skimage", "stereo_motorcycle"),
}
# Not bundled, though the photos ship: skimage's chelsea is as much 'Egyptian cat' as 'tiger cat' to both Lite0
# and Lite2, and sklearn's flower.jpg is 'daisy' to Lite0 only (Lite2: honeycomb).


# Every natural photo that ships with scikit-image and scikit-learn (the offline default spectrum is made from them).
OFFLINE_PHOTOS: tuple[tuple[str, str], ...] = (
    ("skimage", "astronaut"), ("skimage", "camera"), ("skimage", "chelsea"), ("skimage", "coffee"),
    ("skimage", "rocket"), ("skimage", "stereo_motorcycle"), ("skimage", "brick"), ("skimage", "grass"),
    ("skimage", "gravel"), ("skimage", "coins"), ("skimage", "moon"), ("skimage", "clock"),
    ("sklearn", "china.jpg"), ("sklearn", "flower.jpg"),
)


def offline_photos() -> list[torch.Tensor]:
    """The photos of ``OFFLINE_PHOTOS`` as uint8 (3, H, W) tensors."""
    return [_bundled_photo(kind, name)[0] for kind, name in OFFLINE_PHOTOS]


def bundled_classes() -> list[str]:
    return list(BUNDLED)


def _bundled_photo(kind: str, name: str) -> tuple[torch.Tensor, str]:
    if kind == "skimage":
        import skimage.data

        arr = getattr(skimage.data, name)()
        if isinstance(arr, tuple):  # stereo pairs: the left image
            arr = arr[0]
        arr = np.asarray(arr)
        source = f"skimage.data.{name}"
    else:
        from sklearn.datasets import load_sample_image

        arr = np.asarray(load_sample_image(name))
        source = f"sklearn.datasets.load_sample_image('{name}')"
    if arr.ndim == 2:
        arr = np.stack([arr] * 3, axis=-1)
    img = torch.from_numpy(np.array(arr[..., :3], dtype=np.uint8, copy=True)).permute(2, 0, 1).contiguous()
    return img, source


def bundled(name: str, n: int = 50, augment: bool = True, seed: int = 0) -> ReferenceSet:
    """The bundled photo of a demo class, made up to ``n`` references with augmented crops by default."""
    key = name.lower().strip()
    if key not in BUNDLED:
        near = close_matches(key, BUNDLED)
        hint = f" Close: {', '.join(near)}." if near else ""
        raise VitalError(
            f"no bundled photo for '{name}'.{hint} Bundled demo classes: {', '.join(BUNDLED)}; "
            "for other classes give --refs DIR or --pool DIR."
        )
    img, source = _bundled_photo(*BUNDLED[key])
    digest = hashlib.sha256(img.numpy().tobytes()).hexdigest()
    return ReferenceSet([img], [source], [digest], n=n, augment=augment, seed=seed, label=f"bundled:{key}")


@torch.no_grad()
def from_pool(
    folder: str | os.PathLike[str],
    model: Any,
    class_index: int,
    n: int = 50,
    batch_size: int = 32,
    progress: bool = True,
) -> ReferenceSet:
    """Class references from an unlabelled folder: the ``n`` images the model itself rates most probable."""
    from tqdm.auto import tqdm

    paths = [p for p in list_images(folder) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise VitalError(f"pool folder {folder} holds no image files")
    scored: list[tuple[float, Path, torch.Tensor, str]] = []
    device = model.device
    for start in tqdm(range(0, len(paths), batch_size), desc="scoring pool", disable=not progress, unit="batch"):
        chunk = paths[start : start + batch_size]
        images, sources, hashes = [], [], []
        for p in chunk:
            try:
                img, h = read_image(p)
            except VitalError as exc:
                warnings.warn(f"skipping {p}: {exc}", stacklevel=2)
                continue
            images.append(img)
            sources.append(p)
            hashes.append(h)
        if not images:
            continue
        batch = ReferenceSet(images, [str(s) for s in sources], hashes, n=len(images)).prepare(model.preprocess)
        probs = model.module(model.preprocess.normalize(batch.to(device))).softmax(-1)[:, class_index]
        for prob, p, img, h in zip(probs.tolist(), sources, images, hashes, strict=True):
            scored.append((prob, p, img, h))
    if not scored:
        raise VitalError(f"no readable images in pool folder {folder}")
    scored.sort(key=lambda t: -t[0])
    top = scored[:n]
    return ReferenceSet(
        [t[2] for t in top],
        [str(t[1]) for t in top],
        [t[3] for t in top],
        n=n,
        label=f"pool:{folder}",
        info={"pool_scores": [round(t[0], 6) for t in top], "pool_size": len(scored)},
    )


# --- mining references for a unit (SPEC §4) -------------------------------------------------------------------

MINING_RECORD = "mining.json"


@dataclass
class MiningResult:
    """The best patch of each scanned image for a unit, ranked; ``top(k)`` are the references."""

    entries: list[dict[str, Any]]  # per image: source, sha256, score, box (x0, y0, x1, y1 in source pixels)
    params: dict[str, Any]
    key: str
    cache: str = "miss"

    def top(self, k: int) -> list[dict[str, Any]]:
        return sorted(self.entries, key=lambda e: -e["score"])[:k]


def _unit_scores(act: torch.Tensor, unit: Any) -> torch.Tensor:
    """(B,) unit values of a batch of layer outputs: channel mean, or the neuron (conv maps or tokens)."""
    if isinstance(act, (tuple, list)):
        act = act[0]
    if act.dim() == 4:
        return act[:, unit.channel, unit.position[0], unit.position[1]] if unit.position else \
            act[:, unit.channel].flatten(1).mean(1)
    if act.dim() == 3:
        return act[:, unit.position[0], unit.channel] if unit.position else act[:, :, unit.channel].mean(1)
    raise VitalError(f"unit {unit.label()}: cannot score a layer output of shape {tuple(act.shape)}")


def _patch_boxes(h: int, w: int, patch: int, stride: int) -> list[tuple[int, int, int, int]]:
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
    boxes = _patch_boxes(sh, sw, patch, stride)
    for i in range(0, len(boxes), batch_size):
        chunk = boxes[i : i + batch_size]
        crops = torch.cat([x[..., y0:y1, x0:x1] for x0, y0, x1, y1 in chunk])
        crops = F.interpolate(crops, size=(size, size), mode=mode, **corners).clamp(0, 1)
        src = [[round(v / scale) for v in b] for b in chunk]
        yield [[b[0], b[1], min(w, b[2]), min(h, b[3])] for b in src], crops


def mining_key(model: Any, unit: Any, hashes: Sequence[str], patch: int, stride: int) -> str:
    parts = {"model": model.name, "weights": model.weights_id, "unit": unit.label(), "files": sorted(hashes),
             "patch": patch, "stride": stride, "preprocess": model.preprocess.as_dict()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:32]


def _write_json_atomic(path: Path, obj: Any) -> None:
    from .result import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(obj, indent=1).encode())


def mine(
    model: Any,
    unit: Any,
    folder: str | os.PathLike[str],
    patch: int = 64,
    stride: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> MiningResult:
    """Score every patch of every image in ``folder`` by ``unit`` and keep each image's best patch.

    Images are scaled so their short side is the model's input size; patches of ``patch`` px (at that scale),
    every ``stride`` px (default half a patch), are each resized to the input size and scored by the unit's
    spatially averaged activation (or the neuron's value). The scan is saved as it goes, keyed by (model, unit,
    folder content, patch, stride), so an interrupted scan resumes where it stopped and a finished one is reused.
    """
    return mine_many(model, [unit], folder, patch, stride, batch_size, progress, cache_dir)[0]


@torch.no_grad()
def mine_many(
    model: Any,
    units: Sequence[Any],
    folder: str | os.PathLike[str],
    patch: int = 64,
    stride: int | None = None,
    batch_size: int = 32,
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> list[MiningResult]:
    """``mine`` for several units of one layer in a single scan (one forward per patch batch for all)."""
    from tqdm.auto import tqdm

    from .features import capture
    from .matching import default_cache_dir

    if not units or len({u.layer for u in units}) != 1:
        raise VitalError("mine units of one layer at a time")
    layer = units[0].layer
    stride = stride or max(1, patch // 2)
    if patch < 8 or stride < 1:
        raise VitalError("--patch must be at least 8 px and --stride at least 1 px")
    paths, _ = image_paths(folder)
    hashes = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in paths}
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    keys = [mining_key(model, u, list(hashes.values()), patch, stride) for u in units]
    states = []
    for key in keys:
        state: dict[str, Any] = {"complete": False, "entries": {}}
        path = root / "mining" / f"{key}.json"
        if path.is_file():
            with contextlib.suppress(OSError, ValueError):  # a damaged scan is redone
                state = json.loads(path.read_text())
        states.append(state)
    params = [{"model": model.name, "unit": u.label(), "folder": str(folder), "patch": patch, "stride": stride,
               "images": len(paths), "input_size": model.preprocess.input_size} for u in units]
    resumed = [len(st["entries"]) > 0 and not st.get("complete") for st in states]
    todo = [p for p in paths if any(hashes[p] not in st["entries"] for st in states)]

    def save(complete: bool) -> None:
        for key, st, par in zip(keys, states, params, strict=True):
            _write_json_atomic(root / "mining" / f"{key}.json",
                               {"complete": complete, "entries": st["entries"], "params": par})

    device = next(iter(model.module.parameters())).device
    label = units[0].label() if len(units) == 1 else f"{len(units)} units of {layer}"
    bar = tqdm(todo, desc=f"mining {label}", disable=not progress, unit="img")
    try:
        with capture(model.module, [layer], model.name) as feats:
            for p in bar:
                try:
                    img, _ = read_image(p)
                except VitalError as exc:
                    warnings.warn(f"skipping {p}: {exc}", stacklevel=2)
                    for st in states:
                        st["entries"][hashes[p]] = {"source": str(p), "sha256": hashes[p], "score": None,
                                                    "box": None}
                    continue
                scores = []
                boxes = []
                for chunk, crops in image_patches(img, model.preprocess, patch, stride, batch_size):
                    model.module(model.preprocess.normalize(crops).to(device))
                    scores.append(torch.stack([_unit_scores(feats[layer], u).float().cpu() for u in units], 1))
                    boxes += chunk
                per_unit = torch.cat(scores)  # (patches, units)
                best = per_unit.argmax(0)
                for k, st in enumerate(states):
                    j = int(best[k])
                    st["entries"][hashes[p]] = {"source": str(p), "sha256": hashes[p],
                                                "score": float(per_unit[j, k]), "box": boxes[j]}
                save(complete=False)
    except KeyboardInterrupt:
        save(complete=False)
        n = min(len(st["entries"]) for st in states)
        raise MiningInterrupted(
            f"mining interrupted after {n} of {len(paths)} images; the scan is saved — run the same command "
            "again to resume"
        ) from None
    finally:
        bar.close()
    # Files are identified by content: a scan cached from the same images elsewhere points at this folder's files.
    where = {h: str(p) for p, h in hashes.items()}
    for st in states:
        for h, e in st["entries"].items():
            e["source"] = where.get(h, e["source"])
    save(complete=True)
    cache = "hit" if not todo else None
    return [MiningResult([e for e in st["entries"].values() if e["box"] is not None], par, key,
                         cache=cache or ("resumed" if res else "miss"))
            for st, par, key, res in zip(states, params, keys, resumed, strict=True)]


class MiningInterrupted(VitalError):
    """Ctrl-C during a scan: what was scanned is saved and the next run resumes."""


def crop(img: torch.Tensor, box: Sequence[int]) -> torch.Tensor:
    """The (x0, y0, x1, y1) box of a (3, H, W) image, as its own contiguous tensor."""
    x0, y0, x1, y1 = box
    return img[:, y0:y1, x0:x1].contiguous()


def mined_references(result: MiningResult, k: int = 50, use: str = "patches") -> ReferenceSet:
    """The top-``k`` patches (from distinct images) as references, or their full source images (``use="images"``,
    as the authors' code does)."""
    if use not in ("patches", "images"):
        raise VitalError(f"unknown reference kind '{use}': choose patches or images")
    top = result.top(k)
    if not top:
        raise VitalError("mining found no readable image")
    if len(top) < k:
        warnings.warn(f"only {len(top)} distinct images were scanned: using {len(top)} references, not {k}",
                      stacklevel=2)
    images, sources, hashes = [], [], []
    for e in top:
        img, h = read_image(e["source"])
        if h != e["sha256"]:
            raise VitalError(f"{e['source']} changed since it was mined: mine again")
        images.append(crop(img, e["box"]) if use == "patches" else img)
        sources.append(e["source"])
        hashes.append(h if use == "images" else hashlib.sha256(images[-1].numpy().tobytes()).hexdigest())
    return ReferenceSet(images, sources, hashes, n=len(images), label=f"mined:{result.params['unit']}",
                        fit="stretch" if use == "patches" else "crop",
                        info={"mining": {**result.params, "k": k, "use": use, "key": result.key,
                                         "scores": [round(e["score"], 6) for e in top],
                                         "boxes": [e["box"] for e in top]}})


def contact_sheet(images: Sequence[torch.Tensor], captions: Sequence[str], tile: int = 112, cols: int = 10) -> \
        Image.Image:
    """A grid of images (uint8 3 x H x W), each resized to ``tile`` px with its caption underneath."""
    from PIL import ImageDraw

    cols = max(1, min(cols, len(images)))
    rows = (len(images) + cols - 1) // cols
    pad = 14
    sheet = Image.new("RGB", (cols * tile, rows * (tile + pad)), "white")
    draw = ImageDraw.Draw(sheet)
    for i, (img, cap) in enumerate(zip(images, captions, strict=True)):
        im = Image.fromarray(img.permute(1, 2, 0).numpy()).resize((tile, tile), Image.BILINEAR)
        x, y = (i % cols) * tile, (i // cols) * (tile + pad)
        sheet.paste(im, (x, y))
        draw.text((x + 2, y + tile + 1), cap[: tile // 6], fill="black")
    return sheet


def save_mining(result: MiningResult, refs: ReferenceSet, out: str | os.PathLike[str], use: str,
                overwrite: bool = False) -> Path:
    """Write the patches, a contact sheet with scores, and ``mining.json`` (source and box of each) to ``out``."""
    from .result import atomic_write_bytes, png_bytes, refuse_overwrite

    out = Path(out)
    record_path = out / MINING_RECORD
    refuse_overwrite([record_path, out / "contact_sheet.png"], overwrite)
    out.mkdir(parents=True, exist_ok=True)
    info = refs.info["mining"]
    entries = []
    patches = []
    for rank, (src, score, box) in enumerate(zip(refs.sources, info["scores"], info["boxes"], strict=True), 1):
        img, _ = read_image(src)
        patch = crop(img, box)
        patches.append(patch)
        name = f"patches/{rank:03d}-{''.join(c if c.isalnum() else '-' for c in Path(src).stem)[:40]}.png"
        atomic_write_bytes(out / name, png_bytes(patch.float() / 255))
        entries.append({"rank": rank, "file": name, "source": src, "box": box, "score": score})
    sheet = contact_sheet(patches, [f"#{e['rank']} {e['score']:.3g}" for e in entries])
    buf = io.BytesIO()
    sheet.save(buf, format="PNG")
    atomic_write_bytes(out / "contact_sheet.png", buf.getvalue())
    from .version import __version__

    _write_json_atomic(record_path, {"vital_fv": __version__, **result.params, "k": info["k"], "use": use,
                                     "cache_key": result.key, "references": entries})
    return record_path


def from_mining(folder: str | os.PathLike[str]) -> ReferenceSet:
    """References from a ``vital mine`` output folder: its patches, or their source images if mined with
    ``--use images``."""
    folder = Path(folder)
    try:
        rec = json.loads((folder / MINING_RECORD).read_text())
    except (OSError, ValueError) as exc:
        raise VitalError(f"cannot read {folder / MINING_RECORD}: {exc}") from None
    use = rec.get("use", "patches")
    files = [folder / e["file"] if use == "patches" else Path(e["source"]) for e in rec["references"]]
    refs = from_files(files)
    refs.fit = "stretch" if use == "patches" else "crop"
    refs.label = f"mined:{rec.get('unit')} ({folder})"
    refs.info = {"mining": {k: rec.get(k) for k in ("model", "unit", "patch", "stride", "k", "use", "cache_key")}}
    return refs


# --- patch scans: every patch's layer activations (concepts, polysemantic units) ----------------------------------


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
    from safetensors.torch import load_file
    from safetensors.torch import save as st_save
    from tqdm.auto import tqdm

    from .features import as_channels_positions, capture
    from .matching import default_cache_dir, prototype_key
    from .result import atomic_write_bytes

    stride = stride or patch
    if patch < 8 or stride < 1:
        raise VitalError("--patch must be at least 8 px and --stride at least 1 px")
    paths, where = image_paths(images)
    layers = list(layers)
    parts = {"model": model.name, "weights": model.weights_id, "layers": layers, "patch": patch, "stride": stride,
             "preprocess": model.preprocess.as_dict(), "skip_tokens": model.skip_tokens}
    key = prototype_key(parts)
    root = (Path(cache_dir) if cache_dir else default_cache_dir()) / "patches" / key
    device = next(iter(model.module.parameters())).device
    entries: list[dict[str, Any]] = []
    acts: dict[str, list[torch.Tensor]] = {n: [] for n in layers}
    seen: set[str] = set()
    computed = 0
    bar = tqdm(paths, desc=f"scanning patches ({', '.join(layers)})", disable=not progress, unit="img")
    try:
        with torch.no_grad(), capture(model.module, layers, model.name) as feats:
            for p in bar:
                data = p.read_bytes()
                sha = hashlib.sha256(data).hexdigest()
                if sha in seen:
                    continue  # the same picture twice would count its patches twice
                seen.add(sha)
                file = root / f"{sha}.safetensors"
                stored = None
                if file.is_file():
                    with contextlib.suppress(Exception):  # a damaged entry is recomputed
                        stored = load_file(str(file))
                if stored is None or any(f"act/{n}" not in stored for n in layers):
                    try:
                        img = decode_image(data, p)  # the bytes hashed above, not a second read
                    except VitalError as exc:
                        warnings.warn(f"skipping {p}: {exc}", stacklevel=2)
                        continue
                    stored = {f"act/{n}": [] for n in layers}
                    boxes = []
                    for chunk, crops in image_patches(img, model.preprocess, patch, stride, batch_size):
                        model.module(model.preprocess.normalize(crops).to(device))
                        for n in layers:
                            stored[f"act/{n}"].append(
                                as_channels_positions(feats[n], model.skip_tokens).float().mean(-1).cpu())
                        boxes += chunk
                    stored = {k: torch.cat(v) for k, v in stored.items()}
                    stored["boxes"] = torch.tensor(boxes, dtype=torch.int64)
                    meta = {"description": json.dumps(parts, sort_keys=True)}
                    atomic_write_bytes(file, st_save(stored, metadata=meta))
                    computed += 1
                for box in stored["boxes"].tolist():
                    entries.append({"source": str(p), "sha256": sha, "box": box})
                for n in layers:
                    acts[n].append(stored[f"act/{n}"])
    except KeyboardInterrupt:
        raise MiningInterrupted(
            f"scan interrupted after {len(seen)} of {len(paths)} images; each scanned image is saved — run the same "
            "command again to resume"
        ) from None
    finally:
        bar.close()
    if not entries:
        raise VitalError(f"no readable image in {where}")
    params = {"model": model.name, "layers": layers, "images": where, "image_count": len(seen), "patch": patch,
              "stride": stride, "input_size": model.preprocess.input_size, "patches": len(entries), "cache_key": key}
    cache = "hit" if computed == 0 else ("miss" if computed == len(seen) else "resumed")
    return PatchScan(entries, {n: torch.cat(v) for n, v in acts.items()}, params, cache)


# --- where a run's references come from --------------------------------------------------------------------------


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
    device: Any = "auto",
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
) -> ReferenceSet:
    """The references of a class or unit target, from exactly one source (as ``vital visualize`` takes them).

    ``refs``: a ``ReferenceSet``, a folder (a ``vital mine`` folder is read as such) or image files; ``pool``: an
    unlabelled folder, ranked by the model's probability for the class; ``images``: a folder the unit's top patches
    are mined from (cached and resumable); none of them: the bundled photo of a demo class. ``augment`` fills
    missing references with random crops (default: on for the bundled photo only).
    """
    import logging

    from .device import frozen_on, resolve_device
    from .targets import ClassTarget, UnitTarget, check_units

    given = [name for name, v in (("refs", refs), ("pool", pool), ("images", images)) if v is not None]
    if len(given) > 1:
        raise VitalError(f"give one reference source, not {' and '.join('--' + g for g in given)}")
    if n < 1:
        raise VitalError(f"--n-refs must be at least 1 (got {n})")
    if isinstance(refs, ReferenceSet):
        return refs
    if images is not None:
        if not isinstance(target, UnitTarget):
            raise VitalError("--images mines references for a unit or a concept: give --unit or --concept, or "
                             "--pool DIR for a class")
        dev = resolve_device(device)
        with frozen_on(model.module, dev):
            check_units(model, [target], model.preprocess.input_size, dev)
            result = mine(model, target, images, progress=progress, cache_dir=cache_dir)
        logging.getLogger("vital_fv").info(f"mined {target.label()} over {result.params['images']} images "
                                           f"({result.cache})")
        return mined_references(result, k=n, use=use)
    if pool is not None:
        if not isinstance(target, ClassTarget):
            raise VitalError("--pool ranks images by a class's probability: for a unit give --images DIR (mines "
                             "its top patches) or --refs FOLDER from `vital mine`")
        index, _ = target.resolve(model.class_names, model.class_synonyms)
        return from_pool(pool, model, index, n=n, progress=progress)
    if refs is not None:
        paths = [Path(refs)] if isinstance(refs, (str, os.PathLike)) else [Path(r) for r in refs]
        if len(paths) == 1 and paths[0].is_dir():
            return from_folder(paths[0], n=n, augment=bool(augment))
        return from_files(paths, n=n, augment=bool(augment))
    if isinstance(target, ClassTarget):
        _, name = target.resolve(model.class_names, model.class_synonyms)
        if name.lower() not in BUNDLED:
            raise VitalError(f"no references for '{name}': give --refs DIR (images of the class) or --pool DIR. "
                             f"Bundled photos exist for: {', '.join(BUNDLED)}")
        return bundled(name, n=n, augment=True if augment is None else augment)
    raise VitalError(f"a VITAL visualization of {target.label()} needs the unit's references: --images DIR (mines "
                     "them) or --refs FOLDER from `vital mine`")


def write_photos(out: str | os.PathLike[str], only: Sequence[str] | None = None, overwrite: bool = False) -> list[Path]:
    """Write the photos that ship with scikit-image and scikit-learn (``OFFLINE_PHOTOS``, or the ``only`` names,
    e.g. ``coffee``) to ``out`` as PNGs; existing files are kept unless ``overwrite``."""
    from .result import atomic_write_bytes, ensure_writable_dir, png_bytes, refuse_overwrite

    names = [name.split(".")[0] for _, name in OFFLINE_PHOTOS]
    keep = list(names)
    if only:
        keep = [n.removesuffix(".png") for n in only]
        unknown = [n for n in keep if n not in names]
        if unknown:
            near = close_matches(unknown[0], names)
            raise VitalError(f"no bundled photo '{unknown[0]}'" + (f" (did you mean {', '.join(near)}?)" if near
                                                                  else "") + f"; there are: {', '.join(names)}")
    folder = ensure_writable_dir(out)
    refuse_overwrite([folder / f"{n}.png" for n in names if n in keep], overwrite)
    written = []
    for (kind, name), stem in zip(OFFLINE_PHOTOS, names, strict=True):
        if stem in keep:
            atomic_write_bytes(folder / f"{stem}.png", png_bytes(_bundled_photo(kind, name)[0].float() / 255))
            written.append(folder / f"{stem}.png")
    return written


def mine_to_folder(
    model: Any,
    unit: Any,
    images: str | os.PathLike[str],
    out: str | os.PathLike[str],
    *,
    k: int = 50,
    use: str = "patches",
    patch: int = 64,
    stride: int | None = None,
    batch_size: int = 32,
    device: Any = "auto",
    progress: bool = True,
    cache_dir: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
) -> tuple[Path, ReferenceSet]:
    """``vital mine``: mine the unit's top ``k`` patches of ``images`` (cached, resumable) and write them to ``out``
    (patches/, contact_sheet.png, mining.json); returns the record's path and the references."""
    import logging

    from .device import frozen_on, resolve_device
    from .result import refuse_overwrite
    from .targets import check_units

    if k < 1:
        raise VitalError(f"--k must be at least 1 (got {k})")
    if use not in ("patches", "images"):
        raise VitalError(f"unknown reference kind '{use}': choose patches or images")
    folder = Path(out)
    refuse_overwrite([folder / MINING_RECORD, folder / "contact_sheet.png"], overwrite)
    dev = resolve_device(device)
    with frozen_on(model.module, dev):
        check_units(model, [unit], model.preprocess.input_size, dev)
        result = mine(model, unit, images, patch=patch, stride=stride, batch_size=batch_size, progress=progress,
                      cache_dir=cache_dir)
    logging.getLogger("vital_fv").info(f"mined {unit.label()} over {result.params['images']} images "
                                       f"({result.cache})")
    refs = mined_references(result, k=k, use=use)
    return save_mining(result, refs, folder, use, overwrite=overwrite), refs
