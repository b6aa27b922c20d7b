"""Reference sets: the real images whose feature distributions a visualization must match, and where they come from
(folders, files, tensors, the bundled photos, an unlabelled pool).

A ``ReferenceSet`` keeps the images at their own size; each model applies its own preprocessing (resize, center
crop) when the set is used, so one set serves any model.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from ..errors import VitalError, close_matches
from ..objectives import Objective, forward, per_item

MINING_RECORD = "mining.json"  # what `vital mine` writes into its folder: `from_folder` reads such a folder back
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


@dataclass
class ReferenceSet:
    """Images (uint8, 3 x H x W, native size) with where they came from and how many the run should use.

    When ``augment`` is set and the set holds fewer images than ``n``, random resized crops and flips of the
    images (seeded) make up the difference; the record says so. ``boxes`` replaces the random crops with chosen
    ones, ``(image, top, left, height, width, flip)`` each (``references.evidence`` picks them by the model's
    evidence for the target). With ``whole`` off, the originals are not used whole: ``boxes`` holds every
    reference (``--crops objects``: each one cropped to where the class is).
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
    boxes: list[tuple[int, int, int, int, int, bool]] | None = None
    # (count, S, S) weights of each prepared reference's positions (``references.evidence.weight_by_evidence``),
    # and what made them (part of the content hash, so weighted prototypes are cached apart)
    position_weights: torch.Tensor | None = field(default=None, compare=False, repr=False)
    weighting: str | None = None
    whole: bool = True

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
        if self.boxes is not None:
            parts.append([list(b) for b in self.boxes])
        if self.weighting is not None:
            parts.append(self.weighting)
        if not self.whole:
            parts.append("crops only")
        blob = json.dumps(parts).encode()
        return hashlib.sha256(blob).hexdigest()

    def prepare(self, preprocess: Any) -> torch.Tensor:
        """(count, 3, S, S) float images in [0, 1], with the model's resize and center crop."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as F

        mode = InterpolationMode(preprocess.interpolation)
        size = preprocess.input_size
        out = []
        for img in self.images if self.whole else ():
            if self.fit == "stretch":
                out.append(F.resize(img, [size, size], interpolation=mode, antialias=True))
                continue
            x = F.resize(_bounded(img, size, preprocess.resize_size), [preprocess.resize_size], interpolation=mode,
                         antialias=True)
            out.append(F.center_crop(x, [size, size]))
        extra = self.count - (len(self.images) if self.whole else 0)
        boxes = self.boxes[:extra] if self.boxes is not None else self.random_boxes(extra)
        for i, top, left, h, w, flip in boxes:
            x = F.resized_crop(self.images[i], top, left, h, w, [size, size], interpolation=mode, antialias=True)
            out.append(x.flip(-1) if flip else x)
        return (torch.stack(out).to(torch.get_default_dtype()) / 255.0).clamp(0, 1)

    def random_boxes(self, count: int, seed: int | None = None) -> list[tuple[int, int, int, int, int, bool]]:
        """``count`` seeded random crops and flips, cycling over the images: the augmentation's crops, and the
        candidates ``references.evidence`` chooses from. Aspect 3/4..4/3 (log-uniform); the area a ``crop_scale``
        fraction of the largest box of that aspect that fits, so a wide photo (two objects side by side) gets
        crops all over it. (torchvision's RandomResizedCrop measures the fraction against the whole image and
        falls back to one centre crop when no such box fits: every crop of a 3:1 image was the same.)"""
        g = torch.Generator().manual_seed(self.seed if seed is None else seed)
        lo, hi = self.crop_scale
        boxes = []
        for k in range(max(0, count)):
            i = k % len(self.images)
            height, width = self.images[i].shape[-2:]
            u = torch.rand(5, generator=g, dtype=torch.float64).tolist()
            aspect = math.exp(math.log(3 / 4) + u[0] * math.log(16 / 9))
            area = math.sqrt(lo + u[1] * (hi - lo))
            w_max = min(width, height * aspect)
            w = max(1, min(width, round(w_max * area)))
            h = max(1, min(height, round(w_max / aspect * area)))
            top, left = int(u[2] * (height - h + 1)), int(u[3] * (width - w + 1))
            boxes.append((i, top, left, h, w, u[4] < 0.5))
        return boxes

    def summary(self) -> str:
        """What the run uses, in words: "1 photo: 49 crops chosen by the model's evidence", "50 images"."""
        n = len(self.images)
        extra = self.count - n
        crops = self.info.get("crops") or {}
        if not self.whole:
            what = f"{n} photo{'s' if n != 1 else ''}"
            if extra <= 0:
                return f"{what}: each cropped where the model finds the class"
            return f"{what}: {self.count} crops around the class, chosen by the model's evidence"
        if extra <= 0:
            return f"{n} image{'s' if n != 1 else ''}"
        how = ("chosen by the model's evidence" if crops.get("chosen_by") == "evidence"
               else "chosen" if self.boxes is not None else "at random")
        return f"{n} photo{'s' if n != 1 else ''}: {extra} crop{'s' if extra != 1 else ''} {how}"

    def describe(self) -> dict[str, Any]:
        return {
            "summary": self.summary(),
            "label": self.label,
            "sources": self.sources,
            "sha256": self.hashes,
            "originals": len(self.images),
            "count": self.count,
            "augmented": self.augment and (self.count > len(self.images) or not self.whole),
            **({} if self.whole else {"whole_originals": False}),
            "augment_seed": self.seed,
            "crop_scale": list(self.crop_scale),
            "content_hash": self.content_hash(),
            "fit": self.fit,
            **self.info,
        }


def _bounded(img: torch.Tensor, size: int, resize: int) -> torch.Tensor:
    """A very elongated image (20000 x 10) is cut to the part the final center crop can reach (with a margin for
    the resampling filter) before it is resized, instead of resizing all of it (gigabytes) and cropping after.
    Images of ordinary shape are left whole, so their result is exactly the model's own preprocessing."""
    h, w = img.shape[-2:]
    short, long = min(h, w), max(h, w)
    span = math.ceil(short * size / resize) + 2 * (math.ceil(short / resize) * 2 + 2)
    if long <= 4 * span:
        return img
    start = (long - span) // 2
    return img[..., start : start + span, :] if h > w else img[..., start : start + span]


