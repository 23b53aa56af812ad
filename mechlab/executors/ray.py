"""The ``ray`` executor: a sweep's tasks on the workers of a Ray cluster, local or remote.

``Ray(address=None)`` starts a local Ray instance (``address="local"`` to Ray); ``address="auto"``
joins the cluster ``ray start --head`` started on this machine; ``"ray://host:port"`` a remote one.
Ray is an optional extra (``pip install 'mechlab[ray]'``), imported only when a sweep runs here.

What travels. The sweep's ``work`` is pickled once per sweep (cloudpickle), with every model
``load_model`` returned replaced by its ``StandIn`` (``mechlab.models.spec``: the source string, the
loading options and a fingerprint of the weights): a few kilobytes, put once in Ray's object store.
Each task (its inputs: token ids, variant indices, a layer's features) is pickled on its own. A pool of
actors (one per worker, ``num_cpus_per_task`` / ``num_gpus_per_task`` each) is kept per model: an
actor unpickles the work once per sweep, which loads the model once per actor process and checks its
fingerprint, then runs task after task on it. Results come back as the work returns them.

Faults. A task whose actor dies (its process killed, its node lost) runs again on a new actor, up to
``max_retries`` times; the result is the same, since tasks are pure. A task that raises does not stop
the others: when every task has finished, ``map`` raises ``TaskError`` naming each failed task with
its inputs and error, holding the other results; ``on_result`` has reported each of those as it
arrived, so a sweep that records results as they come (``capture_dataset``'s manifest) resumes from
them when run again.

Numbers. The tasks compute what they compute in this process, so the results are the in-process
ones; bit for bit when the worker and the driver use as many torch threads (Ray gives a worker
``num_cpus_per_task`` threads). A matrix product split over another number of threads sums in another
order: on SmolLM2 an explanation's logit difference moved by 1e-6 between 2 driver threads and 1
worker thread; on the toy models the sums do not split and every sweep is bit-identical.
"""

import dataclasses
import io
import os
import uuid
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from mechlab.errors import MSG_MISSING_EXTRA, InputError, TaskError

# Ray's object store on a local instance this executor starts: enough for a sweep's payloads and
# results (Ray spills beyond it), small beside the models the workers hold.
DEFAULT_OBJECT_STORE_BYTES = 256 * 1024**2
# Tasks handed to one actor before it has finished the previous one: the next task's inputs travel
# while the current one runs.
DEPTH = 2
RAY_PIN = "ray==2.60.0"


def _ray() -> Any:
    try:
        import ray
    except ImportError as error:
        raise InputError(
            MSG_MISSING_EXTRA.format(what="The ray executor", package="ray", extra="ray", pin=RAY_PIN)
        ) from error
    return ray


def dumps(item: Any, models: list[Any] | None = None, device: str | None = None) -> bytes:
    """``item`` pickled with cloudpickle, each model ``load_model`` returned sent as its ``StandIn``
    (appended to ``models``), to be loaded on ``device`` (default: the device it was loaded on).

    Raises:
        InputError: ``item`` holds a torch module ``load_model`` did not return: its weights would
            travel with every sweep, so it is refused (``mechlab.models.spec.MSG_NO_SPEC``).
    """
    import torch
    from ray import cloudpickle

    from mechlab.models.spec import spec_known, spec_of
    from mechlab.models.stand_in import load_stand_in, stand_in

    class Pickler(cloudpickle.CloudPickler):  # type: ignore[misc, name-defined]
        def reducer_override(self, obj: Any) -> Any:
            if spec_known(obj):
                sent = stand_in(obj, "the ray executor")
                if device is not None:
                    sent = dataclasses.replace(sent, spec=dataclasses.replace(sent.spec, device=device))
                if models is not None:
                    models.append(sent)
                return load_stand_in, (sent,)
            if isinstance(obj, torch.nn.Module):
                spec_of(obj, "the ray executor")  # raises: not a model load_model returned
            return super().reducer_override(obj)

    buffer = io.BytesIO()
    Pickler(buffer).dump(item)
    return buffer.getvalue()


def loads(data: bytes) -> Any:
    from ray import cloudpickle

    return cloudpickle.loads(data)


class _Worker:
    """An actor: runs the tasks of the current sweep on the models it loaded (once per process)."""

    def __init__(self) -> None:
        self.key: str | None = None
        self.work: Callable[[Any], Any] | None = None

    def pid(self) -> int:
        return os.getpid()

    def run(self, key: str, payload: list[Any], task: bytes) -> Any:
        if key != self.key:
            import ray

            self.work, self.key = loads(ray.get(payload[0])), key
        assert self.work is not None
        return self.work(loads(task))


@dataclasses.dataclass
class _Pending:
    index: int
    task: Any
    blob: bytes
    actor: Any
    attempts: int = 0


