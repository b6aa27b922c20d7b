"""``vital study create``: a folder of results turned into a study (the paper's §4.3 and Appendix D).

Each target gets at most one trial per part for every participant; which method's image it shows is
counterbalanced by a Latin square over subsets (subset s shows target i by method (i + s) mod M), so every method
is shown equally often across subsets. The label part is unprimed: a participant labels only classes they never
saw beside their word. When a study has both class parts, its classes are split in two halves (alternate
classes): the first M subsets rate one half and label the other, the next M the other way round (2M subsets).
Images are copied into the study under opaque ids: the method and class of a stimulus are in the database, never
in what the browser gets. Attention checks are real photos with their true class (the bundled photos).
"""

from __future__ import annotations

import os
import random
import re
import secrets
import shutil
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..errors import VitalError
from ..options import check_positive
from .store import ABANDON_AFTER_MINUTES, Store

PARTS = ("rate-class", "rate-unit", "label", "2afc")
IMAGES = "images"
MAX_REFS = 9  # reference crops shown beside a unit image (the paper's 3 x 3)


def _wnid(index: int | None, name: str, num_classes: int | None) -> str | None:
    """The WordNet id of a class: ImageNet's from timm's table, else the first noun sense of its name."""
    if index is not None and num_classes == 1000:
        from timm.data import ImageNetInfo

        return ImageNetInfo().index_to_label_name(index)
    try:
        from .wordnet import wordnet

        senses = wordnet().synsets(name.replace(" ", "_"), "n")
    except VitalError:
        return None
    return f"n{senses[0].offset():08d}" if senses else None


class _Stimuli:
    """Images copied into the study under opaque ids (what a URL shows is a random id, nothing else)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder / IMAGES
        self.folder.mkdir(parents=True, exist_ok=True)
        self.rows: list[dict[str, Any]] = []

    def add(self, kind: str, png: bytes, **fields: Any) -> str:
        ident = secrets.token_hex(8)
        path = self.folder / f"{ident}.png"
        path.write_bytes(png)
        self.rows.append({"id": ident, "file": f"{IMAGES}/{ident}.png", "kind": kind, **fields})
        return ident


def _source(source: str, root: Path) -> Path | None:
    """A mining record's source image on disk (absolute, or relative to the results, the cwd or their parent)."""
    path = Path(source)
    return next((c for c in ([path] if path.is_absolute() else [root / path, Path.cwd() / path, root.parent / path])
                 if c.is_file()), None)


def _crop_png(source: str, box: Sequence[int] | None, root: Path) -> bytes | None:
    """The reference image ``source`` (cut at ``box``) as PNG; None when it cannot be read or the box is empty."""
    from ..references import crop, read_image
    from ..result import png_bytes

    path = _source(source, root)
    if path is None:
        return None
    try:
        img, _ = read_image(path)
    except VitalError:
        return None
    if box:
        img = crop(img, box)
    return png_bytes(img.float() / 255) if img.numel() else None


def _scan(images: str | os.PathLike[str] | None, root: Path, classes: dict, units: dict, device: str
          ) -> dict[str, dict[str, Any]]:
    """The 2AFC's queries of every target (``queries.scan_queries``), the images whose crops rate-unit shows
    left out."""
    from ..zoo import file_sha256
    from .queries import scan_queries

    shown, folders = set(), set()
    for u in units.values():
        for src in u["mining"]["sources"][:MAX_REFS]:
            path = _source(src, root)
            if path is not None:
                shown.add(file_sha256(path))
        folders |= {p.parent for s in u["mining"]["sources"] if (p := _source(s, root)) is not None}
    if images is None:
        if len(folders) != 1:
            raise VitalError("--images: the 2afc part takes its queries from a scan of an image folder; give "
                             "--images DIR" + (" (the units were mined from several)" if folders else ""))
        images = next(iter(folders))
    out: dict[str, dict[str, Any]] = {}
    by_model: dict[str, list[str]] = {}
    for (model, index) in classes:
        by_model.setdefault(model, []).append(f"class:{index}")
    for (model, label) in units:
        by_model.setdefault(model, []).append(f"unit:{label}")
    for model, targets in by_model.items():
        out.update(scan_queries(model, targets, images, shown, device))
    return out


