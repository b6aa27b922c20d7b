"""Hatching (issue 14): the quick preset on Lite0 with variants of the loop, over the bundled classes (seed 0):
Lite0 top-1, Lite2 top-5 (Lite2 never sees the optimization) and the image spectrum (share of power above half
Nyquist, log-log slope; the references' own share is about 0.03), images saved for a look.

    python benchmarks/bench_hatching.py base "{}"                          # ~2 min a variant on this CPU
    python benchmarks/bench_hatching.py gblur1 "{'grad_blur': 1.0}"        # OptimPreset fields to change
    python benchmarks/bench_hatching.py zoom10 "{'scale_jitter': 0.1}" --save /tmp/hatch
"""

from __future__ import annotations

import argparse
import ast
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from vital_fv import ClassTarget, Job, load_model, metrics, references, visualize_batch
from vital_fv.methods.vital import OPTIM_PRESETS


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name")
    ap.add_argument("changes", help="a Python dict of OptimPreset fields, e.g. \"{'grad_blur': 1.0}\"")
    ap.add_argument("--preset", default="quick", help="the OPTIM_PRESETS entry to change (default quick)")
    ap.add_argument("--steps", type=int, help="default: the preset's")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", help="folder for the images (NAME-CLASS.png)")
    args = ap.parse_args()
    changes = ast.literal_eval(args.changes)
    spec, judge = load_model("efficientnet_lite0"), load_model("efficientnet_lite2")
    classes = references.bundled_classes()
    preset = replace(OPTIM_PRESETS[args.preset], name=args.name, **changes)
    jobs = [Job(ClassTarget(c), references.bundled(c), args.seed) for c in classes]
    t = time.perf_counter()
    res = visualize_batch(spec, jobs, preset=preset, steps=args.steps, progress=False)
    wall = time.perf_counter() - t
    images = torch.stack([r.image for r in res])
    judged = judge.top5(F.interpolate(images, size=judge.preprocess.input_size, mode="bilinear", antialias=True))
    rows = []
    for c, r, jt in zip(classes, res, judged, strict=True):
        index = spec.class_names.index(c)
        st = metrics.spectrum_stats(r.image)
        rows.append((c, r.top5[0]["index"] == index, index in [t["index"] for t in jt], st["hf_share"], st["slope"]))
        if args.save:
            r.save(Path(args.save) / f"{args.name}-{c}.png", overwrite=True)
    n = len(rows)
    print(f"| {args.name} | {args.preset} | {args.seed} | {changes} | {sum(r[1] for r in rows)}/{n} | "
          f"{sum(r[2] for r in rows)}/{n} | "
          f"{sum(r[3] for r in rows) / n:.3f} | {sum(r[4] for r in rows) / n:.2f} | {wall:.0f} |")
    for r in rows:
        print(f"  {r[0]}: Lite0 top-1 {r[1]}, Lite2 top-5 {r[2]}, HF share {r[3]:.3f}, slope {r[4]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