BACKGROUND = (128, 128, 128)  # transparent pixels are shown on mid-grey: no colour of their own, no edge to the model


def _to_uint8_chw(img: Image.Image, notes: list[str] | None = None) -> torch.Tensor:
    """uint8 (3, H, W) by the image's own bit depth; transparency composited on mid-grey (``notes`` says so)."""
    mode = img.mode
    if mode.startswith("I;16") or mode in ("I", "F"):
        arr = np.asarray(img, dtype=np.float64)
        if mode == "F":
            top = 1.0 if arr.max(initial=0) <= 1.0 else 255.0
        else:  # 16-bit samples (also 16-bit data Pillow keeps as 32-bit "I")
            top = 65535.0 if mode.startswith("I;16") or arr.max(initial=0) > 255 else 255.0
        gray = np.clip(np.round(arr / top * 255), 0, 255).astype(np.uint8)
        if notes is not None and top != 255.0:
            notes.append(f"{mode} samples scaled from 0-{top:g} to 8 bits")
        return torch.from_numpy(np.stack([gray] * 3)).contiguous()
    if mode in ("RGBA", "LA", "PA", "La", "RGBa") or (mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        alpha = np.asarray(rgba, dtype=np.uint8)[..., 3]
        if alpha.min() < 255:
            flat = Image.new("RGBA", rgba.size, (*BACKGROUND, 255))
            flat.alpha_composite(rgba)
            rgba = flat
            if notes is not None:
                notes.append(f"transparent pixels composited on grey {BACKGROUND[0]}")
        img = rgba
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


def read_image(path: str | os.PathLike[str], notes: list[str] | None = None) -> tuple[torch.Tensor, str]:
    """Decode one image file to uint8 (3, H, W) and the sha256 of its bytes; VitalError names unreadable files."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise VitalError(f"cannot read image {p}: {exc.strerror or exc}") from None
    return decode_image(data, p, notes), hashlib.sha256(data).hexdigest()


def decode_image(data: bytes, name: str | os.PathLike[str], notes: list[str] | None = None) -> torch.Tensor:
    """Decode image bytes already read (``name`` for the error) to uint8 (3, H, W), by bit depth and with
    transparency on mid-grey; a note per conversion goes to ``notes``."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return _to_uint8_chw(im, notes)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        reason = str(exc).strip() or type(exc).__name__
        if "BytesIO" in reason:  # Pillow names its in-memory buffer, not the file
            reason = "not an image file Pillow can decode"
        raise VitalError(f"cannot read image {name}: {reason}") from None


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


def _load_many(paths: Sequence[Path], label: str,
               decoding: dict[str, list[str]] | None = None) -> tuple[list[torch.Tensor], list[str], list[str]]:
    images, sources, hashes = [], [], []
    for p in paths:
        notes: list[str] = []
        try:
            img, h = read_image(p, notes)
            if notes and decoding is not None:
                decoding[str(p)] = notes
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
    decoding: dict[str, list[str]] = {}
    images, sources, hashes = _load_many(paths, "the given files", decoding)
    return ReferenceSet(images, sources, hashes, n=n or len(images), augment=augment, seed=seed, label="files",
                        info={"decoding": decoding} if decoding else {})


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
    decoding: dict[str, list[str]] = {}
    for i in order:
        if len(images) >= n:
            break
        notes: list[str] = []
        try:
            img, h = read_image(paths[i], notes)
            if notes:
                decoding[str(paths[i])] = notes
        except VitalError as exc:
            warnings.warn(f"skipping {paths[i]}: {exc}", stacklevel=2)
            continue
        images.append(img)
        sources.append(str(paths[i]))
        hashes.append(h)
    if not images:
        raise VitalError(f"no readable images in {folder}: give a folder with JPEG/PNG images")
    return ReferenceSet(images, sources, hashes, n=n, augment=augment, seed=seed, label=str(folder),
                        info={"decoding": decoding} if decoding else {})


def from_tensor(images: torch.Tensor, n: int | None = None, augment: bool = False, seed: int = 0) -> ReferenceSet:
    """References from a tensor (N, 3, H, W): uint8, or float in [0, 1]."""
    if images.dim() != 4 or images.shape[1] != 3:
        raise VitalError(f"reference tensor must be (N, 3, H, W), got {tuple(images.shape)}")
    if images.dtype != torch.uint8:
        x = images.detach().float()
        if not torch.isfinite(x).all():
            raise VitalError("the reference tensor holds NaN or infinite values: give images in [0, 1] (or uint8)")
        lo, hi = float(x.min()), float(x.max())
        if lo < 0:
            raise VitalError(f"the reference tensor has values below 0 (min {lo:.3g}): it looks normalized; give "
                             "images in [0, 1] (or uint8), before the model's normalization")
        if hi > 1:
            if hi > 255:
                raise VitalError(f"the reference tensor has values up to {hi:.3g}: give images in [0, 1] (or uint8)")
            warnings.warn(f"the reference tensor's values reach {hi:.3g}: read as 0-255 and divided by 255",
                          stacklevel=2)
            x = x / 255
        images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
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
    class_index: int | Objective,
    n: int = 50,
    batch_size: int = 32,
    progress: bool = True,
) -> ReferenceSet:
    """Class references from an unlabelled folder: the ``n`` images the model itself rates most probable; for an
    objective (``class_index`` one of ``objectives``), the ``n`` images it scores highest."""
    from tqdm.auto import tqdm

    from ..device import frozen_on

    paths = [p for p in list_images(folder) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not paths:
        raise VitalError(f"pool folder {folder} holds no image files")
    scored: list[tuple[float, Path, torch.Tensor, str]] = []
    device = model.device
    with frozen_on(model.module):  # the caller's module is left as it was
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
            x = model.preprocess.normalize(batch.to(device))
            if isinstance(class_index, Objective):
                objective = class_index.resolved(model.class_names, model.class_synonyms)
                probs = per_item([objective] * x.shape[0], forward(model, [objective], x))
            else:
                probs = model.module(x).softmax(-1)[:, class_index]
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



def crop(img: torch.Tensor, box: Sequence[int]) -> torch.Tensor:
    """The (x0, y0, x1, y1) box of a (3, H, W) image, as its own contiguous tensor."""
    x0, y0, x1, y1 = box
    return img[:, y0:y1, x0:x1].contiguous()



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



def write_photos(out: str | os.PathLike[str], only: Sequence[str] | None = None, overwrite: bool = False) -> list[Path]:
    """Write the photos that ship with scikit-image and scikit-learn (``OFFLINE_PHOTOS``, or the ``only`` names,
    e.g. ``coffee``) to ``out`` as PNGs; existing files are kept unless ``overwrite``."""
    from ..result import atomic_write_bytes, ensure_writable_dir, png_bytes, refuse_overwrite

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

