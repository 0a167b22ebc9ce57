"""Suite -> cells -> train/evaluate -> one record per cell; caching and resume.

``run_suite`` is the story of a run, top to bottom. A cell is one model x seed. A cell
is finished when its record exists on disk; ``--resume`` skips finished cells and
reruns the rest, so a run killed at any moment loses at most the cell in flight.
A diverged or crashing cell is recorded as such and the suite goes on.
"""
from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from bench.config import Budget, ModelConfig, SuiteConfig
from bench.data import Dataset, load_dataset
from bench.errors import BenchError
from bench.families import FAMILIES, DataSpec, GenerativeModel
from bench.results import CellRecord, Metric, cell_id, metric
from bench.engine import TrainSettings
from bench.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from bench.store import RunStore, latest_run_dir, new_run_dir
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
    return DataSpec(ds.kind, ds.shape, ds.num_classes, tuple(ds.class_frequencies().tolist()))


def build_model(m: ModelConfig, spec: DataSpec, seed: int, device: torch.device) -> GenerativeModel:
    """Construct a family with seeded weights (the seed fixes the initialisation)."""
    cls = FAMILIES.get(m.family).cls
    torch.manual_seed(seed)
    return cls(spec, cls.Options(**m.options)).to(device)


def save_checkpoint(path: Path, model: GenerativeModel, m: ModelConfig, spec: DataSpec,
                    optimizers: dict[str, torch.optim.Optimizer]) -> None:
    """State dict + config, loadable with ``torch.load(weights_only=True)``."""
    import io

    buf = io.BytesIO()
    torch.save(
        {
            "bench_checkpoint": 1,
            "family": m.family,
            "options": model.options.model_dump(),
            "spec": {"kind": spec.kind, "shape": list(spec.shape), "num_classes": spec.num_classes,
                     "class_frequencies": list(spec.class_frequencies)},
            "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
            "optimizers": {k: o.state_dict() for k, o in optimizers.items()},
        },
        buf,
    )
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: Path, m: ModelConfig, spec: DataSpec, device: torch.device) -> GenerativeModel:
    if not path.is_file():
        raise BenchError(f"models[{m.name}].checkpoint: no such file {path}")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - torch raises many types for a bad file
        raise BenchError(f"{path}: not a loadable checkpoint ({type(e).__name__}); was it written by bench?") from None
    if not isinstance(ck, dict) or ck.get("bench_checkpoint") != 1:
        raise BenchError(f"{path}: not a bench checkpoint (no 'bench_checkpoint' key)")
    if ck["family"] != m.family:
        raise BenchError(f"{path}: checkpoint is family {ck['family']!r}, the suite says {m.family!r}")
    cls = FAMILIES.get(m.family).cls
    if m.options and cls.Options(**m.options).model_dump() != ck["options"]:
        raise BenchError(f"{path}: checkpoint does not match the model: it was trained with options {ck['options']}, "
                         f"the suite says {m.options}; drop options: or make them match")
    if tuple(ck["spec"]["shape"]) != tuple(spec.shape) or ck["spec"]["num_classes"] != spec.num_classes:
        raise BenchError(f"{path}: checkpoint does not match the model: trained on data of shape {ck['spec']['shape']}, "
                         f"this suite's dataset has shape {list(spec.shape)}")
    model = cls(spec, cls.Options(**ck["options"])).to(device)
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
    budget_asked = cell.budget.as_dict()
    rec = CellRecord(cfg.name, run_id, m.name, m.family, cell.seed, "ok", budget_asked, {}, [],
                     options={}, environment={"device": env["device"]})
    try:
        if m.checkpoint:
            model = load_checkpoint((suite_dir / m.checkpoint).resolve(), m, spec, device)
            spent = Spent(0.0, 0, 0, 0.0, model.num_parameters(), 0.0, loaded_from=m.checkpoint)
            result = TrainResult("ok", spent, _empty_log(), watched=model.watched_loss)
        else:
            model = build_model(m, spec, cell.seed, device)
            snapshot_fn = None
            if "stability" in cfg.eval.metrics and cfg.eval.snapshot_every:
                from bench.metrics.stability import snapshot_fn_for

                snapshot_fn = snapshot_fn_for(ds, device, cfg.eval.snapshot_samples, cell.seed)
            ctx = TrainContext(cell.budget, cell.batch_size, cell.seed, device, cell.train,
                               snapshot_every=cfg.eval.snapshot_every, snapshot_fn=snapshot_fn,
                               nan_at_step=m.debug.nan_at_step, explode_factor=cfg.eval.explode_factor,
                               progress=progress, label=cell.id)
            result = train(model, train_ds, ctx)
            log_path = store.path("logs", cell.id, "csv")
            atomic_write_text(log_path, result.log.to_csv(index=False))
            rec.artifacts["log"] = str(log_path.relative_to(store.dir))
        rec.options = model.options.model_dump()
        rec.train = result.settings.model_dump() if result.settings is not None else {}
        rec.spent = result.spent.as_record()
        rec.metrics += _cost_metrics(result.spent)
        if "stability" in cfg.eval.metrics and not m.checkpoint:
            from bench.metrics.stability import loss_curves, training_stability

            rec.metrics += training_stability(result, type(model).adversarial)
            rec.curves["snapshots"] = result.snapshots
            rec.curves["losses"] = loss_curves(result.log)
        if result.status == "diverged":
            rec.status, rec.diverged_at, rec.error = "diverged", result.diverged_at, result.reason
            return rec
        if not m.checkpoint:
            ck = store.path("checkpoints", cell.id, "pt")
            save_checkpoint(ck, model, m, spec, result.optimizers)
            rec.artifacts["checkpoint"] = str(ck.relative_to(store.dir))
        from bench.evaluate import evaluate

        t0 = time.perf_counter()
        metrics, samples = evaluate(model, ds, cfg.eval, device, cell.seed, progress)
        rec.spent["eval_seconds"] = round(time.perf_counter() - t0, 3)
        rec.metrics += metrics
        if cfg.eval.save_samples and samples is not None:
            sp = store.path("samples", cell.id, "npz")
            _save_samples(sp, samples)
            rec.artifacts["samples"] = str(sp.relative_to(store.dir))
    except BenchError:
        raise  # the user's to fix (missing data, bad checkpoint): stop the run with the message
    except Exception as e:  # a family's own bug or an OOM: record it, keep the traceback, go on
        err = store.path("logs", cell.id, "err")
        atomic_write_text(err, traceback.format_exc())
        rec.status = "failed"
        rec.error = f"{type(e).__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}"[:300]
        rec.artifacts["traceback"] = str(err.relative_to(store.dir))
    return rec