def _queries(stim: _Stimuli, scan: dict[str, dict[str, Any]], target: str) -> dict[str, str] | None:
    """The target's 2AFC queries as stimuli (their activation and rank in the scan kept in the database)."""
    found = scan.get(target)
    if not found:
        return None
    return {kind: stim.add("query", Path(found[kind]["path"]).read_bytes(), target=target,
                           info={**found[kind], "of": found["images"]}) for kind in ("strong", "weak")}


def _examples(stim: _Stimuli, parts: Sequence[str], classes: set[str]) -> dict[str, Any]:
    """What the instructions show (the paper's Figs. 32-35) and the 2AFC's demonstration, all from a cat photo and
    a brick wall that no other part uses: crops of the cat as what a unit responds to, another crop of the cat (the
    answer) and the wall as the demonstration's queries. No cat example where the study has a cat class."""
    from ..references import crop
    from ..references.sets import _bundled_photo
    from ..result import png_bytes

    cat, _ = _bundled_photo("skimage", "chelsea")
    wall, _ = _bundled_photo("skimage", "brick")
    h, w = cat.shape[-2:]
    side = min(h, w) // 2
    boxes = [(x, y, x + side, y + side) for y in (0, (h - side) // 2, h - side) for x in (0, (w - side) // 2)]
    refs = [stim.add("demo", png_bytes(crop(cat, b).float() / 255), target="demo") for b in boxes]
    strong = stim.add("demo", png_bytes(crop(cat, (w - side, 0, w, side)).flip(-1).float() / 255), target="demo")
    out: dict[str, Any] = {"examples": {}, "demo": None}
    if "2afc" in parts:
        weak = stim.add("demo", png_bytes(wall.float() / 255), target="demo")
        out["demo"] = {"refs": refs, "strong": strong, "weak": weak}
    if "rate-unit" in parts:
        out["examples"]["rate-unit"] = {"refs": refs, "images": [strong]}
    if not any("cat" in re.findall(r"[a-z]+", c) for c in classes):
        whole = stim.add("demo", png_bytes(cat.float() / 255), target="demo")
        for part in ("rate-class", "label"):
            if part in parts:
                out["examples"][part] = {"word": "cat", "images": [whole]}
    return out


def _warn_priming(texts: dict[str, Any], classes: Sequence[str]) -> None:
    """A class named in the participants' texts is read before it is labelled: warn, naming the text and class."""
    flat = [(k, v) for k, v in texts.items() if isinstance(v, str)] + \
        [(f"instructions.{p}", v) for p, v in texts.get("instructions", {}).items()]
    for name in classes:
        pattern = re.compile(rf"\b{re.escape(name.lower())}\b")
        for key, text in flat:
            if pattern.search(text.lower()):
                warnings.warn(f"--texts: {key} names the class {name!r}, which participants label: it primes "
                              "their answer; reword it", stacklevel=3)


DEFAULT_TITLE = "A study of images"  # neutral: nothing about the results folder reaches participants


_CODE = re.compile(r"[A-Za-z0-9_-]{1,64}")


def study_texts(texts: str | os.PathLike[str] | None = None, completion_code: str | None = None,
                completion_url: str | None = None) -> dict[str, Any]:
    """The participants' texts: the package's ``assets/texts.toml``, overridden by ``texts`` (a TOML file with the
    same keys) and the completion options; every key and value checked, naming the one that is wrong."""
    import tomllib
    from importlib import resources

    base = tomllib.loads((resources.files("vital_fv.study") / "assets" / "texts.toml").read_text())
    if texts is not None:
        try:
            given = tomllib.loads(Path(texts).read_text())
        except FileNotFoundError:
            raise VitalError(f"--texts {texts}: no such file") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise VitalError(f"--texts {texts}: not a TOML file ({exc})") from None
        for key, value in given.items():
            if key not in base:
                raise VitalError(f"--texts {texts}: unknown key {key!r}; the keys are {', '.join(base)}")
            if key == "instructions":
                if not isinstance(value, dict) or any(p not in PARTS for p in value):
                    raise VitalError(f"--texts {texts}: [instructions] has one text per part of {', '.join(PARTS)}")
                base[key] = {**base[key], **value}
            else:
                base[key] = value
        for key, value in [*base.items(), *base["instructions"].items()]:
            if key != "instructions" and not isinstance(value, str):
                raise VitalError(f"--texts {texts}: {key} must be text (got {type(value).__name__})")
    if completion_code is not None:
        base["completion_code"] = completion_code
    if completion_url is not None:
        base["completion_url"] = completion_url
    code, url = base.pop("completion_code").strip(), base.pop("completion_url").strip()
    if code and not _CODE.fullmatch(code):
        raise VitalError(f"--completion-code {code!r}: 1 to 64 letters, digits, '_' or '-'")
    if url and not re.fullmatch(r"https?://[^\s\"'<>]+", url):
        raise VitalError(f"--completion-url {url!r}: an http(s) address")
    return {"texts": {k: v.strip() if isinstance(v, str) else {p: t.strip() for p, t in v.items()}
                      for k, v in base.items()},
            "completion": {"completion_code": code, "completion_url": url}}


def create_study(results: str | os.PathLike[str], out: str | os.PathLike[str], *,
                 parts: Sequence[str] = PARTS, participants_per_subset: int = 20, title: str | None = None,
                 texts: str | os.PathLike[str] | None = None, completion_code: str | None = None,
                 completion_url: str | None = None, seed: int | None = None,
                 abandon_after_minutes: int = ABANDON_AFTER_MINUTES, images: str | os.PathLike[str] | None = None,
                 device: str = "auto", overwrite: bool = False) -> Store:
    """Make a study in ``out`` from the results under ``results`` (see the module's docstring); records that cannot
    be read, lack their image or do not fit the record's schema are named in warnings and left out. The 2AFC's
    queries come from a scan of ``images`` (default: the folder the units were mined from)."""
    from ..records import find_results

    bad = [p for p in parts if p not in PARTS]
    if bad or not parts:
        raise VitalError(f"--parts: unknown part {bad[0]!r}; choose from {', '.join(PARTS)}" if bad else
                         f"--parts is empty: choose from {', '.join(PARTS)}")
    check_positive("--participants-per-subset", participants_per_subset)
    check_positive("--abandon-after", abandon_after_minutes)
    if "2afc" in parts:
        from ..device import resolve_device

        device = str(resolve_device(device))  # checked now, not after the records are read
    if images is not None and not Path(images).is_dir():
        raise VitalError(f"--images {images} is not a folder")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63):
        raise VitalError(f"--seed must be a whole number from 0 to 2^63 - 1 (got {seed!r})")
    parts = [p for p in PARTS if p in parts]  # the paper's order, whatever order they were given in
    wording = study_texts(texts, completion_code, completion_url)
    out, root = Path(out), Path(results)
    if (out / "study.sqlite").exists() and not overwrite:
        raise VitalError(f"{out} already holds a study (its answers are kept): choose another --out, or pass "
                         "--overwrite to make it anew")
    found, problems = find_results(root)
    for p in problems:  # records that cannot be read, have no image or do not fit the schema: named, left out
        if p.kind != "other":
            warnings.warn(f"skipping {p.path}: {p.reason}", stacklevel=2)
    classes: dict[tuple, dict[str, Any]] = {}
    units: dict[tuple, dict[str, Any]] = {}
    for path, rec in sorted(found, key=lambda f: (f[1].get("seed", 0), str(f[0]))):
        t, model = rec["target"], rec.get("model") or {}
        if t.get("kind") == "class":
            key = (model.get("name"), t.get("index"))
            entry = classes.setdefault(key, {"label": t.get("name", str(t.get("index"))), "index": t.get("index"),
                                             "num_classes": model.get("num_classes"), "by_method": {}})
        elif t.get("kind") == "unit":
            label = f"{t.get('layer')}:{t.get('channel')}"
            key = (model.get("name"), label)
            entry = units.setdefault(key, {"label": label, "by_method": {}, "mining": None})
            refs = rec.get("references") or {}
            mining = refs.get("mining")
            if mining and refs.get("sources") and entry["mining"] is None:
                entry["mining"] = {"sources": refs["sources"], "boxes": mining.get("boxes"),
                                   "scores": mining.get("scores")}
        else:
            continue
        entry["by_method"].setdefault(rec["method"], []).append(path)
    from ..methods import method_names

    order = method_names()
    methods = sorted({m for e in [*classes.values(), *units.values()] for m in e["by_method"]},
                     key=lambda m: (order.index(m) if m in order else len(order), m))
    wants_classes = any(p in parts for p in ("rate-class", "label"))
    usable_units = {k: u for k, u in units.items() if u["mining"]}
    if wants_classes and not classes:
        raise VitalError(f"no class visualizations under {root} for --parts {','.join(parts)}")
    if "rate-unit" in parts and not usable_units:
        raise VitalError(f"no unit visualizations with mined references under {root} (rate-unit shows the unit's "
                         "top patches): visualize units from `vital mine` folders or --images")
    if "2afc" in parts and not classes and not usable_units:
        raise VitalError(f"no class or unit visualizations under {root} for the 2afc part")
    split = "rate-class" in parts and "label" in parts
    if split and len(classes) < 2:
        raise VitalError(f"--parts rate-class and label need two or more classes under {root} (a class rated "
                         "beside its word is never labelled by the same participant): add classes, or leave one "
                         "part out")
    if len(methods) < 2:
        raise VitalError(f"a study compares methods, and {root} holds results of {methods or 'none'}: add results of "
                         "other methods (e.g. --method fourier, maco)")

    scan: dict[str, dict[str, Any]] = {}
    if "2afc" in parts:
        scan = _scan(images, root, classes, usable_units, device)
        if not scan:
            raise VitalError(f"--images {images or 'the mined folder'}: too few images, or none telling the targets "
                             "apart, for the 2afc's queries (each needs two images no other part shows)")

    if out.exists() and overwrite:
        for sub in (IMAGES,):
            shutil.rmtree(out / sub, ignore_errors=True)
        for suffix in ("", "-wal", "-shm"):
            (out / f"study.sqlite{suffix}").unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    stim = _Stimuli(out)
    targets: dict[str, list[dict[str, Any]]] = {"class": [], "unit": []}
    for (_, index), c in sorted(classes.items(), key=lambda kv: str(kv[0])):
        wnid = _wnid(index, c["label"], c["num_classes"]) if "label" in parts else None
        by_method = {m: [stim.add("vis", p.with_suffix(".png").read_bytes(), method=m, target=f"class:{index}",
                                  label=c["label"], wnid=wnid) for p in paths] for m, paths in c["by_method"].items()}
        targets["class"].append({"target": f"class:{index}", "label": c["label"], "wnid": wnid,
                                 "by_method": by_method, "queries": _queries(stim, scan, f"class:{index}")})
    for (_, label), u in sorted(usable_units.items(), key=lambda kv: str(kv[0])):
        mining = u["mining"]
        boxes = mining["boxes"] or []
        box = [boxes[k] if k < len(boxes) else None for k in range(len(mining["sources"]))]
        crops = []
        for k, src in enumerate(mining["sources"][:MAX_REFS]):
            png = _crop_png(src, box[k], root)
            if png is not None:
                crops.append(stim.add("refcrop", png, target=f"unit:{label}", label=label))
        by_method = {m: [stim.add("vis", p.with_suffix(".png").read_bytes(), method=m, target=f"unit:{label}",
                                  label=label) for p in paths] for m, paths in u["by_method"].items()}
        queries = _queries(stim, scan, f"unit:{label}")
        if crops:
            targets["unit"].append({"target": f"unit:{label}", "label": label, "refs": crops, "queries": queries,
                                    "by_method": by_method})
    attention = _attention(stim, parts, {c["label"].lower() for c in targets["class"]})
    if "label" in parts:
        _warn_priming(wording["texts"], [c["label"] for c in targets["class"]])
    design = {"title": title or DEFAULT_TITLE, "parts": list(parts),
              "methods": methods, "subsets": len(methods) * (2 if split else 1), "split_classes": split,
              "participants_per_subset": participants_per_subset, "abandon_after_minutes": abandon_after_minutes,
              "seed": secrets.randbelow(2**31) if seed is None else seed, "seed_given": seed is not None,
              "targets": targets, "attention": attention, "results": str(root.resolve()), **wording,
              **_examples(stim, parts, {c["label"].lower() for c in targets["class"]})}
    return Store.create(out, design, stim.rows)


def _imagenet_wnid(name: str) -> str | None:
    """The ImageNet synset of a class name (palace is WordNet's second sense of the word, not its first)."""
    from timm.data import ImageNetInfo

    info = ImageNetInfo()
    for i in range(info.num_classes()):
        if info.index_to_description(i).split(",")[0].strip().lower() == name.lower():
            return info.index_to_label_name(i)
    return None


# The bundled photos an attention check may use, in order of preference per part.
_CHECKS = {"rate-class": ("espresso", "palace", "tripod", "missile", "moped"),
           "label": ("moped", "palace", "espresso", "tripod", "missile")}


def _attention(stim: _Stimuli, parts: Sequence[str], classes: set[str]) -> list[dict[str, Any]]:
    """Real photos with their true class: rated as showing their word (>= 4), labelled with their class. Their
    classes are none of the study's (a check rated beside "espresso" would prime the label of an espresso)."""
    from .. import references
    from ..result import png_bytes

    checks, used = [], set()
    for part in ("rate-class", "label"):
        name = next((c for c in _CHECKS[part] if c not in classes and c not in used), None)
        if part not in parts or name is None:
            continue
        used.add(name)
        img = references.bundled(name, n=1).images[0]
        wnid = _imagenet_wnid(name) if part == "label" else None
        ident = stim.add("photo", png_bytes(img.float() / 255), target=f"photo:{name}", label=name, wnid=wnid)
        checks.append({"part": part, "image": ident, "label": name, "wnid": wnid})
    return checks


def class_halves(design: dict[str, Any], subset: int) -> tuple[set[str], set[str]]:
    """The class targets a participant of ``subset`` rates and labels: all of them for both when the study has
    one class part; two disjoint halves (alternate classes, swapped in the second M subsets) when it has both."""
    names = [t["target"] for t in design["targets"]["class"]]
    if not design.get("split_classes"):
        return set(names), set(names)
    half = (subset // len(design["methods"])) % 2
    rated = {t for i, t in enumerate(names) if i % 2 == half}
    return rated, set(names) - rated


def trials_for(design: dict[str, Any]) -> Any:
    """The trial list of a participant of subset ``s`` with seed ``seed``: [(part, shown, key)], parts in the
    paper's order, trials shuffled within each part by the participant's own recorded seed."""

    def make(subset: int, seed: int) -> list[tuple[str, dict[str, Any], dict[str, Any]]]:
        rng = random.Random(seed)
        methods = design["methods"]
        offset = subset % len(methods)
        rated, labelled = class_halves(design, subset)
        trials = []
        for part in design["parts"]:
            pool = design["targets"]["class" if part in ("rate-class", "label") else "unit"]
            if part == "2afc":
                pool = design["targets"]["class"] + design["targets"]["unit"]
            block = []
            for i, t in enumerate(pool):
                if part == "2afc" and not t.get("queries"):
                    continue
                if (part == "rate-class" and t["target"] not in rated) or \
                        (part == "label" and t["target"] not in labelled):
                    continue
                method = next((methods[(i + offset + k) % len(methods)] for k in range(len(methods))
                               if methods[(i + offset + k) % len(methods)] in t["by_method"]), None)
                if method is None:
                    continue
                images = t["by_method"][method]
                key = {"method": method, "target": t["target"], "label": t["label"]}
                if part == "rate-class":
                    block.append((part, {"word": t["label"], "images": images[:1]}, key))
                elif part == "label":
                    block.append((part, {"images": images[:1]}, {**key, "wnid": t.get("wnid")}))
                elif part == "rate-unit":
                    block.append((part, {"refs": t["refs"], "images": images[:1]}, key))
                else:
                    pair = [t["queries"]["strong"], t["queries"]["weak"]]
                    rng.shuffle(pair)
                    correct = "a" if pair[0] == t["queries"]["strong"] else "b"
                    block.append((part, {"refs": images, "queries": pair}, {**key, "correct": correct}))
            for check in design["attention"]:
                if check["part"] == part:
                    shown = {"word": check["label"], "images": [check["image"]]} if part == "rate-class" else \
                        {"images": [check["image"]]}
                    block.append((part, shown, {"method": None, "target": f"photo:{check['label']}",
                                                "label": check["label"], "wnid": check.get("wnid"),
                                                "attention": True}))
            rng.shuffle(block)
            demo = design.get("demo")
            if part == "2afc" and demo and block:  # first, not shuffled: how the task works, with its answer
                pair = [demo["strong"], demo["weak"]]
                rng.shuffle(pair)
                correct = "a" if pair[0] == demo["strong"] else "b"
                block.insert(0, (part, {"refs": demo["refs"], "queries": pair, "demo": True, "answer": correct},
                                 {"method": None, "target": "demo", "label": "demonstration", "correct": correct,
                                  "demo": True}))
            trials += block
        return trials

    return make
