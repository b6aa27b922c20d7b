"""What every visualization method shares: the ``Method`` interface, the registry, the step loop and the record.

A method turns a batch of ``Job``s (target, references, seed) into one ``Result`` per job. It owns its
parameterization and objective; everything around them is here, so that every method stops, times, guards and
records the same way: ``run_steps`` (progress, per-step times, Ctrl-C, non-finite losses), ``Updater`` (one
gradient update: zero-grad, backward, transparency accumulation, optimizer and schedule step) and
``build_record`` (the JSON record's common fields). The registry follows timm's: a method is registered under its
name, and the CLI, ``vital_fv.visualize``, ``vital evaluate`` and the benchmarks read the names from it.
"""

from __future__ import annotations

import math
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from typing import Any, Protocol, runtime_checkable

import torch

from ..errors import VitalError, close_matches
from ..objectives import ClassTarget, Objective, kind_of
from ..options import check_lr, check_steps
from ..references import ReferenceSet
from ..result import Result
from ..version import __version__
from ..zoo import ModelSpec

Target = Objective  # ClassTarget, UnitTarget, DirectionTarget, or any objective (objectives.Sum, objectives.Custom)
TARGET_KINDS = ("class", "unit", "direction", "objective")


@dataclass(frozen=True)
class Job:
    """One batch item: what to show, from which references (None for methods that use none), with which seed."""

    target: Target
    references: ReferenceSet | None = None
    seed: int = 0


class NonFiniteLossError(VitalError):
    """The loss became NaN or infinite; ``results`` hold the last finite images, marked in their records."""

    def __init__(self, message: str, results: list[Result]) -> None:
        super().__init__(message)
        self.results = results


def keep_last_finite(run: Callable[[], list[Result]], pngs: Sequence[Any]) -> list[Result]:
    """``run()``'s results; after a non-finite loss the last finite images are saved to ``pngs`` (one per result)
    and a ``VitalError`` names them (the capabilities' runs, as ``vital_fv.visualize`` does with ``out``)."""
    try:
        return run()
    except NonFiniteLossError as exc:
        for r, png in zip(exc.results, pngs, strict=True):
            r.save(png, overwrite=True)
        raise VitalError(f"{exc} Saved: {', '.join(map(str, pngs))}") from None


def target_kind(target: Any) -> str:
    """class, unit, direction, or objective (a combination or a custom callable): what methods declare they show."""
    return kind_of(target)


def file_suffix(method: Method) -> str:
    """What a method adds to default file stems (``-fourier``; nothing for VITAL, the package's own)."""
    return str(getattr(method, "file_suffix", f"-{method.name}"))


class Preset:
    """Mixin for a method's frozen preset dataclass: every preset has ``steps`` and ``lr``, overridable per run."""

    steps: int
    lr: float

    def overridden(self, steps: int | None = None, lr: float | None = None) -> Any:
        """This preset with ``steps`` / ``lr`` replaced (checked here, before any work)."""
        out = self
        if steps is not None:
            check_steps(steps, self.steps)
            out = replace(out, steps=steps)
        if lr is not None:
            check_lr(lr, self.lr)
            out = replace(out, lr=lr)
        return out

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)  # type: ignore[call-overload]


@runtime_checkable
class Method(Protocol):
    """A visualization method: a name, typed presets, what it can show, and ``run`` over a batch of jobs.

    ``run(model, jobs, *, preset, steps, lr, size, device, progress, **options)`` returns one ``Result`` per job, in
    order, each with a record from ``build_record``; after a non-finite loss it raises ``NonFiniteLossError`` with
    the last finite images. Method-specific options are declared in ``options`` (a tuple of ``MethodOption``:
    ``spectrum`` for MACO, ``relevance`` and ``layers`` for VITAL; optional, none by default): ``run_method``
    refuses options a method does not declare and passes ``run`` every common and declared one. Optional
    attributes: ``file_suffix`` (added to default file stems; ``-NAME`` unless the method sets it).
    """

    name: str
    description: str
    presets: Mapping[str, Preset]
    targets: tuple[str, ...]  # the target kinds it can show: "class", "unit", "direction", "objective"
    needs_references: bool
    transparency: bool  # writes a transparency map (NAME.rgba.png, NAME.alpha.npy)

    def run(self, model: ModelSpec, jobs: Sequence[Job], **kwargs: Any) -> list[Result]: ...


