"""The one budgeted training loop every family shares.

The trainer owns the budget, the data order, timing, loss logging, the divergence
guard and quality snapshots; the family owns only ``training_step``. Time spent in
snapshots (and anything else that is evaluation) is excluded from the budget and
reported separately.
"""
from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import pandas as pd
import torch

from bench.config import Budget
from bench.data import Dataset
from bench.errors import Diverged
from bench.families.base import GenerativeModel

SnapshotFn = Callable[[GenerativeModel, int], dict[str, float]]

EARLY_STEPS = 20  # steps whose median |loss| sets the scale the explosion rule compares against


@dataclass
class TrainResult:
    status: Literal["ok", "diverged"]
    spent: dict[str, Any]  # seconds, steps, examples, epochs, params, peak_memory_mb, snapshot_seconds
    log: pd.DataFrame  # one row per step: step, seconds (training time so far), then the step's losses
    snapshots: list[dict[str, float]] = field(default_factory=list)  # step, seconds, cost_s, **snapshot_fn(...)
    diverged_at: int | None = None
    reason: str = ""


def _batches(n: int, batch_size: int, seed: int, device: torch.device):
    """Endless stream of index batches: a fresh seeded permutation per epoch, last partial batch dropped
    (unless the split is smaller than one batch)."""
    g = torch.Generator().manual_seed(seed)
    bs = min(batch_size, n)
    while True:
        perm = torch.randperm(n, generator=g).to(device)
        for i in range(0, n - bs + 1, bs):
            yield perm[i : i + bs]


def _epoch(train_x: torch.Tensor, images: bool, batch_size: int):
    """The training split once, in order, in the families' input scale (images: uint8 / 255)."""
    for i in range(0, len(train_x), batch_size):
        x = train_x[i : i + batch_size]
        yield x.float() / 255 if images else x


def steps_for(budget: Budget, n_train: int, batch_size: int) -> int | None:
    """Optimizer steps a budget stands for; None for a wall-clock budget."""
    bs = min(batch_size, n_train)
    if budget.steps is not None:
        return budget.steps
    if budget.epochs is not None:
        return max(1, math.ceil(budget.epochs * (n_train // bs)))
    if budget.examples is not None:
        return max(1, math.ceil(budget.examples / bs))
    return None


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB; process-wide high-water mark


def train(
    model: GenerativeModel,
    dataset: Dataset,
    budget: Budget,
    *,
    batch_size: int,
    seed: int,
    device: torch.device,
    snapshot_every: int | None = None,
    snapshot_fn: SnapshotFn | None = None,
    nan_at_step: int | None = None,
    explode_factor: float | None = None,
    progress: bool = False,
) -> TrainResult:
    """Train ``model`` on ``dataset``'s train split until ``budget`` is spent.

    A non-finite loss (or one exploding past ``explode_factor`` times its early scale)
    stops training with status ``diverged`` and the step it happened at; the caller
    records it and moves on. ``nan_at_step`` injects a NaN loss at that step (tests).
    """
    model.train()
    model.seed_training(seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    images = dataset.kind == "image"
    train_x = dataset.train_x.to(device)
    train_y = dataset.train_y.to(device)
    n = train_x.shape[0]
    max_steps = steps_for(budget, n, batch_size)
    max_seconds = budget.seconds

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=max_steps or max_seconds, unit="step" if max_steps else "s", leave=False, desc=model.family)

    rows: list[dict[str, float]] = []
    snapshots: list[dict[str, float]] = []
    snapshot_seconds = 0.0
    elapsed = 0.0
    step = 0
    examples = 0
    early: list[float] = []
    status: Literal["ok", "diverged"] = "ok"
    diverged_at, reason = None, ""
    watched = ""

    def take_snapshot() -> None:
        nonlocal snapshot_seconds
        if snapshot_fn is None:
            return
        t0 = time.perf_counter()
        model.eval()
        try:
            values = snapshot_fn(model, step)
        finally:
            model.train()
        _sync(device)
        cost = time.perf_counter() - t0
        snapshot_seconds += cost
        snapshots.append({"step": step, "seconds": elapsed, "cost_s": cost, **values})

    stream = _batches(n, batch_size, seed, device)
    try:
        while True:
            if max_steps is not None and step >= max_steps:
                break
            if max_seconds is not None and elapsed >= max_seconds:
                break
            idx = next(stream)
            t0 = time.perf_counter()
            x = train_x[idx]
            x = x.float() / 255 if images else x
            losses = model.training_step(x, train_y[idx])
            values = {k: float(v) for k, v in losses.items()}  # .item(): syncs the device, so timing is honest
            elapsed += time.perf_counter() - t0
            step += 1
            examples += idx.numel()
            watched = watched or next(iter(values), "")
            if nan_at_step is not None and step == nan_at_step:
                values[watched] = math.nan
            rows.append({"step": step, "seconds": elapsed, **values})
            _check(values, step, watched, early, explode_factor)
            if bar is not None:
                bar.update(1 if max_steps else min(elapsed, max_seconds or 0) - bar.n)
                if step % 20 == 0:
                    bar.set_postfix({k: f"{v:.3g}" for k, v in list(values.items())[:2]})
            if snapshot_every and step % snapshot_every == 0:
                take_snapshot()
    except Diverged as e:
        status, diverged_at, reason = "diverged", e.step, e.reason
    finally:
        if bar is not None:
            bar.close()
    finalize = 0.0
    if status == "ok":
        t0 = time.perf_counter()
        with torch.no_grad():
            model.on_train_end(_epoch(train_x, images, batch_size=1000))
        _sync(device)
        finalize = time.perf_counter() - t0
        elapsed += finalize
        if snapshot_every and (not snapshots or snapshots[-1]["step"] != step):
            take_snapshot()
    model.eval()
    spent = {
        "seconds": round(elapsed, 4),
        "steps": step,
        "examples": examples,
        "epochs": round(examples / n, 4),
        "params": model.num_parameters(),
        "peak_memory_mb": round(_peak_memory_mb(device), 1),
        "snapshot_seconds": round(snapshot_seconds, 4),
        "finalize_seconds": round(finalize, 4),
    }
    return TrainResult(status, spent, pd.DataFrame(rows), snapshots, diverged_at, reason)


def _check(values: dict[str, float], step: int, watched: str, early: list[float], factor: float | None) -> None:
    """The divergence guard: non-finite losses, or the watched loss exploding past its early scale."""
    for k, v in values.items():
        if not math.isfinite(v):
            raise Diverged(step, f"{k} is {v}")
    if factor is None or not watched:
        return
    v = abs(values[watched])
    if len(early) < EARLY_STEPS:
        early.append(v)
        return
    scale = max(sorted(early)[len(early) // 2], 1e-3)
    if v > factor * scale:
        raise Diverged(step, f"{watched}={values[watched]:.4g} exploded past {factor:g} x its early scale {scale:.4g}")
