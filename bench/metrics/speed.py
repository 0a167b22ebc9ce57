"""Sampling speed: samples/s after warm-up, device-synchronised, median of repeats."""
from __future__ import annotations

import statistics
import time

import torch

from bench.families.base import GenerativeModel
from bench.results import Metric, metric, register_metric

register_metric("samples_per_s", unit="samples/s", higher_is_better=True, group="speed",
                description="generated samples per second (median of timed batches, after warm-up)")
register_metric("nfe_per_sample", unit="NFE", higher_is_better=False, group="speed",
                description="network evaluations per sample")
register_metric("train_steps_per_s", unit="steps/s", higher_is_better=True, group="cost",
                description="optimizer steps per second of training time")
register_metric("train_seconds", unit="s", higher_is_better=None, group="cost",
                description="training time actually spent (evaluation excluded)")
register_metric("params", unit="", higher_is_better=None, group="cost",
                description="number of parameters (fitted statistics for naive Bayes)")


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def measure_sampling_speed(
    model: GenerativeModel,
    device: torch.device,
    generator: torch.Generator,
    batch_size: int = 500,
    repeats: int = 5,
    warmup: int = 1,
) -> list[Metric]:
    """Time ``repeats`` calls of ``model.sample(batch_size)`` after ``warmup`` untimed ones."""
    model.eval()
    times = []
    for i in range(warmup + repeats):
        _sync(device)
        t0 = time.perf_counter()
        model.sample(batch_size, generator)
        _sync(device)
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    med = statistics.median(times)
    params = {"batch_size": batch_size, "repeats": repeats, "warmup": warmup, "device": device.type,
              "spread_s": [round(min(times), 6), round(max(times), 6)]}
    return [
        metric("samples_per_s", batch_size / med, **params),
        metric("nfe_per_sample", model.nfe_per_sample),
    ]
