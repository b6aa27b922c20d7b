"""What the baselines share (SPEC §6): gradient ascent on an objective (a class logit, a unit's activation, any
combination of objectives or function of the activations).

``Ascent`` is the common body of Fourier, MACO and DeepInversion: checks, the per-job objective (``scorer``), the
record and the top-5; each subclass supplies its parameterization and step (``optimize``). Our own code from the
papers' descriptions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from ..device import frozen_on, resolve_device
from ..errors import VitalError
from ..features import capture, resolve_layers
from ..objectives import LOGITS, per_item, read_layers
from ..params import item_generators
from ..result import Result
from ..signals import hold_signals
from ..zoo import ModelSpec
from .base import Job, Preset, Updater, build_record, describe_target, get_preset, raise_if_nonfinite, schedule

Scorer = Callable[[torch.Tensor, list[int]], torch.Tensor]


@dataclass(frozen=True)
class AscentPreset(Preset):
    """Optimizer settings of a baseline; ``paper`` follows SPEC §6, ``quick`` is a shorter run for comparisons."""

    steps: int
    lr: float
    optimizer: str = "adam"  # adam | nadam
    betas: tuple[float, float] = (0.9, 0.999)
    decay: bool = False  # cosine decay of the learning rate to zero

    def make_optimizer(self, params: list[torch.Tensor]) -> tuple[torch.optim.Optimizer, Any]:
        cls = torch.optim.NAdam if self.optimizer == "nadam" else torch.optim.Adam
        opt = cls(params, lr=self.lr, betas=self.betas)
        return opt, schedule(opt, self.steps, 0, decay=self.decay)


@dataclass
class Optimized:
    """What a baseline's optimization hands back: images in [0, 1] at the generated size, the per-item objective
    curve (steps, B), step times, status, the transparency map (or None) and extra record fields."""

    images: torch.Tensor
    curve: torch.Tensor
    step_times: list[float]
    status: str
    alpha: torch.Tensor | None = None
    info: dict[str, Any] | None = None


def ascend(update: Updater, obj: torch.Tensor, curve: torch.Tensor, i: int) -> float:
    """One gradient-ascent update on the per-item objectives ``obj`` (B,); NaN, and no update, if not finite."""
    value = update(-obj.sum(), obj.shape[0])
    if not math.isfinite(value):
        return math.nan
    curve[i] = -obj.detach().cpu()
    return value


def scorer(model: ModelSpec, jobs: Sequence[Job], classes: torch.Tensor) -> Scorer:
    """``score(x01, owners)``: per row of ``x01``, the objective of the job that owns it (a class logit, a unit's
    activation, any objective of the activations), from one forward pass."""
    objectives = [j.target.resolved(model.class_names, model.class_synonyms) for j in jobs]
    layers = read_layers(objectives)

    def score(x01: torch.Tensor, owners: list[int]) -> torch.Tensor:
        with capture(model.module, layers, model.name) as feats:
            acts = {LOGITS: model.module(model.preprocess.normalize(x01))}
            acts.update({n: feats[n][0] if isinstance(feats[n], (tuple, list)) else feats[n] for n in layers})
            return per_item([objectives[b] for b in owners], acts)

    return score


class Ascent:
    """Common body of the activation-maximization baselines; subclasses set the class attributes and
    ``optimize``."""

    name: str
    description: str
    presets: Mapping[str, AscentPreset]
    targets: tuple[str, ...] = ("class", "unit", "direction", "objective")  # any objective is ascended
    needs_references = False
    transparency = False
    any_size = False  # True: --size may differ from the model's input (the method crops a larger image)

    def check(self, model: ModelSpec) -> None:
        """Refuse a model the method cannot work on (before any work)."""

    def optimize(self, model: ModelSpec, preset: Any, gens: list[torch.Generator], score: Scorer,
                 classes: torch.Tensor, size: int, device: torch.device, progress: bool,
                 **options: Any) -> Optimized:
        raise NotImplementedError

    def run(self, model: ModelSpec, jobs: Sequence[Job], **settings: Any) -> list[Result]:
        return self.ascend_jobs(model, jobs, **settings)

    def ascend_jobs(self, model: ModelSpec, jobs: Sequence[Job], *, preset: str | Preset, steps: int | None,
                    lr: float | None, size: int | None, device: str | torch.device, progress: bool,
                    **options: Any) -> list[Result]:
        mp = get_preset(self, preset, steps, lr)
        input_size = model.preprocess.input_size
        size = size or input_size
        if not self.any_size and size != input_size:
            raise VitalError(f"--size applies to maco only (it optimizes a large image and crops it); {self.name} "
                             f"works at the model's input size {input_size}")
        layers = read_layers(j.target for j in jobs)
        if layers:
            resolve_layers(model.module, layers, model.name)
        self.check(model)
        dev = resolve_device(device)
        described = [describe_target(j.target, model) for j in jobs]
        classes = torch.tensor([d.get("index", 0) for d in described], device=dev)
        gens = item_generators([j.seed for j in jobs])
        with frozen_on(model.module, dev):
            run = self.optimize(model, mp, gens, scorer(model, jobs, classes), classes, size, dev, progress,
                                **options)
            images = run.images
            with hold_signals():  # the optimization is done: a Ctrl-C now waits until its results exist
                top5 = model.top5(F.interpolate(images, size=(input_size, input_size), mode="bilinear",
                                                align_corners=False) if size != input_size else images)
        out = []
        for b, job in enumerate(jobs):
            record = build_record(
                self.name, status=run.status, step_times=run.step_times, target=described[b], seed=job.seed,
                model=model, optimizer={"preset": _preset_name(preset), **mp.as_dict()}, resolution=size, device=dev,
                references=None, loss={"objective": run.curve[:, b]}, top5=top5[b], image=images[b],
                **(run.info or {}))
            out.append(Result(images[b], record, alpha=None if run.alpha is None else run.alpha[b]))
        raise_if_nonfinite(out, run.status, self.name, len(run.step_times))
        return out


def _preset_name(preset: str | Preset) -> str:
    """A preset's name for the record: the registry's name, or "custom" for a preset object (fields follow)."""
    return preset if isinstance(preset, str) else getattr(preset, "name", "custom")
