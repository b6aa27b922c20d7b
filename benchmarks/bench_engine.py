"""Engine benchmark (issue: the VITAL engine). Prints, in one run on this machine:

(a) seconds per VITAL step / seconds per plain forward+backward of the same model, batch and resolution;
(b) for each bundled demo class x seeds, per preset: Lite0's top-1 on its own visualizations and the top-1/top-5
    of EfficientNet-Lite2, which the optimization never sees (the images are resized to Lite2's input);
(c) the time of a second run on the same references (cached prototypes) beside the first;
(d) peak memory of an optimization step.

    python benchmarks/bench_engine.py                        # everything (CPU: ~30 min with the paper preset)
    python benchmarks/bench_engine.py --presets quick --skip-speed
    python benchmarks/bench_engine.py --device cuda --out benchmarks/results-gpu.md
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from vital_fv import ClassTarget, Job, load_model, references, visualize, visualize_batch
from vital_fv.cache import PrototypeCache
from vital_fv.device import resolve_device
from vital_fv.features import as_channels_positions, capture
from vital_fv.matching import sort_matching_loss
from vital_fv.methods.vital import OPTIM_PRESETS
from vital_fv.params import clamp_
from vital_fv.transforms import roll


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def speed(spec, device: torch.device, batch: int, reps: int, warmup: int = 5) -> dict:
    """Median seconds of a full VITAL step and of a plain forward+backward, interleaved in one loop."""
    mod = spec.module.to(device)
    size = spec.preprocess.input_size
    names = list(spec.preset.layers)
    weights = torch.tensor(spec.preset.weights, device=device).unsqueeze(1)
    refs = spec.preprocess.normalize(references.bundled("espresso", n=8).prepare(spec.preprocess)).to(device)
    with torch.no_grad(), capture(mod, names) as feats:
        mod(refs)
        protos = {n: torch.sort(as_channels_positions(feats[n]), -1).values.mean(0, keepdim=True) for n in names}
    x = torch.randn(batch, 3, size, size, device=device, requires_grad=True)
    lo, hi = spec.preprocess.bounds(device)
    opt = torch.optim.Adam([x], lr=0.1, betas=(0.5, 0.9), fused=True)
    plain_x = torch.randn(batch, 3, size, size, device=device, requires_grad=True)

    def plain() -> None:
        mod(plain_x).sum().backward()
        plain_x.grad = None

    def vital_step(feats) -> None:
        mod(roll(x, [(3, -5)] * batch))
        per_layer = torch.stack([sort_matching_loss(as_channels_positions(feats[n]), protos[n]) for n in names])
        loss = (weights * per_layer).sum()
        float(loss.detach())  # the loop reads the loss every step (finite check, progress)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        clamp_(x, lo, hi)

    t_plain, t_step = [], []
    with capture(mod, names) as feats:
        for _ in range(warmup):
            plain()
            vital_step(feats)
        sync(device)
        for _ in range(reps):
            t = time.perf_counter()
            plain()
            sync(device)
            t_plain.append(time.perf_counter() - t)
            t = time.perf_counter()
            vital_step(feats)
            sync(device)
            t_step.append(time.perf_counter() - t)
    out = {"plain": statistics.median(t_plain), "step": statistics.median(t_step)}
    out["ratio"] = out["step"] / out["plain"]
    out["peak_mb"] = peak_memory_mb(lambda: vital_step_once(spec, mod, names, protos, weights, x, opt, lo, hi), device)
    return out


def vital_step_once(spec, mod, names, protos, weights, x, opt, lo, hi) -> None:
    with capture(mod, names) as feats:
        mod(x)
        loss = (weights * torch.stack([sort_matching_loss(as_channels_positions(feats[n]), protos[n])
                                       for n in names])).sum()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        clamp_(x, lo, hi)


def peak_memory_mb(fn, device: torch.device) -> float:
    """Peak memory of one step: CUDA allocations above what was held before, or the peak RSS of the process."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        fn()
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    def status(key: str) -> int:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
        return 0
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    fn()
    return status("VmHWM:") / 1024  # the whole process: model, runtime and the step's tensors


def judge_probs(judge, images: torch.Tensor) -> torch.Tensor:
    size = judge.preprocess.input_size
    x = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)
    with torch.no_grad():
        return judge.module(judge.preprocess.normalize(x.to(judge.device))).softmax(-1).cpu()


class Tally:
    """Counts, over images of known classes, the visualized model's top-1 and the judge's top-1 / top-5."""

    def __init__(self, spec, judge) -> None:  # noqa: ANN001
        self.spec, self.judge = spec, judge
        self.self1 = self.j1 = self.j5 = self.n = 0
        self.p_judge = 0.0

    def add(self, images: torch.Tensor, index: int) -> None:
        """``images`` (N, 3, S, S) in [0, 1], any S; all of class ``index``."""
        size = self.spec.preprocess.input_size
        x = F.interpolate(images.float(), size=(size, size), mode="bilinear", align_corners=False).clamp(0, 1)
        with torch.no_grad():
            own = self.spec.module(self.spec.preprocess.normalize(x.to(self.spec.device))).argmax(-1).cpu()
        jp = judge_probs(self.judge, x)
        self.self1 += int((own == index).sum())
        self.j1 += int((jp.argmax(-1) == index).sum())
        self.j5 += int((jp.topk(5).indices == index).any(-1).sum())
        self.p_judge += float(jp[:, index].sum())
        self.n += len(x)

    def cells(self) -> str:
        def pct(k: int) -> str:
            return f"{100 * k / max(1, self.n):.0f}%"

        return f"{pct(self.self1)} | {pct(self.j1)} | {pct(self.j5)}"


