"""Suite -> cells -> train/evaluate -> one record per cell; caching and resume.

``run_suite`` is the story of a run, top to bottom. A cell is one model x seed. A cell
is finished when its record exists on disk; ``--resume`` skips finished cells and
reruns the rest, so a run killed at any moment loses at most the cell in flight.
A diverged or crashing cell is recorded as such and the suite goes on.
"""
from __future__ import annotations

import contextlib
import gc
import json
import os
import platform
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from pydantic import ValidationError

from bench.config import Budget, ExecutorConfig, ModelConfig, SuiteConfig, read_run_config
from bench.data import Dataset, load_dataset
from bench.errors import BenchError
from bench.executors import Executor, Shared, TaskFailure, check_executor, executing, make_executor, output_dir
from bench.families import FAMILIES, DataSpec, GenerativeModel
from bench.evaluate import run_model_evaluators, run_training_evaluators, snapshot_fn
from bench.metrics.base import EvalContext, axis
from bench.results import CellRecord, cell_id
from bench.sweep import grid, run_point
from bench.engine import TrainSettings, bf16_supported
from bench.io import (atomic_write_bytes, atomic_write_json, atomic_write_text, fault_point, make_dir, remove_stale_temp_files,
                      sidecar, torch_load_verified, torch_save_with_sidecar, write_with_sidecar)
from bench.store import (LOCK_NAME, RunLock, RunStore, describe_owner, latest_run_dir, lock_holder, new_run_dir,
                         read_environment)
from bench.train import Spent, TrainContext, TrainResult, steps_for, train


@dataclass(frozen=True)
class Cell:
    model: ModelConfig
    seed: int
    budget: Budget
    batch_size: int
    train: TrainSettings = TrainSettings()  # the engine's settings, resolved (family defaults < suite < model)

    @property
    def id(self) -> str:
        return cell_id(self.model.name, self.seed)


def plan(cfg: SuiteConfig, only: list[str] | None = None, seeds: list[int] | None = None) -> list[Cell]:
    """Every (model, seed) cell of a suite, in suite order; a budget sweep gives one model per budget.

    ``only`` names models as the suite does (``flow``: every budget of it) or as the sweep does (``flow@45s``).
    """
    models = cfg.expanded_models()
    if only:
        known = {m.name for m in cfg.models} | {m.name for m in models}
        unknown = sorted(set(only) - known)
        if unknown:
            raise BenchError(f"--only: no model named {', '.join(unknown)}; the suite has: {', '.join(sorted(known))}")
        models = [m for m in models if m.name in only or m.name.split("@")[0] in only]
    return [
        Cell(m, s, cfg.budget_for(m), cfg.batch_size_for(m), cfg.train_for(m))
        for m in models
        for s in (seeds if seeds is not None else cfg.seeds_for(m))
    ]


def resolve_device(name: str) -> torch.device:
    if name == "cuda" and not torch.cuda.is_available():
        raise BenchError("device: cuda was asked for but torch sees no CUDA device; use device: auto or cpu")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def environment(device: torch.device) -> dict[str, Any]:
    """Versions, device and git commit: what a number depends on besides the config."""
    import torch_fidelity

    env: dict[str, Any] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_fidelity": torch_fidelity.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": device.type,
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "bf16_supported": bf16_supported(device),  # what train: {precision: auto} resolves to on this machine
    }
    root = Path(__file__).resolve().parent.parent
    try:
        env["git_commit"] = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True, timeout=10
        ).stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        env["git_dirty"] = bool(dirty)
    except (OSError, subprocess.SubprocessError):
        env["git_commit"] = None
    return env


def data_spec(ds: Dataset) -> DataSpec:
    # unlabelled data (num_classes 0, every label 0) are one class to a family: naive Bayes fits one component
    return DataSpec(ds.kind, ds.shape, max(ds.num_classes, 1), tuple(ds.class_frequencies().tolist()))


