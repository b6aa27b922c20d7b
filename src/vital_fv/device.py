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


LOW_PRECISION = (torch.float16, torch.bfloat16)


def model_dtype(module: torch.nn.Module) -> torch.dtype:
    """The floating dtype of the module's first floating parameter (float32 for a module without one)."""
    first = next((p for p in module.parameters() if p.is_floating_point()), None)
    return first.dtype if first is not None else torch.float32


def _as_dtype(value: Any, dtype: torch.dtype) -> Any:
    if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != dtype:
        return value.to(dtype)
    if isinstance(value, (tuple, list)):
        return type(value)(_as_dtype(v, dtype) for v in value)
    return value


@contextmanager
def _in_model_dtype(module: torch.nn.Module) -> Iterator[None]:
    """A float64 or half-precision model takes our float32 images: its inputs are cast to its dtype on the way in,
    and its output back to the input's dtype on the way out (autograd flows through both casts), so every method
    runs on it unchanged. Layer outputs read by hooks stay in the model's dtype (``features`` reads half precision
    as float32). Nothing is registered for a float32 model."""
    dtype = model_dtype(module)
    if dtype == torch.float32:
        yield
        return
    incoming: list[torch.dtype] = []

    def cast_in(_m: torch.nn.Module, args: tuple) -> tuple:
        first = next((a for a in args if isinstance(a, torch.Tensor) and a.is_floating_point()), None)
        incoming.append(first.dtype if first is not None else dtype)
        return _as_dtype(args, dtype)

    def cast_out(_m: torch.nn.Module, _args: tuple, out: Any) -> Any:
        return _as_dtype(out, incoming.pop() if incoming else torch.float32)

    handles = [module.register_forward_pre_hook(cast_in), module.register_forward_hook(cast_out)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def frozen_on(module: torch.nn.Module, device: torch.device | None = None) -> Iterator[None]:
    """Eval mode, no parameter gradients, on ``device`` (default: where it is), taking float32 inputs whatever
    its dtype; every submodule's mode, the parameters' flags, the device and the hooks come back after, so the
    caller's model is left as it was."""
    modes = [(m, m.training) for m in module.modules()]
    flags = [(p, p.requires_grad) for p in module.parameters()]
    first = next(iter(module.parameters()), None)
    home = first.device if first is not None else (device or torch.device("cpu"))
    device = device or home
    try:
        module.eval()
        module.requires_grad_(False)
        module.to(device)
        with _in_model_dtype(module):
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
