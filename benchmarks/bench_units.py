"""Intermediate units on EfficientNet-Lite0 (the relevance issue): speed of relevance and CoSy AUC / MAD.

(a) Speed: seconds per VITAL step with relevance (LRP, Guided Backprop) divided by a plain forward+backward of the
    model at batch 1, timed in one run (median of the loop's own step times; the plain pass interleaved before and
    after). Target for LRP: <= 2.2.
(b) Quality (SPEC §7, CoSy): for N random channels of one layer, references mined from the photos that ship with
    scikit-image/scikit-learn (k patches from distinct photos, which are also the controls); per unit and method,
    AUC = ROC-AUC separating the visualizations (1) from the controls (0) by the unit's spatially averaged
    activation, MAD = (mean act(FV) - mean act(controls)) / std(controls); averaged over units. Methods: VITAL
    with LRP, with Guided Backprop, without relevance, and activation maximization (Fourier, as the paper's
    baseline). Random-init images' activation is shown for scale.

    python benchmarks/bench_units.py --units 20 --out benchmarks/results/cpu_units.md     # ~40 min on this CPU
    python benchmarks/bench_units.py --only speed --out benchmarks/results/cpu_units_speed.md   # ~3 min
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vital_fv import Job, load_model, metrics, references, visualize_batch
from vital_fv.device import frozen_on, resolve_device
from vital_fv.features import capture
from vital_fv.methods import method_names, run_method
from vital_fv.params import init_pixels, item_generators
from vital_fv.targets import ClassTarget, UnitTarget


def plain_step_seconds(spec, device: torch.device, reps: int = 20) -> float:
    x = torch.randn(1, 3, spec.preprocess.input_size, spec.preprocess.input_size, device=device,
                    requires_grad=True)
    times = []
    for i in range(reps + 3):
        t = time.perf_counter()
        spec.module(x).sum().backward()
        x.grad = None
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= 3:
            times.append(time.perf_counter() - t)
    return statistics.median(times)


def speed(spec, device: torch.device, refs: references.ReferenceSet, steps: int) -> list[str]:
    rows = []
    cases = [("unit blocks.5.2:17", UnitTarget("blocks.5.2", 17), refs),
             ("class espresso", ClassTarget("espresso"), references.bundled("espresso", n=8))]
    for label, target, ref in cases:
        for rel in ("lrp", "guided_backprop", None):
            before = plain_step_seconds(spec, device)
            r = visualize_batch(spec, [Job(target, ref, 0)], preset="quick", steps=steps, relevance=rel,
                                device=device, progress=False, cache=False)[0]
            after = plain_step_seconds(spec, device)
            plain = (before + after) / 2
            step = statistics.median(r.record["step_seconds"][5:])
            rows.append(f"| {label} | {rel or 'none'} | {step * 1000:.1f} | {plain * 1000:.1f} | {step / plain:.2f} |")
            print(rows[-1], flush=True)
    return rows


@torch.no_grad()
def unit_values(spec, units: list[UnitTarget], images: torch.Tensor) -> list[float]:
    layer = units[0].layer
    device = next(spec.module.parameters()).device
    with capture(spec.module, [layer]) as feats:
        spec.module(spec.preprocess.normalize(images.to(device)))
        return [float(u.value(a)) for u, a in zip(units, feats[layer], strict=True)]


def quiet_noise(result, quantile: float = 0.25) -> float:
    """Pixel noise where the loss barely acts: the RMS of the image's high-pass (image minus a 1 px Gaussian blur)
    over the pixels in the lowest ``quantile`` of the transparency map (issue 14, item 4: the start noise that
    stays where relevance is zero). The espresso photo: 0.037; the N(0, 1) start: 0.19."""
    from torchvision.transforms.functional import gaussian_blur

    img = result.image.float().clamp(0, 1)
    power = (img - gaussian_blur(img.unsqueeze(0), [5, 5], [1.0, 1.0])[0]).square().mean(0)
    alpha = result.alpha.float().mean(0)
    quiet = alpha <= torch.quantile(alpha.flatten(), quantile)
    return float(power[quiet].mean().sqrt())


def parse_preset(ap: argparse.ArgumentParser, preset: str, changes: str):  # noqa: ANN201
    """The VITAL preset named by --preset with the --changes fields replaced; a bad one is an argparse error, so
    the scripts stop before their mining and runs."""
    import ast
    from dataclasses import replace

    from vital_fv.methods.vital import OPTIM_PRESETS

    try:
        return replace(OPTIM_PRESETS[preset], **ast.literal_eval(changes))
    except (KeyError, TypeError, ValueError, SyntaxError) as e:
        ap.error(f"--preset/--changes: {e!r}; presets: {', '.join(OPTIM_PRESETS)}; changes: a dict of "
                 "OptimPreset fields, e.g. \"{'grad_blur': 1.0}\"")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layer", default="blocks.5.2")
    ap.add_argument("--units", type=int, default=20)
    ap.add_argument("--neurons", action="store_true",
                    help="each unit is the channel's neuron at the centre of the layer's map, not its spatial mean")
    ap.add_argument("--k", type=int, default=10, help="mined references (= controls) per unit")
    ap.add_argument("--methods", default="vital-lrp,vital-gb,vital-none,fourier")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--seed", type=int, default=0, help="the visualizations' seed (units and references stay)")
    ap.add_argument("--changes", default="{}", help="VITAL preset fields to change, e.g. \"{'grad_blur': 1.0}\"")
    ap.add_argument("--steps", type=int, help="override steps (smoke tests only)")
    ap.add_argument("--speed-steps", type=int, default=40)
    ap.add_argument("--only", choices=["speed", "quality"], help="run one part")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out")
    ap.add_argument("--save", help="keep every visualization with its record in this folder")
    ap.add_argument("--rows", type=Path, default=Path("/tmp/bench_units.jsonl"),
                    help="append one JSON line per unit and method (for paired comparisons of variants)")
    args = ap.parse_args()
    from sklearn.metrics import roc_auc_score

    # Options are checked before the mining and the runs: a typo should not cost half an hour.
    relevances = {"vital-lrp": "lrp", "vital-gb": "guided_backprop", "vital-none": None}
    known = [*relevances, *(m for m in method_names() if m != "vital")]  # the registry's baselines
    if bad := [m for m in args.methods.split(",") if m not in known]:
        ap.error(f"--methods: unknown {', '.join(bad)}; choose from {', '.join(known)}")
    vital_preset = parse_preset(ap, args.preset, args.changes)

    device = resolve_device(args.device)
    spec = load_model("efficientnet_lite0").to(device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)"
    photos = Path(tempfile.mkdtemp(prefix="vital-photos-"))
    from vital_fv.cli import main as cli

    cli(["photos", "--out", str(photos)])
    with frozen_on(spec.module, device):
        channels = torch.randperm(spec.module.get_submodule(args.layer).conv_pwl.out_channels,
                                  generator=torch.Generator().manual_seed(0))[: args.units].tolist()
        centre = None
        if args.neurons:
            with capture(spec.module, [args.layer]) as feats:
                spec.module(torch.zeros(1, 3, spec.preprocess.input_size, spec.preprocess.input_size, device=device))
                centre = tuple(s // 2 for s in feats[args.layer].shape[2:])
        units = [UnitTarget(args.layer, c, centre) for c in sorted(channels)]
        mined = references.mine_many(spec, units, photos, progress=False)
    refs = [references.mined_references(m, k=args.k) for m in mined]
    lines = [f"device: {name}; Lite0 {args.layer}, {len(units)} random channels (seed 0): {sorted(channels)}"
             f"{f', the neuron at {centre} of each' if centre else ''}; "
             f"references = controls = top-{args.k} mined patches of the {len(list(photos.iterdir()))} bundled "
             f"photos (64 px, stride 32); preset {args.preset}, seed {args.seed}", ""]

    if args.only != "quality":
        lines += ["Speed (batch 1, quick preset; ratio = VITAL step / plain forward+backward of the whole model):",
                  "", "| target | relevance | ms/step | plain f+b ms | ratio |", "|---|---|---|---|---|"]
        print("\n".join(lines), flush=True)
        with frozen_on(spec.module, device):
            speed_refs = references.mined_references(references.mine(spec, UnitTarget(args.layer, 17), photos,
                                                                     progress=False), k=args.k)
        lines += speed(spec, device, speed_refs, args.speed_steps)
    if args.only == "speed":
        if args.out:
            Path(args.out).write_text("\n".join(lines) + "\n")
        return 0

    with frozen_on(spec.module, device):
        controls = [unit_values(spec, [u] * r.count, r.prepare(spec.preprocess)) for u, r in zip(units, refs,
                                                                                               strict=True)]
        # The optimizer's own starting images (N(0, 1) pixels in normalized space), 8 per unit.
        start = spec.preprocess.denormalize(init_pixels(item_generators(range(8)), spec.preprocess.input_size,
                                                        device).detach()).clamp(0, 1)
        random_acts = [max(unit_values(spec, [u] * 8, start)) for u in units]
    what = f"activation at {centre}" if centre else "spatially averaged activation"
    table = ["", f"Quality (mean over units; act = the unit's {what}):", "",
             "| method | AUC | MAD | mean act(FV) | units above all 8 random starts | units >= their weakest "
             "reference | HF share | noise where quiet | s/image |", "|---|---|---|---|---|---|---|---|---|"]
    ctrl_mean = statistics.mean(statistics.mean(c) for c in controls)
    print("\n".join(table), flush=True)
    for method in args.methods.split(","):
        t = time.perf_counter()
        jobs = [Job(u, r, args.seed) for u, r in zip(units, refs, strict=True)]
        if method in relevances:
            res = run_method("vital", spec, jobs, preset=vital_preset, steps=args.steps, relevance=relevances[method],
                             device=device, progress=False)
        else:
            res = run_method(method, spec, [Job(u, None, args.seed) for u in units], preset=args.preset,
                             steps=args.steps, device=device, progress=False)
        per_image = (time.perf_counter() - t) / len(units)
        if args.save:
            for u, r in zip(units, res, strict=True):
                r.save(Path(args.save) / method / f"{u.slug()}.png", overwrite=True)
        with frozen_on(spec.module, device):
            acts = unit_values(spec, units, torch.stack([r.image for r in res]))
        aucs, mads = [], []
        for a, c in zip(acts, controls, strict=True):
            aucs.append(roc_auc_score([1] + [0] * len(c), [a, *c]))
            sd = statistics.pstdev(c) or 1e-12
            mads.append((a - statistics.mean(c)) / sd)
        above = sum(a > r for a, r in zip(acts, random_acts, strict=True))
        within = sum(min(c) <= a for a, c in zip(acts, controls, strict=True))
        hf = statistics.mean(metrics.spectrum_stats(r.image)["hf_share"] for r in res)
        noises = [quiet_noise(r) if r.alpha is not None else float("nan") for r in res]
        noise = statistics.mean(noises)
        with args.rows.open("a") as f:
            for u, a, auc, mad, nz in zip(units, acts, aucs, mads, noises, strict=True):
                f.write(json.dumps({"method": method, "preset": args.preset, "changes": args.changes, "seed": args.seed,
                                    "layer": args.layer, "unit": u.slug(), "act": a, "auc": auc, "mad": mad,
                                    "noise": nz}) + "\n")
        table.append(f"| {method} | {statistics.mean(aucs):.3f} | {statistics.mean(mads):.3f} | "
                     f"{statistics.mean(acts):.3f} | {above}/{len(units)} | {within}/{len(units)} | "
                     f"{hf:.3f} | {noise:.3f} | {per_image:.1f} |")
        print(table[-1], flush=True)
    table += ["", f"controls: mean act {ctrl_mean:.3f}; random starts: mean of each unit's max over 8 "
              f"{statistics.mean(random_acts):.3f}. The paper (ResNet50, 90 neurons, "
              "ImageNet controls): VITAL AUC 0.556 / MAD 0.159, Fourier 0.307 / -0.812, MACO 0.256 / -0.968."]
    print(table[-1])
    lines += table
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