def check_labels(cfg: SuiteConfig, ds: Dataset) -> None:
    """A conditional model needs labels: refuse it on unlabelled data before any cell trains."""
    if ds.has_labels:
        return
    for i, m in enumerate(cfg.models):
        opts = FAMILIES.get(m.family).cls.Options(**m.options)
        for key, what in (("conditional", "be conditional"), ("classifier", "train a guidance classifier")):
            if getattr(opts, key, False) is True:
                raise BenchError(f"models[{i}].options.{key}: dataset {cfg.dataset.name} has no labels, so {m.name} "
                                 f"cannot {what}; set {key}: false or use labelled data")


def build_model(m: ModelConfig, spec: DataSpec, seed: int, device: torch.device) -> GenerativeModel:
    """Construct a family with seeded weights (the seed fixes the initialisation)."""
    cls = FAMILIES.get(m.family).cls
    torch.manual_seed(seed)
    return cls(spec, cls.Options(**m.options)).to(device)


def save_checkpoint(path: Path, model: GenerativeModel, m: ModelConfig, spec: DataSpec,
                    optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """State dict + config, loadable with ``torch.load(weights_only=True)``, with a sha256 sidecar."""
    torch_save_with_sidecar(
        {
            "bench_checkpoint": 1,
            "family": m.family,
            "options": model.options.model_dump(),
            "spec": {"kind": spec.kind, "shape": list(spec.shape), "num_classes": spec.num_classes,
                     "class_frequencies": list(spec.class_frequencies)},
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        },
        path,
    )


def read_checkpoint(path: Path) -> dict[str, Any]:
    """A bench checkpoint, checked: sha256 against its sidecar when it has one (checkpoints bench wrote),
    ``weights_only`` loading (tensors and plain values only), and the fields a checkpoint must have."""
    if not path.is_file():
        raise BenchError(f"{path}: no such checkpoint file")
    try:
        ck = torch_load_verified(path) if sidecar(path).is_file() else torch.load(path, map_location="cpu",
                                                                                   weights_only=True)
    except BenchError:
        raise BenchError(f"{path}: fails its sha256 check ({sidecar(path).name}): corrupted or edited after bench "
                         "wrote it; restore it, or retrain the model (rerun its cell)") from None
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise BenchError(f"{path}: not a loadable checkpoint ({type(e).__name__}); was it written by bench?") from None
    if not isinstance(ck, dict) or ck.get("bench_checkpoint") != 1:
        raise BenchError(f"{path}: not a bench checkpoint (no 'bench_checkpoint' key)")
    spec = ck.get("spec")
    ok = (isinstance(ck.get("family"), str) and isinstance(ck.get("options"), dict) and isinstance(spec, dict)
          and isinstance(spec.get("shape"), list) and isinstance(spec.get("num_classes"), int)
          and isinstance(ck.get("state_dict"), dict)
          and all(isinstance(v, torch.Tensor) for v in ck["state_dict"].values()))
    if not ok:
        raise BenchError(f"{path}: a bench checkpoint with missing or mistyped fields (family, options, spec, "
                         "state_dict); it was edited or written by another version")
    return ck


def load_checkpoint(path: Path, m: ModelConfig, spec: DataSpec, device: torch.device) -> GenerativeModel:
    if not path.is_file():
        raise BenchError(f"models[{m.name}].checkpoint: no such file {path}")
    ck = read_checkpoint(path)
    if ck["family"] != m.family:
        raise BenchError(f"{path}: checkpoint is family {ck['family']!r}, the suite says {m.family!r}")
    cls = FAMILIES.get(m.family).cls
    # compare what the suite says, as validated: a family may resolve an unset option when it builds (the GAN's
    # width), so the checkpoint's other options can differ from the schema's defaults
    said = cls.Options(**m.options).model_dump(include=set(m.options))
    differ = sorted(k for k, v in said.items() if ck["options"].get(k) != v)
    if differ:
        raise BenchError(f"{path}: checkpoint does not match the model: it was trained with options {ck['options']}, "
                         f"the suite says {m.options} (differs in {', '.join(differ)}); drop options: or make them match")
    if tuple(ck["spec"]["shape"]) != tuple(spec.shape) or ck["spec"]["num_classes"] != spec.num_classes:
        raise BenchError(f"{path}: checkpoint does not match the model: trained on data of shape {ck['spec']['shape']}, "
                         f"this suite's dataset has shape {list(spec.shape)}")
    try:
        model = cls(spec, cls.Options(**ck["options"])).to(device)
    except ValidationError as e:
        raise BenchError(f"{path}: checkpoint options do not validate ({e.errors()[0]['msg']})") from None
    try:
        model.load_state_dict(ck["state_dict"])
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0]
        raise BenchError(f"{path}: checkpoint does not match the model ({first}); check options and dataset") from None
    return model


