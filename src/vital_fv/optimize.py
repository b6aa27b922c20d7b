"""The VITAL optimization loop: ``visualize`` for one image, ``visualize_batch`` for several at once.

Each batch item is an independent visualization with its own target, references, seed and loss; they share only
the forward/backward passes (and the learning-rate schedule).
"""

from __future__ import annotations

import math
import os
import platform
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from typing import Any

import torch

from . import __version__
from .errors import VitalError
from .features import as_channels_positions, capture, resolve_layers
from .matching import (
    PrototypeCache,
    compute_prototypes,
    l2_norm,
    prototype_key,
    resample_sorted,
    sort_matching_loss,
    total_variation,
)
from .params import clamp_, init_pixels, item_generators
from .references import ReferenceSet, from_folder
from .result import Result
from .targets import ClassTarget
from .transforms import roll, sample_rolls
from .zoo import LayerPreset, ModelSpec


@dataclass(frozen=True)
class OptimPreset:
    """Optimizer and schedule settings: Adam, linear warm-up, cosine decay to zero, roll jitter."""

    name: str
    steps: int
    lr: float
    betas: tuple[float, float] = (0.5, 0.9)
    eps: float = 1e-8
    warmup: int = 100
    jitter: int = 30
    init_std: float = 1.0  # std of the N(0, s) pixel initialization, in normalized space


OPTIM_PRESETS: dict[str, OptimPreset] = {
    # The authors' public code (SPEC §3).
    "paper": OptimPreset("paper", steps=2000, lr=1.0, betas=(0.5, 0.9), warmup=100, jitter=30),
    # A quarter of the paper's schedule, tuned on EfficientNet-Lite0 (benchmarks/README.md): half the learning rate
    # and a quarter of the warm-up transferred best to an unseen judge model.
    "quick": OptimPreset("quick", steps=500, lr=0.5, betas=(0.5, 0.9), warmup=25, jitter=30),
}


def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at the last step."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / span)))


@dataclass(frozen=True)
class Job:
    """One batch item: what to show, from which references, with which seed."""

    target: ClassTarget
    references: ReferenceSet
    seed: int = 0


class NonFiniteLossError(VitalError):
    """The loss became NaN or infinite; ``results`` hold the last finite images, marked in their records."""

    def __init__(self, message: str, results: list[Result]) -> None:
        super().__init__(message)
        self.results = results


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise VitalError("--device cuda was asked for, but no CUDA GPU is available: use --device cpu or auto")
    return dev


@contextmanager
def frozen_on(module: torch.nn.Module, device: torch.device) -> Iterator[None]:
    """Eval mode, no parameter gradients, on ``device``; the module's mode, flags and device come back after."""
    training = module.training
    flags = [(p, p.requires_grad) for p in module.parameters()]
    first = next(iter(module.parameters()), None)
    home = first.device if first is not None else device
    try:
        module.eval()
        module.requires_grad_(False)
        module.to(device)
        yield
    finally:
        module.to(home)
        module.train(training)
        for p, flag in flags:
            p.requires_grad_(flag)


def visualize(
    model: ModelSpec,
    target: ClassTarget | int | str,
    references: ReferenceSet | str | os.PathLike[str],
    *,
    seed: int = 0,
    **options: Any,
) -> Result:
    """Optimize one image whose per-layer feature distributions match ``references`` (SPEC §1–3).

    ``options`` are those of ``visualize_batch``. A Ctrl-C stops early and returns the current image with
    ``record["status"] == "interrupted"``.
    """
    if not isinstance(target, ClassTarget):
        target = ClassTarget(target)
    if not isinstance(references, ReferenceSet):
        references = from_folder(references)
    return visualize_batch(model, [Job(target, references, seed)], **options)[0]


