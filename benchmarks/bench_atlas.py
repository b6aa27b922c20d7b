"""Atlas throughput (issue 17): images per hour on Lite0 for the same 16 classes, made (a) one `vital visualize`
per class, as before the atlas; (b) `vital atlas run --batch 4` and `--batch 8` in one process; (c) 2 local
workers x batch 4; (d) Ray, 2 workers x batch 4 — and Ray's overhead against (c). Mining: images per second for
one process vs 2 shards on 2 workers. Each configuration is timed end to end (process start, model load,
references, optimization, files), one after another in one run.

    python benchmarks/bench_atlas.py --steps 100 --out benchmarks/results/cpu_atlas.md       # ~15 min on 2 cores
    python benchmarks/bench_atlas.py --classes 0-99 --only auto,auto2 --device cuda --steps 50   # issue 30's GPU rows

``auto`` / ``auto2``: `vital atlas run` with the batch size chosen by measurement (issue 30), in one process and
with 2 local workers on the same device.

VITAL's references come from an unlabelled pool (the 14 photos that ship with scikit-image and scikit-learn,
ranked per class by the model), so any class works offline.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CLASSES = list(range(0, 1000, 63))[:16]


def vital(*args: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "vital_fv.cli", *args], check=True, stdout=subprocess.DEVNULL,
                   stderr=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--only", help="comma-separated configurations: single,batch4,batch8,workers,ray,mining")
    ap.add_argument("--classes", default=",".join(map(str, CLASSES)), help="the classes (A-B, or a list)")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", help="markdown file for the table")
    args = ap.parse_args()
    only = set(args.only.split(",")) if args.only else None
    classes = args.classes.split(",") if "-" not in args.classes else [
        str(c) for c in range(int(args.classes.split("-")[0]), int(args.classes.split("-")[1]) + 1)]
    device = ["--device", args.device]
    tmp = Path(tempfile.mkdtemp(prefix="bench-atlas-"))
    pool = tmp / "pool"
    vital("photos", "--out", str(pool))
    steps = ["--steps", str(args.steps)]
    rows = []

    def plan(name: str) -> Path:
        job = tmp / name
        vital("atlas", "plan", "--classes", ",".join(classes), "--pool", str(pool), "--n-refs", "8",
              *steps, "--out", str(job))
        return job

    def record(label: str, seconds: float, n: int = len(classes)) -> None:
        rows.append((label, seconds, 3600 * n / seconds))
        print(f"| {label} | {seconds:.0f} | {3600 * n / seconds:.0f} |", flush=True)

    print("| configuration | seconds | images per hour |\n|---|---|---|")
    if not only or "single" in only:
        out = tmp / "single"
        t = sum(vital("visualize", "--class", str(c), "--pool", str(pool), "--n-refs", "8", "--preset", "quick",
                      *steps, "--out", str(out), "--quiet", *device) for c in classes)
        record("(a) one `vital visualize` per class", t)
    for b in (4, 8):
        if not only or f"batch{b}" in only:
            job = plan(f"batch{b}")
            record(f"(b) atlas run --batch {b}", vital("atlas", "run", str(job), "--batch", str(b), "--quiet",
                                                        *device))
    for name, workers in (("auto", []), ("auto2", ["--workers", "2", "--devices", f"{args.device},{args.device}"])):
        if only and name in only:
            job = plan(name)
            t = vital("atlas", "run", str(job), *workers, "--quiet", *device)
            chosen = "; ".join(line.strip() for line in subprocess.run(
                [sys.executable, "-m", "vital_fv.cli", "atlas", "status", str(job)], capture_output=True,
                text=True).stdout.splitlines() if "batch" in line)
            record(f"atlas run --batch auto, {'2 workers' if workers else '1 process'} ({chosen})", t)
    if not only or "workers" in only:
        job = plan("workers")
        t_workers = vital("atlas", "run", str(job), "--workers", "2", "--batch", "4", "--quiet")
        record("(c) 2 local workers x batch 4", t_workers)
    if not only or "ray" in only:
        job = plan("ray")
        t_ray = vital("atlas", "run", str(job), "--ray", "auto", "--workers", "2", "--batch", "4", "--quiet")
        record("(d) Ray, 2 workers x batch 4 (includes starting a local Ray)", t_ray)
        if not only or "workers" in only:
            print(f"\nRay / local workers: {t_ray / t_workers:.2f}")
    if not only or "mining" in only:
        photos = tmp / "photos"
        shutil.copytree(pool, photos)
        for name, shard, workers in (("mine1", 1000, []), ("mine2", 7, ["--workers", "2"])):
            job = tmp / name
            vital("atlas", "plan", "--units", "blocks.5.2:0-15", "--images", str(photos), "--methods", "vital",
                  "--shard-size", str(shard), "--steps", "1", "--n-refs", "2", "--out", str(job))
            t = vital("atlas", "run", str(job), *workers, "--batch", "16", "--quiet")
            label = "one process" if not workers else "2 shards on 2 workers"
            rows.append((f"mining + 16 one-step units, {label}", t, 14 / t))
            print(f"| mining 14 photos for 16 units (+16 one-step images), {label} | {t:.0f} | "
                  f"{14 / t:.2f} images/s |", flush=True)
    if args.out:
        Path(args.out).write_text("| configuration | seconds | rate |\n|---|---|---|\n" + "".join(
            f"| {label} | {s:.0f} | {rate:.2f} photos/s |\n" if label.startswith("mining") else
            f"| {label} | {s:.0f} | {rate:.0f} images/h |\n" for label, s, rate in rows))
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
