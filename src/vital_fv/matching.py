"""Sort matching (SPEC §2): match each channel's sorted activations to the reference prototype.

No library offers this loss, so it is ours. ``mean((z - proto[rank(z)])**2)`` equals ``mean((sort(z) - proto)**2)``
because sorting only permutes the terms; one ``torch.sort`` per channel therefore suffices, and autograd routes
the gradient back through the sort's permutation to the unsorted positions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .features import as_channels_positions, capture


def resample_sorted(proto: torch.Tensor, positions: int) -> torch.Tensor:
    """Resample sorted values (..., P) to (..., positions) as quantiles, by linear interpolation over ranks.

    Used when the generated image has another resolution than the references: never truncate, since that would
    drop the top (or bottom) of the distribution.
    """
    p_ref = proto.shape[-1]
    if p_ref == positions:
        return proto
    if p_ref == 1:
        return proto.expand(*proto.shape[:-1], positions)
    pos = torch.linspace(0, p_ref - 1, positions, device=proto.device, dtype=proto.dtype)
    lo = pos.floor().long().clamp(max=p_ref - 1)
    hi = (lo + 1).clamp(max=p_ref - 1)
    frac = pos - lo.to(pos.dtype)
    return proto[..., lo] * (1 - frac) + proto[..., hi] * frac


class Matched(NamedTuple):
    """A layer's matched targets ``z_r = proto[rank(z)]``, with ``z - z_r`` and the per-item loss made from them
    (``RanksAhead`` makes all three in its thread, beside the forward)."""

    targets: torch.Tensor
    diff: torch.Tensor
    value: torch.Tensor


def matched(z: torch.Tensor, proto: torch.Tensor, order: torch.Tensor | None = None) -> Matched:
    """``Matched`` for features ``z`` (B, C, P), held constant (no graph)."""
    with torch.no_grad():
        targets = matched_targets(z.detach(), proto, order)
    return Matched(targets, *_error_parts(z, targets))


def _error_parts(z: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``z - t`` and its per-item mean square over (C, P), held constant."""
    with torch.no_grad():
        diff = z.detach() - t
        return diff, diff.flatten(1).pow(2).mean(dim=1)


def sort_matching_loss(z: torch.Tensor, proto: torch.Tensor, weights: torch.Tensor | None = None,
                       order: torch.Tensor | None = None, made: Matched | None = None) -> torch.Tensor:
    """Per-item loss for features ``z`` (B, C, P) against a prototype (C, P') or per-item prototypes (B, C, P').

    Returns shape (B,): each batch item is its own visualization, never averaged with the others. The loss is
    ``mean((z - z_r)**2)`` with ``z_r = proto[rank(z)]`` held constant (the authors' formulation); its value and
    its gradient ``2 (z - z_r) / (C P)`` equal those of ``mean((sort(z) - proto)**2)`` through autograd.
    ``weights`` (C,) or (B, C) weight each channel's squared error (relevance importance, SPEC §4). ``order``:
    ``argsort_rows`` of ``z`` already made (``RanksAhead``), else it is made here; ``made``: ``matched(z, proto)``
    already made (``RanksAhead.take_matched``), its values used as they are.
    """
    if z.dim() != 3:
        raise ValueError(f"features must be (B, C, P), got {tuple(z.shape)}")
    if proto.shape[-2] != z.shape[1]:
        raise ValueError(f"prototype has {proto.shape[-2]} channels, features have {z.shape[1]}")
    if made is not None and weights is None:
        return _SquaredError.apply(z, made.diff, made.value)
    if made is not None:
        z_r = made.targets
    else:
        with torch.no_grad():
            z_r = matched_targets(z, proto, order)
    if weights is not None:
        # w (z - t)^2 = (sqrt(w) z - sqrt(w) t)^2: the rank matching above is unaffected by the weights.
        sw = weights.to(z.dtype).clamp(min=0).sqrt()
        sw = sw.view(1, -1, 1) if sw.dim() == 1 else sw.unsqueeze(-1)
        z, z_r = z * sw, z_r * sw
    return _SquaredError.apply(z, *_error_parts(z, z_r))