_REGISTRY: dict[str, Method] = {}


def register(method: Method, *, replace_existing: bool = False) -> Method:
    """Make ``method`` available by its name to ``vital_fv.visualize``, ``vital visualize --method`` and the rest."""
    if not isinstance(method, Method):
        raise VitalError(f"{method!r} is not a Method: it needs name, description, presets, targets, "
                         "needs_references, transparency and run()")
    if method.name in _REGISTRY and not replace_existing:
        raise VitalError(f"a method named '{method.name}' is already registered (replace_existing=True replaces it)")
    if not method.presets:
        raise VitalError(f"method '{method.name}' has no preset")
    unknown = set(method.targets) - set(TARGET_KINDS)
    if unknown:
        raise VitalError(f"method '{method.name}': unknown target kinds {sorted(unknown)}; use {TARGET_KINDS}")
    _REGISTRY[method.name] = method
    return method


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get_method(name: str) -> Method:
    if name not in _REGISTRY:
        near = close_matches(name, list(_REGISTRY))
        raise VitalError(f"unknown method '{name}'" + (f" (did you mean {', '.join(near)}?)" if near else "")
                         + f": choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name]


def method_names() -> list[str]:
    """Registered methods, in registration order (VITAL first, then the baselines)."""
    return list(_REGISTRY)


def preset_names() -> list[str]:
    """Every preset name some method has (``paper`` and ``quick`` for all built-in ones, ``balanced`` for VITAL)."""
    return list(dict.fromkeys(p for m in _REGISTRY.values() for p in m.presets))


def get_preset(method: Method, preset: str | Preset, steps: int | None = None, lr: float | None = None) -> Any:
    """The method's preset by name (or as given), with the run's overrides."""
    if isinstance(preset, str):
        if preset not in method.presets:
            raise VitalError(f"unknown preset '{preset}' for {method.name}: choose one of "
                             f"{', '.join(method.presets)}")
        preset = method.presets[preset]
    return preset.overridden(steps, lr)


def check_kinds(method: Method, kinds: Sequence[str]) -> None:
    """A target kind (class, unit, direction) the method cannot show is refused, naming the methods that can."""
    for kind in dict.fromkeys(kinds):
        if kind not in method.targets:
            able = [m.name for m in _REGISTRY.values() if kind in m.targets]
            raise VitalError(f"{method.name} cannot show a {kind} target ({method.name} shows: "
                             f"{', '.join(method.targets)}); use --method {' or '.join(able)}")


def check_jobs(method: Method, jobs: Sequence[Job]) -> None:
    """What a method cannot do is refused before any work, naming what to do instead."""
    if not jobs:
        raise VitalError("nothing to visualize: give at least one target")
    check_kinds(method, [target_kind(job.target) for job in jobs])
    for job in jobs:
        kind = target_kind(job.target)
        if method.needs_references and job.references is None:
            raise VitalError(f"{method.name} needs references for {job.target.label() if kind != 'class' else 'it'}"
                             ": give --refs, --pool or --images")


COMMON_OPTIONS = ("preset", "steps", "lr", "size", "device", "progress")  # what every method's run takes
COMMON_DEFAULTS: dict[str, Any] = {"preset": "paper", "steps": None, "lr": None, "size": None, "device": "auto",
                                   "progress": True}


@dataclass(frozen=True)
class MethodOption:
    """One option a method takes beyond the common ones, declared on the method (``Method.options``).

    ``kind``: the Python type(s) a value must have (``None`` is always "not given": the method's default);
    ``choices``: the values allowed, if a closed set; ``targets``: the target kinds it applies to (empty: all the
    method shows); ``flag``: its command-line spelling (``--spectrum``), or ``None`` where the CLI sets it
    another way (VITAL's ``layers`` from ``--layers``); ``json``: whether a run description (``RunSpec``) can hold
    it (a path, a word, a number: not an object such as a cache); ``what``: what it takes, for the error;
    ``valid``: a further test of the value (a range), refused with ``what`` before any work.
    """

    name: str
    kind: type | tuple[type, ...]
    default: Any = None
    help: str = ""
    targets: tuple[str, ...] = ()
    choices: tuple[Any, ...] | None = None
    flag: str | None = None
    json: bool = True
    what: str = ""
    valid: Callable[[Any], bool] | None = None

    def check(self, method: str, value: Any) -> None:
        """The value's type and choice, before any work, naming the option and the method."""
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
            what = self.what or " or ".join(k.__name__ for k in kinds)
            raise VitalError(f"option '{self.name}' of {method} must be {what}, got {type(value).__name__} "
                             f"{value!r:.60}")
        if self.choices is not None and value not in self.choices:
            raise VitalError(f"option '{self.name}' of {method} must be one of "
                             f"{', '.join(map(str, self.choices))} (got '{value}')")
        if self.valid is not None and not self.valid(value):
            raise VitalError(f"option '{self.name}' of {method} must be {self.what}, got {value!r:.60}")


def declared_options(method: Method) -> tuple[MethodOption, ...]:
    """The options ``method`` declares (``options``; a method without the attribute takes none)."""
    return tuple(getattr(method, "options", ()))


def method_options(method: Method) -> list[str]:
    """The names of the options ``method`` declares beyond the common ones (``spectrum`` for MACO, ...)."""
    return [o.name for o in declared_options(method)]


def all_options() -> dict[str, list[tuple[Method, MethodOption]]]:
    """Every declared option by name, with the registered methods that declare it (the CLI's method flags)."""
    found: dict[str, list[tuple[Method, MethodOption]]] = {}
    for m in _REGISTRY.values():
        for o in declared_options(m):
            found.setdefault(o.name, []).append((m, o))
    return found


def check_options(method: Method, options: Mapping[str, Any], kinds: Sequence[str] = ()) -> None:
    """Refuse an option the method does not declare, a value of the wrong type or choice, or an option given for
    target kinds it does not apply to (before any work), naming the methods that take it."""
    own = {o.name: o for o in declared_options(method)}
    for key, value in options.items():
        if value is None or key in COMMON_OPTIONS:
            continue
        if key not in own:
            takers = [m.name for m in _REGISTRY.values() if key in method_options(m)]
            raise VitalError(f"option '{key}' does not apply to {method.name}"
                             + (f" (only to {', '.join(takers)})" if takers else "")
                             + (f"; {method.name}'s own options: {', '.join(own)}" if own else ""))
        opt = own[key]
        opt.check(method.name, value)
        other = sorted(set(kinds) - set(opt.targets)) if opt.targets else []
        if other:
            raise VitalError(f"option '{key}' of {method.name} applies to {' and '.join(opt.targets)} targets, "
                             f"not {' or '.join(other)}")


def run_method(method: str | Method, model: ModelSpec, jobs: Sequence[Job], **kwargs: Any) -> list[Result]:
    """Run a registered method (by name or instance) on ``jobs`` after checking the targets and options; the
    method's ``run`` gets every common option and every option it declares (unset ones at their defaults)."""
    m = get_method(method) if isinstance(method, str) else method
    check_jobs(m, jobs)
    check_options(m, kwargs, [target_kind(j.target) for j in jobs])
    settings = {**COMMON_DEFAULTS, **{o.name: o.default for o in declared_options(m)}}
    settings.update({k: v for k, v in kwargs.items() if k in settings and (v is not None or k in COMMON_OPTIONS)})
    return m.run(model, jobs, **settings)


# --------------------------------------------------------------------------------------------- the shared step loop
def lr_factor(step: int, steps: int, warmup: int) -> float:
    """Linear warm-up over ``warmup`` steps, then cosine decay to 0 at the last step."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    span = max(1, steps - warmup)
    return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / span)))


class Updater:
    """One gradient update, as every method takes it.

    ``__call__(loss, items)`` returns the loss per item; a non-finite loss comes back before any update (so the
    parameters stay at their last finite values and ``run_steps`` stops). Otherwise: zero-grad, ``backward`` (a
    custom ``backward(loss)`` may return the value of a further part of the loss that it made and backpropagated
    itself, which counts like the rest), the transparency map accumulates |d loss / d image| of ``grad_of()``
    (SPEC §4), ``before_step`` (gradient shaping that the map should not show), optimizer and schedule step, then
    ``after_step`` (e.g. clamping pixels to the image range).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler,
        *,
        alpha: torch.Tensor | None = None,
        grad_of: Callable[[], torch.Tensor] | None = None,
        backward: Callable[[torch.Tensor], torch.Tensor | None] | None = None,
        before_step: Callable[[], object] | None = None,
        after_step: Callable[[], object] | None = None,
    ) -> None:
        self.optimizer = optimizer
        self.schedule = schedule
        self.alpha = alpha
        self.grad_of = grad_of
        self.backward = backward
        self.before_step = before_step
        self.after_step = after_step

    def __call__(self, loss: torch.Tensor, items: int) -> float:
        value = float(loss.detach())
        if not math.isfinite(value):
            return value
        self.optimizer.zero_grad(set_to_none=True)
        if self.backward is None:
            loss.backward()
        else:
            late = self.backward(loss)
            if late is not None:  # a part of the loss made during the backward: checked before any update too
                value += float(late)
                if not math.isfinite(value):
                    return value
        if self.alpha is not None and self.grad_of is not None:
            self.alpha.add_(self.grad_of().grad.abs())
        if self.before_step is not None:
            self.before_step()
        self.optimizer.step()
        self.schedule.step()
        if self.after_step is not None:
            self.after_step()
        return value / items


