"""Evaluation of one trained model: samples once, then every requested metric group.

Nothing here is charged to the training budget. Samples are generated once per cell
with a seeded generator, quantized to 8 bits exactly as they are saved, and every
sample-based metric reads that one set.
"""
from __future__ import annotations

from pathlib import Path

import torch

from bench.config import EvalConfig
from bench.data import Dataset
from bench.errors import BenchError
from bench.io import read_npz
from bench.metrics.quality import QualityOptions
from bench.families.base import GenerativeModel
from bench.metrics.likelihood import evaluate_likelihood
from bench.metrics.speed import measure_sampling_speed, speed_metrics, timed_sample
from bench.results import Metric


def eval_generator(device: torch.device, seed: int, stream: int) -> torch.Generator:
    """A generator per (cell seed, purpose) so metrics do not depend on each other's draws."""
    return torch.Generator(device=device).manual_seed(1_000_003 * stream + seed)


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
    return torch.cat(out), times


def evaluate(
    model: GenerativeModel,
    dataset: Dataset,
    cfg: EvalConfig,
    device: torch.device,
    seed: int,
    progress: bool = False,
) -> tuple[list[Metric], torch.Tensor | None]:
    """All requested metric groups but stability (which the runner computes from training)."""
    metrics: list[Metric] = []
    samples, times = None, []
    if "quality" in cfg.metrics or cfg.save_samples:
        samples, times = generate(model, cfg.n_samples, device, seed, cfg.speed.batch_size, dataset.kind)
    if "quality" in cfg.metrics:
        from bench.metrics.quality import evaluate_quality

        metrics += evaluate_quality(samples, dataset, cfg.quality, device)
    if "likelihood" in cfg.metrics:
        g = eval_generator(device, seed, stream=2)
        metrics += evaluate_likelihood(model, dataset, device, g, cfg.likelihood_examples, cfg.likelihood_batch_size)
    if "speed" in cfg.metrics:
        sp = cfg.speed
        if len(times) >= sp.warmup + sp.repeats:
            # the evaluation samples were generated in timed batches of the same size: reuse those timings
            # (the first ``warmup`` calls excluded) rather than paying for sampling twice
            metrics += speed_metrics(times[sp.warmup:], sp.batch_size, model.nfe_per_sample, device,
                                     warmup=sp.warmup, source="evaluation samples")
        else:
            g = eval_generator(device, seed, stream=3)
            metrics += measure_sampling_speed(model, device, g, sp.batch_size, sp.repeats, sp.warmup)
    return metrics, samples


def load_samples(path: str | Path) -> torch.Tensor:
    """Samples made elsewhere: an .npz (key ``samples``, or its only array) or .npy of uint8 images
    ``(N, C, H, W)`` / ``(N, H, W)``, or float points ``(N, D)``."""
    import numpy as np

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
    return torch.from_numpy(np.ascontiguousarray(arr))


def evaluate_external(path: str | Path, dataset: Dataset, options: QualityOptions, device: torch.device) -> list[Metric]:
    """Quality metrics of a sample set made by another tool, on bench's footing."""
    from bench.metrics.quality import evaluate_quality

    samples = load_samples(path)
    if tuple(samples.shape[1:]) != dataset.shape:
        raise BenchError(f"{path}: samples have shape {tuple(samples.shape[1:])}, {dataset.name} has {dataset.shape}")
    return evaluate_quality(samples, dataset, options, device)
