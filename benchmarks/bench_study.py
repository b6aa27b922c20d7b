"""The study server under load, and a simulated-participant study over real images (issue 16).

    python benchmarks/bench_study.py load --participants 50              # answers per second, p95 latency
    python benchmarks/bench_study.py sim atlas/bundled --participants 12 --model efficientnet_lite2 \\
        --out benchmarks/results/study-sim                                  # a dry-run study and its report

`load`: a study of 40 classes x 2 methods (synthetic images) served by `vital study serve` (uvicorn, one process)
on loopback; 50 participants answer at random at once; every answer POST is timed on the client. `sim`: a study
over an atlas job's images (class parts), answered by a classifier that did not make them, then its report.
"""

from __future__ import annotations

import argparse
import json
import random
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from vital_fv.result import png_bytes
from vital_fv.study import create_study
from vital_fv.study.simulate import random_answer


def synthetic_results(root: Path, classes: int = 40) -> Path:
    g = torch.Generator().manual_seed(0)
    for index in range(classes):
        for m in ("vital", "fourier"):
            folder = root / m
            folder.mkdir(parents=True, exist_ok=True)
            stem = f"lite0-{index}-c{index}-{m}-s0"
            (folder / f"{stem}.png").write_bytes(png_bytes(torch.rand(3, 224, 224, generator=g)))
            (folder / f"{stem}.json").write_text(json.dumps({
                "vital_fv": "bench", "method": m, "seed": 0, "status": "complete",
                "target": {"kind": "class", "index": index, "name": f"class {index}"},
                "model": {"name": "efficientnet_lite0", "num_classes": 1000}}))
    return root


def load(participants: int) -> None:
    import httpx

    tmp = Path(tempfile.mkdtemp(prefix="bench-study-"))
    study = tmp / "study"
    create_study(synthetic_results(tmp / "r"), study, parts=["rate-class", "label"],
                 participants_per_subset=participants)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen([sys.executable, "-m", "vital_fv.cli", "study", "serve", str(study), "--port",
                               str(port), "--max-new-per-minute", str(max(60, participants))],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    latencies: list[float] = []

    def one(i: int) -> int:
        rng = random.Random(i)
        with httpx.Client(base_url=base, timeout=60) as http:
            token = http.post("/api/participants", json={"consent": True}).json()["token"]
            n = 0
            while not (trial := http.get(f"/api/participants/{token}/next").json()).get("done"):
                t = time.perf_counter()
                r = http.post(f"/api/participants/{token}/answers",
                              json={"n": trial["n"], "value": random_answer(trial, rng), "ms": 500})
                latencies.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
                n += 1
            return n

    try:
        start = time.perf_counter()
        with ThreadPoolExecutor(max_workers=participants) as pool:
            answers = sum(pool.map(one, range(participants)))
        wall = time.perf_counter() - start
    finally:
        server.terminate()
        server.wait()
    p95 = statistics.quantiles(latencies, n=20)[-1]
    print(f"| {participants} participants at once | {answers} answers in {wall:.1f} s | "
          f"{answers / wall:.0f} answers/s (each with its next-trial request) | p50 "
          f"{1000 * statistics.median(latencies):.0f} ms | p95 {1000 * p95:.0f} ms |")


def sim(results: str, participants: int, model: str, out: str) -> None:
    from vital_fv.study.report import make_report
    from vital_fv.study.simulate import simulate

    tmp = Path(tempfile.mkdtemp(prefix="bench-study-sim-"))
    study = tmp / "study"
    create_study(results, study, parts=["rate-class", "label"], participants_per_subset=participants)
    done = simulate(str(study), participants, model=model, concurrency=2)
    table = make_report(study, out, n_boot=1000, pilots=True, overwrite=True)  # simulated participants are pilots
    print(f"{len(done)} simulated participants ({model}), {sum(d['answers'] for d in done)} answers; report in {out}")
    for r in table:
        print(r)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="what", required=True)
    lo = sub.add_parser("load")
    lo.add_argument("--participants", type=int, default=50)
    si = sub.add_parser("sim")
    si.add_argument("results")
    si.add_argument("--participants", type=int, default=12)
    si.add_argument("--model", default="efficientnet_lite2")
    si.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.what == "load":
        load(args.participants)
    else:
        sim(args.results, args.participants, args.model, args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
