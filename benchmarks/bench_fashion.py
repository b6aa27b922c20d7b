"""The full evaluation protocol on a real labelled data set that runs here: Fashion-MNIST (issue: vital evaluate).

Debian's `dataset-fashion-mnist` (installed by this script when missing: apt-get install dataset-fashion-mnist).
Two small CNNs of different architectures are trained on it (a few CPU minutes, cached under the vital-fv cache):
`fmnist-cnn` (BatchNorm, visualized) and `fmnist-lenet` (max-pooling LeNet, the judge and the FD/KID feature
model, never used in any optimization). Then every method visualizes all 10 classes x 3 seeds (VITAL with N = 50
real training images per class as references), units of the visualized model get references mined from 500
training images, and `vital_fv.evaluate` scores everything against 50 test images per class.

    python benchmarks/bench_fashion.py --out benchmarks/results/cpu_fashion.md        # ~25 min on this CPU
"""

from __future__ import annotations

import argparse
import gzip
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from vital_fv import Job, load_model, references
from vital_fv.cache import default_cache_dir
from vital_fv.device import frozen_on
from vital_fv.evaluate import evaluate
from vital_fv.methods import get_method, method_names, run_method
from vital_fv.result import png_bytes
from vital_fv.targets import ClassTarget, UnitTarget
from vital_fv.zoo import Preprocess

DATA = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
PRE = Preprocess(32, 32, (0.286, 0.286, 0.286), (0.353, 0.353, 0.353))


def ensure_data() -> None:
    if not (DATA / "train-images-idx3-ubyte.gz").is_file():
        print("installing Debian's dataset-fashion-mnist ...", flush=True)
        subprocess.run(["apt-get", "install", "-y", "dataset-fashion-mnist"], check=True)
    if not (DATA / "train-images-idx3-ubyte.gz").is_file():
        sys.exit(f"Fashion-MNIST not found in {DATA}")


def read_idx(name: str) -> np.ndarray:
    with gzip.open(DATA / name) as f:
        data = f.read()
    dims = data[3]
    shape = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(dims)]
    return np.frombuffer(data, np.uint8, offset=4 + 4 * dims).reshape(shape)


def to_rgb32(x: np.ndarray) -> torch.Tensor:
    """(N, 28, 28) uint8 -> (N, 3, 32, 32) float in [0, 1] (zero-padded by 2 px, grey in three channels)."""
    t = torch.from_numpy(x.copy()).float().div(255)
    t = nn.functional.pad(t, (2, 2, 2, 2))
    return t[:, None].expand(-1, 3, -1, -1).contiguous()


def cnn() -> nn.Module:
    def block(i: int, o: int, s: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, s, 1, bias=False), nn.BatchNorm2d(o), nn.ReLU()]

    return nn.Sequential(*block(3, 32, 1), *block(32, 64, 2), *block(64, 128, 2), *block(128, 128, 1),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, 10))


def lenet() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 32, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(32, 64, 5),
                         nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(64 * 6 * 6, 256), nn.ReLU(),
                         nn.Linear(256, 10))


