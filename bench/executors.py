"""Where tasks run: one after another in this process, or as Ray tasks on a cluster.

A task is a module-level function ``fn(spec, shared) -> result`` (picklable: Ray ships it by
reference) applied to each spec of a list. The cells of a suite and the points of a budget sweep
go through ``Executor.run_all``, and tuning trials are meant to (a batch of trials asked from the
sampler at a time, told back in ``on_result``); the executor only schedules them. Everything
with meaning stays in the driver: ``on_result`` is called there, once per spec, as results arrive,
so one process writes the run directory (records atomically, in completion order) whichever
executor ran the work.

Data travels once. ``Shared`` holds what every task reads (the datasets) and the cache files the
driver built before submitting (the domain classifier, reference features, Inception weights).
``LocalExecutor`` hands the objects over as they are. ``RayExecutor`` puts them in the object store
once per run (``ray.put``); each worker process fetches them once and writes any cache file its
node lacks into its own ``cache_dir()``, so a worker on another node never rebuilds a cache and
never needs the internet. The cache directory alone would not do: ``~/.cache/bench`` is per node.

Failures. A task that raises, runs out of memory or loses its worker comes back as a
``TaskFailure`` with a one-line reason, and the other tasks go on; a ``BenchError`` (something the
user must fix, the same for every cell) stops the run, as it does locally. Ctrl-C cancels the
tasks still queued or running and re-raises ``KeyboardInterrupt``: finished results were already
handed to ``on_result``.
"""
from __future__ import annotations

import math
import os
import platform
import shutil
import socket
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import torch

from bench.config import ExecutorConfig
from bench.data import cache_dir
from bench.errors import BenchError, Interrupted
from bench.io import atomic_write_bytes, atomic_write_json, sidecar
from bench.store import read_environment

TaskFn = Callable[[Any, Any], Any]  # fn(spec, shared objects) -> result; module-level, so it pickles by name
OnResult = Callable[[Any, "Any | TaskFailure"], None]  # on_result(spec, result or TaskFailure), in the driver

RAY_INSTALL = 'pip install -e ".[ray]"  (or: pip install "ray==2.60.0")'


@dataclass(frozen=True)
class TaskFailure:
    """A task that died before returning a result: how, and one line of why."""

    kind: Literal["raised", "out_of_memory", "worker_died", "cancelled"]
    reason: str

    @property
    def message(self) -> str:
        return f"task {self.kind.replace('_', ' ')}: {self.reason}"[:300]


@dataclass
class Shared:
    """What every task of a run reads, built once by the driver.

    ``objects`` is passed to ``fn`` as its second argument. ``cache_files`` are files under
    ``cache_dir()`` that tasks read (feature nets, reference features): an executor that runs tasks
    on other machines ships them (``pack``), and a worker writes those its node lacks (``unpack``).
    """

    objects: Any = None
    cache_files: list[Path] = field(default_factory=list)

    def pack(self) -> Packed:
        """The objects plus the bytes of every cache file and its ``.sha256`` sidecar, by path relative to the cache."""
        root = cache_dir().resolve()
        files: dict[str, bytes] = {}
        for p in self.cache_files:
            for f in (Path(p), sidecar(Path(p))):
                f = f.resolve()
                if f.is_file() and f.is_relative_to(root):  # a file elsewhere is the user's to provide
                    files[str(f.relative_to(root))] = f.read_bytes()
        return Packed(self.objects, files)


@dataclass
class Packed:
    """``Shared`` as it travels: objects and cache files by relative path, with their bytes."""

    objects: Any
    files: dict[str, bytes]

    def unpack(self) -> int:
        """Write every cache file missing under this process's ``cache_dir()``; returns how many."""
        root, written = cache_dir(), 0
        for rel, data in sorted(self.files.items(), key=lambda kv: kv[0].endswith(".sha256"), reverse=True):
            # sidecars first, like io.write_with_sidecar: a data file is never there without its checksum
            if not (root / rel).is_file():
                atomic_write_bytes(root / rel, data)
                written += 1
        return written


@dataclass(frozen=True)
class TaskTiming:
    """Where and when one task ran (wall clock, so tasks on different processes can be compared)."""

    host: str
    start: float
    end: float


def max_concurrent(timings: Sequence[TaskTiming]) -> int:
    """Most tasks running at the same moment (a sweep over start/end events; an end sorts before a start)."""
    events = sorted([(t.start, 1) for t in timings] + [(t.end, -1) for t in timings])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