def run_cell(cell: Cell, cfg: SuiteConfig, train_ds: Dataset, ds: Dataset, store: RunStore, run_id: str,
             device: torch.device, env: dict[str, Any], suite_dir: Path, progress: bool) -> CellRecord:
    """Train (or load) on ``train_ds``, evaluate against ``ds`` and record one cell.

    Never raises for a model's own failure: that is recorded as ``failed``.
    """
    m = cell.model
    spec = data_spec(ds)
    rec = _new_record(cell, cfg, run_id, env)
    evaluators = cfg.eval.evaluators()
    try:
        fault_point(f"train:{cell.id}")
        if m.checkpoint:
            model = load_checkpoint((suite_dir / m.checkpoint).resolve(), m, spec, device)
            spent = Spent(0.0, 0, 0, 0.0, model.num_parameters(), 0.0, loaded_from=m.checkpoint)
            ctx = EvalContext(model, ds, cfg.eval, device, cell.seed)
            result = TrainResult("ok", spent, _empty_log(), watched=model.watched_loss)
        else:
            model = build_model(m, spec, cell.seed, device)
            ctx = EvalContext(model, ds, cfg.eval, device, cell.seed)
            tctx = TrainContext(cell.budget, cell.batch_size, cell.seed, device, cell.train,
                                snapshot_every=cfg.eval.snapshot_every, snapshot_fn=snapshot_fn(evaluators, ctx),
                                nan_at_step=m.debug.nan_at_step, explode_factor=cfg.eval.explode_factor,
                                progress=progress, label=cell.id)
            result = train(model, train_ds, tctx)
            ctx.train = result
            log_path = store.path("logs", cell.id, "csv")
            atomic_write_text(log_path, result.log.to_csv(index=False))
            rec.artifacts["log"] = str(log_path.relative_to(store.dir))
        ctx.spent = result.spent.as_record()
        rec.options = model.options.model_dump()
        rec.train = result.settings.model_dump() if result.settings is not None else {}
        rec.spent = result.spent.as_record()
        rec.curves = ctx.curves  # evaluators add their series (losses, snapshots) here
        rec.metrics += run_training_evaluators(evaluators, ctx)
        if result.status == "diverged":
            rec.status, rec.diverged_at, rec.error = "diverged", result.diverged_at, result.reason
            return rec
        if not m.checkpoint:
            ck = store.path("checkpoints", cell.id, "pt")
            save_checkpoint(ck, model, m, spec, result.optimizers)
            rec.artifacts["checkpoint"] = str(ck.relative_to(store.dir))
        fault_point(f"evaluate:{cell.id}")
        t0 = time.perf_counter()
        rec.metrics += run_model_evaluators(evaluators, ctx, cfg.eval)
        rec.spent["eval_seconds"] = round(time.perf_counter() - t0, 3)
        if cfg.eval.save_samples and ctx.samples is not None:
            sp = store.path("samples", cell.id, "npz")
            _save_samples(sp, ctx.samples)
            rec.artifacts["samples"] = str(sp.relative_to(store.dir))
    except BenchError:
        raise  # the user's to fix (missing data, bad checkpoint): stop the run with the message
    except Exception as e:  # a family's own bug or an OOM: record it, keep the traceback, go on
        _record_failure(rec, store, e)
    return rec