def _empty_log():
    import pandas as pd

    return pd.DataFrame({"step": []})


def _cost_metrics(spent: Spent) -> list[Metric]:
    out = [metric("params", spent.params), metric("train_seconds", round(spent.seconds, 4))]
    if spent.steps_per_second is not None:
        out.append(metric("train_steps_per_s", spent.steps_per_second))
    return out


def _save_samples(path: Path, samples: torch.Tensor) -> None:
    import io

    buf = io.BytesIO()
    np.savez_compressed(buf, samples=samples.numpy())
    atomic_write_bytes(path, buf.getvalue())


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
    return "\n".join(lines)


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
) -> Path | None:
    """Run every cell of a suite and write the report. Returns the run directory (None for a dry run)."""
    device = resolve_device(cfg.device)
    cells = plan(cfg, only, seeds)

    # 1. where the output goes: a fresh directory, or the one being resumed
    if resume:
        run_dir = out or latest_run_dir(reports_root, cfg.name)
        if run_dir is None or not (run_dir / "suite.yaml").is_file():
            raise BenchError(f"--resume: no earlier run of suite {cfg.name!r} under {reports_root / cfg.name}; run without --resume")
        before = yaml.safe_load((run_dir / "suite.yaml").read_text())
        if before != json.loads(cfg.model_dump_json()):
            raise BenchError(f"--resume: {run_dir} was run with a different suite config; start a new run instead")
    elif dry_run:
        run_dir = out or reports_root / cfg.name / "<new run id>"
    else:
        if out is not None:
            if out.exists() and any(out.iterdir()):
                raise BenchError(f"--out {out}: directory exists and is not empty; run directories are never overwritten")
            out.mkdir(parents=True, exist_ok=True)
            run_dir = out
        else:
            run_dir = new_run_dir(reports_root, cfg.name)

    if dry_run:
        print(describe_plan(cfg, cells, run_dir, device))
        return None

    # 2. the run directory tells its own story
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
    store = RunStore(run_dir)
    env = environment(device)
    if not resume:
        atomic_write_text(run_dir / "suite.yaml", yaml.safe_dump(json.loads(cfg.model_dump_json()), sort_keys=False))
        atomic_write_json(run_dir / "environment.json", {**env, "argv": sys.argv, "suite_file": str(suite_path)})
    run_id = run_dir.name

    # 3. data once, then every cell not yet on disk
    # evaluation always uses the whole dataset (the domain feature net is trained on the full train split);
    # train_subset only limits what the models train on
    ds = load_dataset(cfg.dataset.name, cfg.dataset.options)
    train_ds = ds
    if cfg.dataset.options.get("train_subset"):
        ds = load_dataset(cfg.dataset.name, {**cfg.dataset.options, "train_subset": None})
    if not quiet:
        print(describe_plan(cfg, cells, run_dir, device, len(train_ds.train_x)), flush=True)
    todo = [c for c in cells if not store.has_record(c.id)]
    if resume and not quiet:
        print(f"resuming: {len(cells) - len(todo)} of {len(cells)} cells already finished", flush=True)
    t_start = time.perf_counter()
    for i, cell in enumerate(todo, 1):
        t0 = time.perf_counter()
        try:
            rec = run_cell(cell, cfg, train_ds, ds, store, run_id, device, env, suite_path.parent, progress=not quiet)
        except KeyboardInterrupt:
            raise BenchError(f"interrupted during {cell.id}; finished cells are kept: rerun with --resume --out {run_dir}") from None
        store.write_record(rec)
        if not quiet:
            print(f"[{i}/{len(todo)}] {cell.id}: {rec.status}{' (' + rec.error + ')' if rec.error else ''} "
                  f"in {time.perf_counter() - t0:.1f}s; {_headline(rec)}", flush=True)
    if not quiet:
        print(f"all cells done in {time.perf_counter() - t_start:.1f}s", flush=True)

    # 4. derived outputs
    from bench.report import write_report

    write_report(run_dir)
    return run_dir


def _headline(rec: CellRecord) -> str:
    keys = ["fid_domain", "nll_bpd_exact", "nll_bpd_iwae", "nll_bpd_elbo", "samples_per_s", "modes_covered"]
    parts = [f"{m.name}={m.value:.4g}" for k in keys for m in rec.metrics if m.name == k and m.value is not None]
    return ", ".join(parts)