class Executor(Protocol):
    """Runs ``fn(spec, shared.objects)`` for every spec and calls ``on_result`` in the driver as each ends."""

    name: str
    slots: int  # tasks that can run at once
    threads: int | None  # torch threads per task (None: torch's default)
    device: str  # where tasks compute: "cpu" | "cuda"

    def run_all(self, fn: TaskFn, specs: Sequence[Any], on_result: OnResult, shared: Shared | None = None,
                label: Callable[[Any], str] = str) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    def close(self) -> None: ...


def _failure(e: BaseException) -> TaskFailure:
    text = str(e).strip().splitlines()
    return TaskFailure("raised", f"{type(e).__name__}: {text[0] if text else ''}")


class _Timed:
    """Keeps the timings of one ``run_all`` for ``describe()``."""

    def __init__(self) -> None:
        self.timings: list[TaskTiming] = []
        self.wall_seconds = 0.0

    def observed(self, setup: str) -> dict[str, Any]:
        """``setup`` (what was asked for) plus what happened: how many tasks, how many at once, where."""
        peak, hosts = max_concurrent(self.timings), sorted({t.host for t in self.timings})
        summary = f"{setup}; {len(self.timings)} task(s) ran, at most {peak} at once"
        if peak > 1:  # a reader of a wall-clock budget table must know its cells shared the machine
            summary += f" on {len(hosts)} host(s): cells trained side by side and shared the machines"
        return {"setup": setup, "tasks": len(self.timings), "max_concurrent": peak, "hosts": hosts,
                "wall_seconds": round(self.wall_seconds, 3), "summary": summary}


class LocalExecutor(_Timed):
    """One task after another in this process: no cell ever competes with another for cores."""

    name = "local"
    slots = 1

    def __init__(self, threads: int | None = None, device: str = "cpu"):
        super().__init__()
        self.threads, self.device = threads, device

    def run_all(self, fn: TaskFn, specs: Sequence[Any], on_result: OnResult, shared: Shared | None = None,
                label: Callable[[Any], str] = str) -> None:
        objects = shared.objects if shared else None
        t_all = time.perf_counter()
        for spec in specs:
            start = time.time()
            try:
                result = fn(spec, objects)
            except BenchError:
                raise  # the user's to fix, and the same for every cell: stop with the message
            except Exception as e:  # noqa: BLE001 - a task that raises is recorded, the run goes on
                result = _failure(e)
            self.timings.append(TaskTiming(platform.node(), start, time.time()))
            on_result(spec, result)
        self.wall_seconds += time.perf_counter() - t_all

    def describe(self) -> dict[str, Any]:
        threads = self.threads or torch.get_num_threads()
        return {"name": self.name, "slots": 1, "threads_per_task": threads, "device": self.device,
                **self.observed(f"local: one cell at a time on {self.device}, {threads} torch thread(s)")}

    def close(self) -> None:
        pass


# --------------------------------------------------------------------------------------------- Ray

_WORKER_SHARED: dict[str, Packed] = {}  # in each Ray worker process: the run's shared data, fetched once


def match_priority(target: int) -> int:
    """Lower this process's nice value to ``target`` where allowed; return the nice value it runs at.

    Ray starts its worker processes at nice 15, so on a machine where anything else runs (a second job, an
    editor's indexer, a test run) a Ray cell gets a fraction of the CPU time a local cell would, and its
    wall-clock budget buys fewer steps. A task therefore takes the driver's priority back where the OS lets
    it (root, or CAP_SYS_NICE; an unprivileged process may only raise its nice value) and otherwise runs
    as it is."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if current > target:
        try:
            os.setpriority(os.PRIO_PROCESS, 0, target)
        except OSError:
            return current
    return os.getpriority(os.PRIO_PROCESS, 0)


def _ray_task(fn: TaskFn, spec: Any, shared_box: list, threads: int, nice: int = 0) -> tuple[Any, TaskTiming]:
    """Body of every Ray task. ``shared_box`` wraps the ObjectRef so that Ray does not fetch and
    deserialize the datasets for every task: this process fetches them once and keeps them. ``nice``: the
    driver's nice value, which the task takes where the OS allows (``match_priority``)."""
    import ray

    match_priority(nice)
    start = time.time()
    ref = shared_box[0]
    key = ref.hex()
    if key not in _WORKER_SHARED:
        _WORKER_SHARED.clear()  # one run's data at a time
        _WORKER_SHARED[key] = ray.get(ref)
        _WORKER_SHARED[key].unpack()
    # honest budgets: a task uses the cores it reserved, so concurrent cells do not oversubscribe them
    torch.set_num_threads(threads)
    result = fn(spec, _WORKER_SHARED[key].objects)
    return result, TaskTiming(platform.node(), start, time.time())