class _SquaredError(torch.autograd.Function):
    """Per-item ``mean((z - t)**2)`` over (C, P) with ``t`` constant, from ``z - t`` and the value made already
    (``_error_parts``, possibly in the sort thread): one pass forward, one backward, instead of the four
    elementwise passes autograd would make on the largest activation tensors."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, diff: torch.Tensor, value: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(diff)
        return value.view_as(value)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # noqa: ANN001
        (diff,) = ctx.saved_tensors
        scale = grad * (2.0 / diff[0].numel())
        return diff * scale.view(-1, *([1] * (diff.dim() - 1))), None, None


def matched_targets(z: torch.Tensor, proto: torch.Tensor, order: torch.Tensor | None = None) -> torch.Tensor:
    """``proto[rank(z)]``: the prototype value at each position's rank within its channel, shaped like ``z``."""
    proto = resample_sorted(proto.to(z.dtype), z.shape[-1])
    if proto.dim() == 2:
        proto = proto.unsqueeze(0)
    proto = proto.expand_as(z)
    idx = (argsort_rows(z.detach().reshape(-1, z.shape[-1])) if order is None else order).view(z.shape)
    return torch.empty_like(z).scatter_(-1, idx, proto)


def argsort_rows(rows: torch.Tensor) -> torch.Tensor:
    """Argsort along the last axis of a 2-D tensor (ties in any valid order).

    On the CPU, ``torch.argsort`` takes 12 ms for the 32 x 12544 stem of EfficientNet-Lite0 on this project's
    2-core machine, half a forward+backward. NumPy's SIMD value sort (x86-simd-sort) is far faster than any
    argsort, so each value is packed with its index into one 64-bit key, the keys are sorted, and the indices are
    read back: 1.8 ms, exact, and unaffected by the long runs of ties that ReLU6 leaves. (Splitting rows across
    threads gained nothing once torch's own threads are busy.) Elsewhere, torch's (GPU) sort is used.
    """
    if rows.device.type != "cpu" or rows.numel() < 4096 or rows.shape[-1] >= 2**32:
        return torch.argsort(rows, dim=-1)
    a = rows.float().contiguous().numpy()
    # Floats order like signed integers once the magnitude bits of negatives are flipped.
    bits = a.view(np.int32)
    flip = bits >> 31
    flip &= np.int32(0x7FFFFFFF)
    flip ^= bits
    key = flip.astype(np.int64)
    key <<= 32
    key |= _positions(a.shape[-1])
    key.sort(axis=-1)
    key &= np.int64(0xFFFFFFFF)
    return torch.from_numpy(key)


