"""One resumable, content-keyed scan over image files, shared by unit mining, patch scans and circuit ranking.

Each file is read once, hashed (sha256 of its bytes) and looked up in a store keyed by that hash; only images the
store lacks are decoded and computed, in batches, and the store is flushed after every batch. A Ctrl-C flushes
and raises ``ScanInterrupted`` (the same command resumes); a file that cannot be read is skipped with a warning
naming it; the same picture under two names is scanned once. Stores hold one entry per image: ``JsonStore``
(small entries, one JSON file) or ``TensorStore`` (tensors, one safetensors file per image). An unwritable store
warns once and the scan goes on uncached.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from ..errors import VitalError
from .sets import decode_image


class ScanInterrupted(VitalError):
    """Ctrl-C during a scan: what was scanned is saved and the next run resumes."""


class Store(Protocol):
    def get(self, sha: str) -> Any | None: ...

    def put(self, sha: str, entry: Any) -> None: ...

    def flush(self) -> None: ...


class _Unwritable:
    """Warn once that a store cannot be written, then let the scan go on without it."""

    def __init__(self) -> None:
        self.broken = False

    def report(self, where: Path, exc: OSError) -> None:
        if not self.broken:
            self.broken = True
            warnings.warn(f"cannot write the scan cache in {where} ({exc.strerror or exc}): going on without caching "
                          "(an interrupted scan will start over; --cache-dir chooses another folder)", stacklevel=4)


class JsonStore:
    """Entries (JSON-able) of one scan in one file, ``{"meta": ..., "entries": {sha: entry}}``."""

    def __init__(self, path: Path, meta: dict[str, Any] | None = None) -> None:
        self.path = path
        self.meta = meta or {}
        self.entries: dict[str, Any] = {}
        self._dirty = False
        self._unwritable = _Unwritable()
        if path.is_file():
            with contextlib.suppress(OSError, ValueError, TypeError, KeyError):  # a damaged file is redone
                self.entries = dict(json.loads(path.read_text())["entries"])

    def get(self, sha: str) -> Any | None:
        return self.entries.get(sha)

    def put(self, sha: str, entry: Any) -> None:
        self.entries[sha] = entry
        self._dirty = True

    def flush(self) -> None:
        if not self._dirty or self._unwritable.broken:
            return
        from ..result import atomic_write_bytes

        try:
            atomic_write_bytes(self.path, json.dumps({"meta": self.meta, "entries": self.entries}).encode())
            self._dirty = False
        except OSError as exc:
            self._unwritable.report(self.path.parent, exc)


class TensorStore:
    """Entries (dicts of tensors) as one safetensors file per image in a folder; written as they come."""

    def __init__(self, folder: Path, meta: dict[str, Any] | None = None, required: Sequence[str] = ()) -> None:
        self.folder = folder
        self.meta = {"description": json.dumps(meta or {}, sort_keys=True, default=str)}
        self.required = list(required)  # an entry missing one of these is recomputed
        self._unwritable = _Unwritable()

    def get(self, sha: str) -> dict[str, torch.Tensor] | None:
        from safetensors.torch import load_file

        file = self.folder / f"{sha}.safetensors"
        if not file.is_file():
            return None
        with contextlib.suppress(Exception):  # a damaged entry is recomputed
            entry = load_file(str(file))
            return entry if all(k in entry for k in self.required) else None
        return None

    def put(self, sha: str, entry: dict[str, torch.Tensor]) -> None:
        from safetensors.torch import save

        from ..result import atomic_write_bytes

        if self._unwritable.broken:
            return
        try:
            atomic_write_bytes(self.folder / f"{sha}.safetensors", save(entry, metadata=self.meta))
        except OSError as exc:
            self._unwritable.report(self.folder, exc)

    def flush(self) -> None:
        pass


class MultiStore:
    """Several stores scanned together (many units of one layer in one pass): an image is cached when every store
    has it; entries are tuples, one per store."""

    def __init__(self, stores: Sequence[Store]) -> None:
        self.stores = list(stores)

    def get(self, sha: str) -> tuple[Any, ...] | None:
        entries = tuple(s.get(sha) for s in self.stores)
        return None if any(e is None for e in entries) else entries

    def put(self, sha: str, entry: Sequence[Any]) -> None:
        for s, e in zip(self.stores, entry, strict=True):
            s.put(sha, e)

    def flush(self) -> None:
        for s in self.stores:
            s.flush()


@dataclass
class ScanOutcome:
    """Per distinct readable image (by content): its entry and its file, in the order of the input files."""

    entries: dict[str, Any] = field(default_factory=dict)
    sources: dict[str, Path] = field(default_factory=dict)
    computed: int = 0

    @property
    def cache(self) -> str:
        """hit (nothing computed), miss (everything computed) or resumed (some of each)."""
        if self.computed == 0:
            return "hit"
        return "miss" if self.computed == len(self.entries) else "resumed"


Compute = Callable[[list[tuple[Path, str, torch.Tensor]]], list[Any]]


def scan_images(
    paths: Sequence[Path],
    store: Store,
    compute: Compute,
    *,
    batch_size: int = 1,
    desc: str = "scanning",
    progress: bool = True,
    what: str = "scan",
) -> ScanOutcome:
    """Run ``compute`` over the images of ``paths`` that ``store`` lacks, ``batch_size`` images at a time.

    ``compute`` gets [(path, sha256, uint8 (3, H, W) image)] and returns one entry per image. The store is flushed
    after every batch; Ctrl-C flushes and raises ``ScanInterrupted`` saying how far the ``what`` got.
    """
    from tqdm.auto import tqdm

    out = ScanOutcome()
    pending: list[tuple[Path, str, torch.Tensor]] = []
    bar = tqdm(total=len(paths), desc=desc, disable=not progress, unit="img")

    def run_pending() -> None:
        if not pending:
            return
        for (_, sha, _), entry in zip(pending, compute(pending), strict=True):
            store.put(sha, entry)
            out.entries[sha] = entry
            out.computed += 1
        store.flush()
        pending.clear()

    try:
        for p in paths:
            bar.update(1)
            try:
                data = Path(p).read_bytes()
            except OSError as exc:
                warnings.warn(f"skipping {p}: cannot read it ({exc.strerror or exc})", stacklevel=2)
                continue
            sha = hashlib.sha256(data).hexdigest()
            if sha in out.sources:
                continue  # the same picture twice would count twice
            out.sources[sha] = Path(p)
            cached = store.get(sha)
            if cached is not None:
                out.entries[sha] = cached
                continue
            try:
                img = decode_image(data, p)  # the bytes hashed above, not a second read
            except VitalError as exc:
                warnings.warn(f"skipping {p}: {exc}", stacklevel=2)
                del out.sources[sha]
                continue
            pending.append((Path(p), sha, img))
            if len(pending) >= batch_size:
                run_pending()
        run_pending()
    except KeyboardInterrupt:
        store.flush()
        raise ScanInterrupted(
            f"{what} interrupted after {len(out.entries)} of {len(paths)} images; it is saved — run the same "
            "command again to resume") from None
    finally:
        bar.close()
    ordered = {sha: out.entries[sha] for sha in out.sources if sha in out.entries}
    out.sources = {sha: out.sources[sha] for sha in ordered}
    out.entries = ordered
    return out

