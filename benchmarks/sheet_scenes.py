"""The scenes benchmark's sheet (issue 26, item 4): one row per class, columns the reference scene, each VITAL
variant, Fourier and MACO (seed 0), from the folder `bench_scenes.py --save` wrote.

    python benchmarks/bench_scenes.py --save /tmp/scenes --variants fourier,maco   # the baselines, quick preset
    python benchmarks/sheet_scenes.py /tmp/scenes --variants today,objects,objects+weighted --out docs/SHEET.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

from PIL import Image, ImageDraw

from vital_fv import references

TILE = 160


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("folder")
    ap.add_argument("--scenes", default="scenes")
    ap.add_argument("--variants", default="today,objects,objects+weighted")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    folder = Path(args.folder)
    columns = [("reference", "{scenes}-{c}.png")]
    columns += [(v, f"{{scenes}}-{v}-{{c}}-s{args.seed}.png") for v in args.variants.split(",")]
    columns += [(m, f"{{scenes}}-{m}-{{c}}-s{args.seed}.png") for m in ("fourier", "maco")]
    classes = references.bundled_classes()
    head, label = 22, 80
    sheet = Image.new("RGB", (label + TILE * len(columns), head + TILE * len(classes)), "white")
    draw = ImageDraw.Draw(sheet)
    for j, (name, _) in enumerate(columns):
        draw.text((label + j * TILE + 4, 4), name, fill="black")
    for i, c in enumerate(classes):
        draw.text((4, head + i * TILE + TILE // 2), c, fill="black")
        for j, (_, pattern) in enumerate(columns):
            path = folder / pattern.format(scenes=args.scenes, c=c)
            if path.is_file():
                img = Image.open(path).convert("RGB")
                img.thumbnail((TILE, TILE))
                sheet.paste(img, (label + j * TILE, head + i * TILE))
    sheet.save(args.out)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
