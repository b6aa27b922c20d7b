"""The side-by-side sheet of issue 14: per bundled class, its reference photo and one image per variant saved by
``bench_presets.py --save`` (same seed), with Lite2's top-1 under each image.

    python benchmarks/sheet_presets.py /tmp/presets --variants quick-before,quick,mid-1000-lr1,paper,fourier,maco \
        --seed 0 --out docs/sheet-presets.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

LABELS = {"quick-before": "quick, before\n(random crops, no low-pass)", "quick": "quick, after",
          "mid-1000-lr1": "balanced\n(1000 steps, lr 1.0)", "paper": "paper, after", "fourier": "Fourier",
          "maco": "MACO"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder", type=Path)
    ap.add_argument("--variants", default="quick-before,quick,mid-1000-lr1,paper,fourier,maco")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()

    from vital_fv import load_model, references

    judge = load_model("efficientnet_lite2")
    variants = args.variants.split(",")
    classes = references.bundled_classes()
    fig, axes = plt.subplots(len(classes), len(variants) + 1, figsize=(2.2 * (len(variants) + 1), 2.45 * len(classes)))
    for i, c in enumerate(classes):
        photo = references.bundled(c, n=1, augment=False).images[0]
        axes[i, 0].imshow(photo.permute(1, 2, 0).numpy())
        axes[i, 0].set_ylabel(c, fontsize=11)
        for j, v in enumerate(variants, start=1):
            img = Image.open(args.folder / f"{v}-{c}-s{args.seed}.png").convert("RGB")
            x = torch.from_numpy(np.asarray(img).copy()).permute(2, 0, 1).float().div(255).unsqueeze(0)
            x = torch.nn.functional.interpolate(x, size=judge.preprocess.input_size, mode="bilinear", antialias=True)
            top = judge.top5(x)[0][0]
            axes[i, j].imshow(img)
            axes[i, j].set_xlabel(f"Lite2: {top['name'].split(',')[0][:18]} {top['p']:.2f}", fontsize=8)
    for j, title in enumerate(["reference photo"] + [LABELS.get(v, v) for v in variants]):
        axes[0, j].set_title(title, fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"EfficientNet-Lite0, one bundled photo per class, seed {args.seed}", fontsize=11)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
