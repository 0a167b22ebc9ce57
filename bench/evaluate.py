"""The evaluation loop: every registered evaluator a suite selects, in two phases around training.

Nothing here is charged to the training budget. ``run_training_evaluators`` runs right after
training (or loading) on every cell, diverged ones included: the evaluators that read the
training run and the spent budget (cost, stability). ``run_model_evaluators`` runs on a model
that trained without diverging: samples are generated once per cell with a seeded generator,
quantized to 8 bits exactly as they are saved, and every sample-based evaluator reads that one
set. Which evaluator is in which phase follows from its ``needs`` (``bench.metrics.base``).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from bench.config import MAX_SAMPLES, EvalConfig
from bench.data import MAX_POINT, Dataset, bad_points
from bench.errors import BenchError
from bench.io import read_npz
from bench.families.base import GenerativeModel
from bench.metrics.base import TRAINED_MODEL_NEEDS, EvalContext, Evaluator, SnapshotFn, eval_generator
from bench.metrics.quality import QualityOptions, evaluate_quality
from bench.metrics.speed import SpeedOptions, timed_sample
from bench.results import Metric


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> uint8 with round(x * 255), the inverse of the data convention."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


@torch.no_grad()
def generate(model: GenerativeModel, n: int, device: torch.device, seed: int, batch_size: int = 500,
             kind: str = "image") -> tuple[torch.Tensor, list[float]]:
    """``n`` samples on the CPU (uint8 images ``(n, C, H, W)`` or float32 points ``(n, D)``) and the
    wall time of each full-size ``sample(batch_size)`` call, device-synchronised."""
    model.eval()
    g = eval_generator(device, seed, stream=1)
    out, times = [], []
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        s, dt = timed_sample(model, b, g, device)
        if b == batch_size:
            times.append(dt)
        out.append(to_uint8(s).cpu() if kind == "image" else s.float().cpu())
    samples = torch.cat(out)
    if kind == "points" and bad_points(samples):  # a diverged sampler: the cell fails with this reason
        raise ValueError(f"the model generated {bad_points(samples)} of {n} points that are NaN, infinite or beyond "
                         f"±{MAX_POINT:g}; no metric can measure them")
    return samples, times


def _after_training(ev: Evaluator) -> bool:
    """Phase 1: an evaluator that needs nothing of the trained model runs on every cell, diverged ones included."""
    return not (ev.needs & TRAINED_MODEL_NEEDS)


def snapshot_fn(evaluators: list[Evaluator], ctx: EvalContext) -> SnapshotFn | None:
    """The probe the trainer calls every ``eval.snapshot_every`` steps: the union of the evaluators' probes."""
    fns = [f for f in (ev.snapshot_fn(ctx) for ev in evaluators) if f is not None]
    if len(fns) <= 1:
        return fns[0] if fns else None

    def both(model: GenerativeModel, step: int) -> dict[str, float]:
        return {k: v for f in fns for k, v in f(model, step).items()}

    return both


def _run(ev: Evaluator, ctx: EvalContext) -> list[Metric]:
    if "labels" in ev.needs and not ctx.dataset.has_labels:
        return ev.unavailable_without_labels(ctx)
    return ev.evaluate(ctx)


def run_training_evaluators(evaluators: list[Evaluator], ctx: EvalContext) -> list[Metric]:
    """Phase 1 (see the module docstring); ``needs: training`` is skipped for a checkpoint-loaded model."""
    return [m for ev in evaluators if _after_training(ev) and not ("training" in ev.needs and ctx.train is None)
            for m in _run(ev, ctx)]


def run_model_evaluators(evaluators: list[Evaluator], ctx: EvalContext, cfg: EvalConfig) -> list[Metric]:
    """Phase 2: generate the samples once (when an evaluator needs them, or to save them), then every
    evaluator that needs the trained model. ``ctx.samples`` holds the samples afterwards."""
    todo = [ev for ev in evaluators if not _after_training(ev)]
    if cfg.save_samples or any("samples" in ev.needs for ev in todo):
        speed = cfg.options("speed")
        assert isinstance(speed, SpeedOptions)
        # eval.speed.batch_size is also the batch of evaluation sampling, so speed can reuse these timings
        ctx.samples, ctx.sample_times = generate(ctx.model, cfg.n_samples, ctx.device, ctx.seed, speed.batch_size,
                                                 ctx.dataset.kind)
    return [m for ev in todo for m in _run(ev, ctx)]


def load_samples(path: str | Path) -> torch.Tensor:
    """Samples made elsewhere: an .npz (key ``samples``, or its only array) or .npy of uint8 images
    ``(N, C, H, W)`` / ``(N, H, W)``, or float points ``(N, D)``."""
    arrays = read_npz(Path(path), "samples file")  # checked whole: a truncated or flipped file fails here
    if "samples" in arrays:
        arr = arrays["samples"]
    elif len(arrays) == 1:
        (arr,) = arrays.values()
    else:
        raise BenchError(f"{path}: holds arrays {list(arrays)}; name the samples array 'samples'")
    if arr.ndim == 3:
        arr = arr[:, None]  # (N, H, W) -> (N, 1, H, W)
    if arr.ndim == 4 and arr.dtype != np.uint8:
        raise BenchError(f"{path}: images must be uint8 (N, C, H, W), got {arr.dtype}; convert with round(x * 255)")
    if len(arr) > MAX_SAMPLES:
        raise BenchError(f"{path}: holds {len(arr):,} samples; bench evaluates at most {MAX_SAMPLES:,}")
    samples = torch.from_numpy(np.ascontiguousarray(arr))
    if arr.ndim == 2 and samples.is_floating_point() and bad_points(samples):
        raise BenchError(f"{path}: {bad_points(samples)} of {len(arr)} points are NaN, infinite or beyond "
                         f"±{MAX_POINT:g}; no metric can measure them")
    return samples


def evaluate_external(path: str | Path, dataset: Dataset, options: QualityOptions, device: torch.device) -> list[Metric]:
    """Quality metrics of a sample set made by another tool, on bench's footing."""
    samples = load_samples(path)
    if tuple(samples.shape[1:]) != dataset.shape:
        raise BenchError(f"{path}: samples have shape {tuple(samples.shape[1:])}, {dataset.name} has {dataset.shape}")
    return evaluate_quality(samples, dataset, options, device)