class RanksAhead:
    """Sorts each matched layer's activations in a second thread while the forward pass goes on to the next layers.

    The CPU sort (``argsort_rows``) is a tenth of a forward+backward of EfficientNet-Lite0, and the stem's, the
    largest, is known a whole forward before the loss needs it; NumPy's sort releases the GIL, so the two overlap
    and the step no longer pays for it. ``started`` is the forward hook's callback; ``take`` gives the order for the
    tensor the loss is made from, or None (then the loss sorts as before) when the tensor is another one or was
    changed in place after the sort began: the result is the same in every case, only when it is computed moves.
    Given the layers' prototypes (``protos``), the thread also makes what the loss makes from the order
    (``matched``: the targets, the difference, the per-item value; ``take_matched``). Elsewhere than on the CPU
    (or for rows too small to go to NumPy) nothing is started.
    """

    def __init__(self, pool: ThreadPoolExecutor | None, skip_tokens: int = 0,
                 protos: Mapping[str, torch.Tensor] | None = None) -> None:
        self._pool = pool
        self._skip = skip_tokens
        self._protos = dict(protos or {})
        # torch work in the thread only where torch computes on one thread: with more, each op there starts an
        # OpenMP team of its own beside the forward's, and the two fight for the cores (Lite0 on 2 cores at two
        # threads: the class step 1.25x -> 2.4x, the LRP step 2.2x -> 3.9x). NumPy's sort is single-threaded.
        self._torch_beside = torch.get_num_threads() == 1
        self._pending: dict[str, tuple[torch.Tensor | None, int, Future]] = {}

    def started(self, name: str, out: torch.Tensor) -> None:
        """Start sorting a layer's raw output (a forward hook's ``out``)."""
        if self._pool is not None:
            self.started_features(name, as_channels_positions(out, self._skip))

    def started_features(self, name: str, z: torch.Tensor) -> None:
        """Start sorting features already laid out as (B, C, P); with the layer's prototype (``protos``), also
        make its matched targets there."""
        if self._pool is None:
            return
        z = z.detach()
        if _sortable(z):
            proto = self._protos.get(name) if self._torch_beside else None
            self._pending[name] = (z, z._version, self._pool.submit(_ranked, z, proto))

    def started_making(self, name: str, make: Callable[[], tuple[torch.Tensor, ...]]) -> Future | None:
        """Make a layer's tensors in the sort thread and sort the last of them (features, (B, C, P)) there too:
        for work nothing needs until later. The future gives ``make()``'s tuple; None where nothing is started
        (off the CPU, or where torch computes on more than one thread), and then the caller makes them itself."""
        if self._pool is None or not self._torch_beside:
            return None

        def job() -> tuple[tuple[torch.Tensor, ...], int, torch.Tensor | None]:
            made = make()
            z = made[-1].detach()
            return made, z._version, argsort_rows(z.reshape(-1, z.shape[-1])) if _sortable(z) else None

        future = self._pool.submit(job)
        self._pending[name] = (None, 0, future)
        return _First(future)

    def take(self, name: str, z: torch.Tensor) -> torch.Tensor | None:
        """The order of ``z``'s rows sorted ahead (``argsort_rows``), or None."""
        got = self._taken(name, z)
        return None if got is None else got[0]

    def take_matched(self, name: str, z: torch.Tensor, proto: torch.Tensor) -> Matched | None:
        """``matched(z, proto)`` from the sort made ahead: made in the thread where ``proto`` is the one given
        for the layer (``protos``), else from the order here; None where no sort was started for ``z``."""
        got = self._taken(name, z)
        if got is None:
            return None
        order, made = got
        return made if made is not None and self._protos.get(name) is proto else matched(z, proto, order)

    def _taken(self, name: str, z: torch.Tensor) -> tuple[torch.Tensor, Matched | None] | None:
        entry = self._pending.pop(name, None)
        if entry is None:
            return None
        seen, version, future = entry
        got = future.result()
        if seen is None:  # made in the thread
            made, version, order = got
            seen, got = made[-1], None if order is None else (order, None)
        if got is None:
            return None
        same = (seen.data_ptr() == z.data_ptr() and seen.shape == z.shape and seen.stride() == z.stride()
                and z._version == version)
        return got if same else None


def _ranked(z: torch.Tensor, proto: torch.Tensor | None) -> tuple[torch.Tensor, Matched | None]:
    """The sort thread's job: the order of ``z``'s rows and, given the prototype, ``matched`` (the scatter, the
    difference and the squared mean were a tenth of a class step's overhead on the CPU; here they run beside the
    forward as well, the same operations on the same values)."""
    order = argsort_rows(z.reshape(-1, z.shape[-1]))
    return order, None if proto is None else matched(z, proto, order)


def _sortable(z: torch.Tensor) -> bool:
    """Rows that ``argsort_rows`` sorts in NumPy (those it would hand to torch are left to the loss)."""
    return z.device.type == "cpu" and z.numel() >= 4096 and z.shape[-1] < 2**32


class _First:
    """The made tuple of a ``started_making`` future."""

    def __init__(self, future: Future) -> None:
        self._future = future

    def result(self) -> tuple[torch.Tensor, ...]:
        return self._future.result()[0]


class _ScaledByConstant(torch.autograd.Function):
    """``z * w`` with ``w`` constant, whose value ``zw`` was already made (detached): returned as a view of
    ``zw``, so a sort ``RanksAhead`` started on ``zw`` is taken for it."""

    @staticmethod
    def forward(ctx, z: torch.Tensor, w: torch.Tensor, zw: torch.Tensor) -> torch.Tensor:  # noqa: ANN001
        ctx.save_for_backward(w)
        return zw.view_as(zw)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:  # noqa: ANN001
        (w,) = ctx.saved_tensors
        return grad * w, None, None


