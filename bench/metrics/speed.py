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


def speed_metrics(times: list[float], batch_size: int, nfe: float, device: torch.device, **params) -> list[Metric]:
    """samples/s from timed ``sample(batch_size)`` calls (median), plus NFE per sample."""
    med = statistics.median(times)
    params = {"batch_size": batch_size, "repeats": len(times), "device": device.type,
              "spread_s": [round(min(times), 6), round(max(times), 6)], **params}
    return [metric("samples_per_s", batch_size / med, **params), metric("nfe_per_sample", nfe)]


def timed_sample(model: GenerativeModel, n: int, generator: torch.Generator, device: torch.device):
    """One ``model.sample(n)`` call and its wall time, device-synchronised on both sides."""
    _sync(device)
    t0 = time.perf_counter()
    out = model.sample(n, generator)
    _sync(device)
    return out, time.perf_counter() - t0


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
    times = [timed_sample(model, batch_size, generator, device)[1] for _ in range(warmup + repeats)][warmup:]
    return speed_metrics(times, batch_size, model.nfe_per_sample, device, warmup=warmup)
