"""``vital gallery``: a static site over a results folder or an atlas job, opened from disk (file://) or served.

The pages are files shipped in ``gallery/assets`` (HTML, CSS, one script); the build writes the data they read as
JavaScript files (``data/index.js``, ``data/items/ID.js``: a page opened from disk cannot fetch JSON) and the
thumbnails. A rebuild is incremental: a thumbnail or an item's data file is made again only when its image or
record changed (``site/.gallery.json`` remembers sizes, times and hashes). Full-size images are linked where they
are, by relative paths from the site.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..errors import VitalError
from ..result import atomic_write_bytes
from .index import Found, scan

MANIFEST = ".gallery.json"
THUMB = 192  # px, the grid's tiles
PAGES = ("index.html", "item.html", "compare.html", "issues.html", "figures.html", "app.js", "style.css")
MAX_CURVE = 200  # loss-curve points per layer on the item page


def _url(path: Path, site: Path) -> str:
    return quote(os.path.relpath(path, site).replace(os.sep, "/"))


def _stat(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class _Manifest:
    """What the last build made from what: a file is remade when its source's size or time changed and its
    content hash did too (a touched but unchanged image is not remade)."""

    def __init__(self, site: Path) -> None:
        self.path = site / MANIFEST
        try:
            self.data: dict[str, Any] = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            self.data = {}
        self.data.setdefault("files", {})
        self.made = 0
        self.kept = 0

    def stale(self, out: Path, source: Path, extra: str = "") -> bool:
        key = str(out)
        old = self.data["files"].get(key)
        now = _stat(source)
        fresh = bool(old) and out.exists() and old.get("extra", "") == extra
        if fresh and old["stat"] == now:
            self.kept += 1
            return False
        sha = _sha(source)  # read once: to compare, and to remember
        if fresh and old.get("sha") == sha:
            old["stat"] = now
            self.kept += 1
            return False
        self.data["files"][key] = {"stat": now, "sha": sha, "extra": extra}
        self.made += 1
        return True

    def save(self) -> None:
        atomic_write_bytes(self.path, json.dumps(self.data).encode())


def _thumb(source: Path, out: Path, box: list[int] | None = None, size: int = THUMB) -> None:
    from PIL import Image

    with Image.open(source) as im:
        im = im.convert("RGB")
        if box:
            im = im.crop(tuple(box))
        im.thumbnail((size, size))
        buf = io.BytesIO()
        im.save(buf, "JPEG", quality=85)
    atomic_write_bytes(out, buf.getvalue())


def _method_order(present: set[str]) -> list[str]:
    """The registry's order (VITAL first, as the paper's figures), then any other method by name."""
    from ..methods import method_names

    known = [m for m in method_names() if m in present]
    return known + sorted(present - set(known))


def _synonyms(found: Found) -> list[list[str]] | None:
    if not any(it["kind"] == "class" for it in found.items):
        return None
    try:
        from ..zoo import imagenet_synonyms

        return imagenet_synonyms()
    except Exception:  # synonyms only widen the search; a gallery without them is still a gallery
        return None


def _details(rec: dict[str, Any], item: dict[str, Any], root: Path, site: Path, metrics: dict[str, str] | None,
             refs: list[dict[str, Any]]) -> dict[str, Any]:
    """The item page's data: the record's key fields, top-5, loss curves (thinned), references, metrics."""
    loss = {}
    for layer, curve in (rec.get("loss") or {}).items():
        if isinstance(curve, list) and curve:
            step = max(1, len(curve) // MAX_CURVE)
            loss[layer] = [round(float(v), 6) for v in curve[::step]]
    opt = rec.get("optimizer") or {}
    r = rec.get("references") or {}
    fields = {
        "model": (rec.get("model") or {}).get("name"), "method": rec.get("method"), "status": rec.get("status"),
        "seed": rec.get("seed"), "steps": rec.get("steps_done"), "lr": opt.get("lr"), "preset": opt.get("name"),
        "resolution": rec.get("resolution"), "references": r.get("label"), "reference count": r.get("count"),
        "crops": (r.get("crops") or {}).get("chosen_by"),
        "relevance": (rec.get("relevance") or {}).get("method") if rec.get("relevance") else None,
        "layers": ", ".join((rec.get("layers") or {}).get("layers", [])) or None,
        "seconds": round(rec["seconds_total"], 1) if isinstance(rec.get("seconds_total"), (int, float)) else None,
        "high-frequency share": (rec.get("image_spectrum") or {}).get("hf_share"),
        "vital-fv": rec.get("vital_fv"),
    }
    return {"id": item["id"], "fields": {k: v for k, v in fields.items() if v is not None},
            "top5": rec.get("top5") or [], "loss": loss, "refs": refs, "metrics": metrics or {},
            "json": _url(root / item["json"], site)}


def _references(rec: dict[str, Any], item: dict[str, Any], root: Path, site: Path, man: _Manifest) -> list[dict]:
    """Thumbnails of up to 12 references (mined patches cut at their boxes), with their scores."""
    r = rec.get("references") or {}
    mining = r.get("mining") or {}
    boxes = mining.get("boxes") or []
    scores = mining.get("scores") or []
    out = []
    for k, src in enumerate((r.get("sources") or [])[:12]):
        path = Path(src)
        candidates = [path] if path.is_absolute() else [root / path, Path.cwd() / path, root.parent / path]
        found = next((c for c in candidates if c.is_file()), None)
        if found is None:
            continue
        box = boxes[k] if k < len(boxes) and r.get("fit") == "stretch" else None
        thumb = site / "thumbs" / "refs" / f"{item['id']}-{k}.jpg"
        try:
            if man.stale(thumb, found, json.dumps(box)):
                _thumb(found, thumb, box, size=112)
        except OSError:
            continue
        out.append({"thumb": _url(thumb, site), "name": path.name,
                    "score": round(scores[k], 4) if k < len(scores) else None})
    return out


def build_gallery(results: str | os.PathLike[str], out: str | os.PathLike[str], *, overwrite: bool = False,
                  progress: bool = True) -> dict[str, Any]:
    """Build (or update) the site for ``results`` in ``out``; returns counts of what was found and made."""
    from tqdm.auto import tqdm

    root, site = Path(results).resolve(), Path(out).resolve()
    if site.exists() and any(site.iterdir()) and not (site / MANIFEST).exists() and not overwrite:
        raise VitalError(f"{out} holds other files: choose an empty or new folder for the gallery, or pass "
                         "--overwrite")
    start = time.perf_counter()
    found = scan(root)
    site.mkdir(parents=True, exist_ok=True)
    man = _Manifest(site)
    synonyms = _synonyms(found)
    index = []
    for item in tqdm(found.items, desc="gallery", unit="item", disable=not progress):
        if item["file"]:
            image = root / item["file"]
            thumb = site / "thumbs" / f"{item['id']}.jpg"
            try:
                if man.stale(thumb, image):
                    _thumb(image, thumb)
            except OSError as exc:  # an unreadable image: an issue, as an unreadable record is
                found.issues.append({"file": item["file"], "problem": f"unreadable image: {exc}"})
                continue
        entry = {k: item.get(k) for k in ("id", "title", "kind", "key", "model", "layer", "method", "seed", "status",
                                          "index", "channel", "name")}
        words = [item["title"], item.get("name") or "", item["layer"], item["method"]]
        if item["kind"] == "class" and synonyms and isinstance(item.get("index"), int) and \
                0 <= item["index"] < len(synonyms):
            words += synonyms[item["index"]]
        entry["search"] = " ".join(w for w in words if w).lower()
        if item["file"]:
            entry["thumb"] = _url(thumb, site)
            entry["image"] = _url(image, site)
            entry["rgba"] = _url(root / item["rgba"], site) if item["rgba"] else None
            record = root / item["json"]
            detail = site / "data" / "items" / f"{item['id']}.js"
            if man.stale(detail, record):
                rec = found.records[item["id"]]  # the record scan read and checked, not read again
                refs = _references(rec, item, root, site, man)
                data = _details(rec, item, root, site, found.metrics.get(Path(item["stem"]).name), refs)
                atomic_write_bytes(detail, f"window.VITAL_ITEM = {json.dumps(data)};\n".encode())
        else:
            entry["error"] = item.get("error")
        index.append(entry)
    figures = [{**f, "images": [_url(root / i, site) for i in f["images"]], "json": _url(root / f["json"], site)}
               for f in found.figures]
    data = {"title": root.name, "generated": time.strftime("%Y-%m-%d %H:%M"), "items": index,
            "methods": _method_order({it["method"] for it in index}),
            "figures": figures, "issues": found.issues, "has_metrics": bool(found.metrics)}
    atomic_write_bytes(site / "data" / "index.js", f"window.VITAL_INDEX = {json.dumps(data)};\n".encode())
    assets = resources.files("vital_fv.gallery") / "assets"
    for name in PAGES:
        atomic_write_bytes(site / name, (assets / name).read_bytes())
    man.save()
    return {"items": len(index), "figures": len(figures), "issues": len(found.issues), "made": man.made,
            "kept": man.kept, "seconds": time.perf_counter() - start, "site": str(site / "index.html")}


def make_server(site: str | os.PathLike[str], results: str | os.PathLike[str], port: int) -> Any:
    """An HTTP server on 127.0.0.1:``port`` (0: any free port) for the site and the results it links to, and
    nothing else: paths outside the two folders are not found. Returns the server and the site's URL path."""
    import functools
    import http.server

    site, root = Path(site).resolve(), Path(results).resolve()
    base = Path(os.path.commonpath([site, root]))

    class Handler(http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path: str) -> str:
            full = Path(super().translate_path(path)).resolve()
            if not any(full == d or d in full.parents for d in (site, root)):
                return str(site / "__not_found__")
            return str(full)

        def log_message(self, *_: Any) -> None:  # quiet: the URL printed once is what a user needs
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), functools.partial(Handler, directory=str(base)))
    return httpd, "/" + _url(site / "index.html", base)


def serve(site: str | os.PathLike[str], results: str | os.PathLike[str], port: int) -> None:
    """Serve the site on 127.0.0.1:``port`` until Ctrl-C."""
    httpd, path = make_server(site, results, port)
    with httpd:
        print(f"serving http://127.0.0.1:{httpd.server_address[1]}{path} (Ctrl-C stops)", flush=True)
        httpd.serve_forever()
