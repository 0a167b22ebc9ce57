"""A metric group bench does not ship: how bright the samples are against the real test images.

``brightness_gap`` is |mean sample intensity - mean test intensity| in [0, 1] units: 0 when the
model gets the average brightness right. It needs only the samples and the test split, so it is
also defined on data without labels.
"""
from __future__ import annotations

from pydantic import Field

from bench.metrics.base import EvalContext, Evaluator, EvaluatorOptions
from bench.results import Metric, MetricSpec, metric


class MeanBrightnessOptions(EvaluatorOptions):
    max_test: int = Field(10_000, gt=0)  # test images averaged (the first ones)


class MeanBrightness(Evaluator):
    """Mean sample brightness and its gap to the test split's (a bench-example plugin)."""

    name = "mean_brightness"
    Options = MeanBrightnessOptions
    needs = frozenset({"samples", "test_data"})
    metrics = (
        MetricSpec("mean_brightness", unit="", higher_is_better=None, role="info",
                   description="mean sample intensity in [0, 1]"),
        MetricSpec("brightness_gap", unit="", higher_is_better=False, role="quality", headline=True,
                   description="|mean sample intensity - mean test intensity| in [0, 1] (bench-example)"),
    )

    def evaluate(self, ctx: EvalContext) -> list[Metric]:
        mine = ctx.samples.float().mean().item() / 255
        real = ctx.dataset.test_x[: self.options.max_test].float().mean().item() / 255
        n_test = min(len(ctx.dataset.test_x), self.options.max_test)
        return [metric("mean_brightness", mine), metric("brightness_gap", abs(mine - real), n_test=n_test)]
