"""What a run produces: the image and a JSON record of everything needed to reproduce and judge it.

Files are written atomically (temporary file + rename), and nothing existing is replaced unless asked.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from .errors import VitalError


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def remove_stale_partial_writes(folder: Path) -> int:
    """Remove the temporary files ``atomic_write_bytes`` leaves in ``folder`` when its process is killed mid-write
    (SIGKILL, power loss: no handler runs); the finished files are untouched. Only for a folder no live process
    writes to (the caller holds its lock). Returns how many were removed."""
    removed = 0
    for tmp in folder.glob(".*.tmp") if folder.is_dir() else ():
        if tmp.is_file():
            tmp.unlink(missing_ok=True)
            removed += 1
    return removed


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def ensure_writable_dir(folder: str | os.PathLike[str]) -> Path:
    """Create the output folder if needed and prove it writable, before any expensive work starts."""
    p = Path(folder)
    try:
        p.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=p, prefix=".vital-write-test.")
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        reason = exc.strerror or exc
        raise VitalError(f"output folder {p} is not writable ({reason}): choose another with --out") from None
    return p


def output_folder(out: str | os.PathLike[str], names: list[str], overwrite: bool) -> Path:
    """The output folder, made and proved writable, with none of ``names`` in it unless ``overwrite``: the check
    each command makes before any work."""
    folder = ensure_writable_dir(out)
    refuse_overwrite([folder / n for n in names], overwrite)
    return folder


def refuse_overwrite(paths: list[Path], overwrite: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise VitalError(
            f"{existing[0]} already exists{f' (and {len(existing) - 1} more)' if len(existing) > 1 else ''}: "
            "pass --overwrite to replace it (overwrite=True in Python), or choose another --out / --name"
        )


def png_bytes(image: torch.Tensor) -> bytes:
    """(3, H, W) or (4, H, W) in [0, 1] -> PNG bytes."""
    import io

    arr = (image.detach().float().clamp(0, 1).cpu().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, mode="RGBA" if arr.shape[-1] == 4 else "RGB").save(buf, format="PNG")
    return buf.getvalue()


@dataclass
class Result:
    """One visualization: ``image`` is (3, H, W) in [0, 1]; ``record`` says how it was made and what it shows."""

    image: torch.Tensor
    record: dict[str, Any] = field(default_factory=dict)
    alpha: torch.Tensor | None = None  # accumulated |d loss / d image| (3, H, W), where the method keeps it
    alpha_percentile: float = 98.0  # where the transparency map is clipped before scaling to [0, 1]
    path: Path | None = None  # the PNG it was last saved to

    @property
    def status(self) -> str:
        return str(self.record.get("status", "complete"))

    @property
    def top5(self) -> list[dict[str, Any]]:
        return list(self.record.get("top5", []))

    def to_pil(self) -> Image.Image:
        arr = (self.image.detach().clamp(0, 1).cpu().permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        return Image.fromarray(arr)

    def paths(self, path: str | os.PathLike[str]) -> tuple[Path, Path]:
        png = Path(path)
        if png.suffix.lower() != ".png":
            png = png.with_name(png.name + ".png")
        return png, png.with_suffix(".json")

    def transparency(self, percentile: float | None = None) -> torch.Tensor | None:
        """Alpha (H, W) in [0, 1]: the gradient map's channel mean, clipped at ``percentile``, divided by its max."""
        if self.alpha is None:
            return None
        q = (self.alpha_percentile if percentile is None else percentile) / 100
        a = self.alpha.detach().float().mean(0)
        a = a.clamp(max=float(torch.quantile(a.flatten(), q)))
        return a / a.max().clamp(min=1e-12)

    def on_white(self) -> torch.Tensor:
        """(3, H, W) the image over white through its transparency (the image itself when it has none)."""
        alpha = self.transparency()
        img = self.image.detach().clamp(0, 1).cpu()
        return img if alpha is None else img * alpha.cpu() + (1 - alpha.cpu())

    def save(self, path: str | os.PathLike[str], overwrite: bool = False) -> tuple[Path, Path]:
        """Write ``path`` (PNG) and the record beside it (same name, .json), atomically; with a gradient map also
        NAME.rgba.png (transparency) and NAME.alpha.npy (the raw map)."""
        png, js = self.paths(path)
        extra = [png.with_suffix(".rgba.png"), png.with_suffix(".alpha.npy")] if self.alpha is not None else []
        refuse_overwrite([png, js, *extra], overwrite)
        record = dict(self.record, files={"png": png.name, "json": js.name, **(
            {"rgba": extra[0].name, "alpha": extra[1].name, "alpha_percentile": self.alpha_percentile}
            if extra else {})})
        # The image and its record first: a failure in the transparency files below cannot cost them.
        atomic_write_bytes(png, png_bytes(self.image))
        atomic_write_bytes(js, (json.dumps(record, indent=1, default=_json_default) + "\n").encode())
        self.path = png
        if extra:
            import io

            atomic_write_bytes(extra[0], png_bytes(torch.cat([self.image.cpu(), self.transparency()[None]])))
            buf = io.BytesIO()
            np.save(buf, self.alpha.detach().float().cpu().numpy())
            atomic_write_bytes(extra[1], buf.getvalue())
        return png, js


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serializable: {type(obj).__name__}")
