"""One photo of a scene per class (issue 26, item 3): the class object small (about a fifth of the frame or less),
pasted onto a larger distractor photo at a position and scale of its own, with a second, smaller copy of the
object in another colour (several objects of one kind, differing in appearance), so the class's colour is not the
frame's. That one photo is the class's only reference, given as `vital visualize --refs DIR` gives it (few
references are completed by default); the variants differ in how (`--crops`, `--ref-weighting`). Lite0 is
optimized, Lite2 (never optimized against) judges: its probability for the distractor in the visualization
against the references' own (the scene as random crops show it; the bar: at most a third), and whether the
target is in its top-5 (the bar: every class and seed).

    python benchmarks/bench_scenes.py --seeds 0,1,2 --save /tmp/scenes                 # ~8 min a variant
    python benchmarks/bench_scenes.py --scenes bundled --variants today,objects+weighted  # the plain photos
    python benchmarks/bench_scenes.py --variants fourier,maco --save /tmp/scenes         # the baselines
"""

from __future__ import annotations

import argparse
import ast
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_few_refs import judge_probs  # the same judge as the side-by-side benchmark

from vital_fv import ClassTarget, Job, load_model, references, run_method, visualize_batch
from vital_fv.methods.vital import OPTIM_PRESETS
from vital_fv.result import png_bytes

VARIANTS = {  # name: (crops, weighting); the baselines use no references
    "random": ("random", "none"),
    "today": ("evidence", "none"),
    "objects": ("objects", "none"),
    "weighted": ("evidence", "evidence"),
    "objects+weighted": ("objects", "evidence"),
    "fourier": None,
    "maco": None,
}
FRAME = (256, 320)  # height, width of a scene


def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.interpolate(x[None].float(), size=(h, w), mode="bilinear", antialias=True)[0]


