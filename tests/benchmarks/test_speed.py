"""Speed benchmarks (pytest-benchmark), never part of the default test run.

    python -m pytest tests/benchmarks --benchmark-only --benchmark-save=NAME
    python -m pytest tests/benchmarks --benchmark-only --benchmark-compare --benchmark-compare-fail=median:10%

Every family with its default options on MNIST (28x28): training steps/s at batch 128,
sampling throughput, and the whole domain-space metric pipeline (features + every metric)
on 10,000 vs 10,000 images. Timings are wall-clock on whatever machine runs them; compare
only saved runs from the same machine.
"""
from __future__ import annotations

import pytest
import torch

from bench.data import load_dataset
from bench.engine import Engine
from bench.families import FAMILIES
from bench.runner import data_spec

# samples per timed sample() call: one-shot decoders get a large batch, per-pixel samplers a small one
SAMPLE_BATCH = {"autoregressive": 16}
DEFAULT_SAMPLE_BATCH = 500


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")


def _model(family: str, ds):
    cls = FAMILIES.get(family).cls
    torch.manual_seed(0)
    return cls(data_spec(ds), cls.Options())


@pytest.mark.parametrize("family", FAMILIES.names())
def test_train_step(benchmark, family, mnist):
    model = _model(family, mnist)
    model.train()
    model.seed_training(0)
    x = mnist.train_x[:128].float() / 255
    y = mnist.train_y[:128]
    engine = Engine(model)  # the family's default training settings
    engine.step(x, y)  # warm-up: lazy init, allocator
    benchmark.extra_info["unit"] = "one optimizer step, batch 128"
    benchmark.pedantic(engine.step, args=(x, y), rounds=10, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("family", FAMILIES.names())
def test_sample(benchmark, family, mnist):
    model = _model(family, mnist)
    model.eval()
    if family == "naive_bayes":  # fit the statistics so sampling is not degenerate
        model.training_step(mnist.train_x[:1000].float() / 255, mnist.train_y[:1000])
    n = SAMPLE_BATCH.get(family, DEFAULT_SAMPLE_BATCH)
    g = torch.Generator().manual_seed(0)
    benchmark.extra_info["samples_per_call"] = n
    benchmark.extra_info["nfe_per_sample"] = model.nfe_per_sample
    benchmark.pedantic(model.sample, args=(n, g), rounds=3, iterations=1, warmup_rounds=1)


def test_metric_pipeline_domain_10k(benchmark, mnist):
    """Features once + FID, KID, precision/recall, density/coverage, class coverage; reference cached."""
    from bench.metrics.quality import QualityOptions, evaluate_quality

    samples = mnist.train_x[:10000]  # real training digits stand in for a generator's samples
    opts = QualityOptions(feature_spaces=["domain"], n_reference=10000)
    evaluate_quality(samples, mnist, opts, torch.device("cpu"))  # builds/loads the domain net and reference cache
    benchmark.extra_info["n_samples"] = 10000
    benchmark.pedantic(evaluate_quality, args=(samples, mnist, opts, torch.device("cpu")), rounds=3, iterations=1)