def quality(spec, judge, preset: str, seeds: list[int], device: torch.device, steps: int | None) -> list[dict]:
    rows = []
    for cname in references.bundled_classes():
        target = ClassTarget(cname)
        index, _ = target.resolve(spec.class_names)
        refs = references.bundled(cname)
        t = time.perf_counter()
        results = visualize_batch(spec, [Job(target, refs, s) for s in seeds], preset=preset, steps=steps,
                                  device=device, progress=False)
        wall = time.perf_counter() - t
        images = torch.stack([r.image for r in results])
        jp = judge_probs(judge, images)
        for r, p in zip(results, jp, strict=True):
            top5 = p.topk(5).indices.tolist()
            rows.append({
                "class": cname, "seed": r.record["seed"], "self_top1": r.top5[0]["index"] == index,
                "self_p": next((t["p"] for t in r.top5 if t["index"] == index), 0.0),
                "judge_top1": top5[0] == index, "judge_top5": index in top5, "wall": wall / len(seeds),
                "judge_name": judge.class_names[top5[0]],
            })
        print(f"  {preset:6s} {cname:10s} self top-1 {sum(r['self_top1'] for r in rows[-len(seeds):])}/{len(seeds)}"
              f"  judge top-1 {sum(r['judge_top1'] for r in rows[-len(seeds):])}/{len(seeds)}"
              f"  top-5 {sum(r['judge_top5'] for r in rows[-len(seeds):])}/{len(seeds)}"
              f"  ({wall:.0f} s for {len(seeds)} images; judge says {rows[-1]['judge_name']})", flush=True)
    return rows


def real_references(spec, judge) -> list[str]:
    """The 'real images' row of the paper's Table 1: the same models on the references themselves."""
    tally = Tally(spec, judge)
    for cname in references.bundled_classes():
        index, _ = ClassTarget(cname).resolve(spec.class_names)
        tally.add(references.bundled(cname).prepare(spec.preprocess), index)
    return [f"| real references (photo + crops) | - | {tally.n} | {tally.cells()} | - |"]


def cached_rerun(spec, device: torch.device) -> tuple[float, float, float, float]:
    with tempfile.TemporaryDirectory() as d:
        cache = PrototypeCache(d)
        refs = references.bundled("espresso")
        times = []
        for _ in range(2):
            t = time.perf_counter()
            r = visualize(spec, ClassTarget("espresso"), refs, steps=20, device=device, cache=cache, progress=False)
            times.append((time.perf_counter() - t, r.record["reference_seconds"]))
    return times[0][0], times[0][1], times[1][0], times[1][1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="quick,paper")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--steps", type=int, help="override steps (for trials only)")
    ap.add_argument("--reps", type=int, default=30)
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--paper-image", action="store_true",
                    help="also time one whole image with the paper preset (2000 steps, batch 1, references included)")
    ap.add_argument("--out", help="also write the summary table (markdown) to this file")
    args = ap.parse_args()
    device = resolve_device(args.device)
    seeds = [int(s) for s in args.seeds.split(",")]
    spec = load_model("efficientnet_lite0").to(device)
    judge = load_model("efficientnet_lite2").to(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    lines = [f"device: {name}; torch {torch.__version__}; threads {torch.get_num_threads()}", ""]
    if not args.skip_speed:
        lines += ["| batch | plain fwd+bwd (ms) | VITAL step (ms) | ratio (target <= 1.15) "
                  "| peak memory of a step (MB) |",
                  "|---|---|---|---|---|"]
        for batch in (1, 3):
            s = speed(spec, device, batch, args.reps)
            lines.append(f"| {batch} | {s['plain'] * 1000:.1f} | {s['step'] * 1000:.1f} | {s['ratio']:.2f} | "
                         f"{s['peak_mb']:.0f} |")
            print(lines[-1], flush=True)
        first, first_refs, second, second_refs = cached_rerun(spec, device)
        lines += ["", f"cached prototypes: first run {first:.2f} s (references {first_refs:.2f} s), "
                      f"second run {second:.2f} s (references {second_refs:.3f} s), 20 steps each", ""]
        print(lines[-2], flush=True)
    if args.paper_image:
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            r = visualize(spec, ClassTarget("espresso"), references.bundled("espresso"), preset="paper",
                          device=device, cache=PrototypeCache(d), progress=False)
            wall = time.perf_counter() - t
        lines += [f"one image, paper preset (2000 steps, batch 1, reference statistics included): {wall:.1f} s "
                  f"({r.record['seconds_per_step'] * 1000:.2f} ms/step); the paper reports ~40 s per class image "
                  "on its GPU (ResNet50)", ""]
        print(lines[-2], flush=True)
    if not args.skip_quality:
        lines += ["| preset | steps | images | Lite0 top-1 (target 100%) | Lite2 top-1 | Lite2 top-5 (target >= 90%) "
                  "| s/image |", "|---|---|---|---|---|---|---|"]
        lines += real_references(spec, judge)
        print(lines[-1], flush=True)
        for preset in args.presets.split(","):
            rows = quality(spec, judge, preset, seeds, device, args.steps)
            n = len(rows)
            steps = args.steps or OPTIM_PRESETS[preset].steps

            def pct(key: str, rows=rows, n=n) -> str:
                return f"{100 * sum(r[key] for r in rows) / n:.1f}%"

            wall = sum(r["wall"] for r in rows) / n
            lines.append(f"| {preset} | {steps} | {n} | {pct('self_top1')} | {pct('judge_top1')} | "
                         f"{pct('judge_top5')} | {wall:.1f} |")
            print(lines[-1], flush=True)
    text = "\n".join(lines)
    print("\n" + text)
    if args.out:
        Path(args.out).write_text(f"command: {' '.join(sys.argv)}\n\n{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