def _cover(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Resize so the frame is covered, then centre-crop to it."""
    s = max(h / x.shape[1], w / x.shape[2])
    y = _resize(x, round(x.shape[1] * s), round(x.shape[2] * s))
    top, left = (y.shape[1] - h) // 2, (y.shape[2] - w) // 2
    return y[:, top : top + h, left : left + w]


def _hue_rotated(x: torch.Tensor, turn: float) -> torch.Tensor:
    from torchvision.transforms import functional as TF

    return TF.adjust_hue((x / 255).clamp(0, 1), turn) * 255


def scene(target: torch.Tensor, distractor: torch.Tensor, k: int) -> torch.Tensor:
    """The distractor filling the frame, the target pasted small at the k-th position and scale, and a smaller
    copy of the target in another colour elsewhere (uint8 CHW)."""
    h, w = FRAME
    out = _cover(distractor, h, w)
    g = torch.Generator().manual_seed(k)
    area = 0.12 + 0.08 * torch.rand(1, generator=g).item()  # of the frame: a fifth or less
    aspect = target.shape[2] / target.shape[1]
    th = round((area * h * w / aspect) ** 0.5)
    tw = min(w - 2, round(th * aspect))
    th = min(h - 2, th)
    main = _resize(target, th, tw)
    top = int(torch.randint(0, h - th + 1, (1,), generator=g))
    left = int(torch.randint(0, w - tw + 1, (1,), generator=g))
    out[:, top : top + th, left : left + tw] = main
    sh, sw = max(8, th * 3 // 5), max(8, tw * 3 // 5)  # the second, smaller one, in another colour
    copy = _hue_rotated(_resize(target, sh, sw), 0.33)
    st, sl = (h - sh - 4, 4) if left > w // 2 else (4, w - sw - 4)
    out[:, st : st + sh, sl : sl + sw] = copy
    return out.round().clamp(0, 255).to(torch.uint8)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--variants", default="today,objects,weighted,objects+weighted")
    ap.add_argument("--scenes", choices=["scenes", "bundled", "many"], default="scenes",
                    help="scenes: one scene photo per class; bundled: the plain bundled photo; many: 50 scenes per "
                         "class, the class object at a different place and size in each, always with the same "
                         "co-occurring object (item 5)")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--changes", default="{}", help="OptimPreset fields to change, a Python dict")
    ap.add_argument("--classes", help="only these bundled classes (comma-separated); the scenes stay the same")
    ap.add_argument("--save", help="folder for the scenes, the images and a JSON line per class x variant")
    args = ap.parse_args()
    bad = [v for v in args.variants.split(",") if v not in VARIANTS]
    if bad:
        ap.error(f"--variants: unknown {bad}; choose from {', '.join(VARIANTS)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    spec, judge = load_model("efficientnet_lite0"), load_model("efficientnet_lite2")
    classes = references.bundled_classes()
    photos = {c: references.bundled(c).images[0] for c in classes}
    save = Path(args.save) if args.save else None
    work = Path(tempfile.mkdtemp(prefix="vital-scenes-"))
    folders = {}
    for k, c in enumerate(classes):
        d = classes[(k + 1) % len(classes)]
        folders[c] = work / c
        folders[c].mkdir()
        if args.scenes == "many":
            for j in range(50):
                img = scene(photos[c], photos[d], 1000 * (k + 1) + j)
                (folders[c] / f"scene{j:02d}.png").write_bytes(png_bytes(img.float() / 255))
        else:
            img = scene(photos[c], photos[d], k) if args.scenes == "scenes" else photos[c]
            (folders[c] / "photo.png").write_bytes(png_bytes(img.float() / 255))
        if save:
            save.mkdir(parents=True, exist_ok=True)
            (save / f"{args.scenes}-{c}.png").write_bytes(png_bytes(img.float() / 255))
    preset = replace(OPTIM_PRESETS[args.preset], **ast.literal_eval(args.changes))
    print(f"scenes: {args.scenes}; preset {args.preset}; seeds {args.seeds}")
    print("| variant | class | distractor | refs P(distractor) | vis P(distractor), mean | at most a third | "
          "target in Lite2 top-5 | Lite0 top-1 | crops around the object |")
    print("|---|---|---|---|---|---|---|---|---|")
    only = set(args.classes.split(",")) if args.classes else set(classes)
    for variant in args.variants.split(","):
        t = time.perf_counter()
        sets, idx, dis = {}, {}, {}
        for k, c in enumerate(classes):
            idx[c] = spec.class_names.index(c)
            dis[c] = spec.class_names.index(classes[(k + 1) % len(classes)])
            if VARIANTS[variant] is not None and c in only:
                crops, weighting = VARIANTS[variant]
                sets[c] = references.resolve(spec, ClassTarget(idx[c]), folders[c], n=50, crops=crops,
                                             weighting=weighting, device="cpu", progress=False)
        if VARIANTS[variant] is None:
            jobs = [Job(ClassTarget(idx[c]), None, s) for c in classes if c in only for s in seeds]
            # one image at a time: batched MACO costs more per image than alone on a CPU (issue 30)
            res = [r for job in jobs for r in run_method(variant, spec, [job], preset="quick", progress=False,
                                                          device="cpu")]
        else:
            jobs = [Job(ClassTarget(idx[c]), sets[c], s) for c in classes if c in only for s in seeds]
            res = visualize_batch(spec, jobs, preset=preset, progress=False, device="cpu")
        probs = judge_probs(judge, torch.stack([r.image for r in res]))
        totals = {"ok": 0, "top5": 0, "top1": 0, "n": 0}
        for c in (c for c in classes if c in only):
            k = classes.index(c)
            plain = references.from_folder(folders[c], n=50, augment=True)  # the scene as random crops show it
            ref_p = judge_probs(judge, plain.prepare(spec.preprocess))[:, dis[c]].mean().item()
            j = [c2 for c2 in classes if c2 in only].index(c)
            rows = range(j * len(seeds), (j + 1) * len(seeds))
            vis_p = [probs[r, dis[c]].item() for r in rows]
            top5 = sum(idx[c] in probs[r].topk(5).indices.tolist() for r in rows)
            top1 = sum(res[r].top5[0]["index"] == idx[c] for r in rows)
            ok = sum(p <= ref_p / 3 for p in vis_p)
            for key, v in (("ok", ok), ("top5", top5), ("top1", top1), ("n", len(seeds))):
                totals[key] += v
            crop_info = (sets[c].info.get("crops") or {}) if c in sets else {}
            around = f"{crop_info.get('object_kept', 0)}/{crop_info.get('kept', 0)}"
            mean_p = sum(vis_p) / len(vis_p)
            print(f"| {variant} | {c} | {classes[(k + 1) % len(classes)]} | {ref_p:.3f} | {mean_p:.3f} | "
                  f"{ok}/{len(seeds)} | {top5}/{len(seeds)} | {top1}/{len(seeds)} | {around} |", flush=True)
            if save:
                for r, s in zip(rows, seeds, strict=True):
                    (save / f"{args.scenes}-{variant}-{c}-s{s}.png").write_bytes(png_bytes(res[r].image))
                with (save / "rows.jsonl").open("a") as f:
                    f.write(json.dumps({"scenes": args.scenes, "variant": variant, "class": c, "refs_p": ref_p,
                                        "vis_p": vis_p, "top5": top5, "top1": top1, "seeds": seeds}) + "\n")
        print(f"| **{variant}** | **all** | | | | **{totals['ok']}/{totals['n']}** | **{totals['top5']}/"
              f"{totals['n']}** | **{totals['top1']}/{totals['n']}** | ({time.perf_counter() - t:.0f} s) |",
              flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