class Ray:
    """Runs a sweep's tasks on Ray actors, one model's pool at a time (see the module docstring).

    Args:
        address: ``None`` starts a local Ray instance; ``"auto"`` joins the one ``ray start`` runs
            on this machine; ``"ray://host:port"`` a remote cluster.
        num_workers: actors per model (default: as many as the cluster's CPUs, or GPUs when
            ``num_gpus_per_task`` is set, allow).
        num_cpus_per_task, num_gpus_per_task: what each actor reserves; an actor runs one task at a
            time, so these are per task too.
        device: where the workers load the models (default: where the driver loaded each), e.g.
            ``"cuda"`` with ``num_gpus_per_task=1`` when the driver holds its copy on the CPU.
        num_cpus: CPUs of a local instance this executor starts (default: this machine's).
        object_store_memory: bytes of a local instance's object store.
        max_retries: how often a task whose actor died is run again on a new actor.
    """

    name = "ray"

    def __init__(
        self,
        address: str | None = None,
        *,
        num_workers: int | None = None,
        num_cpus_per_task: float = 1.0,
        num_gpus_per_task: float = 0.0,
        device: str | None = None,
        num_cpus: int | None = None,
        object_store_memory: int = DEFAULT_OBJECT_STORE_BYTES,
        max_retries: int = 3,
    ) -> None:
        if address is not None and not (address == "auto" or address.startswith("ray://")):
            raise InputError(
                f"address={address!r}: expected None (start a local Ray instance), 'auto' (the cluster "
                "`ray start --head` runs on this machine) or 'ray://HOST:PORT' (a remote cluster)."
            )
        if num_workers is not None and num_workers < 1:
            raise InputError(f"num_workers must be at least 1, got {num_workers}.")
        if num_cpus_per_task < 0 or num_gpus_per_task < 0 or num_cpus_per_task + num_gpus_per_task == 0:
            raise InputError(
                f"num_cpus_per_task={num_cpus_per_task}, num_gpus_per_task={num_gpus_per_task}: each task "
                "must reserve some CPU or GPU (both ≥ 0, not both 0)."
            )
        if max_retries < 0:
            raise InputError(f"max_retries must be ≥ 0, got {max_retries}.")
        self.address = address
        self.num_workers = num_workers
        self.num_cpus_per_task = num_cpus_per_task
        self.num_gpus_per_task = num_gpus_per_task
        self.device = device
        self.num_cpus = num_cpus
        self.object_store_memory = object_store_memory
        self.max_retries = max_retries
        self.started = False  # whether this executor started the Ray instance it uses
        self.retries = 0  # tasks run again after their actor died, over this executor's life
        self._pools: dict[tuple[Any, ...], list[Any]] = {}

    def __enter__(self) -> "Ray":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def connect(self) -> Any:
        """The ``ray`` module, connected to this executor's cluster (started if ``address`` is None)."""
        ray = _ray()
        if not ray.is_initialized():
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            if self.address is None:
                ray.init(
                    address="local",
                    num_cpus=self.num_cpus,
                    object_store_memory=self.object_store_memory,
                    include_dashboard=False,
                    log_to_driver=False,
                    _node_ip_address="127.0.0.1",
                )
                self.started = True
            else:
                ray.init(address=self.address, log_to_driver=False)
        return ray

    def workers(self) -> int:
        """How many actors a model's pool has."""
        if self.num_workers is not None:
            return self.num_workers
        resources = self.connect().cluster_resources()
        if self.num_gpus_per_task > 0:
            return max(1, int(resources.get("GPU", 0) // self.num_gpus_per_task))
        return max(1, int(resources.get("CPU", 1) // self.num_cpus_per_task))

    def pids(self) -> list[int]:
        """The process ids of the current pool's actors (for tests that kill one)."""
        ray = self.connect()
        return [ray.get(actor.pid.remote()) for pool in self._pools.values() for actor in pool]

    def release(self) -> None:
        """Stop the actors (and free the models they hold); the Ray instance keeps running."""
        if self._pools:
            ray = _ray()
            for pool in self._pools.values():
                for actor in pool:
                    ray.kill(actor)
            self._pools.clear()

    def close(self) -> None:
        """Stop the actors, and the Ray instance if this executor started it."""
        self.release()
        if self.started:
            ray = _ray()
            ray.shutdown()
            self.started = False

    def _actor(self, ray: Any) -> Any:
        remote = ray.remote(num_cpus=self.num_cpus_per_task, num_gpus=self.num_gpus_per_task)(_Worker)
        return remote.remote()

    def _pool(self, ray: Any, models: tuple[Any, ...]) -> list[Any]:
        """The actors of ``models``; another model's actors are stopped first (their resources and
        memory go to this one). Work that needs no model runs on whichever pool is there."""
        if not models and self._pools:
            return next(iter(self._pools.values()))
        for key in [k for k in self._pools if k != models]:
            for actor in self._pools.pop(key):
                ray.kill(actor)
        if models not in self._pools:
            self._pools[models] = [self._actor(ray) for _ in range(self.workers())]
        return self._pools[models]

    def map(
        self,
        work: Callable[[Any], Any],
        tasks: Iterable[Any],
        *,
        on_result: Callable[[int, Any], None] | None = None,
    ) -> list[Any]:
        ray = self.connect()
        sent: list[Any] = []
        payload = dumps(work, sent, self.device)
        pool = self._pool(ray, tuple(sorted({repr(s.spec) for s in sent})))
        run = _Run(ray, self, pool, uuid.uuid4().hex, [ray.put(payload)], on_result)
        return run.run(enumerate(tasks))


class _Run:
    """One ``map``: keeps every actor ``DEPTH`` tasks deep, replaces dead actors, collects failures."""

    def __init__(
        self,
        ray: Any,
        executor: Ray,
        pool: list[Any],
        key: str,
        shared: list[Any],
        on_result: Callable[[int, Any], None] | None,
    ) -> None:
        self.ray, self.executor, self.pool, self.key, self.shared = ray, executor, pool, key, shared
        self.on_result = on_result
        self.pending: dict[Any, _Pending] = {}
        self.load = {id(actor): 0 for actor in pool}
        self.results: dict[int, Any] = {}
        self.failures: list[tuple[int, Any, Any]] = []

    def submit(self, item: _Pending) -> None:
        ref = item.actor.run.remote(self.key, self.shared, item.blob)
        self.pending[ref] = item
        self.load[id(item.actor)] = self.load.get(id(item.actor), 0) + 1

    def free(self) -> Any | None:
        actor = min(self.pool, key=lambda a: self.load.get(id(a), 0))
        return actor if self.load.get(id(actor), 0) < DEPTH else None

    def fill(self, tasks: Iterator[tuple[int, Any]]) -> None:
        while (actor := self.free()) is not None:
            drawn = next(tasks, None)
            if drawn is None:
                return
            index, task = drawn
            self.submit(_Pending(index, task, dumps(task), actor))

    def replace(self, dead: Any) -> Any:
        """A new actor in place of ``dead`` (its other tasks will fail over to it as they report)."""
        if dead in self.pool:
            position = self.pool.index(dead)
            self.ray.kill(dead)
            self.pool[position] = self.executor._actor(self.ray)
            self.load[id(self.pool[position])] = 0
            return self.pool[position]
        return min(self.pool, key=lambda a: self.load.get(id(a), 0))

    def run(self, tasks: Iterator[tuple[int, Any]]) -> list[Any]:
        try:
            return self._run(tasks)
        finally:  # the driver stopped (an error, Ctrl-C): tasks still queued are not run
            for ref in self.pending:
                try:
                    self.ray.cancel(ref)
                except Exception:  # a task that already finished or cannot be cancelled
                    pass

    def _run(self, tasks: Iterator[tuple[int, Any]]) -> list[Any]:
        ray = self.ray
        self.fill(tasks)
        while self.pending:
            (ref,), _ = ray.wait(list(self.pending), num_returns=1)
            item = self.pending.pop(ref)
            self.load[id(item.actor)] = self.load.get(id(item.actor), 1) - 1
            try:
                result = ray.get(ref)
            except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError) as error:
                if item.attempts >= self.executor.max_retries:
                    self.failures.append((item.index, item.task, error))
                else:
                    item.actor, item.attempts = self.replace(item.actor), item.attempts + 1
                    self.executor.retries += 1
                    self.submit(item)
            except ray.exceptions.RayTaskError as error:
                cause = error.as_instanceof_cause() if error.cause is None else error.cause
                self.failures.append((item.index, item.task, cause))
            else:
                self.results[item.index] = result
                if self.on_result is not None:
                    self.on_result(item.index, result)
            self.fill(tasks)
        count = 1 + max([*self.results, *(index for index, _, _ in self.failures)], default=-1)
        ordered = [self.results.get(index) for index in range(count)]
        if self.failures:
            self.failures.sort(key=lambda failure: failure[0])
            raise TaskError(_describe(self.failures, count), self.failures, ordered)
        return ordered


def _describe(failures: list[tuple[int, Any, Any]], count: int) -> str:
    lines = [
        f"{len(failures)} of {count} tasks failed on the ray executor; the other {count - len(failures)} "
        "completed (their results are in this error's .results, and a resumable sweep kept them):"
    ]
    for index, task, error in failures:
        shown = repr(task)
        shown = shown if len(shown) <= 300 else shown[:297] + "..."
        lines.append(f"  task {index}: {type(error).__name__}: {error}\n    inputs: {shown}")
    return "\n".join(lines)