def train(name: str, make, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int = 0) -> nn.Module:  # noqa: ANN001
    from safetensors.torch import load_file, save_file

    path = default_cache_dir() / "fashion" / f"{name}-e{epochs}-s{seed}.safetensors"
    torch.manual_seed(seed)
    model = make()
    if path.is_file():
        model.load_state_dict(load_file(str(path)))
        return model.eval()
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 2e-3, total_steps=epochs * ((len(x) + 127) // 128))
    norm = PRE.normalize
    t = time.perf_counter()
    for _ in range(epochs):
        model.train()
        order = torch.randperm(len(x))
        for i in range(0, len(x), 128):
            idx = order[i : i + 128]
            loss = nn.functional.cross_entropy(model(norm(x[idx])), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    print(f"trained {name} in {time.perf_counter() - t:.0f} s", flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(PRE.normalize(x)).argmax(-1) == y).float().mean())


def write_pngs(folder: Path, images: torch.Tensor) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, img in enumerate(images):
        (folder / f"{i:04d}.png").write_bytes(png_bytes(img))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--methods", default=",".join(method_names()), help="registered methods (default: all)")
    ap.add_argument("--preset", default="quick")
    ap.add_argument("--steps", type=int, help="override steps (smoke tests only)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--units", type=int, default=10)
    ap.add_argument("--work", default="/tmp/vital-fashion", help="scratch folder (results, references, report)")
    ap.add_argument("--out")
    args = ap.parse_args()
    ensure_data()
    seeds = [int(s) for s in args.seeds.split(",")]
    xtr, ytr = to_rgb32(read_idx("train-images-idx3-ubyte.gz")), torch.from_numpy(
        read_idx("train-labels-idx1-ubyte.gz").astype(np.int64))
    xte, yte = to_rgb32(read_idx("t10k-images-idx3-ubyte.gz")), torch.from_numpy(
        read_idx("t10k-labels-idx1-ubyte.gz").astype(np.int64))
    a = train("fmnist-cnn", cnn, xtr, ytr, args.epochs)
    b = train("fmnist-lenet", lenet, xtr, ytr, args.epochs)
    acc_a, acc_b = accuracy(a, xte, yte), accuracy(b, xte, yte)
    spec = load_model(a, layers=["2", "5", "8", "11"], preprocess=PRE, class_names=CLASSES, name="fmnist-cnn")
    judge = load_model(b, layers=["1", "4"], preprocess=PRE, class_names=CLASSES, name="fmnist-lenet")

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    g = torch.Generator().manual_seed(0)
    for c in range(10):
        tr = torch.nonzero(ytr == c).flatten()
        te = torch.nonzero(yte == c).flatten()
        write_pngs(work / "refs" / str(c), xtr[tr[torch.randperm(len(tr), generator=g)[:50]]])
        write_pngs(work / "real" / str(c), xte[te[torch.randperm(len(te), generator=g)[:50]]])
    write_pngs(work / "pool", xtr[torch.randperm(len(xtr), generator=g)[:500]])

    timing = {}
    for method in args.methods.split(","):
        t = time.perf_counter()
        m = get_method(method)
        if m.needs_references:
            jobs = [Job(ClassTarget(c), references.from_folder(work / "refs" / str(c), n=50), s)
                    for c in range(10) for s in seeds]
            res = run_method(m, spec, jobs, preset=args.preset, steps=args.steps, progress=False)
        elif method == "deepinversion":  # items of one batch are coupled through BN statistics: one class each
            jobs, res = [], []
            for c in range(10):
                cj = [Job(ClassTarget(c), None, s) for s in seeds]
                jobs += cj
                res += run_method(m, spec, cj, preset=args.preset, steps=args.steps, progress=False)
        else:
            jobs = [Job(ClassTarget(c), None, s) for c in range(10) for s in seeds]
            res = run_method(m, spec, jobs, preset=args.preset, steps=args.steps, progress=False)
        timing[method] = (time.perf_counter() - t) / len(res)
        for job, r in zip(jobs, res, strict=True):
            r.save(work / "results" / method / f"{job.target.cls}-s{job.seed}.png", overwrite=True)
        print(f"{method}: {len(res)} images, {timing[method]:.1f} s/image", flush=True)

    units = [UnitTarget("11", ch) for ch in torch.randperm(128, generator=g)[: args.units].tolist()]
    with frozen_on(spec.module, torch.device("cpu")):
        mined = references.mine_many(spec, units, work / "pool", patch=16, stride=4, progress=False)
    for u, m in zip(units, mined, strict=True):
        refs = references.mined_references(m, k=50)
        references.save_mining(m, refs, work / "mined" / u.slug(), use="patches", overwrite=True)
    for method in ("vital", "fourier"):
        t = time.perf_counter()
        jobs = [Job(u, references.from_folder(work / "mined" / u.slug()) if get_method(method).needs_references
                    else None, 0) for u in units]
        res = run_method(method, spec, jobs, preset=args.preset, steps=args.steps, progress=False)
        for job, r in zip(jobs, res, strict=True):
            r.save(work / "results" / f"units-{method}" / f"{job.target.slug()}.png", overwrite=True)
        print(f"units {method}: {(time.perf_counter() - t) / len(res):.1f} s/image", flush=True)

    rows = evaluate(work / "results", work / "report", real=work / "real", judge=judge, fid_model=judge,
                    controls=work / "mined", models={"fmnist-cnn": spec}, overwrite=True)
    table = (work / "report" / "table.md").read_text()
    head = (f"Fashion-MNIST, CPU ({os.cpu_count()} cores): fmnist-cnn (visualized) test accuracy {100 * acc_a:.1f}%, "
            f"fmnist-lenet (judge, FD/KID features) {100 * acc_b:.1f}%; 10 classes x seeds {args.seeds}, preset "
            f"{args.preset}; VITAL references: 50 training images per class; real set: 50 test images per class; "
            f"{len(units)} units of layer 11 (last conv block), references = controls = top-50 patches (16 px) of 500 "
            f"training images. s/image: " + ", ".join(f"{m} {s:.1f}" for m, s in timing.items()))
    print(head + "\n\n" + table)
    if args.out:
        Path(args.out).write_text(head + "\n\n" + table)
    return 0 if rows else 1


if __name__ == "__main__":
    sys.exit(main())
