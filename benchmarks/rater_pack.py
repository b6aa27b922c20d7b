"""Blind raters for the scenes benchmark (issue 26, item 4): pack the seed's images under random names, with the key
kept outside the pack, then score the raters' answers against the key, per method.

    python benchmarks/rater_pack.py pack /tmp/scenes --variants today,objects+weighted,fourier,maco \
        --pack /tmp/pack26 --key /tmp/key26.json
    # each rater sees only /tmp/pack26 and one task (free label, 1-5 rating against a word, forced choice),
    # answers as JSON {"<file name>": answer, ...}
    python benchmarks/rater_pack.py score --key /tmp/key26.json --labels L.json --ratings R.json --choices C.json

Free labels are scored at the basic level by the synonyms below (a cup for espresso counts; a hawk would count for
an eagle): the words a person uses for the bundled classes, written out because no word model here judges them.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import shutil
from collections import defaultdict
from pathlib import Path

BASIC = {  # class: words that name it at the basic level
    "espresso": ["espresso", "coffee", "cup", "mug", "latte", "cappuccino", "tea"],
    "tripod": ["tripod", "camera", "cameraman", "photographer", "filming"],
    "missile": ["missile", "rocket", "launch", "spacecraft", "space shuttle"],
    "palace": ["palace", "pagoda", "temple", "castle", "tower", "shrine", "building"],
    "moped": ["moped", "motorcycle", "motorbike", "scooter", "bike"],
}


def pack(folder: Path, variants: list[str], seeds: list[int], out: Path, key: Path, scenes: str, rng_seed: int,
         per_sheet: int = 0) -> None:
    items = [(v, c, folder / f"{scenes}-{v}-{c}-s{s}.png") for v in variants for c in BASIC for s in seeds]
    missing = [str(p) for _, _, p in items if not p.exists()]
    if missing:
        raise SystemExit(f"missing images: {missing}")
    if out.exists():
        raise SystemExit(f"{out} exists: give a new --pack folder")
    key.parent.mkdir(parents=True, exist_ok=True)  # before the pack: a pack without its key is lost work
    out.mkdir(parents=True)
    rng = random.Random(rng_seed)
    names = rng.sample(range(1000, 10000), len(items))
    order = list(range(len(items)))
    rng.shuffle(order)
    mapping = {}
    if per_sheet:
        _sheets(items, order, out, mapping, per_sheet)
    else:
        for k in order:
            v, c, p = items[k]
            name = f"img_{names[k]}.png"
            shutil.copyfile(p, out / name)
            mapping[name] = {"method": v, "class": c}
    key.write_text(json.dumps(mapping, indent=1, sort_keys=True))
    print(f"{len(mapping)} images in {out}; key in {key}")


def _names(label: str, cls: str) -> bool:
    """Whether a free label names ``cls`` at the basic level: one of its words as a whole word ("teapot" does not
    name espresso through "tea"; "motorbike" names moped)."""
    words = re.findall(r"[a-z]+", label.lower())
    text = " ".join(words)
    return any(re.search(rf"\b{re.escape(w)}\b", text) for w in BASIC[cls])


def _sheets(items: list, order: list[int], out: Path, mapping: dict, per_sheet: int) -> None:
    """The images as numbered tiles on sheets (all tiles one size, several methods a sheet), so no file's name, size or
    format says which method made it."""
    from PIL import Image, ImageDraw, ImageFont

    tile, cols = 256, 3
    for start in range(0, len(order), per_sheet):
        chunk = order[start : start + per_sheet]
        rows = -(-len(chunk) // cols)
        sheet = Image.new("RGB", (cols * tile, rows * (tile + 24)), "white")
        draw, font = ImageDraw.Draw(sheet), ImageFont.load_default(size=18)
        for j, k in enumerate(chunk):
            v, c, p = items[k]
            tid = f"{start // per_sheet + 1}{'ABCDEFGHIJKL'[j]}"
            x, y = (j % cols) * tile, (j // cols) * (tile + 24)
            sheet.paste(Image.open(p).convert("RGB").resize((tile - 8, tile - 8), Image.LANCZOS), (x + 4, y + 4))
            draw.text((x + tile // 2 - 10, y + tile), tid, fill="black", font=font)
            mapping[tid] = {"method": v, "class": c}
        sheet.save(out / f"sheet_{start // per_sheet + 1:02d}.png")


def score(key: dict, labels: list[dict], ratings: list[dict], choices: list[dict]) -> None:
    rows: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for answers in labels:
        for name, label in answers.items():
            k = key[name]
            hit = _names(str(label), k["class"])
            rows[k["method"]]["label"].append(float(hit))
    for answers in ratings:
        for name, r in answers.items():
            rows[key[name]["method"]]["rating"].append(float(r))
    for answers in choices:
        for name, choice in answers.items():
            k = key[name]
            rows[k["method"]]["choice"].append(float(str(choice).strip().lower() == k["class"]))
    print("| method | free label names the class | rating 1-5 against the class word (mean) | forced choice right |")
    print("|---|---|---|---|")
    for method, r in rows.items():
        cells = []
        for part in ("label", "rating", "choice"):
            v = r.get(part, [])
            cells.append("-" if not v else f"{sum(v):.0f}/{len(v)}" if part != "rating" else f"{sum(v) / len(v):.2f}")
        print(f"| {method} | " + " | ".join(cells) + " |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("folder")
    p.add_argument("--variants", default="today,objects+weighted,fourier,maco")
    p.add_argument("--scenes", default="scenes")
    p.add_argument("--seeds", default="0", help="comma-separated")
    p.add_argument("--per-sheet", type=int, default=0,
                   help="tiles per sheet (numbered, one JPEG per sheet) instead of one file per image")
    p.add_argument("--pack", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--shuffle-seed", type=int, default=26)
    s = sub.add_parser("score")
    s.add_argument("--key", required=True)
    for part in ("labels", "ratings", "choices"):
        s.add_argument(f"--{part}", nargs="*", default=[], help="raters' JSON files, one per rater")
    args = ap.parse_args()
    if args.cmd == "pack":
        pack(Path(args.folder), args.variants.split(","), [int(x) for x in args.seeds.split(",")], Path(args.pack),
             Path(args.key), args.scenes, args.shuffle_seed, args.per_sheet)
    else:
        key = json.loads(Path(args.key).read_text())
        load = lambda files: [json.loads(Path(f).read_text()) for f in files]  # noqa: E731
        score(key, load(args.labels), load(args.ratings), load(args.choices))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
