"""`vital evaluate` speed (issue 14: measuring must take seconds): a 100-image table with Fréchet distance, KID and
bootstrap intervals on this CPU, and the Fréchet bootstrap alone by the span route (now) beside the d x d route
(before), on the same features.

    python benchmarks/bench_evaluate.py --out benchmarks/results/cpu_evaluate.md      # ~2 min on this CPU

The 100 "visualizations" are the bundled photos' random crops under a record that names their class (the
metrics do not care how an image was made); real images are the bundled references (50 per class).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vital_fv import metrics, references
from vital_fv.evaluate import evaluate
from vital_fv.result import Result
from vital_fv.zoo import load_model


def frechet_dxd(x: np.ndarray, y: np.ndarray) -> float:
    """The computation before: eigendecompositions of d x d matrices (kept here for the comparison)."""
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    w, v = np.linalg.eigh(s1)
    r1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr = np.sqrt(np.clip(np.linalg.eigvalsh(r1 @ s2 @ r1), 0, None)).sum()
    return float(((x.mean(0) - y.mean(0)) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * tr)


def fake_results(folder: Path, n: int, spec) -> None:  # noqa: ANN001
    classes = references.bundled_classes()
    for i in range(n):
        cname = classes[i % len(classes)]
        index = spec.class_names.index(cname)
        img = references.bundled(cname, n=1 + i // len(classes), seed=i).prepare(spec.preprocess)[-1]
        record = {"vital_fv": "bench", "method": "vital", "status": "complete", "seed": i,
                  "target": {"kind": "class", "index": index, "name": cname}, "model": spec.describe()}
        Result(img, record).save(folder / f"r{i:03d}.png")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=100)
    ap.add_argument("--n-boot", type=int, default=200)
    ap.add_argument("--out", help="also write the table (markdown) here")
    args = ap.parse_args()
    torch.manual_seed(0)
    spec = load_model("efficientnet_lite0")
    lines = [f"device: CPU; torch {torch.__version__}; threads {torch.get_num_threads()}", ""]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "results"
        fake_results(folder, args.items, spec)
        t = time.perf_counter()
        rows = evaluate(folder, Path(tmp) / "report", n_boot=args.n_boot, plots=False)
        whole = time.perf_counter() - t
    # the Fréchet bootstrap alone, both routes, on penultimate features of the same size (d = 1280)
    rng = np.random.default_rng(0)
    fv, real = rng.normal(size=(args.items, 1280)), rng.normal(0.2, 1.1, size=(250, 1280))
    t = time.perf_counter()
    metrics.bootstrap_ci(metrics.frechet_distance, fv, real, args.n_boot)
    span = time.perf_counter() - t
    boot_old = 10
    t = time.perf_counter()
    metrics.bootstrap_ci(frechet_dxd, fv, real, boot_old)
    dxd = (time.perf_counter() - t) * args.n_boot / boot_old
    same = abs(metrics.frechet_distance(fv, real) - frechet_dxd(fv, real)) / frechet_dxd(fv, real)
    lines += [
        f"`vital evaluate` on {args.items} images (judge Lite2, FD/KID on Lite0 features, {args.n_boot} bootstrap "
        f"resamples, no plots): {whole:.1f} s, {rows[0]['items']} items in the row, FD {rows[0]['fd']}",
        "",
        "| Fréchet bootstrap, 100 x 250 items, d = 1280 | seconds | ratio |",
        "|---|---|---|",
        f"| d x d route (before; {boot_old} resamples timed, scaled to {args.n_boot}) | {dxd:.1f} | 1 |",
        f"| span route (now) | {span:.2f} | {span / dxd:.4f} |",
        "",
        f"relative difference of the two routes' FD on these features: {same:.1e}",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(f"command: benchmarks/bench_evaluate.py --out {args.out}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
