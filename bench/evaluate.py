"""Evaluation of one trained model: samples once, then every requested metric group.

Nothing here is charged to the training budget. Samples are generated once per cell
with a seeded generator, quantized to 8 bits exactly as they are saved, and every
sample-based metric reads that one set.
"""
from __future__ import annotations

import torch

from bench.config import EvalConfig
from bench.data import Dataset
from bench.families.base import GenerativeModel
from bench.metrics.likelihood import evaluate_likelihood
from bench.metrics.speed import measure_sampling_speed
from bench.results import Metric


def eval_generator(device: torch.device, seed: int, stream: int) -> torch.Generator:
    """A generator per (cell seed, purpose) so metrics do not depend on each other's draws."""
    return torch.Generator(device=device).manual_seed(1_000_003 * stream + seed)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """Images in [0, 1] -> uint8 with round(x * 255), the inverse of the data convention."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8)


@torch.no_grad()
def generate(model: GenerativeModel, n: int, device: torch.device, seed: int, batch_size: int = 500,
             kind: str = "image") -> torch.Tensor:
    """``n`` samples on the CPU: uint8 images ``(n, C, H, W)`` or float32 points ``(n, D)``."""
    model.eval()
    g = eval_generator(device, seed, stream=1)
    out = []
    for i in range(0, n, batch_size):
        s = model.sample(min(batch_size, n - i), g)
        out.append(to_uint8(s).cpu() if kind == "image" else s.float().cpu())
    return torch.cat(out)


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
    samples = None
    if "quality" in cfg.metrics or cfg.save_samples:
        samples = generate(model, cfg.n_samples, device, seed, cfg.speed.batch_size, dataset.kind)
    if "quality" in cfg.metrics:
        from bench.metrics.quality import evaluate_quality

        metrics += evaluate_quality(samples, dataset, cfg.quality, device)
    if "likelihood" in cfg.metrics:
        g = eval_generator(device, seed, stream=2)
        metrics += evaluate_likelihood(model, dataset, device, g, cfg.likelihood_examples, cfg.likelihood_batch_size)
    if "speed" in cfg.metrics:
        g = eval_generator(device, seed, stream=3)
        metrics += measure_sampling_speed(model, device, g, cfg.speed.batch_size, cfg.speed.repeats, cfg.speed.warmup)
    return metrics, samples
