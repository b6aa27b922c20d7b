"""Tuning sweep for the `quick` preset (500 steps): Lite0 top-1 and Lite2 (judge) top-1/top-5 per setting.

    python benchmarks/sweep_quick.py --device cuda          # what made the table in benchmarks/README.md
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import replace

import torch

from vital_fv import ClassTarget, Job, load_model, references, visualize_batch
from vital_fv.device import resolve_device
from vital_fv.methods.vital import OPTIM_PRESETS

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from bench_engine import Tally  # noqa: E402

VARIANTS = {
    "quick (current)": {},
    "lr 0.5": {"lr": 0.5},
    "lr 2": {"lr": 2.0},
    "lr 4": {"lr": 4.0},
    "warmup 10": {"warmup": 10},
    "warmup 50": {"warmup": 50},
    "jitter 15": {"jitter": 15},
    "jitter 45": {"jitter": 45},
    "betas 0.9,0.999": {"betas": (0.9, 0.999)},
    "lr 2, warmup 50": {"lr": 2.0, "warmup": 50},
    "lr 2, jitter 15": {"lr": 2.0, "jitter": 15},
    "paper schedule, 500 steps": {"warmup": 100},
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--only", help="comma-separated variant names")
    ap.add_argument("--steps", type=int, help="override the step count (smoke tests only)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    seeds = [int(s) for s in args.seeds.split(",")]
    spec = load_model("efficientnet_lite0").to(device)
    judge = load_model("efficientnet_lite2").to(device)
    names = args.only.split(",") if args.only else list(VARIANTS)
    print("| variant | Lite0 top-1 | Lite2 top-1 | Lite2 top-5 | mean judge p(target) | s |")
    print("|---|---|---|---|---|---|")
    for name in names:
        preset = replace(OPTIM_PRESETS["quick"], name=name, **VARIANTS[name])
        if args.steps:
            preset = replace(preset, steps=args.steps, warmup=min(preset.warmup, args.steps // 5))
        tally = Tally(spec, judge)
        t = time.perf_counter()
        for cname in references.bundled_classes():
            target = ClassTarget(cname)
            index, _ = target.resolve(spec.class_names)
            res = visualize_batch(spec, [Job(target, references.bundled(cname), s) for s in seeds], preset=preset,
                                  device=device, progress=False)
            tally.add(torch.stack([r.image for r in res]), index)
        print(f"| {name} | {tally.cells()} | {tally.p_judge / tally.n:.3f} | {time.perf_counter() - t:.0f} |",
              flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
