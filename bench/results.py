"""The results model: metric metadata, metric values and per-cell records.

Direction, unit and kind are declared once, where a metric is registered
(STYLE.md #4); the report's arrows and ``bench compare`` both read them from
here. Metric names never change meaning (STYLE.md #11): a new meaning gets a
new name.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from bench.registry import Registry

# What a number is. For likelihoods: "exact", "lower_bound" (of the log-likelihood,
# so an upper bound on the NLL), "estimate" or "none"; every other metric is "value".
MetricKind = Literal["value", "exact", "lower_bound", "estimate", "none"]


@dataclass(frozen=True)
class MetricSpec:
    """Metadata of one metric name."""

    name: str
    unit: str  # "", "nats", "bits/dim", "samples/s", "s", "classes", ...
    higher_is_better: bool | None  # None: informational, never a regression
    kind: MetricKind = "value"
    group: str = "misc"  # which evaluator produces it: "likelihood", "quality", "speed", ...
    description: str = ""


METRICS: Registry[MetricSpec] = Registry("metric")


def register_metric(
    name: str,
    *,
    unit: str,
    higher_is_better: bool | None,
    kind: MetricKind = "value",
    group: str = "misc",
    description: str = "",
) -> MetricSpec:
    """Declare a metric name once, with its direction, unit and kind."""
    if kind not in ("value", "exact", "lower_bound", "estimate", "none"):
        raise ValueError(f"metric {name!r}: bad kind {kind!r}")
    spec = MetricSpec(name, unit, higher_is_better, kind, group, description)
    return METRICS.register(name, spec)


@dataclass
class Metric:
    """One measured value. ``params`` records how it was measured (sample counts, k, ...)."""

    name: str
    value: float | None  # None: not available (``note`` says why)
    unit: str = ""
    kind: MetricKind = "value"
    higher_is_better: bool | None = None
    params: dict[str, Any] = field(default_factory=dict)
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["value"] is not None and not math.isfinite(d["value"]):
            d["value"] = None  # JSON has no NaN/inf; the note keeps what happened
            d["note"] = d["note"] or "non-finite value"
        return d


def metric(name: str, value: float | None, *, note: str = "", **params: Any) -> Metric:
    """Build a ``Metric`` from a registered name: metadata comes from the registry."""
    spec = METRICS.get(name)
    v = None if value is None else float(value)
    return Metric(name, v, spec.unit, spec.kind, spec.higher_is_better, dict(params), note)


# Status of a finished cell.
CellStatus = Literal["ok", "diverged", "failed"]


@dataclass
class CellRecord:
    """One finished cell (model x seed): what was asked, what was spent, what was measured."""

    suite: str
    run_id: str
    model: str
    family: str
    seed: int
    status: CellStatus
    budget: dict[str, Any]  # as asked, e.g. {"steps": 500}
    spent: dict[str, Any]  # seconds, steps, examples, epochs, params, peak_memory_mb
    metrics: list[Metric]
    options: dict[str, Any] = field(default_factory=dict)  # family options as resolved
    train: dict[str, Any] = field(default_factory=dict)  # engine settings as resolved (precision, grad_clip, ema, ...)
    environment: dict[str, Any] = field(default_factory=dict)
    diverged_at: int | None = None
    error: str = ""  # one line when status != "ok"
    artifacts: dict[str, str] = field(default_factory=dict)  # relative paths: samples, checkpoint, log
    curves: dict[str, Any] = field(default_factory=dict)  # small time series (quality over training, ...)

    @property
    def cell_id(self) -> str:
        return cell_id(self.model, self.seed)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = [m.to_dict() for m in self.metrics]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "CellRecord":
        d = dict(d)
        d["metrics"] = [Metric(**m) for m in d.get("metrics", [])]
        return cls(**d)

    def value(self, name: str) -> float | None:
        for m in self.metrics:
            if m.name == name:
                return m.value
        return None


def cell_id(model: str, seed: int) -> str:
    return f"{model}__seed{seed}"