def scaled_by_constant(z: torch.Tensor, w: torch.Tensor, zw: torch.Tensor) -> torch.Tensor:
    """``z * w`` for the loss, where ``zw = z.detach() * w`` was made ahead (its sort started): the same values and
    gradient, without computing the product again."""
    return _ScaledByConstant.apply(z, w, zw)


@contextmanager
def ranks_ahead(device: torch.device | str, skip_tokens: int = 0, enabled: bool = True,
                protos: Mapping[str, torch.Tensor] | None = None) -> Iterator[RanksAhead]:
    """A ``RanksAhead`` with its thread for the block (none off the CPU or when not ``enabled``); the thread ends
    with the block. ``protos``: per layer, the prototype whose matched targets the thread makes too."""
    if not enabled or torch.device(device).type != "cpu":
        yield RanksAhead(None, skip_tokens)
        return
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vital-sort")
    try:
        yield RanksAhead(pool, skip_tokens, protos)
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@functools.lru_cache(maxsize=64)
def _positions(n: int) -> np.ndarray:
    """0..n-1 as int64, made once per row length (read-only: shared between calls)."""
    out = np.arange(n, dtype=np.int64)
    out.flags.writeable = False
    return out


def weighted_sorted(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Sorted values of ``z`` (N, C, P) as the quantiles of the distribution in which position p counts ``w[n, p]``
    (N, P): (N, C, P). Equal weights give ``sort(z)`` exactly; a position of weight zero does not count at all."""
    values, idx = torch.sort(z, dim=-1)
    cum = w.to(z.dtype).unsqueeze(1).expand_as(z).gather(-1, idx).cumsum(-1)
    cum = cum / cum[..., -1:].clamp(min=torch.finfo(z.dtype).tiny)
    levels = (torch.arange(z.shape[-1], device=z.device, dtype=z.dtype) + 0.5) / z.shape[-1]
    pos = torch.searchsorted(cum.contiguous(), levels.expand_as(cum).contiguous()).clamp(max=z.shape[-1] - 1)
    return values.gather(-1, pos)


def _position_weights(maps: torch.Tensor, out: torch.Tensor) -> torch.Tensor | None:
    """Per-position weights (N, H*W) for a conv map ``out`` (N, C, H, W), pooled from (N, S, S) maps; None for
    other layer shapes (tokens), which are left unweighted."""
    if out.dim() != 4:
        return None
    return F.adaptive_avg_pool2d(maps[:, None].to(out.device, torch.float32), out.shape[-2:]).flatten(1)


@torch.no_grad()
def compute_prototypes(
    module: nn.Module,
    layers: Sequence[str],
    images: torch.Tensor,
    batch_size: int = 16,
    model_name: str = "",
    skip_tokens: int = 0,
    weights: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Average, over the reference images (N, 3, H, W; already normalized), of each layer's sorted features; with
    ``weights`` (N, H, W), of each image's weighted quantiles (``weighted_sorted``) on conv layers."""
    device = next(iter(module.parameters())).device
    sums: dict[str, torch.Tensor] = {}
    with capture(module, layers, model_name) as feats:
        for start in range(0, images.shape[0], batch_size):
            module(images[start : start + batch_size].to(device))
            for name in layers:
                z = as_channels_positions(feats[name], skip_tokens).float()
                out = feats[name][0] if isinstance(feats[name], (tuple, list)) else feats[name]
                w = _position_weights(weights[start : start + batch_size], out) if weights is not None else None
                s = (weighted_sorted(z, w) if w is not None else torch.sort(z, dim=-1).values).sum(0)
                sums[name] = s if name not in sums else sums[name] + s
    return {name: s / images.shape[0] for name, s in sums.items()}


def total_variation(x: torch.Tensor) -> torch.Tensor:
    """Per-item TV as the authors define it: the unsquared norm of neighbour differences, summed over the four
    directions (left/right and up/down each count twice)."""
    dx = x[..., :, 1:] - x[..., :, :-1]
    dy = x[..., 1:, :] - x[..., :-1, :]
    return 2 * (dx.flatten(1).norm(dim=1) + dy.flatten(1).norm(dim=1))


def l2_norm(x: torch.Tensor) -> torch.Tensor:
    """Per-item unsquared L2 norm of the image."""
    return x.flatten(1).norm(dim=1)
