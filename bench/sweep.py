"""Sampler sweeps without retraining: one trained model, evaluated at every point of a grid of sampling options.

A model in a suite may carry ``sweep: {sample_steps: [5, 10, 25, 50, 100], sampler: [ddpm, ddim]}``.
Its cells train (or load) and are evaluated as usual; then, for every point of the product grid
(keys in the order the suite gives them), the cell's checkpoint is loaded, the point's options are
set on the model (``set_sampling_options``: only the options the family declares it reads at sampling
time, its ``sampling_options``) and every evaluator that reads the trained model or its samples runs again: quality,
speed, controllability and the counted NFE (``nfe``, always), not the likelihoods (they read test
data, not samples, and are the expensive part). Each point is its own record,
``<model>__seed<s>__<k>=<v>,...`` with ``sweep: {k: v, ...}``, and its own row in the report and in
``bench compare`` (``diffusion[sample_steps=5,sampler=ddim]``). Points run as tasks after the
cells (``run_suite``), one record each, so a killed run resumes at the next point.

Every point of a cell samples with the cell's seeded evaluation generators, so two points differ by
their options only (common random numbers): a curve across a sweep is smooth where a curve across
seeds would be noisy.
"""
from __future__ import annotations

import itertools
import math
import time
from typing import TYPE_CHECKING, Any

import torch
from pydantic import ValidationError

from bench.families.base import GenerativeModel
from bench.metrics import EVALUATORS
from bench.metrics.base import EvalContext, Evaluator
from bench.results import CellRecord
from bench.store import RunStore, read_record

if TYPE_CHECKING:
    from bench.config import EvalConfig
    from bench.data import Dataset
    from bench.runner import CellSpec

MAX_POINTS = 1000  # a grid larger than this is a typo (or a job for bench tune), not a sweep
POINT_EVALUATORS_ALWAYS = ("nfe", "speed")  # what a point is about: its sampling cost, counted and timed


def grid(sweep: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """Every point of the product grid, keys in the suite's order: {a: [1, 2], b: [x]} -> [{a: 1, b: x}, {a: 2, b: x}]."""
    keys = list(sweep)
    return [dict(zip(keys, values)) for values in itertools.product(*(sweep[k] for k in keys))]


def sweep_problem(cls: type[GenerativeModel], options: dict[str, Any],
                  sweep: dict[str, list[Any]]) -> tuple[tuple, str] | None:
    """What is wrong with a model's ``sweep:`` (the location under it and a one-line message), or None."""
    fields = cls.Options.model_fields
    sweepable = sorted(cls.sampling_options)  # what the family reads only when sampling (bench.families.base)
    if not sweep:
        return (), "an empty sweep; give option: [values] pairs, or drop sweep:"
    for key, values in sweep.items():
        if key not in fields:
            return (key,), f"unknown option of family {cls.family!r}; sweepable options: {', '.join(sweepable) or 'none'}"
        if key not in cls.sampling_options:
            return (key,), (f"family {cls.family!r} does not list {key} among the options it reads only when "
                            f"sampling (its sampling_options), so it cannot change without retraining; sweepable "
                            f"options: {', '.join(sweepable) or 'none'}")
        if not isinstance(values, list) or not values:
            return (key,), "give a non-empty list of values"
        if len({repr(v) for v in values}) < len(values):
            return (key,), f"a value appears twice in {values}"
        for j, v in enumerate(values):
            try:
                value = getattr(cls.Options(**{**options, key: v}), key)
            except ValidationError as e:
                return (key, j), f"{v!r}: {e.errors()[0]['msg'].removeprefix('Value error, ')}"
            if isinstance(value, float) and not math.isfinite(value):  # pydantic turns the text 'inf' into a float
                return (key, j), f"{v!r} is not a finite number; no suite field takes NaN or infinity"
    points = grid(sweep)
    if len(points) > MAX_POINTS:
        return (), f"{len(points)} grid points; at most {MAX_POINTS}"
    for p in points:  # values valid one by one may still clash (sample_steps above timesteps with another key)
        try:
            cls.Options(**{**options, **p})
        except ValidationError as e:
            return (), f"the point {p}: {e.errors()[0]['msg'].removeprefix('Value error, ')}"
    return None


def apply_point(model: GenerativeModel, point: dict[str, Any]) -> None:
    """Set a point's sampling options on a trained model: the family's ``set_sampling_options`` validates them like
    the suite's ``options:`` and refuses an option that shapes the network."""
    model.set_sampling_options(**point)


def point_evaluators(evaluators: list[Evaluator], eval_cfg: EvalConfig) -> list[Evaluator]:
    """The evaluators a point runs: the suite's that read the trained model or its samples, but not those that read
    test data (likelihoods), plus the counted NFE and speed whatever the suite names."""
    chosen = [ev for ev in evaluators if ev.needs & {"samples", "model"} and "test_data" not in ev.needs]
    have = {ev.name for ev in chosen}
    extra = [EVALUATORS.get(n)(eval_cfg.options(n)) for n in POINT_EVALUATORS_ALWAYS if n not in have]
    order = [name for name, _ in EVALUATORS.in_order()]
    return sorted(chosen + extra, key=lambda ev: order.index(ev.name))


def run_point(spec: CellSpec, train_ds: Dataset, ds: Dataset, store: RunStore, env: dict[str, Any]) -> CellRecord:
    """Evaluate one sweep point of a finished cell: load the cell's checkpoint, set the point, evaluate, record.

    A cell that diverged or failed has nothing to evaluate: its points are recorded with its status and why.
    """
    # imported where a point runs: both import the suite config, which imports this module (its sweep checks)
    from bench.evaluate import run_model_evaluators
    from bench.runner import _new_record, _save_samples, data_spec, load_checkpoint

    cell, point, cfg = spec.cell, dict(spec.point or {}), spec.cfg
    rec = _new_record(cell, cfg, spec.run_dir.name, env)
    rec.sweep = point
    base_path = RunStore(spec.run_dir).path("records", cell.id, "json")
    if not base_path.is_file():  # a worker on a node that does not share the run directory
        raise RuntimeError(f"sweep point of {cell.id}: {spec.run_dir} is not reachable from this worker; sweep "
                           "points read the cell's checkpoint there (run them on a shared file system)")
    base = read_record(base_path)
    rec.spent, rec.train = dict(base.spent), dict(base.train)
    if base.status != "ok":
        rec.status, rec.diverged_at = base.status, base.diverged_at
        rec.error = f"not evaluated: cell {cell.id} {base.status}"
        return rec
    if cell.model.checkpoint:
        ck = (spec.suite_dir / cell.model.checkpoint).resolve()
    elif "checkpoint" in base.artifacts:
        ck = spec.run_dir / base.artifacts["checkpoint"]
    else:
        raise RuntimeError(f"sweep point of {cell.id}: the cell's record names no checkpoint")
    device = torch.device(spec.device)
    model = load_checkpoint(ck, cell.model, data_spec(ds), device)
    apply_point(model, point)
    rec.options = model.options.model_dump()
    ctx = EvalContext(model, ds, cfg.eval, device, cell.seed)
    t0 = time.perf_counter()
    rec.metrics = run_model_evaluators(point_evaluators(cfg.eval.evaluators(), cfg.eval), ctx, cfg.eval)
    rec.spent["eval_seconds"] = round(time.perf_counter() - t0, 3)
    if cfg.eval.save_samples and ctx.samples is not None:
        sp = store.path("samples", rec.cell_id, "npz")
        _save_samples(sp, ctx.samples)
        rec.artifacts["samples"] = str(sp.relative_to(store.dir))
    return rec
