"""Per-image step time by batch size for every registered method (issue 30 item 2): does a batch pay?

For each method and batch size, ``--steps`` real steps of ``run_method`` on class targets (VITAL from the bundled
references of its class), the median step after the first two divided by the batch size; sizes interleaved
within each round (1, 2, 4, 8, 1, 2, ...), the median over rounds. The last column is the best batch's per-image
time over batch 1's (below 1: batching pays). One thread unless ``--threads``.

    PYTHONPATH=src python benchmarks/bench_batching.py --out benchmarks/results/cpu_batching.md
    PYTHONPATH=src python benchmarks/bench_batching.py --device cuda --sizes 1,8,32 --threads 0
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def per_image_step(method: str, spec, jobs, size: int, steps: int, device, preset: str, cache) -> float:
    from vital_fv.methods import run_method

    batch = [jobs[i % len(jobs)] for i in range(size)]
    options = {"cache": cache} if method == "vital" else {}
    results = run_method(method, spec, batch, preset=preset, steps=steps, device=device, progress=False, **options)
    times = results[0].record["step_seconds"]
    return statistics.median(times[2:] or times) / size


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--methods", help="comma-separated (default: every registered method)")
    ap.add_argument("--sizes", default="1,2,4,8")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (0: torch's default)")
    ap.add_argument("--out", help="also write the table (markdown) to this file")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from vital_fv import ClassTarget, Job, load_model, references
    from vital_fv.cache import PrototypeCache
    from vital_fv.device import resolve_device
    from vital_fv.methods import get_method, method_names

    device = resolve_device(args.device)
    spec = load_model(args.model).to(device)
    sizes = [int(s) for s in args.sizes.split(",")]
    methods = args.methods.split(",") if args.methods else method_names()
    bundled = references.bundled_classes()
    rows = []
    with tempfile.TemporaryDirectory() as d:
        cache = PrototypeCache(d)
        for method in methods:
            m = get_method(method)
            jobs = [Job(ClassTarget(c), references.bundled(c) if m.needs_references else None, i)
                    for i, c in enumerate(bundled)]
            per_image_step(method, spec, jobs, max(sizes), 2, device, args.preset, cache)  # references, warm-up
            got: dict[int, list[float]] = {s: [] for s in sizes}
            for _ in range(args.rounds):
                for s in sizes:
                    got[s].append(per_image_step(method, spec, jobs, s, args.steps, device, args.preset, cache))
            med = {s: statistics.median(v) for s, v in got.items()}
            best = min(med, key=med.get)
            rows.append(f"| {method} | " + " | ".join(f"{med[s] * 1000:.1f}" for s in sizes)
                        + f" | {best} | {med[best] / med[sizes[0]]:.2f} |")
            print(rows[-1], flush=True)
            text = table(args, device, sizes, rows)
            if args.out:  # after every method, so a run cut by a time limit keeps what it measured
                Path(args.out).write_text(f"command: {' '.join(sys.argv)}\n\n{text}\n")
    print(table(args, device, sizes, rows))
    return 0


def table(args: argparse.Namespace, device: torch.device, sizes: list[int], rows: list[str]) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    head = (f"{args.model}, {name}, torch {torch.__version__}, {torch.get_num_threads()} thread(s), preset "
            f"{args.preset}; ms per image-step (median step after the first two of {args.steps}, over "
            f"{args.rounds} rounds) at batch " + ", ".join(map(str, sizes)) + f"; run at {time.strftime('%F %H:%M')}")
    lines = [head, "", "| method | " + " | ".join(f"batch {s}" for s in sizes) + " | best | best / batch "
             f"{sizes[0]} |", "|---|" + "---|" * (len(sizes) + 2), *rows]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