def _new_record(cell: Cell, cfg: SuiteConfig, run_id: str, env: dict[str, Any]) -> CellRecord:
    m = cell.model
    return CellRecord(cfg.name, run_id, m.name, m.family, cell.seed, "ok", cell.budget.as_dict(), {}, [],
                      options={}, environment={"device": env["device"]})


MAX_CELL_SECONDS = 1e8  # --cell-time-limit: setitimer overflows the platform's time_t a little past 1e9 s


class CellTimeLimit(BaseException):
    """Raised (by SIGALRM) in a cell that runs past ``--cell-time-limit``. A BaseException, like
    KeyboardInterrupt, so that no ``except Exception`` inside a family can swallow it."""


def _record_failure(rec: CellRecord, store: RunStore, e: BaseException) -> None:
    """Status ``failed``, a one-line reason that names the traceback file, the traceback kept there."""
    err = store.path("logs", rec.cell_id, "err")
    atomic_write_text(err, traceback.format_exc())
    first = str(e).strip().splitlines()[0] if str(e).strip() else ""
    if isinstance(e, MemoryError) or "out of memory" in first.lower():
        first = f"out of memory: {first}" if first else "out of memory"
        gc.collect()  # the cell's tensors are garbage now; give the next cell the memory back
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    rel = str(err.relative_to(store.dir))
    rec.status = "failed"
    rec.error = f"{type(e).__name__}: {first}"[:300] + f" (see {rel})"
    rec.artifacts["traceback"] = rel


