"""MACO's crops through the model in chunks (issue 30, item 2): ms per image-step at batch 1, 2, 4, 8 with the
crops of a batch in one forward+backward or in chunks of 8 (``MacoPreset.crop_chunk``), interleaved in one
process so the machine's drift hits both alike (quick preset: 4 crops an image; Lite0; two threads).

    PYTHONPATH=src python benchmarks/bench_maco_chunks.py --out benchmarks/results/cpu_maco_chunks.md
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import replace
from pathlib import Path

import torch

from vital_fv import ClassTarget, Job, load_model
from vital_fv.methods import run_method
from vital_fv.methods.maco import Maco


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    spec = load_model("efficientnet_lite0")
    quick = Maco.presets["quick"]
    res: dict[tuple[int, int], list[float]] = {}
    for _ in range(args.rounds):
        for b in (1, 2, 4, 8):
            for chunk in (8, 10_000):
                if b * quick.crops <= 8 and chunk > 8:
                    continue  # the same single pass either way
                jobs = [Job(ClassTarget(c), None, c) for c in range(b)]
                rs = run_method("maco", spec, jobs, preset=replace(quick, crop_chunk=chunk), steps=args.steps,
                                progress=False)
                res.setdefault((b, min(chunk, b * quick.crops)), []).append(
                    statistics.median(rs[0].record["step_seconds"][2:]) / b * 1e3)
    one = statistics.median(res[(1, quick.crops)])
    lines = [f"command: benchmarks/bench_maco_chunks.py --rounds {args.rounds} --steps {args.steps} --threads "
             f"{args.threads}", "", f"torch {torch.__version__}, CPU, {args.threads} thread(s), Lite0, MACO quick "
             f"({quick.crops} crops an image)", "",
             "| batch | crops per pass | ms per image-step (each round) | median | / batch 1 |",
             "|---|---|---|---|---|"]
    for (b, c), v in sorted(res.items()):
        m = statistics.median(v)
        lines.append(f"| {b} | {c} | {', '.join(f'{x:.0f}' for x in v)} | {m:.0f} | {m / one:.2f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
