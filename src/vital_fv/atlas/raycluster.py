"""The Ray executor: one actor per worker (Ray's pattern for model-holding workers), each loading the model once
with its own ``num_cpus`` / ``num_gpus``; the driver hands batches to idle actors and waits on their results.

Ray is optional (``pip install 'vital-fv[ray]'``). ``--ray auto`` joins the cluster Ray finds (``RAY_ADDRESS``, a
``ray start`` on this machine) or starts a local one; ``--ray ADDRESS`` joins that one. The actors read the
references and write the images at the job's paths: on a cluster of several machines the job folder (and the
reference folders) must be on a file system every node mounts at the same path.
"""

from __future__ import annotations

import signal
from collections.abc import Sequence
from typing import Any

from ..errors import VitalError
from .executors import run_guarded
from .ledger import Item
from .work import Outcome, load_plan_model


class _Worker:
    """A Ray actor's body: the model, loaded once; ``run`` is ``work_batch`` on one batch."""

    def __init__(self, plan: dict[str, Any], folder: str, device: str, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.plan, self.folder, self.device = plan, folder, device
        self.spec = load_plan_model(plan)

    def ready(self) -> bool:
        return True

    def run(self, batch: Sequence[Item]) -> list[Outcome]:
        return run_guarded(self.spec, self.plan, self.folder, batch, self.device, False)


class RayWorkers:
    """``workers`` Ray actors: one GPU each when the cluster has GPUs, else an equal share of its CPUs."""

    name = "ray"

    def __init__(self, plan: dict[str, Any], folder: Any, address: str = "auto", workers: int = 1,
                 devices: Sequence[str] | None = None) -> None:
        try:
            import ray
        except ImportError:
            raise VitalError("--ray needs Ray: pip install 'vital-fv[ray]'") from None
        self._ray = ray
        self.plan, self.folder, self.slots = plan, str(folder), workers
        self._started = not ray.is_initialized()
        if self._started:
            term = signal.getsignal(signal.SIGTERM)
            try:
                ray.init(address=None if address == "auto" else address, include_dashboard=False,
                         log_to_driver=False, logging_level="warning")
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise VitalError(f"cannot reach the Ray cluster at --ray {address}: {exc}") from None
            finally:
                signal.signal(signal.SIGTERM, term)  # ray.init replaces it; ours turns SIGTERM into a clean stop
        resources = ray.cluster_resources()
        gpus, cpus = resources.get("GPU", 0), resources.get("CPU", 1)
        if devices and any(d.startswith("cuda") for d in devices) and not gpus:
            raise VitalError(f"--devices {','.join(devices)} asks for GPUs, but the Ray cluster has none")
        self._options = ({"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": max(1, int(cpus // workers))})
        self._device = "cuda" if gpus else "cpu"  # Ray sets CUDA_VISIBLE_DEVICES per actor
        self._threads = int(self._options["num_cpus"])
        self._actor_class = ray.remote(_Worker)
        self._actors: dict[str, Any] = {}
        self._busy: dict[Any, tuple[str, Sequence[Item]]] = {}  # future -> (actor, batch)
        self._count = 0
        for _ in range(workers):
            self._start()
        try:  # the model loads once per actor; a failure there is the same for all: report it before any batch
            ray.get([a.ready.remote() for a in self._actors.values()])
        except Exception as exc:
            self.close()
            raise VitalError(f"the Ray workers could not start: {exc}") from None

    def _start(self) -> str:
        name = f"ray-{self._count}"
        self._count += 1
        self._actors[name] = self._actor_class.options(**self._options).remote(
            self.plan, self.folder, self._device, self._threads)
        return name

    def submit(self, batch: Sequence[Item]) -> str:
        busy = {a for a, _ in self._busy.values()}
        idle = [n for n in self._actors if n not in busy]
        if not idle:
            raise VitalError("no idle Ray worker (the driver submitted more batches than slots)")
        future = self._actors[idle[0]].run.remote(list(batch))
        self._busy[future] = (idle[0], batch)
        return idle[0]

    def wait(self) -> list[list[Outcome]]:
        ray = self._ray
        ready, _ = ray.wait(list(self._busy), num_returns=1)
        finished = []
        for future in ready:
            name, batch = self._busy.pop(future)
            try:
                finished.append(ray.get(future))
            except ray.exceptions.RayActorError as exc:  # the actor's process died: retry its items elsewhere
                finished.append([Outcome(it, error=f"{name} died during this batch: {exc}") for it in batch])
                self._actors.pop(name, None)
                self._start()
            except ray.exceptions.RayError as exc:
                finished.append([Outcome(it, error=f"{name}: {exc}") for it in batch])
        return finished

    def close(self) -> None:
        ray = self._ray
        for actor in self._actors.values():
            ray.kill(actor)  # a stopped driver does not wait for batches it will hand out again
        self._actors.clear()
        self._busy.clear()
        if self._started and ray.is_initialized():
            ray.shutdown()