@contextlib.contextmanager
def _time_limit(seconds: float | None):
    """Raise ``CellTimeLimit`` in this (main) thread after ``seconds`` of wall time; None: no limit.

    A signal, not a thread: Python runs the handler between bytecodes, so a cell stops within one
    torch call of the limit, in the middle of whatever it was doing, and its traceback says where.
    """
    if seconds is None:
        yield
        return

    def _expire(signum: int, frame: Any) -> None:
        raise CellTimeLimit(f"the cell ran past its time limit of {seconds:g} s (--cell-time-limit)")

    previous = signal.signal(signal.SIGALRM, _expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _empty_log():
    import pandas as pd

    return pd.DataFrame({"step": []})


def _save_samples(path: Path, samples: torch.Tensor) -> None:
    """uint8 samples as a compressed .npz with a sha256 sidecar (``bench.io.read_npz`` checks it)."""
    write_with_sidecar(path, lambda f: np.savez_compressed(f, samples=samples.numpy()))


@dataclass(frozen=True)
class CellSpec:
    """One cell as a unit of work: everything a worker needs but the datasets (those travel once, in
    ``Shared``). Picklable, so an executor can send it to another process or machine."""

    cfg: SuiteConfig
    cell: Cell
    run_dir: Path  # absolute: where the driver writes this run
    suite_dir: Path  # absolute: checkpoint paths in the suite are relative to it
    device: str  # "cpu" | "cuda" as the executor resolved it for the worker
    progress: bool = False  # per-cell progress bars (only where one cell runs at a time in the terminal)
    time_limit: float | None = None  # seconds; past it the cell is recorded as failed (--cell-time-limit)
    point: dict[str, Any] | None = None  # a sweep point of the cell (bench.sweep): evaluate the trained cell there

    @property
    def id(self) -> str:
        """The record this task writes: the cell's, or its sweep point's."""
        return cell_id(self.cell.model.name, self.cell.seed, self.point)


@dataclass
class CellOutcome:
    """What a worker sends back: the record, and the artefacts the driver must write (by path relative to
    the run directory) when the worker could not reach the run directory itself."""

    record: CellRecord
    files: dict[str, bytes] = field(default_factory=dict)


def execute_cell(spec: CellSpec, data: tuple[Dataset, Dataset]) -> CellOutcome:
    """Run one cell where an executor placed it: ``data`` is (training dataset, evaluation dataset).

    On a node that does not share the run directory (no ``suite.yaml`` at its path), artefacts go to a
    scratch directory and come back as bytes; the record itself is always written by the driver.
    """
    import bench.metrics  # noqa: F401  (registers every metric name: a fresh worker process has none)

    train_ds, ds = data
    if spec.cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    with output_dir(spec.run_dir, "suite.yaml", "bench-cell-") as (out_dir, staged):
        store, env = RunStore(out_dir), {"device": spec.device}
        try:
            with _time_limit(spec.time_limit):
                if spec.point is None:
                    rec = run_cell(spec.cell, spec.cfg, train_ds, ds, store, spec.run_dir.name,
                                   torch.device(spec.device), env, spec.suite_dir, spec.progress)
                else:
                    rec = _run_point(spec, train_ds, ds, store, env)
        except CellTimeLimit as e:
            rec = _new_record(spec.cell, spec.cfg, spec.run_dir.name, env)
            rec.sweep = dict(spec.point or {})
            _record_failure(rec, store, e)
        files = {rel: (out_dir / rel).read_bytes() for rel in rec.artifacts.values()} if staged else {}
    rec.environment.update(host=platform.node(), torch_threads=torch.get_num_threads())
    return CellOutcome(rec, files)


def _run_point(spec: CellSpec, train_ds: Dataset, ds: Dataset, store: RunStore, env: dict[str, Any]) -> CellRecord:
    """A sweep point (``bench.sweep.run_point``); its own failure is recorded as the point's, like a cell's."""
    try:
        return run_point(spec, train_ds, ds, store, env)
    except BenchError:
        raise
    except Exception as e:  # noqa: BLE001 - a family's sampler bug at this point: record it, go on
        rec = _new_record(spec.cell, spec.cfg, spec.run_dir.name, env)
        rec.sweep = dict(spec.point or {})
        _record_failure(rec, store, e)
        return rec


def sweep_points(cells: list[Cell]) -> list[tuple[Cell, dict[str, Any]]]:
    """Every (cell, sweep point) of the cells whose model has a ``sweep:``, cell by cell."""
    return [(c, p) for c in cells for p in (grid(c.model.sweep) if c.model.sweep else [])]


def shared_data(cfg: SuiteConfig, train_ds: Dataset, ds: Dataset, device: torch.device) -> Shared:
    """The datasets plus every cache file evaluation reads, built here once, before any cell runs.

    Evaluating a few real test images with the suite's own options builds (or loads) the domain
    classifier, the Inception weights and the reference features with their derived statistics,
    exactly as the cells will ask for them; the files that took are then shipped with the data.
    """
    from bench.metrics.fidelity import cache_files_in_use
    from bench.metrics.quality import evaluate_quality

    if "quality" in cfg.eval.metrics:
        evaluate_quality(ds.test_x[:256], ds, cfg.eval.options("quality"), device)
    if cfg.eval.snapshot_every:  # the evaluators' training probes warm their own references when built
        snapshot_fn(cfg.eval.evaluators(), EvalContext(None, ds, cfg.eval, device, 0))  # type: ignore[arg-type]
    return Shared((train_ds, ds), cache_files_in_use())


def _lost_cell(cfg: SuiteConfig, spec: CellSpec, run_id: str, failure: TaskFailure) -> CellRecord:
    """The record of a cell whose task died (out of memory, worker killed): failed, with the reason."""
    m = spec.cell.model
    return CellRecord(cfg.name, run_id, m.name, m.family, spec.cell.seed, "failed", spec.cell.budget.as_dict(), {}, [],
                      environment={"device": spec.device}, error=failure.message, sweep=dict(spec.point or {}))


def describe_plan(cfg: SuiteConfig, cells: list[Cell], run_dir: Path | str, device: torch.device,
                  n_train: int | None = None) -> str:
    lines = [f"suite {cfg.name}: {len(cells)} cells on {device.type}, output -> {run_dir}",
             f"dataset {cfg.dataset.name} {cfg.dataset.options or ''}".rstrip(),
             f"evaluation: {', '.join(cfg.eval.metrics)}; {cfg.eval.n_samples} samples per cell"]
    for c in cells:
        b = ", ".join(f"{k}={v:g}" for k, v in c.budget.as_dict().items())
        steps = steps_for(c.budget, n_train, c.batch_size) if n_train else None
        extra = f" (= {steps} steps)" if steps and c.budget.steps is None else ""
        how = "".join(f", {v}" for v in (c.train.precision, c.train.compile and "compiled") if v and v != "fp32")
        src = f"load {c.model.checkpoint}" if c.model.checkpoint else f"train {b}{extra}, batch {c.batch_size}{how}"
        lines.append(f"  {c.id:<32} {c.model.family:<14} {src}")
        if c.model.sweep:
            n = len(grid(c.model.sweep))
            lines.append(f"    + {n} sweep points, no retraining: {' x '.join(f'{k} {v}' for k, v in c.model.sweep.items())}")
    return "\n".join(lines)


def fresh_run_dir(out: Path | None, parent: Path, name: str) -> Path:
    """``--out`` if it is new or empty, else a fresh timestamped ``parent/name/<run-id>``; never a used one."""
    if out is None:
        return new_run_dir(parent, name)
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out}: exists and is not a directory")
    if out.exists() and any(out.iterdir()):
        raise BenchError(f"--out {out}: directory exists and is not empty; run directories are never overwritten")
    return make_dir(out, "--out")


