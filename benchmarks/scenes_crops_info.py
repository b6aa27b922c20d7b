"""How the evidence crops were chosen on the scenes benchmark's three reference sets (issue 26): per class, the
scan's best window and score, the kept crops' probabilities and how many of the 50 lie around the object. In a scene
(the class a small part of the photo) nearly all do; on a photo the class fills, the whole frame and random crops
rate as high, which is what `methods.vital.CROPS_OBJECT_SHARE` reads.

    PYTHONPATH=src python benchmarks/scenes_crops_info.py      # ~3 min on a 2-core CPU
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from bench_scenes import scene

from vital_fv import ClassTarget, load_model, references
from vital_fv.result import png_bytes


def main() -> int:
    torch.set_num_threads(1)
    spec = load_model("efficientnet_lite0")
    classes = references.bundled_classes()
    photos = {c: references.bundled(c).images[0] for c in classes}
    work = Path(tempfile.mkdtemp(prefix="vital-crops-info-"))
    print("| references | class | scan's best window (image, top, left, h, w) | its probability | kept mean | "
          "crops around the object, of kept |")
    print("|---|---|---|---|---|---|")
    for kind in ("bundled", "scenes", "many"):
        for k, c in enumerate(classes):
            d = classes[(k + 1) % len(classes)]
            folder = work / kind / c
            folder.mkdir(parents=True)
            if kind == "many":
                for j in range(50):
                    img = scene(photos[c], photos[d], 1000 * (k + 1) + j)
                    (folder / f"s{j:02d}.png").write_bytes(png_bytes(img.float() / 255))
            else:
                img = scene(photos[c], photos[d], k) if kind == "scenes" else photos[c]
                (folder / "photo.png").write_bytes(png_bytes(img.float() / 255))
            refs = references.resolve(spec, ClassTarget(spec.class_names.index(c)), folder, n=50, device="cpu",
                                      progress=False)
            cr = refs.info["crops"]
            print(f"| {kind} | {c} | {cr.get('scan_best')} | {cr.get('scan_best_score', 0):.3f} | "
                  f"{cr['kept_mean']:.3f} | {cr['object_kept']} of {cr['kept']} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
