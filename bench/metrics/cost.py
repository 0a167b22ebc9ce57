"""The cost evaluator: what training spent, in every record whatever ``eval.metrics`` names.

The trainer measures the spent budget (``TrainResult.spent``); this turns the parts that compare
across models into metrics. Wall-clock figures depend on the machine and its load, so they are
declared ``machine_dependent``: shown everywhere, never judged by ``bench compare``.
"""
from __future__ import annotations

from bench.metrics.base import EvalContext, Evaluator, register_evaluator
from bench.results import Metric, MetricSpec, metric


class CostEvaluator(Evaluator):
    """Training cost: parameters, training seconds and optimizer steps per second (every cell)."""

    name = "cost"
    always = True  # the spent budget is part of every record, like the budget asked
    metrics = (
        MetricSpec("params", "", None, role="cost", description="number of parameters (fitted statistics for naive Bayes)"),
        MetricSpec("train_seconds", "s", None, role="cost", machine_dependent=True,
                   description="training time actually spent (evaluation excluded)"),
        MetricSpec("train_steps_per_s", "steps/s", True, role="cost", machine_dependent=True, headline=True,
                   description="optimizer steps per second of training time"),
    )

    def evaluate(self, ctx: EvalContext) -> list[Metric]:
        s = ctx.spent
        out = [metric("params", s["params"]), metric("train_seconds", s["seconds"])]
        if s["seconds"] > 0 and s["steps"] > 0:
            out.append(metric("train_steps_per_s", s["steps"] / s["seconds"]))
        return out


register_evaluator("cost", CostEvaluator)