def start_run(cfg: SuiteConfig, run_dir: Path, device: torch.device, suite_path: Path, fresh: bool) -> dict[str, Any]:
    """Threads and determinism as the suite says; a fresh run directory gets its resolved suite, and any
    directory without one (a run killed between the two writes) its environment."""
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    env = environment(device)
    if fresh:
        atomic_write_text(run_dir / "suite.yaml", yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False))
    if not read_environment(run_dir):  # a damaged one stops the run here, before a cell runs, not after the last
        atomic_write_json(run_dir / "environment.json", {**env, "argv": sys.argv, "suite_file": str(suite_path)})
    return env


def run_suite(
    cfg: SuiteConfig,
    suite_path: Path,
    *,
    out: Path | None = None,
    reports_root: Path = Path("reports"),
    resume: bool = False,
    only: list[str] | None = None,
    seeds: list[int] | None = None,
    dry_run: bool = False,
    quiet: bool = False,
    cell_time_limit: float | None = None,
    executor: ExecutorConfig | None = None,
    on_record: Callable[[Path, CellRecord], None] | None = None,
) -> Path | None:
    """Run every cell of a suite and write the report. Returns the run directory (None for a dry run).

    One process writes a run directory at a time (``RunLock``). A cell that raises, runs out of memory
    or runs past ``cell_time_limit`` seconds is recorded as ``failed`` with its reason and traceback,
    and the suite goes on. ``executor`` overrides the suite's ``executor:`` (how cells run does not
    change what they measure, so a run may be resumed on another executor). ``on_record(run_dir,
    record)`` is called after each record is written (experiment tracking).
    """
    device = resolve_device(cfg.device)
    cells = plan(cfg, only, seeds)
    if cell_time_limit is not None and not 0 < cell_time_limit <= MAX_CELL_SECONDS:
        raise BenchError(f"--cell-time-limit must be a positive number of seconds up to {MAX_CELL_SECONDS:.0e} (the "
                         f"longest alarm the OS sets), got {cell_time_limit}")
    executor = executor or cfg.executor
    check_executor(executor)  # a missing optional install fails before any directory is made

    # 1. where the output goes: a fresh directory, or the one being resumed
    if dry_run and not resume:
        print(describe_plan(cfg, cells, out or reports_root / cfg.name / "<new run id>", device))
        return None
    run_dir, lock, fresh = _claim_run_dir(cfg, out, reports_root, resume)
    try:
        if dry_run:
            print(describe_plan(cfg, cells, run_dir, device))
            return None
        if lock.took_over and not quiet:
            print(f"taking over the lock of a run that is no longer running ({describe_owner(lock.took_over)})")
        for stale in remove_stale_temp_files(run_dir):  # half-finished writes of a killed run
            if not quiet:
                print(f"removed {stale.relative_to(run_dir)}, left by an interrupted write")

        # 2. the run directory tells its own story
        store = RunStore(run_dir)
        start_run(cfg, run_dir, device, suite_path, fresh)
        run_id = run_dir.name

        # 3. data once, then every cell not yet on disk
        # evaluation always uses the whole dataset (the domain feature net is trained on the full train split);
        # train_subset only limits what the models train on
        ds = load_dataset(cfg.dataset.name, cfg.dataset.options, split=cfg.eval.split)
        train_ds = ds
        if cfg.dataset.options.get("train_subset"):
            ds = load_dataset(cfg.dataset.name, {**cfg.dataset.options, "train_subset": None}, split=cfg.eval.split)
        check_labels(cfg, ds)
        if not quiet:
            print(describe_plan(cfg, cells, run_dir, device, len(train_ds.train_x)), flush=True)
        store.records()  # a record that fails its checks stops a resume before anything runs
        todo = [c for c in cells if not store.has_record(c.id) or (resume and _failed(store, c.id))]
        points = sweep_points(cells)  # evaluated after their cells, one task and one record each
        todo_points = [(c, p) for c, p in points
                       if not store.has_record(cell_id(c.model.name, c.seed, p)) or (resume and _failed(store, cell_id(
                           c.model.name, c.seed, p))) or c in todo]
        total = len(cells) + len(points)
        if resume and not quiet:
            print(f"resuming: {len(cells) - len(todo)} of {len(cells)} cells already finished"
                  + (f", {len(points) - len(todo_points)} of {len(points)} sweep points" if points else ""), flush=True)
        t_start = time.perf_counter()
        pool: Executor = make_executor(executor, suite_threads=cfg.threads, device=cfg.device,
                                       resolved_device=device.type, quiet=quiet)
        specs = [CellSpec(cfg, c, run_dir.resolve(), suite_path.parent.resolve(), pool.device,
                          progress=not quiet and pool.slots == 1, time_limit=cell_time_limit) for c in todo]
        point_specs = [CellSpec(cfg, c, run_dir.resolve(), suite_path.parent.resolve(), pool.device,
                                time_limit=cell_time_limit, point=p) for c, p in todo_points]
        finished = total - len(todo) - len(todo_points)

        def finish(spec: CellSpec, out: CellOutcome | TaskFailure) -> None:
            """In the driver, as each cell ends: its artefacts, then its record (atomic), then tracking."""
            rec = out.record if isinstance(out, CellOutcome) else _lost_cell(cfg, spec, run_id, out)
            for rel, data in (out.files if isinstance(out, CellOutcome) else {}).items():
                atomic_write_bytes(run_dir / rel, data)
            fault_point(f"record:{spec.id}")
            store.write_record(rec)
            if on_record is not None:
                on_record(run_dir, rec)
            nonlocal finished
            finished += 1
            if not quiet:
                print(f"[{finished}/{total}] {spec.id}: {rec.status}"
                      f"{' (' + rec.error + ')' if rec.error else ''} at {time.perf_counter() - t_start:.1f}s; "
                      f"{_headline(rec)}", flush=True)

        with executing(pool, run_dir, "cells", quiet):
            shared = shared_data(cfg, train_ds, ds, device) if todo or point_specs else None
            pool.run_all(execute_cell, specs, finish, shared, label=lambda spec: f"cell {spec.cell.id}")
            # 3b. sweep points: their cells are all recorded (and checkpointed) now, so points may run anywhere
            if point_specs:
                pool.run_all(execute_cell, point_specs, finish, shared, label=lambda spec: f"sweep point {spec.id}")
        if not quiet:
            print(f"all cells done in {time.perf_counter() - t_start:.1f}s", flush=True)

        # 4. derived outputs
        from bench.report import write_report

        fault_point(f"report:{run_id}")
        write_report(run_dir)
        return run_dir
    finally:
        lock.release()