def _import_ray():
    try:
        import ray
    except ImportError:
        raise BenchError(f"--executor ray needs Ray, which is not installed; install it with {RAY_INSTALL}") from None
    return ray


class RayExecutor(_Timed):
    """One Ray task per spec, each declaring ``num_cpus`` (its torch threads) and ``num_gpus``.

    ``address`` connects to a running cluster (``ray start --head`` on one machine, ``ray start
    --address=...`` on the others); without it a local Ray instance uses this machine and is shut
    down by ``close()``. Tasks are not retried: a cell that died is recorded and ``--resume`` reruns it.
    """

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float | None = None,
                 device: Literal["auto", "cpu", "cuda"] = "auto", quiet: bool = False,
                 object_store_mb: int | None = None):
        super().__init__()
        ray = _import_ray()
        self.address, self.num_cpus = address, num_cpus
        self.threads = max(1, math.floor(num_cpus))
        self._started = not ray.is_initialized()
        if self._started:
            try:
                if address:
                    ray.init(address=address, log_to_driver=not quiet)
                else:
                    # a local instance sized to this machine; no dashboard (nothing to serve), and an object
                    # store just big enough for the run's shared data (Ray spills to disk beyond it)
                    store = (object_store_mb or 512) * 1024**2
                    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, object_store_memory=store,
                             log_to_driver=not quiet)
            except ConnectionError as e:
                raise _unreachable(address, _first_line(e)) from None
        resources = ray.cluster_resources()
        self.cluster = {"nodes": len([n for n in ray.nodes() if n.get("Alive")]), "cpus": resources.get("CPU", 0),
                        "gpus": resources.get("GPU", 0)}
        if num_gpus is None:  # one GPU per cell where there are GPUs: budgets stay comparable
            num_gpus = 1 if self.cluster["gpus"] > 0 and device != "cpu" else 0
        if device == "cuda" and num_gpus == 0:
            raise BenchError("device: cuda, but the Ray cluster has no GPUs (or executor.ray.num_gpus is 0); "
                             "use device: cpu or auto, or add GPU nodes")
        if num_cpus > self.cluster["cpus"] or num_gpus > self.cluster["gpus"]:
            raise BenchError(f"executor.ray: a cell asks for {num_cpus:g} CPUs and {num_gpus:g} GPUs, the cluster has "
                             f"{self.cluster['cpus']:g} and {self.cluster['gpus']:g}; lower num_cpus/num_gpus")
        self.num_gpus = num_gpus
        self.device = "cuda" if num_gpus > 0 else "cpu"
        by_cpu = self.cluster["cpus"] // num_cpus
        self.slots = int(min(by_cpu, self.cluster["gpus"] // num_gpus) if num_gpus else by_cpu)
        self._remote = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_retries=0, retry_exceptions=False)(_ray_task)

    def run_all(self, fn: TaskFn, specs: Sequence[Any], on_result: OnResult, shared: Shared | None = None,
                label: Callable[[Any], str] = str) -> None:
        import ray
        from ray.exceptions import OutOfMemoryError, RayError, RayTaskError, TaskCancelledError, WorkerCrashedError

        t_all = time.perf_counter()
        box = [ray.put((shared or Shared()).pack())]  # the one copy every task reads
        # the task name shows in `ray list tasks` and as the worker's process title (ray::cell <id>)
        nice = os.getpriority(os.PRIO_PROCESS, 0)  # the driver's: tasks take it back (match_priority)
        pending = {self._remote.options(name=label(s)).remote(fn, s, box, self.threads, nice): s for s in specs}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                spec = pending.pop(done[0])
                try:
                    result, timing = ray.get(done[0])
                    self.timings.append(timing)
                except RayTaskError as e:  # the task raised; the cause is the task's own exception
                    cause = e.cause if e.cause is not None else e
                    if isinstance(cause, BenchError):  # the user's to fix: stop, with the message alone
                        raise BenchError(str(cause)) from None
                    result = _failure(cause)
                except OutOfMemoryError as e:
                    result = TaskFailure("out_of_memory", _first_line(e))
                except WorkerCrashedError as e:
                    result = TaskFailure("worker_died", _first_line(e))
                except TaskCancelledError as e:
                    result = TaskFailure("cancelled", _first_line(e))
                except RayError as e:  # a node lost, an object lost, ...: the task did not finish
                    result = TaskFailure("worker_died", f"{type(e).__name__}: {_first_line(e)}")
                on_result(spec, result)
        except BaseException:  # Ctrl-C or a BenchError: nothing more should run
            for ref in pending:
                ray.cancel(ref, force=True)
            raise
        finally:
            self.wall_seconds += time.perf_counter() - t_all

    def describe(self) -> dict[str, Any]:
        where = f"cluster at {self.address}" if self.address else "a local instance on this machine"
        c = self.cluster
        setup = (f"ray ({where}: {c['nodes']} node(s), {c['cpus']:g} CPUs, {c['gpus']:g} GPUs): up to {self.slots} "
                   f"cell(s) at once, each with {self.num_cpus:g} CPU(s) = {self.threads} torch thread(s) and "
                   f"{self.num_gpus:g} GPU(s), on {self.device}")
        return {"name": self.name, "address": self.address, "cluster": c, "slots": self.slots,
                "num_cpus": self.num_cpus, "num_gpus": self.num_gpus, "threads_per_task": self.threads,
                "device": self.device, **self.observed(setup)}

    def close(self) -> None:
        if self._started:
            import ray

            ray.shutdown()


def _unreachable(address: str, why: str) -> BenchError:
    return BenchError(f"executor.ray.address {address!r}: cannot connect to a Ray cluster ({why}); "
                      f"start one with `ray start --head` or drop the address for a local instance")


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """Fail in seconds on a ``host:port`` nobody listens on: Ray itself keeps retrying for minutes."""
    host, sep, port = address.rpartition(":")
    if "://" in address or not sep or not port.isdigit():
        return  # "auto" and ray:// addresses: Ray's own errors are quick and clear
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"nothing answers at {address}: {e.strerror or e}") from None


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


