"""VITAL beside the baselines (issue: the methods VITAL is compared against), on Lite0 and the bundled demo classes:
Lite0's own top-1 on each method's images, and EfficientNet-Lite2's top-1/top-5 (a judge the optimization never
sees) — the comparison of the paper's Table 1 on models and data that run here.

    python benchmarks/bench_methods.py --seeds 0 --out benchmarks/results/cpu_methods.md        # ~15 min on this CPU

With ``--save DIR`` every image is kept with its record, for `vital evaluate` (the Table 1 setting 1):

    python benchmarks/bench_methods.py --seeds 0,1,2 --save /tmp/vital-imagenet
    vital evaluate /tmp/vital-imagenet --judge efficientnet_lite2 --fid-model efficientnet_lite0 --out report/
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import Tally  # noqa: E402

from vital_fv import ClassTarget, Job, load_model, references  # noqa: E402
from vital_fv.device import resolve_device  # noqa: E402
from vital_fv.methods import get_method, method_names, run_method  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(method_names()), help="registered methods (default: all)")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, help="override steps (smoke tests only)")
    ap.add_argument("--out")
    ap.add_argument("--save", help="folder to keep every image and record in (for vital evaluate)")
    args = ap.parse_args()
    device = resolve_device(args.device)
    seeds = [int(s) for s in args.seeds.split(",")]
    spec = load_model("efficientnet_lite0").to(device)
    judge = load_model("efficientnet_lite2").to(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    classes = ", ".join(references.bundled_classes())
    lines = [f"device: {name}; preset {args.preset}; seeds {args.seeds}; classes {classes}", "",
             "| method | steps | images | Lite0 top-1 | Lite2 top-1 | Lite2 top-5 | s/image |",
             "|---|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for method in args.methods.split(","):
        tally = Tally(spec, judge)
        wall = 0.0
        steps = 0
        for cname in references.bundled_classes():
            target = ClassTarget(cname)
            index, _ = target.resolve(spec.class_names)
            t = time.perf_counter()
            refs = references.bundled(cname) if get_method(method).needs_references else None
            jobs = [Job(target, refs, s) for s in seeds]
            res = run_method(method, spec, jobs, preset=args.preset, steps=args.steps, device=device, progress=False)
            wall += time.perf_counter() - t
            steps = res[0].record["steps_done"]
            if args.save:
                for job, r in zip(jobs, res, strict=True):
                    r.save(Path(args.save) / method / f"{cname}-s{job.seed}.png", overwrite=True)
            tally.add(torch.stack([r.image for r in res]), index)
        lines.append(f"| {method} | {steps} | {tally.n} | {tally.cells()} | {wall / tally.n:.1f} |")
        print(lines[-1], flush=True)
    if args.out:
        Path(args.out).write_text(f"command: {' '.join(sys.argv)}\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