def _claim_run_dir(cfg: SuiteConfig, out: Path | None, reports_root: Path, resume: bool) -> tuple[Path, RunLock, bool]:
    """The run directory, locked for this process, and whether the run starts afresh there.

    ``--resume`` takes the latest run of the suite or ``--out DIR``; a DIR that a run created but was
    killed in before it wrote ``suite.yaml`` holds nothing yet, and the run starts there. Without
    ``--resume``, ``--out DIR`` must be new or empty: run directories are never overwritten.
    """
    if resume:
        run_dir = out or latest_run_dir(reports_root, cfg.name)
        if run_dir is None or not run_dir.is_dir():
            where = f"--out {out}: no such directory" if out else f"no earlier run of suite {cfg.name!r} under " \
                    f"{reports_root / cfg.name}"
            raise BenchError(f"--resume: {where}; run without --resume")
        lock = RunLock(run_dir).acquire()
        fresh = not (run_dir / "suite.yaml").is_file()
        if fresh and any((run_dir / "records").glob("*.json")):
            lock.release()
            raise BenchError(f"--resume: {run_dir} has records but no suite.yaml; it was not written by bench run")
        if not fresh:
            try:
                before = read_run_config(run_dir)
            except BenchError:
                lock.release()
                raise
            if _what_runs(before) != _what_runs(json.loads(cfg.model_dump_json())):
                lock.release()
                raise BenchError(f"--resume: {run_dir} was run with a different suite config; start a new run instead")
        return run_dir, lock, fresh
    if out is None:
        run_dir = new_run_dir(reports_root, cfg.name)
        return run_dir, RunLock(run_dir).acquire(), True
    if out.exists() and not out.is_dir():
        raise BenchError(f"--out {out}: exists and is not a directory")
    if out.is_dir() and any(p.name != LOCK_NAME and not p.name.endswith(".tmp") for p in out.iterdir()):
        holder = lock_holder(out)
        if holder is not None:
            raise BenchError(f"--out {out}: being written by another bench process ({describe_owner(holder)})")
        raise BenchError(f"--out {out}: directory exists and is not empty; run directories are never overwritten "
                         f"(--resume --out {out} finishes an interrupted run)")
    return make_dir(out, "--out"), RunLock(out).acquire(), True


def _what_runs(config: dict[str, Any]) -> dict[str, Any]:
    """A suite config without ``executor``: where cells run is not what they measure."""
    return {k: v for k, v in config.items() if k != "executor"}


def _failed(store: RunStore, cell: str) -> bool:
    """A recorded failure (a crash, a lost worker) is rerun by --resume; a divergence is a result and is kept."""
    return json.loads(store.path("records", cell, "json").read_text()).get("status") == "failed"


def _headline(rec: CellRecord) -> str:
    """One line per finished cell: the metric standing for quality, coverage, likelihood and speed (their axes)."""
    values = {m.name: m.value for m in rec.metrics if m.value is not None}
    names = [axis(role, set(values)) for role in ("quality", "coverage", "likelihood", "speed")]
    return ", ".join(f"{n}={values[n]:.4g}" for n in names if n)
