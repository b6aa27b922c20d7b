"""Everything vital-fv keeps between runs: where (the cache root), under which keys, and the prototype cache.

A cache only saves time: an entry that cannot be read, fails its integrity check or cannot be written is recomputed
(or skipped) with one warning, and the run goes on.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path

import torch


def default_cache_dir() -> Path:
    """``$VITAL_CACHE_DIR``, else ``$XDG_CACHE_HOME/vital-fv``, else ``~/.cache/vital-fv``."""
    env = os.environ.get("VITAL_CACHE_DIR")
    if env:
        return Path(env)
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vital-fv"


def cache_root(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    return Path(cache_dir) if cache_dir else default_cache_dir()


def cache_key(parts: Mapping[str, object]) -> str:
    """Stable key from a JSON-able description (model, weights, layers, references, resolution...)."""
    blob = json.dumps(parts, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def tensors_digest(tensors: Mapping[str, torch.Tensor]) -> str:
    """sha256 over names, shapes, dtypes and bytes: what an entry must still hash to when read back."""
    h = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class CacheWarnings:
    """One warning per cache folder and problem, not one per entry."""

    def __init__(self) -> None:
        self.seen: set[tuple[str, str]] = set()

    def warn(self, where: Path, problem: str, message: str) -> None:
        if (str(where), problem) not in self.seen:
            self.seen.add((str(where), problem))
            warnings.warn(message, stacklevel=3)


class PrototypeCache:
    """Prototypes on disk as safetensors, one file per key, written atomically, checked when read back."""

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = cache_root(root)
        self._warnings = CacheWarnings()

    def path(self, key: str) -> Path:
        return self.root / "prototypes" / f"{key}.safetensors"

    def load(self, key: str) -> dict[str, torch.Tensor] | None:
        """The entry, or None when it is missing; a damaged entry (unreadable, not the digest it was saved with,
        or not finite) is reported and None returned, so it is recomputed and rewritten."""
        from safetensors import safe_open

        p = self.path(key)
        if not p.is_file():
            return None
        try:
            with safe_open(str(p), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 - safe_open has no __iter__
        except Exception:  # noqa: BLE001 - any unreadable entry is recomputed, never fatal
            tensors, meta = None, {}
        if tensors is not None and "digest" not in meta:
            return None  # written before entries carried a digest: recomputed (and rewritten with one)
        ok = tensors is not None and meta.get("digest") == tensors_digest(tensors) and all(
            bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point())
        if not ok:
            warnings.warn(f"cache entry {p} is damaged (unreadable, changed since it was written, or not finite): "
                          "recomputing it", stacklevel=2)
            return None
        return tensors

    def save(self, key: str, protos: Mapping[str, torch.Tensor], meta: Mapping[str, object]) -> Path | None:
        """Write the entry; an unwritable cache is reported once and costs only time (returns None)."""
        from safetensors.torch import save_file

        p = self.path(key)
        tensors = {k: v.detach().cpu().contiguous() for k, v in protos.items()}
        tmp = p.with_suffix(f".tmp{os.getpid()}")
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            save_file(tensors, str(tmp), metadata={"description": json.dumps(meta, sort_keys=True, default=str),
                                                    "digest": tensors_digest(tensors)})
            os.replace(tmp, p)
        except OSError as exc:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            self._warnings.warn(self.root, "write", f"cannot write the prototype cache in {self.root} "
                                f"({exc.strerror or exc}): going on without caching (--cache-dir chooses another "
                                "folder, --no-cache turns it off)")
            return None
        return p