def schedule(optimizer: torch.optim.Optimizer, steps: int, warmup: int = 0, decay: bool = True) -> Any:
    """Linear warm-up then cosine decay to zero (``decay``), or a constant learning rate."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s, steps, warmup) if decay else 1.0)


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


# ------------------------------------------------------------------------------------------------------ the record
def describe_target(target: Target, model: ModelSpec) -> dict[str, Any]:
    """The record's ``target``: a class with its index and name, or the unit / direction's own description."""
    if isinstance(target, ClassTarget):
        index, name = target.resolve(model.class_names, model.class_synonyms)
        return {"kind": "class", "index": index, "name": name}
    return target.describe()


def build_record(
    method: str,
    *,
    status: str,
    step_times: Sequence[float],
    target: dict[str, Any],
    seed: int,
    model: ModelSpec,
    optimizer: dict[str, Any],
    resolution: int,
    device: torch.device | str,
    references: dict[str, Any] | None,
    loss: dict[str, list[float]],
    top5: list[dict[str, Any]],
    setup_seconds: float = 0.0,
    image: torch.Tensor | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The JSON record every method writes: what was shown, how, from what, and how long it took; ``extra`` holds
    the method's own fields (VITAL's layers, prototypes and relevance; MACO's spectrum). With the ``image``, its
    spectral slope and high-frequency share (``metrics.spectrum_stats``: hatching shows there)."""
    from ..metrics import spectrum_stats

    if image is not None:
        extra = {"image_spectrum": spectrum_stats(image), **extra}
    return {
        "vital_fv": __version__,
        "method": method,
        "status": status,
        "steps_done": len(step_times),
        "target": target,
        "seed": seed,
        "model": model.describe(),
        "optimizer": optimizer,
        "resolution": resolution,
        "device": str(device),
        "references": references,
        "loss": {name: [round(float(v), 6) for v in values] for name, values in loss.items()},
        "seconds_per_step": round(sum(step_times) / max(1, len(step_times)), 5),
        "step_seconds": [round(t, 5) for t in step_times],
        "seconds_total": round(sum(step_times) + setup_seconds, 3),
        "top5": top5,
        "environment": {"torch": torch.__version__, "python": platform.python_version()},
        **extra,
    }


def raise_if_nonfinite(results: list[Result], status: str, method: str, steps_done: int, hint: str = "") -> None:
    if status == "nonfinite":
        raise NonFiniteLossError(f"the {method} loss became non-finite after {steps_done} steps; the last finite "
                                 f"images are kept.{' ' + hint if hint else ''}", results)


