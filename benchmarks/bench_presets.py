"""Quick vs paper preset (issue 14, item 3): Lite0, the bundled classes x seeds, references as `vital visualize`
makes them (the bundled photo, evidence crops). Per image: Lite0 top-1, Lite2 top-1 and top-5 (Lite2 never sees
the optimization), the robust view (Lite2 top-5 after a 4x down- and up-sample, which hatching does not survive)
and the spectrum's high-frequency share. Each run appends one JSON line per image to ``--rows``; ``--table``
prints the table of everything recorded there, so variants can run one after another (run them alone: two at once
on a 2-core CPU take 3-4x as long each).

    python benchmarks/bench_presets.py quick vital quick --seeds 0,1,2 --save /tmp/presets     # ~8 min on this CPU
    python benchmarks/bench_presets.py paper vital paper --seeds 0,1,2 --save /tmp/presets     # ~30 min
    python benchmarks/bench_presets.py quick-before vital quick "{'grad_blur': 0.0}" --crops random --seeds 0
    python benchmarks/bench_presets.py fourier fourier quick --seeds 0 --save /tmp/presets
    python benchmarks/bench_presets.py --table
"""

from __future__ import annotations

import argparse
import ast
import json
import time
from collections import defaultdict
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

ROWS = Path("/tmp/bench_presets.jsonl")


def judged(judge, images: torch.Tensor, down: int = 1) -> list[list[int]]:
    """Lite2's top-5 class indices, after an optional ``down``x antialiased down- and bilinear up-sample."""
    if down > 1:
        small = F.interpolate(images, scale_factor=1 / down, mode="bilinear", antialias=True)
        images = F.interpolate(small, size=images.shape[-2:], mode="bilinear", align_corners=False)
    size = judge.preprocess.input_size
    top = judge.top5(F.interpolate(images, size=size, mode="bilinear", antialias=True).clamp(0, 1))
    return [[t["index"] for t in row] for row in top]


def run(args: argparse.Namespace) -> None:
    from vital_fv import ClassTarget, Job, load_model, metrics, references
    from vital_fv.methods import get_method, get_preset, run_method

    spec, judge = load_model("efficientnet_lite0"), load_model("efficientnet_lite2")
    method = get_method(args.method)
    preset = get_preset(method, args.preset)
    changes = ast.literal_eval(args.changes)
    if changes:
        preset = replace(preset, **changes)
    classes = references.bundled_classes()
    refs = {}
    if method.needs_references:
        refs = {c: references.resolve(spec, ClassTarget(c), crops=args.crops, progress=False) for c in classes}
    for seed in args.seeds:
        jobs = [Job(ClassTarget(c), refs.get(c), seed) for c in classes]
        t = time.perf_counter()
        res = run_method(method, spec, jobs, preset=preset, progress=False)
        wall = time.perf_counter() - t
        images = torch.stack([r.image for r in res])
        plain, robust = judged(judge, images), judged(judge, images, down=4)
        with args.rows.open("a") as f:
            for c, r, top, rob in zip(classes, res, plain, robust, strict=True):
                index = spec.class_names.index(c)
                row = {"variant": args.name, "method": args.method, "preset": args.preset, "changes": changes,
                       "crops": args.crops, "class": c, "seed": seed,
                       "lite0_top1": r.top5[0]["index"] == index, "lite2_top1": top[0] == index,
                       "lite2_top5": index in top, "robust_top5": index in rob,
                       "hf_share": metrics.spectrum_stats(r.image)["hf_share"], "seconds": wall / len(classes)}
                f.write(json.dumps(row) + "\n")
                print(row, flush=True)
                if args.save:
                    r.save(Path(args.save) / f"{args.name}-{c}-s{seed}.png", overwrite=True)


def table(rows_file: Path) -> None:
    groups: dict[str, list[dict]] = defaultdict(list)
    for line in rows_file.read_text().splitlines():
        row = json.loads(line)
        groups[row["variant"]].append(row)
    print("| variant | method | preset | changes | crops | images | Lite0 top-1 | Lite2 top-1 | Lite2 top-5 | "
          "robust top-5 (4x down/up) | HF share | s/image |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for name, rows in groups.items():
        n = len(rows)
        pct = {k: 100 * sum(r[k] for r in rows) / n for k in ("lite0_top1", "lite2_top1", "lite2_top5", "robust_top5")}
        r0 = rows[0]
        print(f"| {name} | {r0['method']} | {r0['preset']} | {r0['changes'] or '-'} | {r0['crops']} | {n} | "
              f"{pct['lite0_top1']:.0f}% | {pct['lite2_top1']:.0f}% | {pct['lite2_top5']:.0f}% | "
              f"{pct['robust_top5']:.0f}% | {sum(r['hf_share'] for r in rows) / n:.3f} | "
              f"{sum(r['seconds'] for r in rows) / n:.0f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", nargs="?", help="the variant's name in the table")
    ap.add_argument("method", nargs="?", default="vital")
    ap.add_argument("preset", nargs="?", default="quick")
    ap.add_argument("changes", nargs="?", default="{}", help="preset fields to change, e.g. \"{'grad_blur': 0.0}\"")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--crops", default="evidence", choices=["evidence", "random"])
    ap.add_argument("--save", help="folder for the images (NAME-CLASS-sSEED.png)")
    ap.add_argument("--rows", type=Path, default=ROWS, help=f"JSON lines of every image measured (default {ROWS})")
    ap.add_argument("--table", action="store_true", help="print the table of --rows and stop")
    args = ap.parse_args()
    if args.table:
        table(args.rows)
        return 0
    if not args.name:
        ap.error("give a variant name (or --table)")
    args.seeds = [int(s) for s in args.seeds.split(",")]
    run(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
