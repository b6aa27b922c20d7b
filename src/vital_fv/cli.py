"""The ``vital`` command: a thin layer over the Python API (``vital_fv.visualize`` and friends)."""

from __future__ import annotations

import argparse
import re
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path

from .errors import VitalError
from .references import MiningInterrupted


def _floats(text: str) -> list[float]:
    return [float(t) for t in text.split(",") if t.strip()]


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def build_parser() -> argparse.ArgumentParser:
    from .optimize import OPTIM_PRESETS
    from .zoo import DEFAULT_MODEL

    p = argparse.ArgumentParser(
        prog="vital",
        description="VITAL feature visualization: images whose feature distributions match real references.",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def scan_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
        sp.add_argument("--cache-dir", help="where image scans are kept for resuming (default ~/.cache/vital-fv)")
        sp.add_argument("--overwrite", action="store_true", help="replace existing outputs")
        sp.add_argument("--quiet", action="store_true", help="no progress bar")

    def model_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--model", default=DEFAULT_MODEL, help=f"zoo name (default {DEFAULT_MODEL})")
        sp.add_argument("--weights", help="state dict or checkpoint file (torchvision models)")

    v = sub.add_parser("visualize", help="optimize a visualization of a class")
    model_args(v)
    what = v.add_mutually_exclusive_group(required=True)
    what.add_argument("--class", dest="cls", help="class index or name (e.g. 967 or espresso)")
    what.add_argument("--unit", help="LAYER:CHANNEL or LAYER:CHANNEL@Y,X (a channel, or one neuron of it)")
    what.add_argument("--concept", help="FILE:INDEX, a concept from `vital concepts` (concepts.safetensors:3)")
    src = v.add_mutually_exclusive_group()
    src.add_argument("--refs", nargs="+",
                     help="reference folder (a `vital mine` folder for units), or image files (default: bundled)")
    src.add_argument("--pool", help="unlabelled folder: use the N images the model rates most probable")
    src.add_argument("--images", help="units: mine the top --n-refs patches of this folder (cached), then visualize; "
                                      "concepts: its --n-refs crops that express the concept most")
    v.add_argument("--relevance", choices=["lrp", "guided-backprop", "none"],
                   help="weight activations by their relevance for the target (default: lrp for units, none "
                        "for classes)")
    v.add_argument("--use", choices=["patches", "images"], default="patches",
                   help="with --images: the mined patches (default) or their whole source images")
    v.add_argument("--n-refs", type=int, default=50, help="number of reference images (default 50)")
    v.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                   help="make up missing references with random crops (default: on for bundled photos only)")
    v.add_argument("--preset", default="paper", choices=list(OPTIM_PRESETS), help="optimization preset")
    v.add_argument("--steps", type=int, help="override the preset's step count")
    v.add_argument("--lr", type=float, help="override the preset's learning rate")
    v.add_argument("--layers", type=_names, help="comma-separated layer names (default: the model's preset)")
    v.add_argument("--layer-weights", type=_floats, help="comma-separated loss weights, one per layer")
    v.add_argument("--size", type=int, help="generated resolution (default: the model's input size)")
    v.add_argument("--no-class-token", action="store_true",
                   help="ViTs: leave the class token out of the matched token distributions")
    v.add_argument("--seeds", type=_ints, default=[0], help="comma-separated seeds, one image each (default 0)")
    v.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    v.add_argument("--out", default="out", help="output folder (default out/)")
    v.add_argument("--name", help="file name stem (default MODEL-CLASS-sSEED)")
    v.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    v.add_argument("--alpha-percentile", type=float, default=98.0,
                   help="transparency map: clip at this percentile before scaling (default 98)")
    v.add_argument("--cache-dir", help="prototype cache folder (default ~/.cache/vital-fv or $VITAL_CACHE_DIR)")
    v.add_argument("--no-cache", action="store_true", help="neither read nor write cached prototypes")
    v.add_argument("--quiet", action="store_true", help="no progress bar")

    v.add_argument("--method", default="vital", choices=["vital", "fourier", "maco", "deepinversion"],
                   help="vital (default) or a baseline: fourier, maco, deepinversion")
    v.add_argument("--spectrum", help="maco: magnitude spectrum file from `vital spectrum` (default: the shipped one)")
    v.add_argument("--batch", type=int, help="number of images (seeds 0..N-1), e.g. 64 for deepinversion")

    mi = sub.add_parser("mine", help="find the patches of a folder that most activate a unit (its references)")
    model_args(mi)
    mi.add_argument("--unit", required=True, help="LAYER:CHANNEL or LAYER:CHANNEL@Y,X")
    mi.add_argument("--images", required=True, help="folder of images to scan (searched recursively)")
    mi.add_argument("--k", type=int, default=50, help="number of patches, each from a different image (default 50)")
    mi.add_argument("--patch", type=int, default=64, help="patch size in px at the model's input scale (default 64)")
    mi.add_argument("--stride", type=int, help="patch stride in px (default half a patch)")
    mi.add_argument("--use", choices=["patches", "images"], default="patches",
                    help="references are the patches (default, as the paper) or their source images (as its code)")
    mi.add_argument("--out", required=True, help="output folder: patches/, contact_sheet.png, mining.json")
    mi.add_argument("--batch-size", type=int, default=32)
    scan_args(mi)

    co = sub.add_parser("concepts", help="CRAFT concepts of a class: NMF directions at the last hidden layer, ranked "
                                         "by Sobol importance, with their top crops")
    model_args(co)
    co.add_argument("--class", dest="cls", required=True, help="class index or name")
    co.add_argument("--images", required=True, help="folder of the class's images (searched recursively)")
    co.add_argument("--n-concepts", type=int, default=10, help="number of concepts (default 10)")
    co.add_argument("--layer", help="layer to factorize (default: the last hidden layer, e.g. bn2 on Lite0)")
    co.add_argument("--patch", type=int, default=64, help="crop size in px at the model's input scale (default 64)")
    co.add_argument("--stride", type=int, help="crop stride in px (default: the crop size, as CRAFT)")
    co.add_argument("--top", type=int, default=10, help="top crops kept per concept (default 10)")
    co.add_argument("--nb-design", type=int, default=32, help="Sobol design size (a power of 2, default 32)")
    co.add_argument("--sobol-images", type=int, default=100,
                    help="images the importance is averaged over (a seeded sample; 0 = all; default 100)")
    co.add_argument("--seed", type=int, default=0)
    co.add_argument("--out", required=True, help="output folder: concepts.safetensors, concepts.json, "
                                                 "contact_sheet.png, crops/")
    scan_args(co)

    def vital_args(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--preset", default="paper", choices=list(OPTIM_PRESETS), help="optimization preset")
        sp.add_argument("--steps", type=int, help="override the preset's step count")
        sp.add_argument("--lr", type=float, help="override the preset's learning rate")
        sp.add_argument("--seed", type=int, default=0, help="seed of the visualizations and of k-means (default 0)")
        sp.add_argument("--relevance", choices=["lrp", "guided-backprop", "none"], default="lrp",
                        help="relevance weighting of the unit visualizations (default lrp)")
        sp.add_argument("--patch", type=int, default=64, help="patch size in px at the model's input scale")
        scan_args(sp)

    ds = sub.add_parser("disentangle", help="polysemantic unit: cluster its top patches, one VITAL image per cluster")
    model_args(ds)
    ds.add_argument("--unit", required=True, help="LAYER:CHANNEL")
    ds.add_argument("--images", required=True, help="folder of images to take the unit's top patches from")
    ds.add_argument("--clusters", type=int, default=3, help="number of meanings (k-means clusters, default 3)")
    ds.add_argument("--patches", type=int, default=1000, help="top patches to cluster (default 1000, as the paper)")
    ds.add_argument("--per-image", type=int, help="at most this many patches from one image (default: no limit)")
    ds.add_argument("--cluster-layer", help="cluster the patches' activations at this layer (default: the unit's)")
    ds.add_argument("--stride", type=int, help="patch stride in px (default half a patch)")
    ds.add_argument("--n-refs", type=int, default=50, help="references per cluster: its top patches (default 50)")
    ds.add_argument("--out", required=True, help="output folder: cluster-C.png, cluster-C-patches.png, overview.png, "
                                                 "disentangle.json")
    vital_args(ds)

    ci = sub.add_parser("circuit", help="a class's top channels of the last hidden layer by LRP relevance, "
                                        "visualized, in one figure")
    model_args(ci)
    ci.add_argument("--class", dest="cls", required=True, help="class index or name")
    ci.add_argument("--images", required=True, help="folder of the class's images (relevance is summed over them)")
    ci.add_argument("--mine", help="folder to mine the channels' references from (default: --images)")
    ci.add_argument("--top", type=int, default=3, help="number of channels (default 3, as the paper)")
    ci.add_argument("--layer", help="layer whose channels are ranked (default: the last hidden layer)")
    ci.add_argument("--n-refs", type=int, default=50, help="references per channel (default 50)")
    ci.add_argument("--out", required=True, help="output folder: unit-C.png per channel, circuit.png, circuit.json")
    vital_args(ci)

    ev = sub.add_parser("evaluate", help="score a folder of results: the paper's Table 1 (accuracy, FD/KID, CLIP, "
                                         "unit AUC/MAD)")
    ev.add_argument("results", help="folder of results (NAME.png + NAME.json), searched recursively")
    ev.add_argument("--out", default="report", help="report folder (default report/)")
    ev.add_argument("--real", help="real images, one sub-folder per class (default: bundled photos)")
    ev.add_argument("--judge", default="efficientnet_lite2", help="zoo model not used in the optimization, or none")
    ev.add_argument("--fid-model", default="efficientnet_lite0",
                    help="zoo model whose penultimate features give FD and KID, or none")
    ev.add_argument("--clip-checkpoint", help="open_clip checkpoint file for CLIP zero-shot (top-1/top-5)")
    ev.add_argument("--clip-arch", default="ViT-B-32", help="open_clip architecture of the checkpoint")
    ev.add_argument("--controls", help="for units: a `vital mine` folder, or a folder of them (AUC / MAD)")
    ev.add_argument("--per-class", type=int, default=50, help="real images per class (default 50)")
    ev.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples for the FD interval")
    ev.add_argument("--device", default="auto")
    ev.add_argument("--no-plots", action="store_true")
    ev.add_argument("--overwrite", action="store_true")

    ph = sub.add_parser("photos", help="write the photos that ship with scikit-image/scikit-learn to a folder")
    ph.add_argument("--out", required=True, help="output folder")
    ph.add_argument("--only", type=_names, help="comma-separated photo names, e.g. coffee (default: all)")
    ph.add_argument("--overwrite", action="store_true")

    sp = sub.add_parser("spectrum", help="average magnitude spectrum of a folder of images (for --method maco)")
    sp.add_argument("folder", nargs="?", help="folder of natural images")
    sp.add_argument("--offline-photos", action="store_true", help="use the photos shipped with skimage/sklearn")
    sp.add_argument("--out", required=True, help="output .npy file")
    sp.add_argument("--overwrite", action="store_true")

    la = sub.add_parser("layers", help="list a model's hookable layers with their output shapes")
    model_args(la)
    la.add_argument("--grep", help="only names containing this text")

    cl = sub.add_parser("classes", help="list a model's class indices and names")
    model_args(cl)
    cl.add_argument("--grep", help="only names containing this text (case-insensitive)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    try:
        commands = {"visualize": cmd_visualize, "layers": cmd_layers, "classes": cmd_classes,
                    "spectrum": cmd_spectrum, "mine": cmd_mine, "photos": cmd_photos, "evaluate": cmd_evaluate,
                    "concepts": cmd_concepts, "disentangle": cmd_disentangle, "circuit": cmd_circuit}
        return commands[args.command](args)
    except KeyboardInterrupt:
        print("interrupted before the optimization started: nothing was written", file=sys.stderr)
        return 130
    except MiningInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 130
    except VitalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for result in getattr(exc, "results", []):
            _report_saved(result)
        return 2


def _load(args: argparse.Namespace):  # noqa: ANN202 - ModelSpec, imported lazily to keep --help fast
    from .zoo import load_model

    return load_model(args.model, args.weights)


def cmd_layers(args: argparse.Namespace) -> int:
    from .features import layer_shapes
    from .zoo import EMBEDDED_MODELS, load_model

    if args.weights is None and args.model not in EMBEDDED_MODELS:
        spec = load_model(args.model, random_init=True)  # names and shapes need no weights
    else:
        spec = _load(args)
    preset = set(spec.preset.layers) if spec.preset else set()
    print(f"{spec.name}: input 3x{spec.preprocess.input_size}x{spec.preprocess.input_size}; * = in the default preset")
    for name, shape in layer_shapes(spec.module, spec.preprocess.input_size):
        if args.grep and args.grep not in name:
            continue
        mark = "*" if name in preset else " "
        print(f"{mark} {name:<40} {'x'.join(str(s) for s in shape)}")
    return 0


def cmd_classes(args: argparse.Namespace) -> int:
    spec = _load(args)
    if not spec.class_names:
        raise VitalError(f"model {spec.name} has no class names")
    word = (args.grep or "").lower()
    synonyms = spec.class_synonyms or [[] for _ in spec.class_names]
    hits = [
        (i, n, [w for w in syn if w != n])
        for i, (n, syn) in enumerate(zip(spec.class_names, synonyms, strict=True))
        if word in n.lower() or any(word in w.lower() for w in syn)
    ]
    if not hits:
        raise VitalError(f"no class name of {spec.name} contains '{args.grep}'")
    for i, n, other in hits:
        print(f"{i:>5}  {n}" + (f"  ({', '.join(other)})" if other else ""))
    return 0


def _mine(args: argparse.Namespace, spec, unit, k: int, use: str):  # noqa: ANN001, ANN202
    """Mine (or reuse a cached or partial scan), then the top-k references."""
    from . import references as refs_mod
    from .optimize import frozen_on, resolve_device

    if k < 1:
        raise VitalError("the number of references must be at least 1")
    with frozen_on(spec.module, resolve_device(args.device)):
        from .optimize import _check_units

        _check_units(spec, [unit], spec.preprocess.input_size, resolve_device(args.device))
        result = refs_mod.mine(spec, unit, args.images, patch=getattr(args, "patch", 64),
                               stride=getattr(args, "stride", None), batch_size=getattr(args, "batch_size", 32),
                               progress=not args.quiet, cache_dir=args.cache_dir)
    print(f"mined {unit.label()} over {result.params['images']} images ({result.cache})", file=sys.stderr)
    return result, refs_mod.mined_references(result, k=k, use=use)


def cmd_mine(args: argparse.Namespace) -> int:
    from . import references as refs_mod
    from .result import refuse_overwrite
    from .targets import UnitTarget

    out = Path(args.out)
    refuse_overwrite([out / refs_mod.MINING_RECORD, out / "contact_sheet.png"], args.overwrite)
    spec = _load(args)
    unit = UnitTarget.parse(args.unit)
    result, refs = _mine(args, spec, unit, args.k, args.use)
    record = refs_mod.save_mining(result, refs, out, args.use, overwrite=args.overwrite)
    scores = refs.info["mining"]["scores"]
    print(f"{record}: {refs.count} references ({args.use}) for {unit.label()}, scores {scores[0]:.3g} .. "
          f"{scores[-1]:.3g}; contact sheet {out / 'contact_sheet.png'}")
    return 0


def cmd_concepts(args: argparse.Namespace) -> int:
    from .concepts import CONCEPTS_FILE, CONCEPTS_RECORD, extract_concepts, save_concepts
    from .optimize import frozen_on, resolve_device
    from .result import refuse_overwrite
    from .targets import ClassTarget

    out = Path(args.out)
    refuse_overwrite([out / CONCEPTS_FILE, out / CONCEPTS_RECORD], args.overwrite)
    spec = _load(args)
    index, name = ClassTarget(args.cls).resolve(spec.class_names, spec.class_synonyms)
    with frozen_on(spec.module, resolve_device(args.device)):
        concepts = extract_concepts(spec, index, args.images, n_concepts=args.n_concepts, layer=args.layer,
                                    patch=args.patch, stride=args.stride, top=args.top, nb_design=args.nb_design,
                                    sobol_images=args.sobol_images or None, seed=args.seed,
                                    progress=not args.quiet, cache_dir=args.cache_dir,
                                    class_name=name)
    path = save_concepts(concepts, out, overwrite=args.overwrite)
    p = concepts.params
    print(f"{path}: {p['n_concepts']} concepts of {name} ({index}) at {p['layer']} from {p['crops']} crops of "
          f"{p['image_count']} images (NMF error {p['nmf']['relative_error']:.2f}, head {p['head']})")
    for i, imp in enumerate(concepts.importance.tolist()):
        print(f"  concept {i}: importance {imp:.3f}")
    print(f"contact sheet {out / 'contact_sheet.png'}; visualize one: vital visualize --model {spec.name} "
          f"--concept {path}:0")
    return 0


def _vital_options(args: argparse.Namespace) -> dict:
    return {"preset": args.preset, "steps": args.steps, "lr": args.lr, "device": args.device,
            "relevance": None if args.relevance == "none" else args.relevance.replace("-", "_")}


def cmd_disentangle(args: argparse.Namespace) -> int:
    from .optimize import frozen_on, resolve_device
    from .polysemantic import RECORD, disentangle, save_disentangled, visualize_clusters
    from .result import ensure_writable_dir, refuse_overwrite
    from .targets import UnitTarget

    out = ensure_writable_dir(args.out)
    refuse_overwrite([out / RECORD, out / "overview.png"], args.overwrite)
    spec = _load(args)
    unit = UnitTarget.parse(args.unit)
    with frozen_on(spec.module, resolve_device(args.device)):
        dis = disentangle(spec, unit, args.images, clusters=args.clusters, patches=args.patches,
                          per_image=args.per_image, cluster_layer=args.cluster_layer, patch=args.patch,
                          stride=args.stride, seed=args.seed, progress=not args.quiet, cache_dir=args.cache_dir)
    sizes = [len(dis.members(c)) for c in range(dis.n_clusters)]
    print(f"{unit.label()}: {dis.params['patches']} top patches of {dis.params['image_count']} images in "
          f"{dis.n_clusters} clusters of {', '.join(map(str, sizes))}; visualizing each", file=sys.stderr)
    results = _vital_or_save(args, lambda: visualize_clusters(spec, dis, top=args.n_refs, seed=args.seed,
                                                              progress=not args.quiet, **_vital_options(args)),
                             [out / f"cluster-{c}.png" for c in range(dis.n_clusters)])
    record = save_disentangled(dis, results, out, top=args.n_refs, overwrite=args.overwrite)
    for c, r in enumerate(results):
        print(f"{out / f'cluster-{c}.png'}  [{r.status}] {sizes[c]} patches, unit value "
              f"{r.record['target'].get('value'):.3g}; patches {out / f'cluster-{c}-patches.png'}")
    print(f"{record}; side by side: {out / 'overview.png'}")
    return 130 if any(r.status == "interrupted" for r in results) else 0


def cmd_circuit(args: argparse.Namespace) -> int:
    from .circuits import RECORD, build_circuit, rank_channels, save_circuit
    from .optimize import frozen_on, resolve_device
    from .result import ensure_writable_dir, refuse_overwrite
    from .targets import ClassTarget

    out = ensure_writable_dir(args.out)
    refuse_overwrite([out / RECORD, out / "circuit.png"], args.overwrite)
    spec = _load(args)
    index, name = ClassTarget(args.cls).resolve(spec.class_names, spec.class_synonyms)
    with frozen_on(spec.module, resolve_device(args.device)):
        ranking = rank_channels(spec, index, args.images, layer=args.layer, progress=not args.quiet,
                                cache_dir=args.cache_dir)
    shares = ranking.shares()
    top = ranking.order()[: args.top]
    print(f"{name} ({index}): top channels of {ranking.layer} over {ranking.params['image_count']} images: "
          + ", ".join(f"#{c} {100 * shares[c]:.1f}%" for c in top), file=sys.stderr)
    holder: dict = {}

    def run():  # noqa: ANN202
        holder["circuit"] = build_circuit(spec, ranking, args.mine or args.images, top=args.top, n_refs=args.n_refs,
                                          seed=args.seed, progress=not args.quiet, cache_dir=args.cache_dir,
                                          patch=args.patch, **_vital_options(args))
        return holder["circuit"].results

    results = _vital_or_save(args, run, [out / f"unit-{c}.png" for c in top])
    record = save_circuit(holder["circuit"], out, overwrite=args.overwrite)
    for c, r in zip(top, results, strict=True):
        print(f"{out / f'unit-{c}.png'}  [{r.status}] channel {c}: share {100 * shares[c]:.1f}%, unit value "
              f"{r.record['target'].get('value'):.3g}")
    abl = holder["circuit"].ablation
    print(f"zeroing these {len(top)} channels lowers the {name} logit by {abl['drop_top']:.3g} on average (mean "
          f"logit {abl['logit_mean']:.3g}; {len(top)} random channels: {abl['drop_random_mean']:.3g} ± "
          f"{abl['drop_random_std']:.2g})")
    print(f"{record}; figure: {out / 'circuit.png'}")
    return 130 if any(r.status == "interrupted" for r in results) else 0


def _vital_or_save(args: argparse.Namespace, run, pngs: list[Path]) -> list:  # noqa: ANN001
    """Run the visualizations; after a non-finite loss keep the last finite images and stop with an error."""
    from .optimize import NonFiniteLossError

    try:
        return run()
    except NonFiniteLossError as exc:
        for r, png in zip(exc.results, pngs, strict=True):
            r.save(png, overwrite=True)
        raise VitalError(f"{exc} Saved: {', '.join(map(str, pngs))}") from None


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate

    none = ("none", "")
    rows = evaluate(args.results, args.out, real=args.real,
                    judge=None if (args.judge or "").lower() in none else args.judge,
                    fid_model=None if (args.fid_model or "").lower() in none else args.fid_model,
                    clip_checkpoint=args.clip_checkpoint, clip_arch=args.clip_arch, controls=args.controls,
                    n_boot=args.n_boot, per_class=args.per_class, device=args.device, overwrite=args.overwrite,
                    plots=not args.no_plots)
    print((Path(args.out) / "table.md").read_text(), end="")
    print(f"{len(rows)} rows; report in {args.out}/ (table.md, table.csv, items.csv"
          f"{'' if args.no_plots else ', per_class.png, tsne.png'})")
    return 0


def cmd_photos(args: argparse.Namespace) -> int:
    from . import references as refs_mod
    from .result import atomic_write_bytes, ensure_writable_dir, png_bytes, refuse_overwrite

    names = [f"{name.split('.')[0]}.png" for _, name in refs_mod.OFFLINE_PHOTOS]
    keep = set(names)
    if args.only:
        from .errors import close_matches

        keep = {f"{n.removesuffix('.png')}.png" for n in args.only}
        unknown = sorted(keep - set(names))
        if unknown:
            near = close_matches(unknown[0].removesuffix(".png"), [n.removesuffix(".png") for n in names])
            raise VitalError(f"no bundled photo '{unknown[0].removesuffix('.png')}'"
                             + (f" (did you mean {', '.join(near)}?)" if near else "")
                             + f"; there are: {', '.join(n.removesuffix('.png') for n in names)}")
    out = ensure_writable_dir(args.out)
    refuse_overwrite([out / n for n in names if n in keep], args.overwrite)
    for n, img in zip(names, refs_mod.offline_photos(), strict=True):
        if n in keep:
            atomic_write_bytes(out / n, png_bytes(img.float() / 255))
    names = [n for n in names if n in keep]
    print(f"{out}: {len(names)} photos ({', '.join(names)})")
    return 0


def cmd_spectrum(args: argparse.Namespace) -> int:
    import io

    import numpy as np

    from . import references as refs_mod
    from .baselines import compute_spectrum
    from .result import atomic_write_bytes, refuse_overwrite

    out = Path(args.out)
    refuse_overwrite([out], args.overwrite)
    if args.offline_photos:
        images = refs_mod.offline_photos()
    elif args.folder:
        images = refs_mod.from_folder(args.folder, n=10**9).images
    else:
        raise VitalError("give a folder of images, or --offline-photos")
    mag = compute_spectrum(images)
    buf = io.BytesIO()
    np.save(buf, mag.numpy())
    atomic_write_bytes(out, buf.getvalue())
    print(f"{out}: magnitude spectrum {tuple(mag.shape)} from {len(images)} images")
    return 0


def cmd_visualize(args: argparse.Namespace) -> int:
    from . import references as refs_mod
    from .matching import PrototypeCache
    from .optimize import Job, visualize_batch
    from .result import ensure_writable_dir, refuse_overwrite
    from .targets import ClassTarget
    from .zoo import LayerPreset

    out_dir = ensure_writable_dir(args.out)  # before any expensive work
    if args.batch:
        args.seeds = list(range(args.batch))
    if args.layer_weights and not args.layers:
        raise VitalError("--layer-weights needs --layers")
    spec = _load(args)
    spec.class_token = not args.no_class_token
    if args.unit:
        from .targets import UnitTarget

        target = UnitTarget.parse(args.unit)
        if args.method == "deepinversion":
            raise VitalError("deepinversion inverts classes only: use --method vital, fourier or maco for units")
        if args.method == "vital" and not (args.refs or args.images):
            raise VitalError("a VITAL unit visualization needs the unit's references: --images DIR (mines them) "
                             "or --refs FOLDER from `vital mine`")
        index, cname, slug = -1, target.label(), target.slug()
    elif args.concept:
        from .concepts import load_concepts

        concepts = load_concepts(args.concept)
        target = concepts[0].target
        if args.method != "vital":
            raise VitalError("--concept is visualized with VITAL (a direction has no activation to maximize here)")
        index, cname, slug = -1, ", ".join(c.target.label() for c in concepts), target.slug()
    else:
        target = ClassTarget(args.cls)
        index, cname = target.resolve(spec.class_names, spec.class_synonyms)
        slug = target.slug(spec.class_names, spec.class_synonyms)
    method = "" if args.method == "vital" else f"-{args.method}"
    plan = [(c.target, c.target.slug()) for c in concepts] if args.concept else [(target, slug)]
    model_slug = re.sub(r"[^\w.+-]+", "-", spec.name)  # timm:convnext_tiny -> timm-convnext_tiny (a file name)
    stems = []
    for _, sl in plan:  # one image per target and seed, target-major (the order of the jobs below)
        base = (f"{args.name}-{sl}" if len(plan) > 1 else args.name) if args.name else f"{model_slug}-{sl}{method}"
        stems += [base if args.name and len(args.seeds) == 1 else f"{base}-s{seed}"
                  for seed in args.seeds]
    pngs = [out_dir / f"{s}.png" for s in stems]
    outputs = [p.with_suffix(ext) for p in pngs for ext in (".png", ".json", ".rgba.png", ".alpha.npy")]
    refuse_overwrite(outputs, args.overwrite)

    if args.layers:
        from .features import resolve_layers as _check

        _check(spec.module, args.layers, spec.name)
    if args.method != "vital":
        if args.relevance not in (None, "none"):
            raise VitalError("--relevance weights VITAL's matching; the baselines maximize activations without it")
        return _run_baseline(args, spec, target, index, cname, pngs)
    if args.images and not (args.unit or args.concept):
        raise VitalError("--images mines references for a unit or a concept: give --unit or --concept, or --pool "
                         "DIR for a class")
    if args.concept and args.pool:
        raise VitalError("--pool ranks images by a class: for a concept give --images DIR or --refs")
    per_target = None
    if args.concept and not args.refs:
        from .concepts import concept_references_from
        from .optimize import frozen_on, resolve_device

        if args.images:
            with frozen_on(spec.module, resolve_device(args.device)):
                per_target = [concept_references_from(spec, c, args.images, k=args.n_refs, progress=not args.quiet,
                                                      cache_dir=args.cache_dir) for c in concepts]
        else:
            if spec.name != concepts[0].record["model"]:
                raise VitalError(f"the concepts were extracted on {concepts[0].record['model']}, not {spec.name}: "
                                 f"use --model {concepts[0].record['model']}")
            per_target = [c.references() for c in concepts]
        references = per_target[0]
    elif args.images:
        references = _mine(args, spec, target, args.n_refs, args.use)[1]
    elif args.pool:
        references = refs_mod.from_pool(args.pool, spec, index, n=args.n_refs, progress=not args.quiet)
    elif args.refs:
        paths = [Path(r) for r in args.refs]
        augment = bool(args.augment)
        if len(paths) == 1 and paths[0].is_dir():
            references = refs_mod.from_folder(paths[0], n=args.n_refs, augment=augment)
        else:
            references = refs_mod.from_files(paths, n=args.n_refs, augment=augment)
    else:
        augment = True if args.augment is None else args.augment
        if cname.lower() not in refs_mod.BUNDLED:
            raise VitalError(
                f"no references for '{cname}': give --refs DIR (images of the class) or --pool DIR. Bundled "
                f"photos exist for: {', '.join(refs_mod.BUNDLED)}"
            )
        references = refs_mod.bundled(cname, n=args.n_refs, augment=augment)

    layers = LayerPreset.user(args.layers, args.layer_weights, spec.preset, "user (--layers)") if args.layers else None
    cache = False if args.no_cache else (PrototypeCache(args.cache_dir) if args.cache_dir else True)
    per_target = per_target or [references] * len(plan)
    jobs = [Job(t, r, seed) for (t, _), r in zip(plan, per_target, strict=True) for seed in args.seeds]
    relevance = "auto" if args.relevance is None else args.relevance
    what = cname if index < 0 else f"{cname} ({index})"
    counts = ", ".join(dict.fromkeys(str(r.count) for r in per_target))
    labels = "; ".join(dict.fromkeys(r.describe()["label"] for r in per_target))
    print(f"visualizing {what} on {spec.name} from {counts} references "
          f"({labels}), preset {args.preset}, relevance "
          f"{relevance if relevance != 'auto' else ('lrp' if args.unit or args.concept else 'none')}, "
          f"seeds {','.join(map(str, args.seeds))}", file=sys.stderr)
    return _run_and_save(args, lambda: visualize_batch(
        spec, jobs, preset=args.preset, steps=args.steps, lr=args.lr, layers=layers, size=args.size,
        device=args.device, cache=cache, progress=not args.quiet, relevance=relevance,
    ), pngs)


def _run_and_save(args: argparse.Namespace, run, pngs: list[Path]) -> int:  # noqa: ANN001
    """Run, save every result (also the last finite images after a non-finite loss), report, and pick the exit
    code (130 after Ctrl-C)."""

    start = time.perf_counter()
    results = _vital_or_save(args, run, pngs)
    for r, png in zip(results, pngs, strict=True):
        r.alpha_percentile = args.alpha_percentile
        r.save(png, overwrite=True)  # the overwrite check ran before the work started
        _report_saved(r, png)
    rec = results[0].record
    extra = (f", references {rec['reference_seconds']:.1f} s, prototypes {rec['prototypes']['cache']}"
             if "prototypes" in rec else "")
    print(f"time: {time.perf_counter() - start:.1f} s ({rec['seconds_per_step'] * 1000:.1f} ms/step{extra})")
    if any(r.status == "interrupted" for r in results):
        print("interrupted: the images so far are saved and marked 'interrupted' in their records")
        return 130
    return 0


def _run_baseline(args: argparse.Namespace, spec, target, index: int, cname: str, pngs: list[Path]) -> int:  # noqa: ANN001
    from .baselines import run_baseline
    from .optimize import Job

    jobs = [Job(target, None, seed) for seed in args.seeds]  # baselines use no references
    preset = args.preset if args.preset in ("paper", "quick") else "paper"
    what = cname if index < 0 else f"{cname} ({index})"
    print(f"visualizing {what} on {spec.name} with {args.method}, preset {preset}, "
          f"seeds {','.join(map(str, args.seeds))}", file=sys.stderr)
    return _run_and_save(args, lambda: run_baseline(
        spec, jobs, args.method, preset=preset, steps=args.steps, lr=args.lr, size=args.size, device=args.device,
        progress=not args.quiet, spectrum=args.spectrum,
    ), pngs)


def _report_saved(result, png: Path | None = None) -> None:  # noqa: ANN001
    where = f"{png} (+ .json)" if png else "(not saved)"
    top = ", ".join(f"{t['name']} {t['p']:.2f}" for t in result.top5)
    print(f"{where}  [{result.status}, seed {result.record['seed']}]  top-5: {top}")


if __name__ == "__main__":
    sys.exit(main())
