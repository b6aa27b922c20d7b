"""Concept visualizations on Lite0: do the images express their concept? (issue 7)

CRAFT concepts of espresso from the bundled coffee photo; each of the top concepts is visualized with LRP (the
paper's direction start) and without relevance, and for each image we measure
  - cosine: the highest cosine similarity between the concept direction and the image's bn2 activation vectors
    (the target's value), beside the references' mean;
  - dominant: whether the concept has the largest NMF coefficient of the image's mean bn2 activation (all concepts
    of the class held fixed), i.e. whether CRAFT itself would read the image as that concept.

    python benchmarks/bench_concepts.py [--concepts 3] [--preset quick] [--save benchmarks/results/cpu_concepts.md]
    python benchmarks/bench_concepts.py --relevance lrp --seeds 0,1,2 --changes "{'unit_smooth': 2.0}"
    python benchmarks/bench_concepts.py --compare-layers   # concept 0 with three layer sets below bn2, 300 steps
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_units import parse_preset, quiet_noise  # the same measure and option check as bench_units

from vital_fv import Job, load_model, metrics, visualize_batch
from vital_fv.concepts import extract_concepts, nmf_transform
from vital_fv.features import capture
from vital_fv.references import offline_photos
from vital_fv.result import png_bytes


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--concepts", type=int, default=3, help="visualize the top N concepts")
    ap.add_argument("--n-concepts", type=int, default=5)
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--steps", type=int)
    ap.add_argument("--seeds", default="0")
    ap.add_argument("--save")
    ap.add_argument("--images", help="also write each visualization (PNG + record) into this folder")
    ap.add_argument("--changes", default="{}", help="VITAL preset fields to change, e.g. \"{'unit_smooth': 2.0}\"")
    ap.add_argument("--relevance", default="lrp,none", help="comma-separated: lrp, none")
    ap.add_argument("--compare-layers", action="store_true",
                    help="concept 0: the paper's unit rule vs + blocks vs + conv_head, with and without LRP")
    args = ap.parse_args()
    preset = parse_preset(ap, args.preset, args.changes)  # checked before the concept extraction and the runs
    relevances = [None if r == "none" else r for r in args.relevance.split(",")]
    if bad := [r for r in relevances if r not in ("lrp", None)]:
        ap.error(f"--relevance: unknown {', '.join(bad)}; choose from lrp, none")
    spec = load_model("efficientnet_lite0")
    seeds = [int(s) for s in args.seeds.split(",")]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "espresso"
        folder.mkdir()
        coffee = offline_photos()[3]  # skimage coffee
        (folder / "coffee.png").write_bytes(png_bytes(coffee.float() / 255))
        found = extract_concepts(spec, 967, folder, n_concepts=args.n_concepts, stride=32, progress=False)
        if args.compare_layers:
            compare_layers(spec, found, args.seeds)
            return
        w = found.directions.numpy()
        rows = []
        for i in range(args.concepts):
            target, refs = found.target(i), found.references(i)
            x = spec.preprocess.normalize(refs.prepare(spec.preprocess))
            with torch.no_grad(), capture(spec.module, ["bn2"]) as f:
                spec.module(x)
                ref_cos = float(np.mean([float(target.value(a)) for a in f["bn2"]]))
            for rel in relevances:
                t0 = time.perf_counter()
                res = visualize_batch(spec, [Job(target, refs, s) for s in seeds], preset=preset,
                                      steps=args.steps, relevance=rel, progress=False, cache=False)
                secs = time.perf_counter() - t0
                imgs = torch.stack([r.image for r in res])
                with torch.no_grad(), capture(spec.module, ["bn2"]) as f:
                    spec.module(spec.preprocess.normalize(imgs))
                    mean_act = f["bn2"].mean((2, 3)).clamp(min=0).numpy()
                dominant = (nmf_transform(mean_act, w).argmax(1) == i).mean()
                cos = np.mean([r.record["target"]["value"] for r in res])
                noise = np.mean([quiet_noise(r) for r in res])
                hf = np.mean([metrics.spectrum_stats(r.image)["hf_share"] for r in res])
                rows.append((i, float(found.importance[i]), rel or "none", ref_cos, cos, dominant, hf, noise,
                             secs / len(res) / res[0].record["steps_done"] * 1000))
                print(rows[-1], flush=True)
                if args.images:
                    for s, r in zip(seeds, res, strict=True):
                        r.save(Path(args.images) / f"concept{i}-{rel or 'none'}-s{s}.png", overwrite=True)
    lines = [f"Concept visualizations, Lite0, espresso concepts from the bundled coffee photo ({args.n_concepts} "
             f"concepts, stride 32), preset {args.preset}{f', {args.steps} steps' if args.steps else ''}, seeds "
             f"{args.seeds}, this CPU. Command: `python benchmarks/bench_concepts.py --concepts {args.concepts} "
             f"--preset {args.preset} --seeds {args.seeds} --relevance {args.relevance} --changes \"{args.changes}\"`",
             "", "| concept | importance | relevance | references' cosine | image cosine "
             "| CRAFT reads it as the concept | HF share | noise where quiet | ms/step |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {i} | {imp:.3f} | {rel} | {rc:.3f} | {c:.3f} | {d:.0%} | {hf:.3f} | {nz:.3f} | {ms:.0f} |"
              for i, imp, rel, rc, c, d, hf, nz, ms in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.save:
        Path(args.save).write_text(text)


def compare_layers(spec, found, seeds: str) -> None:  # noqa: ANN001
    """Image cosine of concept 0 for three layer sets below bn2 (quick preset, 300 steps)."""
    from vital_fv.zoo import LayerPreset, unit_preset

    rule = unit_preset(spec, "bn2", with_predecessor=False)
    sets = {"paper's rule": rule}
    for extra in ("blocks", "conv_head"):
        sets[f"+ {extra}"] = LayerPreset(rule.layers + (extra,), rule.weights + (1.0,), tv=rule.tv, l2=rule.l2,
                                         source=f"paper's rule + {extra}")
    target, refs = found.target(0), found.references(0)
    lines = ["| matched layers | LRP | no relevance |", "|---|---|---|"]
    for name, layers in sets.items():
        cos = []
        for rel in ("lrp", None):
            res = visualize_batch(spec, [Job(target, refs, int(s)) for s in seeds.split(",")], preset="quick",
                                  steps=300, layers=layers, relevance=rel, progress=False, cache=False)
            cos.append(np.mean([r.record["target"]["value"] for r in res]))
        lines.append(f"| {name} ({', '.join(layers.layers)}) | {cos[0]:.2f} | {cos[1]:.2f} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
