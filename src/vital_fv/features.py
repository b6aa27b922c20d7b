"""Reading intermediate activations with forward hooks that are always removed.

Every matched layer is seen as C channels x P positions: conv maps (B, C, H, W) -> (B, C, H*W); token layers
(B, T, D), as in ViTs, -> (B, D, T) (the hidden size plays the role of channels).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from .device import frozen_on
from .errors import VitalError, close_matches


def resolve_layers(module: nn.Module, names: Sequence[str], model_name: str = "") -> list[nn.Module]:
    """Map dotted module names to modules, or fail with the close matches and where to find the full list."""
    table = dict(module.named_modules())
    out = []
    for name in names:
        if name not in table or name == "":
            near = close_matches(name, [n for n in table if n])
            hint = f" Close matches: {', '.join(near)}." if near else ""
            listing = f"`vital layers --model {model_name}`" if model_name else "`vital layers`"
            raise VitalError(f"unknown layer '{name}'.{hint} {listing} lists every layer with its shape.")
        out.append(table[name])
    return out


def as_channels_positions(t: torch.Tensor, skip_tokens: int = 0) -> torch.Tensor:
    """(B, C, H, W) -> (B, C, H*W); (B, T, D) tokens -> (B, D, T); (B, C) -> (B, C, 1).

    ``skip_tokens`` drops that many leading tokens of token layers (a ViT's class token, when it should not count).
    """
    if isinstance(t, (tuple, list)):
        t = t[0]
    if t.dtype in (torch.float16, torch.bfloat16):  # a half-precision model: sort and match in float32
        t = t.float()
    if t.dim() == 4:
        return t.flatten(2)
    if t.dim() == 3:
        return t[:, skip_tokens:].transpose(1, 2)
    if t.dim() == 2:
        return t.unsqueeze(-1)
    raise VitalError(f"cannot read a layer output of shape {tuple(t.shape)} as channels x positions")


@contextmanager
def capture(module: nn.Module, names: Sequence[str], model_name: str = "",
            on_output: Callable[[str, torch.Tensor], None] | None = None) -> Iterator[dict[str, torch.Tensor]]:
    """Within the block, every forward of ``module`` fills the yielded dict with the named layers' outputs
    (``on_output(name, output)`` is called with each as it is made).

    Hooks are removed on exit, also after an exception, so the model is left as it was found.
    """
    targets = resolve_layers(module, names, model_name)
    store: dict[str, torch.Tensor] = {}
    handles = []
    try:
        for name, layer in zip(names, targets, strict=True):

            def hook(_m: nn.Module, _inp: object, out: torch.Tensor, name: str = name) -> None:
                store[name] = out
                if on_output is not None:
                    on_output(name, out)

            handles.append(layer.register_forward_hook(hook))
        yield store
    finally:
        for h in handles:
            h.remove()
        store.clear()


def layer_shapes(module: nn.Module, input_size: int, device: torch.device | str = "cpu") -> list[tuple[str, tuple]]:
    """Every named submodule with the shape of its output on one input (modules that never run are left out)."""
    shapes: dict[str, tuple] = {}
    order: list[str] = []
    handles = []
    try:
        for name, layer in module.named_modules():
            if not name:
                continue

            def hook(_m: nn.Module, _inp: object, out: object, name: str = name) -> None:
                if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
                    out = out[0]
                if isinstance(out, torch.Tensor) and name not in shapes:
                    shapes[name] = tuple(out.shape[1:])
                    order.append(name)

            handles.append(layer.register_forward_hook(hook))
        with frozen_on(module, torch.device(device)), torch.no_grad():  # eval: a training model is left as it was
            first = next(iter(module.parameters()), None)
            module(torch.zeros(1, 3, input_size, input_size, device=device,
                               dtype=first.dtype if first is not None and first.is_floating_point() else None))
    finally:
        for h in handles:
            h.remove()
    # Report in module-tree order, which reads better than execution order for nested blocks.
    tree = [n for n, _ in module.named_modules() if n in shapes]
    return [(n, shapes[n]) for n in tree]


def layers_below(
    module: nn.Module, unit_layer: str, candidates: Sequence[str], input_size: int, model_name: str = ""
) -> list[str]:
    """The candidates whose forward finishes before ``unit_layer``'s forward starts, in execution order.

    Execution order, not name order, decides: a block that contains the unit (``layer3`` for ``layer3.5``) is
    not below it, and branches are ordered as the model really runs them.
    """
    (unit,) = resolve_layers(module, [unit_layer], model_name)
    mods = resolve_layers(module, list(candidates), model_name)
    clock = [0]
    started: dict[str, int] = {}
    finished: dict[str, int] = {}
    handles = []

    def stamp(table: dict[str, int], name: str) -> None:  # hooks must return None, or they replace outputs
        clock[0] += 1
        table.setdefault(name, clock[0])

    try:
        handles.append(unit.register_forward_pre_hook(lambda *_: stamp(started, unit_layer)))
        for name, m in zip(candidates, mods, strict=True):
            handles.append(m.register_forward_hook(lambda *_, name=name: stamp(finished, name)))
        first = next(module.parameters())
        with frozen_on(module), torch.no_grad():  # eval: a training model's BatchNorm statistics stay as they were
            module(torch.zeros(1, 3, input_size, input_size, device=first.device, dtype=first.dtype))
    finally:
        for h in handles:
            h.remove()
    start = started.get(unit_layer)
    if start is None:
        raise VitalError(f"layer '{unit_layer}' never runs in a forward pass of the model")
    below = [n for n in candidates if n in finished and finished[n] < start]
    return sorted(below, key=lambda n: finished[n])
