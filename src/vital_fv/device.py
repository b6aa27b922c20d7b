"""Where a run computes, and how the caller's model is held while it does (restored afterwards)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch

from .errors import VitalError
from .options import check_device_name

T = TypeVar("T")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """'auto' (CUDA when there is one), or a torch device name, checked before any work starts."""
    check_device_name(device)
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise VitalError(f"--device '{device}' is not a device: use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise VitalError(f"--device {device} was asked for, but no CUDA GPU is available: use --device cpu or "
                             "auto")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise VitalError(f"--device {device}: there are {torch.cuda.device_count()} CUDA devices (cuda:0.."
                             f"cuda:{torch.cuda.device_count() - 1})")
    elif dev.type != "cpu":
        raise VitalError(f"--device '{device}' is not supported here: use auto, cpu or cuda")
    return dev


@contextmanager
def frozen_on(module: torch.nn.Module, device: torch.device | None = None) -> Iterator[None]:
    """Eval mode, no parameter gradients, on ``device`` (default: where it is); every submodule's mode, the
    parameters' flags and the device come back after, so the caller's model is left as it was."""
    modes = [(m, m.training) for m in module.modules()]
    flags = [(p, p.requires_grad) for p in module.parameters()]
    first = next(iter(module.parameters()), None)
    home = first.device if first is not None else (device or torch.device("cpu"))
    device = device or home
    try:
        module.eval()
        module.requires_grad_(False)
        module.to(device)
        yield
    finally:
        module.to(home)
        for m, mode in modes:
            m.training = mode
        for p, flag in flags:
            p.requires_grad_(flag)


def holds_model(fn: Callable[..., T]) -> Callable[..., T]:
    """For functions whose first argument is a ``ModelSpec``: they run with its module frozen where it is, and the
    caller's module comes back exactly as it was (mode, gradient flags), also after an exception."""

    @functools.wraps(fn)
    def wrapper(spec: Any, *args: Any, **kwargs: Any) -> T:
        with frozen_on(spec.module):
            return fn(spec, *args, **kwargs)

    return wrapper
