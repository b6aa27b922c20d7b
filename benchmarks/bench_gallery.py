"""Gallery at scale (issue 18): a synthetic results folder of 10,000 items (64-px images, records in the shape
`vital visualize` writes), then the build, an unchanged rebuild, a rebuild after 100 images changed, and the
first page's load time in headless Chromium (from navigation until the grid and count are drawn), plus a search.

    python benchmarks/bench_gallery.py --items 10000 --out benchmarks/results/cpu_gallery.md    # ~3 min here
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from gallery_helpers import write_result  # noqa: E402

from vital_fv.gallery import build_gallery  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--items", type=int, default=10000)
    ap.add_argument("--out", help="markdown file for the table")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-gallery-"))
    results, site = tmp / "results", tmp / "site"
    t = time.perf_counter()
    methods = ("vital", "fourier", "maco", "deepinversion")
    for k in range(args.items):
        c, m = k // len(methods), methods[k % len(methods)]
        write_result(results / m, f"tiny-{c}-class{c}-{m}-s0", index=c % 1000, name=f"class {c}", method=m,
                     colour=(k % 7) / 10)
    made = time.perf_counter() - t
    rows = []
    first = build_gallery(results, site, progress=False)
    rows.append(("first build", first["seconds"]))
    again = build_gallery(results, site, progress=False)
    rows.append(("rebuild, nothing changed", again["seconds"]))
    for k in range(0, 400, 4):
        write_result(results / "vital", f"tiny-{k // 4}-class{k // 4}-vital-s0", index=k // 4, name=f"class {k // 4}",
                     colour=0.95)
    changed = build_gallery(results, site, progress=False)
    rows.append((f"rebuild, 100 images changed ({changed['made']} files made)", changed["seconds"]))

    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 900})
        t = time.perf_counter()
        page.goto((site / "index.html").as_uri())
        page.wait_for_function("document.querySelector('#count').textContent.includes('items')")
        rows.append(("first page drawn in Chromium (file://)", time.perf_counter() - t))
        t = time.perf_counter()
        page.fill("#search", f"class {(args.items - 1) // len(methods)}")
        page.wait_for_function("document.querySelector('#count').textContent.startsWith('4 of')")
        rows.append(("a search over all items (incl. the 120 ms typing pause)", time.perf_counter() - t))
        browser.close()
    table = "| step | seconds |\n|---|---|\n" + "".join(f"| {n} | {s:.2f} |\n" for n, s in rows)
    print(f"{args.items} items (written in {made:.0f} s)\n\n{table}")
    if args.out:
        Path(args.out).write_text(f"{args.items} items\n\n{table}")
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