def check_executor(cfg: ExecutorConfig) -> None:
    """Fail now, before the run has a directory, when the executor asked for needs a package that is missing
    or names a cluster that does not answer."""
    if cfg.name == "ray":
        _import_ray()
        if cfg.ray.address:
            try:
                _check_reachable(cfg.ray.address)
            except ConnectionError as e:
                raise _unreachable(cfg.ray.address, str(e)) from None


def make_executor(cfg: ExecutorConfig, *, suite_threads: int | None, device: Literal["auto", "cpu", "cuda"],
                  resolved_device: str, quiet: bool = False) -> Executor:
    """The executor a suite asks for. A Ray cell's torch threads are its ``num_cpus``, so a suite that sets
    ``threads`` and a different ``executor.ray.num_cpus`` contradicts itself and is refused."""
    if cfg.name == "local":
        return LocalExecutor(suite_threads, resolved_device)
    r = cfg.ray
    if r.num_cpus is not None and suite_threads is not None and math.floor(r.num_cpus) != suite_threads:
        raise BenchError(f"executor.ray.num_cpus ({r.num_cpus:g}) differs from threads ({suite_threads}): a Ray cell runs "
                         f"torch on num_cpus threads; drop one of them or make them equal")
    return RayExecutor(r.address, r.num_cpus or suite_threads or 1, r.num_gpus, device, quiet)


@contextmanager
def output_dir(run_dir: Path, marker: str, prefix: str) -> Iterator[tuple[Path, bool]]:
    """Where a task writes its artefacts: the run directory when this node sees it (``marker`` is there),
    else a scratch directory, removed afterwards. Yields (directory, staged)."""
    if (run_dir / marker).is_file():
        yield run_dir, False
        return
    scratch = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield scratch, True
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


@contextmanager
def executing(pool: Executor, run_dir: Path, what: str, quiet: bool) -> Iterator[None]:
    """The frame of a run's tasks: the executor announced, Ctrl-C turned into a resumable one-line message,
    and the executor recorded in ``environment.json`` and closed however the tasks end."""
    try:
        if not quiet:
            print(f"executor: {pool.describe()['setup']}", flush=True)
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted; finished {what} are kept: rerun with --resume --out {run_dir}") from None
    finally:
        note_executor(run_dir, pool.describe())
        pool.close()


def note_executor(run_dir: Path, info: dict[str, Any]) -> None:
    """Append what ran this invocation (a first run or a --resume) to ``environment.json``'s ``executors``."""
    env = read_environment(run_dir)
    env["executors"] = [*env.get("executors", []), info]
    atomic_write_json(Path(run_dir) / "environment.json", env)