def visualize_batch(
    model: ModelSpec,
    jobs: Sequence[Job],
    *,
    preset: str | OptimPreset = "paper",
    steps: int | None = None,
    lr: float | None = None,
    layers: LayerPreset | None = None,
    size: int | None = None,
    device: str | torch.device = "auto",
    cache: PrototypeCache | None | bool = True,
    progress: bool = True,
    ref_batch_size: int = 16,
) -> list[Result]:
    """Optimize ``len(jobs)`` independent images in one batch; returns one ``Result`` per job, in order."""
    if not jobs:
        raise VitalError("nothing to visualize: give at least one target")
    opt_preset = _optim_preset(preset, steps, lr)
    layer_preset = layers or model.preset
    if layer_preset is None:
        raise VitalError(
            f"model {model.name} has no default layer preset: give layers (--layers a,b,c); "
            f"`vital layers --model {model.name}` lists them"
        )
    resolve_layers(model.module, layer_preset.layers, model.name)
    size = size or model.preprocess.input_size
    if model.fixed_size and size != model.preprocess.input_size:
        raise VitalError(
            f"{model.name} takes exactly {model.preprocess.input_size}x{model.preprocess.input_size} inputs "
            f"(its position embeddings are fixed): drop --size or give --size {model.preprocess.input_size}"
        )
    dev = resolve_device(device)
    store = PrototypeCache() if cache is True else (cache or None)
    names = list(layer_preset.layers)
    resolved = [j.target.resolve(model.class_names, model.class_synonyms) for j in jobs]

    with frozen_on(model.module, dev):
        t0 = time.perf_counter()
        protos, proto_info = _prototypes(model, layer_preset, jobs, store, ref_batch_size)
        t_refs = time.perf_counter() - t0
        protos = _per_item_prototypes(model, names, protos, jobs, size, dev)
        results = _optimize(model, names, layer_preset, opt_preset, jobs, protos, size, dev, progress)
        images, curves, step_times, status, alpha = results
        top5 = _top5(model, images)

    out = []
    for b, job in enumerate(jobs):
        index, cname = resolved[b]
        record = {
            "vital_fv": __version__,
            "method": "vital",
            "status": status,
            "steps_done": len(step_times),
            "target": {"kind": "class", "index": index, "name": cname},
            "seed": job.seed,
            "model": model.describe(),
            "layers": layer_preset.as_dict(),
            "optimizer": asdict(opt_preset),
            "resolution": size,
            "device": str(dev),
            "references": job.references.describe(),
            "prototypes": proto_info[job.references.content_hash()],
            "reference_seconds": round(t_refs, 3),
            "loss": {
                name: [round(float(v), 6) for v in curves[:, li, b]] for li, name in enumerate(names)
            },
            "seconds_per_step": round(sum(step_times) / max(1, len(step_times)), 5),
            "step_seconds": [round(t, 5) for t in step_times],
            "seconds_total": round(sum(step_times) + t_refs, 3),
            "top5": top5[b],
            "environment": {"torch": torch.__version__, "python": platform.python_version()},
        }
        out.append(Result(images[b], record, alpha=alpha[b]))
    if status == "nonfinite":
        raise NonFiniteLossError(
            f"the loss became non-finite after {len(step_times)} steps; the last finite images are kept. "
            "Try a lower --lr or fewer layers with large weights.",
            out,
        )
    return out


