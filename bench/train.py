"""The one budgeted training loop every family shares.

The loop owns the budget, the data order, timing, loss logging, the divergence guard and
quality snapshots; each batch goes to ``Engine.step`` (``bench.engine``: the optimisation
step), and the family owns only its loss, optimisers and sampler. Time spent in snapshots (and
anything else that is evaluation) is excluded from the budget and reported separately.
"""
from __future__ import annotations

import math
import resource
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Literal

import pandas as pd
import torch
from tqdm.auto import tqdm

from bench.config import Budget
from bench.data import Dataset
from bench.engine import Engine, TrainSettings
from bench.errors import Diverged
from bench.families.base import GenerativeModel

SnapshotFn = Callable[[GenerativeModel, int], dict[str, float]]

EARLY_STEPS = 20  # steps whose median |loss| sets the scale the explosion rule compares against


@dataclass(frozen=True)
class TrainContext:
    """Everything about a training run but the model and the data (one cell's training setup)."""

    budget: Budget
    batch_size: int
    seed: int = 0  # data order and the family's training generator
    device: torch.device = torch.device("cpu")
    settings: TrainSettings | None = None  # the engine's: overrides of the family's train_defaults (keys given)
    snapshot_every: int | None = None  # call snapshot_fn every N steps (and at the end)
    snapshot_fn: SnapshotFn | None = None  # a cheap quality probe; its time is not charged to training
    nan_at_step: int | None = None  # replace the watched loss by NaN at this step (tests the divergence path)
    explode_factor: float | None = None  # a watched loss this many times its early scale counts as diverged
    progress: bool = False  # show a progress bar
    label: str = ""  # what the progress bar calls the run (the cell id)


@dataclass
class Spent:
    """What a training run spent. ``as_record()`` is the record's ``spent`` dict, with the keys records
    have always had, so old runs and the committed baselines still load."""

    seconds: float  # training wall-clock, including finalize_seconds, excluding snapshots
    steps: int  # harness steps (a GAN step is one G update with its D updates)
    examples: int
    epochs: float
    params: int
    peak_memory_mb: float
    snapshot_seconds: float = 0.0
    finalize_seconds: float = 0.0  # on_train_end, charged to training
    loaded_from: str | None = None  # a checkpoint, when nothing was trained

    @property
    def steps_per_second(self) -> float | None:
        return self.steps / self.seconds if self.seconds > 0 and self.steps > 0 else None

    def as_record(self) -> dict[str, Any]:
        d = {"seconds": round(self.seconds, 4), "steps": self.steps, "examples": self.examples,
             "epochs": round(self.epochs, 4), "params": self.params, "peak_memory_mb": round(self.peak_memory_mb, 1),
             "snapshot_seconds": round(self.snapshot_seconds, 4), "finalize_seconds": round(self.finalize_seconds, 4)}
        if self.loaded_from is not None:
            d["loaded_from"] = self.loaded_from
        return d


@dataclass
class TrainResult:
    status: Literal["ok", "diverged"]
    spent: Spent
    log: pd.DataFrame  # one row per step: step, seconds (training time so far), then the step's losses
    snapshots: list[dict[str, float]] = field(default_factory=list)  # step, seconds, cost_s, **snapshot_fn(...)
    diverged_at: int | None = None
    reason: str = ""
    watched: str = "loss"  # the log column the divergence guard watched (the family's watched_loss)
    settings: TrainSettings | None = None  # the engine's settings as resolved (None: nothing was trained)
    optimizers: dict[str, torch.optim.Optimizer] = field(default_factory=dict)  # for the checkpoint


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


def _progress_bar(ctx: TrainContext, max_steps: int | None) -> tqdm:
    """``vae__seed0 25.3/45 s |####   |, step 611, neg_elbo 312.4, 20 s left``: the budget in its own unit."""
    unit = f"/{max_steps} steps" if max_steps else f"/{ctx.budget.seconds:g} s"
    fmt = "{desc} {n:.0f}" + unit if max_steps else "{desc} {n:.1f}" + unit
    return tqdm(total=max_steps or ctx.budget.seconds, leave=False, desc=ctx.label,
                bar_format=fmt + " |{bar}|{postfix}")


