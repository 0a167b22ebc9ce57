"""The speed evaluator: samples/s after warm-up, device-synchronised, median of repeats; NFE per sample."""
from __future__ import annotations

import statistics
import time

import torch
from pydantic import Field

from bench.families.base import GenerativeModel, measure_nfe
from bench.metrics.base import EvalContext, Evaluator, EvaluatorOptions, register_evaluator
from bench.results import Metric, MetricSpec, metric, unavailable


class SpeedOptions(EvaluatorOptions):
    """Sampling speed (the suite's ``eval.speed``): the median of timed ``sample(batch_size)`` calls. When
    the evaluation samples were generated in at least ``warmup + repeats`` full batches, those timings are used."""

    batch_size: int = Field(500, gt=0)  # samples per sample() call (also the batch of evaluation sampling)
    repeats: int = Field(3, gt=0, le=1000)  # timed calls at least; the median is reported
    warmup: int = Field(1, ge=0, le=1000)  # untimed calls first (allocator, lazy init, cudnn autotune)


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


class SpeedEvaluator(Evaluator):
    """Sampling speed: samples per second (a timing, machine-dependent) and network evaluations per sample."""

    name = "speed"
    Options = SpeedOptions
    needs = frozenset({"model"})
    metrics = (
        MetricSpec("samples_per_s", "samples/s", True, role="speed", machine_dependent=True, headline=True, axis=True,
                   description="generated samples per second (median of timed batches, after warm-up)"),
        MetricSpec("nfe_per_sample", "NFE", False, role="speed", headline=True,
                   description="network evaluations per sample"),
    )

    def evaluate(self, ctx: EvalContext) -> list[Metric]:
        sp = self.options
        assert isinstance(sp, SpeedOptions)
        if len(ctx.sample_times) >= sp.warmup + sp.repeats:
            # the evaluation samples were generated in timed batches of the same size: reuse those timings
            # (the first ``warmup`` calls excluded) rather than paying for sampling twice
            return speed_metrics(ctx.sample_times[sp.warmup:], sp.batch_size, ctx.model.nfe_per_sample, ctx.device,
                                 warmup=sp.warmup, source="evaluation samples")
        return measure_sampling_speed(ctx.model, ctx.device, ctx.generator(3), sp.batch_size, sp.repeats, sp.warmup)


register_evaluator("speed", SpeedEvaluator)


class NFEOptions(EvaluatorOptions):
    """The counted NFE (the suite's ``eval.nfe``): one ``sample(n_samples)`` with forward hooks on the networks."""

    n_samples: int = Field(16, gt=0, le=1_000_000)  # samples of the counted call (the count per sample does not depend on it)


class NFEEvaluator(Evaluator):
    """Network evaluations per sample, counted by forward hooks (``bench.families.base.measure_nfe``); every sweep
    point runs it."""

    name = "nfe"
    Options = NFEOptions
    needs = frozenset({"model"})
    metrics = (
        MetricSpec("nfe_measured", "NFE", False, role="speed",
                   description="network evaluations per sample, counted by forward hooks on the model's networks "
                               "during sampling (rows through a network / samples drawn)"),
    )

    def evaluate(self, ctx: EvalContext) -> list[Metric]:
        opts = self.options
        assert isinstance(opts, NFEOptions)
        nfe = measure_nfe(ctx.model, opts.n_samples, ctx.generator(5))
        if nfe is None:
            return [unavailable("nfe_measured", "no counted network runs in this family's sampler; see "
                                "nfe_per_sample (declared)")]
        return [metric("nfe_measured", nfe, n_samples=opts.n_samples, declared=ctx.model.nfe_per_sample)]


register_evaluator("nfe", NFEEvaluator)