def _optim_preset(preset: str | OptimPreset, steps: int | None, lr: float | None) -> OptimPreset:
    if isinstance(preset, str):
        if preset not in OPTIM_PRESETS:
            raise VitalError(f"unknown preset '{preset}': choose one of {', '.join(OPTIM_PRESETS)}")
        preset = OPTIM_PRESETS[preset]
    if steps is not None:
        if steps < 1:
            raise VitalError("--steps must be at least 1")
        preset = replace(preset, steps=steps, warmup=min(preset.warmup, max(0, steps // 5)))
    if lr is not None:
        preset = replace(preset, lr=lr)
    return preset


def _prototypes(
    model: ModelSpec,
    layer_preset: LayerPreset,
    jobs: Sequence[Job],
    store: PrototypeCache | None,
    batch_size: int,
) -> tuple[dict[str, dict[str, torch.Tensor]], dict[str, dict[str, Any]]]:
    """Prototypes per distinct reference set, from the disk cache when possible (no reference forward pass)."""
    protos: dict[str, dict[str, torch.Tensor]] = {}
    info: dict[str, dict[str, Any]] = {}
    for job in jobs:
        refs = job.references
        h = refs.content_hash()
        if h in protos:
            continue
        key_parts = {
            "model": model.name,
            "weights": model.weights_id,
            "layers": list(layer_preset.layers),
            "references": h,
            "preprocess": model.preprocess.as_dict(),
            "skip_tokens": model.skip_tokens,
            "relevance": None,
        }
        key = prototype_key(key_parts)
        cached = store.load(key) if store else None
        if cached is not None and set(cached) == set(layer_preset.layers):
            protos[h] = cached
            info[h] = {"key": key, "cache": "hit"}
            continue
        images = model.preprocess.normalize(refs.prepare(model.preprocess))
        protos[h] = compute_prototypes(
            model.module, layer_preset.layers, images, batch_size, model.name, model.skip_tokens
        )
        path = store.save(key, protos[h], key_parts) if store else None
        info[h] = {"key": key, "cache": "miss" if store else "off", "path": str(path) if path else None}
    return protos, info


def _per_item_prototypes(
    model: ModelSpec,
    names: list[str],
    protos: dict[str, dict[str, torch.Tensor]],
    jobs: Sequence[Job],
    size: int,
    device: torch.device,
) -> dict[str, torch.Tensor]:
    """Per layer, a (1 or B, C, P) prototype at the generated resolution's position count, on the device."""
    with torch.no_grad(), capture(model.module, names, model.name) as feats:
        model.module(torch.zeros(1, 3, size, size, device=device))
        positions = {n: as_channels_positions(feats[n], model.skip_tokens).shape[-1] for n in names}
    hashes = [j.references.content_hash() for j in jobs]
    out = {}
    for n in names:
        per_set = {h: resample_sorted(protos[h][n].to(device), positions[n]) for h in dict.fromkeys(hashes)}
        if len(per_set) == 1:
            out[n] = next(iter(per_set.values())).unsqueeze(0)
        else:
            out[n] = torch.stack([per_set[h] for h in hashes])
    return out


def _optimize(
    model: ModelSpec,
    names: list[str],
    layer_preset: LayerPreset,
    opt: OptimPreset,
    jobs: Sequence[Job],
    protos: dict[str, torch.Tensor],
    size: int,
    device: torch.device,
    progress: bool,
) -> tuple[torch.Tensor, torch.Tensor, list[float], str, torch.Tensor]:
    gens = item_generators([j.seed for j in jobs])
    x = init_pixels(gens, size, device, std=opt.init_std)
    lo, hi = model.preprocess.bounds(device)
    # fused: one kernel for the whole update (CPU and CUDA); the parameter is a single image tensor.
    optimizer = torch.optim.Adam([x], lr=opt.lr, betas=opt.betas, eps=opt.eps, fused=True)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, opt.steps, opt.warmup))
    weights = torch.tensor(layer_preset.weights, device=device, dtype=torch.float32).unsqueeze(1)
    curves = torch.zeros(opt.steps, len(names), len(jobs))
    skip = model.skip_tokens
    alpha = torch.zeros_like(x)  # |d loss / d x| summed over steps: the transparency map (SPEC §4)

    with capture(model.module, names, model.name) as feats:

        def step(i: int) -> float:
            model.module(roll(x, sample_rolls(gens, opt.jitter)))
            per_layer = torch.stack(
                [sort_matching_loss(as_channels_positions(feats[n], skip), protos[n]) for n in names]
            )
            item_loss = (weights * per_layer).sum(0)
            if layer_preset.tv:
                item_loss = item_loss + layer_preset.tv * total_variation(x)
            if layer_preset.l2:
                item_loss = item_loss + layer_preset.l2 * l2_norm(x)
            loss = item_loss.sum()
            value = float(loss.detach())
            if not math.isfinite(value):
                return value  # no update: x stays the last finite image
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            alpha.add_(x.grad.abs())
            optimizer.step()
            schedule.step()
            clamp_(x, lo, hi)
            curves[i] = per_layer.detach().float().cpu()
            return value / len(jobs)

        status, step_times = run_steps(opt.steps, step, progress, "vital", on_interrupt=lambda: clamp_(x, lo, hi))
    images = model.preprocess.denormalize(x.detach()).clamp(0, 1).cpu()
    return images, curves[: len(step_times)], step_times, status, alpha.cpu()


def run_steps(
    steps: int,
    step: Callable[[int], float],
    progress: bool,
    desc: str,
    on_interrupt: Callable[[], object] | None = None,
) -> tuple[str, list[float]]:
    """The loop every method shares: timing, a progress bar with the loss, Ctrl-C and non-finite losses.

    ``step(i)`` runs one update and returns its loss; a non-finite loss must come back before any update, so the
    parameters stay at their last finite values. Returns the status and the wall time of each completed step.
    """
    from tqdm.auto import tqdm

    step_times: list[float] = []
    status = "complete"
    bar = tqdm(range(steps), desc=desc, disable=not progress, unit="step", leave=False, mininterval=0.5)
    try:
        for i in bar:
            t = time.perf_counter()
            value = step(i)
            if not math.isfinite(value):
                status = "nonfinite"
                break
            step_times.append(time.perf_counter() - t)
            if i % 10 == 0:
                bar.set_postfix(loss=f"{value:.4g}", refresh=False)
    except KeyboardInterrupt:
        status = "interrupted"
        if on_interrupt is not None:
            on_interrupt()
    finally:
        bar.close()
    return status, step_times


@torch.no_grad()
def _top5(model: ModelSpec, images: torch.Tensor) -> list[list[dict[str, Any]]]:
    """The model's top-5 classes for each image, with probabilities."""
    device = next(iter(model.module.parameters())).device
    logits = model.module(model.preprocess.normalize(images.to(device)))
    if logits.dim() != 2:
        return [[] for _ in range(images.shape[0])]
    probs = logits.float().softmax(-1)
    p, i = probs.topk(min(5, probs.shape[-1]), dim=-1)
    names = model.class_names
    return [
        [
            {"index": int(c), "name": names[int(c)] if c < len(names) else str(int(c)), "p": round(float(q), 5)}
            for q, c in zip(pr, ix, strict=True)
        ]
        for pr, ix in zip(p.cpu(), i.cpu(), strict=True)
    ]
