"""Where the sort-matching overhead of ResNet50 / DenseNet121 goes, and what was tried against it (issue: the
paper's five architectures; benchmarks/README.md, "What was tried and not kept"). Random weights, batch 1, CPU.

(a) the library's loop step / plain forward+backward, with the exact argsort, and with the argsort replaced by a
    permutation cached from the first step (what the step would cost if sorting were free);
(b) the loss part of a step (all matched layers' argsort + targets + squared error): one thread as the library
    does, the rows of every layer split over two threads, and the same split after a 20 ms pause (by then torch's
    OpenMP workers have stopped spin-waiting);
(c) the library's loop with channels-last convolution weights against the model's own layout, alternating.

    python benchmarks/bench_sort.py --out benchmarks/results/cpu_sort.md      # ~4 min
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

import vital_fv.matching as M
import vital_fv.methods.vital as O
from vital_fv import ClassTarget, load_model, references, visualize
from vital_fv.features import as_channels_positions, capture
from vital_fv.transforms import roll


def loop_steps(spec, steps: int = 8, rounds: int = 3) -> tuple[float, float]:  # noqa: ANN001
    """Median plain forward+backward and median library step, in alternating rounds."""
    refs = references.bundled("espresso", n=8)
    size = spec.preprocess.input_size
    x = torch.randn(1, 3, size, size, requires_grad=True)
    plain, loop = [], []
    for _ in range(rounds):
        for _ in range(steps):
            t = time.perf_counter()
            spec.module(x).sum().backward()
            x.grad = None
            plain.append(time.perf_counter() - t)
        res = visualize(spec, ClassTarget(1), refs, steps=steps + 2, progress=False, cache=False)
        loop += res.record["step_seconds"][2:]
    return statistics.median(plain), statistics.median(loop)


@contextlib.contextmanager
def free_sort():
    """argsort_rows answers from a cache keyed by shape: the sort's cost taken out, everything else kept."""
    real, cache = M.argsort_rows, {}

    def cached(rows: torch.Tensor) -> torch.Tensor:
        key = tuple(rows.shape)
        if key not in cache:
            cache[key] = real(rows)
        return cache[key]

    M.argsort_rows = cached
    try:
        yield
    finally:
        M.argsort_rows = real


def _keys(a: np.ndarray, out: np.ndarray) -> None:
    bits = a.view(np.int32)
    out[...] = bits ^ ((bits >> 31) & np.int32(0x7FFFFFFF))
    out <<= 32
    out |= np.arange(a.shape[-1], dtype=np.int64)
    out.sort(axis=-1)
    out &= np.int64(0xFFFFFFFF)


def loss_part(spec, mode: str, pause: float = 0.0, reps: int = 12) -> float:  # noqa: ANN001
    """Median ms of the loss part of a step: 'single' (the library's own code) or 'split' over two threads."""
    mod, names = spec.module, list(spec.preset.layers)
    size = spec.preprocess.input_size
    x = torch.randn(1, 3, size, size, requires_grad=True)
    times = []
    with capture(mod, names) as feats:
        for i in range(reps + 2):
            mod(roll(x, [(3, -5)]))
            zs = [as_channels_positions(feats[n]) for n in names]
            if pause:
                time.sleep(pause)
            t = time.perf_counter()
            if mode == "single":
                idx = [M.argsort_rows(z.detach().reshape(-1, z.shape[-1])) for z in zs]
            else:
                arrs = [z.detach().reshape(-1, z.shape[-1]).numpy() for z in zs]
                outs = [np.empty(a.shape, np.int64) for a in arrs]
                halves = [(a[a.shape[0] // 2:], o[a.shape[0] // 2:]) for a, o in zip(arrs, outs, strict=True)]
                worker = threading.Thread(target=lambda h=halves: [_keys(*j) for j in h])
                worker.start()
                for a, o in zip(arrs, outs, strict=True):
                    _keys(a[: a.shape[0] // 2], o[: a.shape[0] // 2])
                worker.join()
                idx = [torch.from_numpy(o) for o in outs]
            loss = 0.0
            for z, i_ in zip(zs, idx, strict=True):
                with torch.no_grad():
                    target = torch.empty_like(z).scatter_(-1, i_.view(z.shape), z.detach())
                loss = loss + ((z - target) ** 2).mean()
            float(loss.detach())
            if i >= 2:
                times.append(time.perf_counter() - t)
            loss.backward()
            x.grad = None
    return statistics.median(times) * 1000


def channels_last_ab(spec, steps: int = 8, rounds: int = 3) -> tuple[float, float]:  # noqa: ANN001
    refs = references.bundled("espresso", n=8)
    real = O.frozen_on

    @contextlib.contextmanager
    def nhwc(module, device):  # noqa: ANN001, ANN202
        with real(module, device):
            moved = [(p, p.data) for p in module.parameters() if p.dim() == 4]
            for p, d in moved:
                p.data = d.contiguous(memory_format=torch.channels_last)
            try:
                yield
            finally:
                for p, d in moved:
                    p.data = d

    times: dict[str, list[float]] = {"own": [], "nhwc": []}
    try:
        for _ in range(rounds):
            for name, fz in (("own", real), ("nhwc", nhwc)):
                O.frozen_on = fz
                res = visualize(spec, ClassTarget(1), refs, steps=steps + 2, progress=False, cache=False)
                times[name] += res.record["step_seconds"][2:]
    finally:
        O.frozen_on = real
    return statistics.median(times["own"]) * 1000, statistics.median(times["nhwc"]) * 1000


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out")
    args = ap.parse_args()
    lines = [f"device: CPU; torch {torch.__version__}; threads {torch.get_num_threads()}; batch 1; random weights",
             "", "| model | (a) loop ratio | (a) loop ratio, sort free | (b) loss part ms: one thread | two threads "
             "| two threads after 20 ms pause | (c) loop ms, own layout | channels-last |",
             "|---|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for name in ("resnet50", "densenet121", "efficientnet_lite0"):
        torch.manual_seed(0)
        spec = load_model(name) if name.startswith("efficientnet") else load_model(name, random_init=True)
        plain, loop = loop_steps(spec)
        with free_sort():
            plain_f, loop_f = loop_steps(spec)
        single, split, split_paused = (loss_part(spec, "single"), loss_part(spec, "split"),
                                       loss_part(spec, "split", pause=0.02))
        own, nhwc = channels_last_ab(spec)
        row = (f"| {name} | {loop / plain:.2f} | {loop_f / plain_f:.2f} | {single:.1f} | {split:.1f} "
               f"| {split_paused:.1f} | {own:.1f} | {nhwc:.1f} |")
        lines.append(row)
        print(row, flush=True)
    if args.out:
        Path(args.out).write_text(f"command: {' '.join(sys.argv)}\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