def _eta(done: float, total: float, wall: float) -> str:
    """Remaining wall time at the rate so far (snapshots included, so it is honest about them)."""
    if done <= 0:
        return "?"
    left = wall * (total - done) / done
    return f"{left:.0f} s left" if left < 90 else f"{left / 60:.1f} min left"


def train(model: GenerativeModel, dataset: Dataset, ctx: TrainContext) -> TrainResult:
    """Train ``model`` on ``dataset``'s train split until ``ctx.budget`` is spent.

    A non-finite loss (or the watched loss exploding past ``explode_factor`` times its early scale)
    stops training with status ``diverged`` and the step it happened at; the caller records it and
    moves on.
    """
    device = ctx.device
    model.train()
    model.seed_training(ctx.seed)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    images = dataset.kind == "image"
    train_x = dataset.train_x.to(device)
    train_y = dataset.train_y.to(device)
    n = train_x.shape[0]
    max_steps = steps_for(ctx.budget, n, ctx.batch_size)
    max_seconds = ctx.budget.seconds
    engine = Engine(model, ctx.settings, total_steps=max_steps)
    watched = model.watched_loss

    bar = _progress_bar(ctx, max_steps) if ctx.progress else None
    t_wall = time.perf_counter()
    rows: list[dict[str, float]] = []
    snapshots: list[dict[str, float]] = []
    snapshot_seconds = 0.0
    elapsed = 0.0
    step = 0
    examples = 0
    early: list[float] = []
    status: Literal["ok", "diverged"] = "ok"
    diverged_at, reason = None, ""

    def take_snapshot() -> None:
        nonlocal snapshot_seconds
        if ctx.snapshot_fn is None:
            return
        t0 = time.perf_counter()
        model.eval()
        try:
            values = ctx.snapshot_fn(model, step)
        finally:
            model.train()
        _sync(device)
        cost = time.perf_counter() - t0
        snapshot_seconds += cost
        snapshots.append({"step": step, "seconds": elapsed, "cost_s": cost, **values})

    stream = _batches(n, ctx.batch_size, ctx.seed, device)
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
            losses = engine.step(x, train_y[idx])
            values = {k: float(v) for k, v in losses.items()}  # .item(): syncs the device, so timing is honest
            elapsed += time.perf_counter() - t0
            step += 1
            examples += idx.numel()
            if ctx.nan_at_step is not None and step == ctx.nan_at_step:
                values[watched] = math.nan
            rows.append({"step": step, "seconds": elapsed, **values})
            _check(values, step, watched, early, ctx.explode_factor)
            if bar is not None:
                bar.update((1 if max_steps else min(elapsed, max_seconds or 0) - bar.n))
                if step % 20 == 0 or step == 1:
                    done, total = (step, max_steps) if max_steps else (elapsed, max_seconds or 0)
                    bar.set_postfix_str(f"step {step}, {watched} {values[watched]:.4g}, "
                                        f"{_eta(done, total, time.perf_counter() - t_wall)}")
            if ctx.snapshot_every and step % ctx.snapshot_every == 0:
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
        if ctx.snapshot_every and (not snapshots or snapshots[-1]["step"] != step):
            take_snapshot()
    model.eval()
    spent = Spent(seconds=elapsed, steps=step, examples=examples, epochs=examples / n,
                  params=model.num_parameters(), peak_memory_mb=_peak_memory_mb(device),
                  snapshot_seconds=snapshot_seconds, finalize_seconds=finalize)
    return TrainResult(status, spent, pd.DataFrame(rows), snapshots, diverged_at, reason, watched,
                       engine.settings, engine.optimizers)


def _check(values: dict[str, float], step: int, watched: str, early: list[float], factor: float | None) -> None:
    """The divergence guard: non-finite losses, or the watched loss exploding past its early scale."""
    for k, v in values.items():
        if not math.isfinite(v):
            raise Diverged(step, f"{k} is {v}")
    if factor is None:
        return
    v = abs(values[watched])
    if len(early) < EARLY_STEPS:
        early.append(v)
        return
    scale = max(sorted(early)[len(early) // 2], 1e-3)
    if v > factor * scale:
        raise Diverged(step, f"{watched}={values[watched]:.4g} exploded past {factor:g} x its early scale {scale:.4g}")
