"""The VITAL step against a plain forward+backward of the same model (issue 30 item 1), and where the rest goes.

The step is the real one: ``visualize_batch`` runs ``--steps`` steps and its record's ``step_seconds`` give the
median over steps 10..120; the plain pass (``model(x).sum().backward()``, batch 1, same resolution) is timed in
blocks interleaved with the runs (A, B, A, B, ...), each block's median, then the median of the blocks' ratios.
One thread, so the other users of a shared machine disturb less. ``--profile`` writes a ``torch.profiler`` table
of the step's operators; ``--against SRC`` also measures another checkout's ``src`` in alternating subprocesses
(before/after in one run).

    PYTHONPATH=src python benchmarks/bench_step.py --out benchmarks/results/cpu_step.md
    PYTHONPATH=src python benchmarks/bench_step.py --against /tmp/before/src --out benchmarks/results/cpu_step.md
    PYTHONPATH=src python benchmarks/bench_step.py --profile benchmarks/results/profile_step.md --rounds 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

CASES = {  # name: (preset, relevance)
    "quick": ("quick", None),
    "paper": ("paper", None),
    "quick+lrp": ("quick", "lrp"),
}


def plain_block(spec, device: torch.device, reps: int) -> list[float]:
    """Seconds of ``reps`` plain forward+backward passes (batch 1, the model's input size), after 3 unmeasured."""
    size = spec.preprocess.input_size
    x = torch.randn(1, 3, size, size, device=device, requires_grad=True)
    times = []
    for _ in range(reps + 3):
        t = time.perf_counter()
        spec.module(x).sum().backward()
        x.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return times[3:]


def step_block(spec, case: str, steps: int, device: torch.device, cache) -> list[float]:
    """Seconds of VITAL's steps 10..120 (of ``steps``) on espresso, seed 0."""
    from vital_fv import ClassTarget, Job, references, visualize_batch

    preset, rel = CASES[case]
    (r,) = visualize_batch(spec, [Job(ClassTarget("espresso"), references.bundled("espresso"), 0)], preset=preset,
                           steps=steps, device=device, progress=False, cache=cache, relevance=rel)
    times = r.record["step_seconds"]
    return times[10:120] or times


STATS = {"median": statistics.median, "min": min}  # min: the least disturbed pass of each, on a shared machine


def measure(cases: list[str], rounds: int, steps: int, device_name: str) -> dict[str, dict[str, list[float]]]:
    """Per statistic and case, each round's ratio (step statistic / plain statistic), the plain block timed right
    before each run."""
    from vital_fv import load_model
    from vital_fv.cache import PrototypeCache
    from vital_fv.device import frozen_on, resolve_device

    device = resolve_device(device_name)
    spec = load_model("efficientnet_lite0")
    out: dict[str, dict[str, list[float]]] = {stat: {c: [] for c in cases} for stat in STATS}
    with tempfile.TemporaryDirectory() as d:
        cache = PrototypeCache(d)
        for c in cases:  # prototypes (and relevance prototypes) into the cache, outside the timing
            step_block(spec, c, 2, device, cache)
        for _ in range(rounds):
            for c in cases:
                with frozen_on(spec.module, device):
                    plain = plain_block(spec, device, min(steps, 110) - 10)
                step = step_block(spec, c, steps, device, cache)
                for stat, f in STATS.items():
                    out[stat][c].append(f(step) / f(plain))
    return out


def profile(case: str, path: Path, device_name: str) -> None:
    """A ``torch.profiler`` table (self CPU time by operator) over 60 steps of one case, after 10 unprofiled."""
    from torch.profiler import ProfilerActivity, schedule
    from torch.profiler import profile as tprofile

    from vital_fv import load_model
    from vital_fv.cache import PrototypeCache
    from vital_fv.device import resolve_device
    from vital_fv.methods import base

    device = resolve_device(device_name)
    spec = load_model("efficientnet_lite0")
    with tempfile.TemporaryDirectory() as d:
        cache = PrototypeCache(d)
        step_block(spec, case, 2, device, cache)
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        sched = schedule(wait=10, warmup=0, active=60, repeat=1)
        run_steps = base.run_steps

        def profiled(steps, step, *a, **k):  # noqa: ANN001, ANN002, ANN003
            with tprofile(activities=activities, schedule=sched) as prof:
                def stepped(i: int) -> float:
                    v = step(i)
                    prof.step()
                    return v
                result = run_steps(steps, stepped, *a, **k)
            profiled.prof = prof
            return result

        import vital_fv.methods.vital as vital_mod

        vital_mod.run_steps = profiled
        try:
            step_block(spec, case, 72, device, cache)
        finally:
            vital_mod.run_steps = run_steps
    table = profiled.prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=30)
    with path.open("a") as f:
        f.write(f"\n## {case}: self time by operator over 60 steps (Lite0, batch 1, {device})\n\n```\n{table}\n```\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default=",".join(CASES), help=f"comma-separated of {', '.join(CASES)}")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=125)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--against", help="another checkout's src folder, measured in alternating subprocesses")
    ap.add_argument("--profile", help="write torch.profiler tables (markdown) to this file instead of timing")
    ap.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # a subprocess's answer
    ap.add_argument("--out", help="also write the table (markdown) to this file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cases = args.cases.split(",")
    if args.profile:
        path = Path(args.profile)
        path.write_text(f"command: {' '.join(sys.argv)}\n\ntorch {torch.__version__}, {args.threads} thread(s)\n")
        for c in cases:
            profile(c, path, args.device)
        print(path.read_text())
        return 0
    if args.json:
        print(json.dumps(measure(cases, args.rounds, args.steps, args.device)))
        return 0
    srcs = {"this checkout": str(Path(__file__).resolve().parent.parent / "src")}
    if args.against:
        srcs = {"before (--against)": args.against, **srcs}
    ratios = {stat: {s: {c: [] for c in cases} for s in srcs} for stat in STATS}
    for _ in range(args.rounds):  # alternate the checkouts round by round
        for label, src in srcs.items():
            env = {**os.environ, "PYTHONPATH": src, "OMP_NUM_THREADS": str(args.threads)}
            cmd = [sys.executable, __file__, "--json", "--rounds", "1", "--steps", str(args.steps),
                   "--cases", args.cases, "--device", args.device, "--threads", str(args.threads)]
            got = json.loads(subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout)
            for stat in STATS:
                for c in cases:
                    ratios[stat][label][c] += got[stat][c]
            print(label, {stat: {c: round(v[0], 3) for c, v in got[stat].items()} for stat in STATS}, flush=True)
    lines = []
    for stat in STATS:
        lines += [f"torch {torch.__version__}, {args.device}, {args.threads} thread(s), Lite0 batch 1; each cell the "
                  f"median over {args.rounds} rounds of ({stat} VITAL step over steps 10-120) / ({stat} plain "
                  "fwd+bwd timed just before it); [min-max] over the rounds", "",
                  "| code | " + " | ".join(cases) + " |", "|---|" + "---|" * len(cases)]
        for label in srcs:
            cells = [f"{statistics.median(v):.2f} [{min(v):.2f}-{max(v):.2f}]" for v in ratios[stat][label].values()]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(f"command: {' '.join(sys.argv)}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
