"""What the loaders read from disk and from installed packages: weight files (state dicts and checkpoints, checked
key by key), their hashes, and ImageNet's class names and synonyms (shipped with torchvision and timm: no download).
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import VitalError

# ImageNet class names ship inside torchvision's weight metadata: no download needed.
_IMAGENET_WEIGHTS_ENUM = "ResNet50_Weights"


def imagenet_class_names() -> list[str]:
    import torchvision.models as tvm

    return list(getattr(tvm, _IMAGENET_WEIGHTS_ENUM).IMAGENET1K_V1.meta["categories"])



def imagenet_synonyms() -> list[list[str]]:
    """WordNet synonyms of the 1000 ImageNet classes ('tabby, tabby cat'), from the table that ships with timm."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    return [[w.strip() for w in info.index_to_description(i).split(",")] for i in range(info.num_classes())]


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()



def module_hash(module: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())  # bf16 too
    return h.hexdigest()



def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """Read a state dict from a file: a bare state dict, or a checkpoint dict that holds one."""
    path = Path(path)
    if not path.is_file():
        raise VitalError(f"weights file {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            obj: Any = load_file(str(path))
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any reader failure means the same thing to the user
        raise VitalError(
            f"cannot read weights file {path}: {exc.__class__.__name__}: {str(exc).splitlines()[0][:200]}. "
            "Give a state dict saved with torch.save(model.state_dict(), FILE), a checkpoint dict holding one "
            "('state_dict' or 'model'), or a .safetensors file."
        ) from None
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema"):
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise VitalError(f"weights file {path} holds no state dict (a mapping of names to tensors)")
    for prefix in ("module.", "model."):
        if obj and all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix):]: v for k, v in obj.items()}
    return dict(obj)


def load_state_dict_strict(module: nn.Module, state: dict[str, torch.Tensor], source: str) -> None:
    """Load weights, or fail naming the missing, unexpected and mis-shaped keys."""
    own = module.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or shapes:

        def head(items: list[str]) -> str:
            return ", ".join(items[:8]) + (f" (+{len(items) - 8} more)" if len(items) > 8 else "")

        parts = []
        if missing:
            parts.append(f"missing keys: {head(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {head(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches (file vs model): {head(shapes)}")
        raise VitalError(f"weights {source} do not fit the model: " + "; ".join(parts))
    module.load_state_dict(state)

