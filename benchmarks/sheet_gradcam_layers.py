"""Where Grad-CAM puts the class on the five bundled scenes, read at several layers of Lite0 (issue 26, a check of
whether a finer map than the last spatial layer would place or weight the references better). One row a scene:
the scene, then the scene lit by each layer's map (dark where the map is 0).

    PYTHONPATH=src python benchmarks/sheet_gradcam_layers.py --out docs/scenes-gradcam-layers.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F
from bench_scenes import scene

from vital_fv import load_model, references
from vital_fv.references.evidence import evidence_maps
from vital_fv.result import png_bytes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="bn2,blocks.5,blocks.4,blocks.3")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    spec = load_model("efficientnet_lite0")
    classes = references.bundled_classes()
    photos = {c: references.bundled(c).images[0] for c in classes}
    rows = []
    for k, c in enumerate(classes):
        img = scene(photos[c], photos[classes[(k + 1) % len(classes)]], k).float() / 255
        x = F.interpolate(img[None], size=(224, 224), mode="bilinear", antialias=True)
        tiles = [x[0]]
        for layer in args.layers.split(","):
            m = evidence_maps(spec, spec.class_names.index(c), x, layer=layer)[0]
            tiles.append(x[0] * (0.15 + 0.85 * m))
        rows.append(torch.cat(tiles, 2))
    sheet = torch.cat(rows, 1)
    sheet = F.interpolate(sheet[None], scale_factor=0.5, mode="bilinear", antialias=True)[0]  # half size: a doc
    Path(args.out).write_bytes(png_bytes(sheet.clamp(0, 1)))
    print(f"{args.out}: rows {', '.join(classes)}; columns scene, {args.layers}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
