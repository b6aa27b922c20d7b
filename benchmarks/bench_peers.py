"""Our Fourier and MACO beside the public implementations (torch-lucent for Fourier, horama for Fourier and MACO),
on Lite0 and the bundled demo classes, with matched steps: Lite0's top-1 on the images, the top-1/top-5 of
EfficientNet-Lite2 (never seen by the optimization), and seconds per step — all measured in one run.

The peers are benchmark-only dependencies, installed without their pinned dependencies, never imported by vital_fv:

    pip download --no-deps -d peers horama==0.3.0 torch-lucent==0.1.8 kornia==0.4.1 einops xplique==2.0.2
    pip install --no-deps --target peers/site peers/horama-*.whl peers/torch_lucent-*.whl peers/kornia-*.whl \
        peers/einops-*.whl
    pip install matplotlib decorator ipython          # what their imports need
    unzip -o peers/xplique-*.whl 'xplique/features_visualizations/spectrum_decorrelated.npy' -d peers
    cp peers/xplique/features_visualizations/spectrum_decorrelated.npy .   # where horama looks (it never downloads)
    PYTHONPATH=peers/site python benchmarks/bench_peers.py --out benchmarks/results/cpu_peers.md

Horama's MACO downloads its magnitude spectrum at run time; the same file ships inside the xplique wheel, which is
never imported (it needs TensorFlow). Our MACO also runs on that spectrum (``--spectrum``) as a third MACO row.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_engine import Tally  # noqa: E402

from vital_fv import ClassTarget, Job, load_model, references  # noqa: E402
from vital_fv.methods import run_method  # noqa: E402


def lucent_fourier(spec, index: int, steps: int, size: int) -> torch.Tensor:
    from lucent.optvis import objectives, param, render, transform

    norm = lambda x: spec.preprocess.normalize(x)  # noqa: E731 - lucent takes a list of callables
    images = render.render_vis(
        spec.module, objectives.channel("labels", index), lambda: param.image(size),
        transforms=[*transform.standard_transforms, norm], thresholds=(steps,), preprocess=False,
        progress=False, show_image=False, fixed_image_size=size,
    )
    return torch.from_numpy(np.asarray(images[-1][0])).permute(2, 0, 1).float()


def horama_method(spec, index: int, steps: int, size: int, which: str) -> torch.Tensor:
    import horama

    low, high = spec.preprocess.bounds()
    lo, hi = float(low.min()), float(high.max())

    def objective(images: torch.Tensor) -> torch.Tensor:
        return spec.module(images)[:, index].mean()

    fn = horama.maco if which == "maco" else horama.fourier
    img, _alpha = fn(objective, total_steps=steps, image_size=size, model_input_size=spec.preprocess.input_size,
                     values_range=(lo, hi), crops_per_iteration=4, device="cpu")
    return spec.preprocess.denormalize(img.detach().unsqueeze(0))[0].clamp(0, 1)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=256)
    ap.add_argument("--maco-size", type=int, default=320)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", default="ours fourier,lucent fourier,horama fourier,ours maco,"
                                      "ours maco (xplique spectrum),horama maco")
    ap.add_argument("--spectrum", default="spectrum_decorrelated.npy", help="the xplique spectrum, for horama and us")
    ap.add_argument("--out")
    args = ap.parse_args()
    spec = load_model("efficientnet_lite0")
    judge = load_model("efficientnet_lite2")
    lines = [f"device: CPU ({os.cpu_count()} cores); {args.steps} steps per image; seed {args.seed}; MACO image "
             f"{args.maco_size} px, 4 crops per step", "",
             "| implementation | images | Lite0 top-1 | Lite2 top-1 | Lite2 top-5 | s/step |",
             "|---|---|---|---|---|---|"]
    print("\n".join(lines), flush=True)
    for row in args.rows.split(","):
        tally = Tally(spec, judge)
        wall = 0.0
        for cname in references.bundled_classes():
            index, _ = ClassTarget(cname).resolve(spec.class_names)
            torch.manual_seed(args.seed)
            t = time.perf_counter()
            if row.startswith("ours"):
                method = "maco" if "maco" in row else "fourier"
                kw = {"size": args.maco_size} if method == "maco" else {}
                if "xplique" in row:
                    kw["spectrum"] = args.spectrum
                (r,) = run_method(method, spec, [Job(ClassTarget(index), None, args.seed)], preset="quick",
                                  steps=args.steps, device="cpu", progress=False, **kw)
                img = r.image
            elif row == "lucent fourier":
                img = lucent_fourier(spec, index, args.steps, spec.preprocess.input_size)
            else:
                which = "maco" if "maco" in row else "fourier"
                img = horama_method(spec, index, args.steps, args.maco_size, which)
            wall += time.perf_counter() - t
            tally.add(img.unsqueeze(0), index)
        lines.append(f"| {row} | {tally.n} | {tally.cells()} | {wall / tally.n / args.steps:.3f} |")
        print(lines[-1], flush=True)
    if args.out:
        Path(args.out).write_text(f"command: {' '.join(sys.argv)}\n\n" + "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
