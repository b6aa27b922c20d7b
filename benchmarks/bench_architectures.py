"""Step cost on the paper's five architectures (issue: the paper's five architectures): seconds per VITAL step
divided by seconds per plain forward+backward at batch 1, and the peak memory of a step. Random weights (speed
does not depend on them), each model's own preset (SPEC §3). "step" is the step as bench_engine.speed rebuilds it,
timed interleaved with the plain pass; "loop step" is the median step of the library's own loop (``visualize``'s
record: jitter, transparency map, schedule and loss curves included), in 3 rounds of plain passes then a short
run (its first 2 steps left out), divided by the median plain pass of those rounds.

    python benchmarks/bench_architectures.py --out benchmarks/results/cpu_architectures.md
    python benchmarks/bench_architectures.py --device cuda --paper-image     # on a GPU: also s per 2000-step image
"""

from __future__ import annotations

import argparse
import gc
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import speed  # noqa: E402

from vital_fv import ClassTarget, load_model, references, visualize  # noqa: E402
from vital_fv.device import resolve_device  # noqa: E402

MODELS = ["resnet50", "densenet121", "convnext_base", "vit_l_16", "vit_l_32"]


def loop_speed(spec, device: torch.device, reps: int, rounds: int = 3) -> tuple[float, float]:  # noqa: ANN001
    """Median plain forward+backward and median step of ``visualize`` itself, in alternating rounds."""
    refs = references.bundled("espresso", n=8)
    size = spec.preprocess.input_size
    x = torch.randn(1, 3, size, size, device=device, requires_grad=True)
    per_round = max(2, reps // rounds)
    plain, loop = [], []
    for _ in range(rounds):
        for _ in range(per_round):
            t = time.perf_counter()
            spec.module(x).sum().backward()
            x.grad = None
            if device.type == "cuda":
                torch.cuda.synchronize()
            plain.append(time.perf_counter() - t)
        res = visualize(spec, ClassTarget(1), refs, steps=per_round + 2, device=device, progress=False, cache=False)
        loop += res.record["step_seconds"][2:]
    return statistics.median(plain), statistics.median(loop)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--paper-image", action="store_true", help="time one 2000-step image per model")
    ap.add_argument("--out")
    args = ap.parse_args()
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    lines = [f"device: {name}; torch {torch.__version__}; threads {torch.get_num_threads()}; batch 1; random weights",
             "", "| model | plain fwd+bwd (ms) | VITAL step (ms) | ratio (target <= 1.15) "
             "| loop step (ms) | loop ratio | peak memory of a step (MB) |"
             + (" s per image (2000 steps) |" if args.paper_image else ""),
             "|---|---|---|---|---|---|---|" + ("---|" if args.paper_image else "")]
    print("\n".join(lines), flush=True)
    for model in args.models.split(","):
        torch.manual_seed(0)
        spec = load_model(model, random_init=True).to(device)
        s = speed(spec, device, 1, args.reps, warmup=2)
        plain, loop = loop_speed(spec, device, args.reps)
        row = (f"| {model} | {s['plain'] * 1000:.0f} | {s['step'] * 1000:.0f} | {s['ratio']:.2f} "
               f"| {loop * 1000:.0f} | {loop / plain:.2f} | {s['peak_mb']:.0f} |")
        if args.paper_image:
            t = time.perf_counter()
            visualize(spec, ClassTarget(1), references.bundled("espresso"), preset="paper", device=device,
                      progress=False, cache=False)
            row += f" {time.perf_counter() - t:.1f} |"
        lines.append(row)
        print(row, flush=True)
        if args.out:  # after every model, so a run cut by a time limit keeps what it measured
            Path(args.out).write_text(f"command: {' '.join(sys.argv)}\n\n" + "\n".join(lines) + "\n")
        del spec
        gc.collect()
    return 0


if __name__ == "__main__":
    sys.exit(main())
