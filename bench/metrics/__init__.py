"""Evaluators: one module per metric group, registered like the families (see ``bench.metrics.base``).

Every built-in is registered here, in this order, and nowhere else: whoever reads the registry
(config validation, the runner, the report, compare, ``bench list``) imports this package, so
what is registered never depends on which module happened to import which. The order is the
order evaluators run in and the order of the report's columns. Adding a metric group is one
file plus one import line here.
"""
from __future__ import annotations

from bench.metrics.base import (
    EVALUATORS,
    EvalContext,
    Evaluator,
    EvaluatorOptions,
    metric_specs,
    register_evaluator,
)

from bench.metrics import quality  # noqa: F401,E402  (registers "quality")
from bench.metrics import likelihood  # noqa: F401,E402  (registers "likelihood")
from bench.metrics import speed  # noqa: F401,E402  (registers "speed" and "nfe")
from bench.metrics import cost  # noqa: F401,E402  (registers "cost", run for every cell)
from bench.metrics import stability  # noqa: F401,E402  (registers "stability")
from bench.metrics import analysis  # noqa: F401,E402  (registers "classification", "memorization", "ood": issue 9)
from bench.metrics import controllability  # noqa: F401,E402  (registers "controllability")

__all__ = ["EVALUATORS", "EvalContext", "Evaluator", "EvaluatorOptions", "metric_specs", "register_evaluator"]
