"""The results model: metric metadata, metric values and per-cell records.

Direction, unit, kind, role and machine dependence are declared once, where an evaluator
declares its metrics (STYLE.md #4; ``bench.metrics.base``); the report's columns and arrows
and ``bench compare`` all read them from here. Metric names never change meaning
(STYLE.md #11): a new meaning gets a new name.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any, Literal, get_args

from bench.registry import Registry

# What a number is. For likelihoods: "exact", "lower_bound" (of the log-likelihood,
# so an upper bound on the NLL), "estimate" or "none"; every other metric is "value".
MetricKind = Literal["value", "exact", "lower_bound", "estimate", "none"]

# Which question a metric answers; the report groups columns by it. quality, coverage and speed
# are the three corners of the generative trilemma; likelihood, stability and cost get their own
# sections (cost: what training spent); info: context, never a headline.
MetricRole = Literal["quality", "coverage", "speed", "likelihood", "stability", "cost", "info"]


@dataclass(frozen=True)
class MetricSpec:
    """Metadata of one metric name, declared once by the evaluator that produces it."""

    name: str
    unit: str  # "", "nats", "bits/dim", "samples/s", "s", "classes", ...
    higher_is_better: bool | None  # None: informational, never a regression
    kind: MetricKind = "value"
    role: MetricRole = "info"
    machine_dependent: bool = False  # a timing: depends on the machine and its load, never judged by compare
    headline: bool = False  # a column of its section's summary table (the trilemma table, the stability table)
    axis: bool = False  # a candidate for its role's axis (trilemma plots, the one-line cell summary):
    # the first candidate present in a run, in registration order, is used
    group: str = "misc"  # the evaluator that produces it (filled in by register_evaluator)
    description: str = ""


METRICS: Registry[MetricSpec] = Registry("metric")


def register_metric(name: str | MetricSpec, **meta: Any) -> MetricSpec:
    """Declare a metric name once: ``register_metric("fid_x", unit="", higher_is_better=False, role="quality")``
    or ``register_metric(MetricSpec(...))``. Evaluators do this through ``register_evaluator``."""
    spec = name if isinstance(name, MetricSpec) else MetricSpec(name, **meta)
    if spec.kind not in get_args(MetricKind):
        raise ValueError(f"metric {spec.name!r}: bad kind {spec.kind!r}; choose one of {get_args(MetricKind)}")
    if spec.role not in get_args(MetricRole):
        raise ValueError(f"metric {spec.name!r}: bad role {spec.role!r}; choose one of {get_args(MetricRole)}")
    return METRICS.register(spec.name, spec)


@dataclass
class Metric:
    """One measured value. ``params`` records how it was measured (sample counts, k, ...)."""

    name: str
    value: float | None  # None: not available (``note`` says why)
    unit: str = ""
    kind: MetricKind = "value"
    higher_is_better: bool | None = None
    params: dict[str, Any] = field(default_factory=dict)
    note: str = ""  # why there is no value ("no labels: ..."), or a caveat about it
    machine_dependent: bool = False  # a timing (from the spec): compare shows it, never judges it

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
    return Metric(name, v, spec.unit, spec.kind, spec.higher_is_better, dict(params), note, spec.machine_dependent)


def unavailable(name: str, reason: str, **params: Any) -> Metric:
    """A metric that cannot be computed here (no labels, no logits, ...): no value, and the reason.
    The report shows it as ``n/a: <reason>``; compare treats a missing value as missing."""
    return metric(name, None, note=reason, **params)


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
    sweep: dict[str, Any] = field(default_factory=dict)  # a sweep point: the sampling options this record was
    # evaluated at (the model trained once with ``options``); {} for the cell itself

    @property
    def cell_id(self) -> str:
        return cell_id(self.model, self.seed, self.sweep)

    @property
    def row(self) -> str:
        """What the report and ``bench compare`` call this record's row: the model, and its sweep point if any
        (``diffusion[sample_steps=5,sampler=ddim]``); each point of a sweep is a row of its own."""
        return f"{self.model}[{point_label(self.sweep)}]" if self.sweep else self.model

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


def point_label(point: dict[str, Any]) -> str:
    """``sample_steps=5,sampler=ddim``: a sweep point in its keys' order (the suite's), file-name safe."""
    return ",".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items())


def cell_id(model: str, seed: int, point: dict[str, Any] | None = None) -> str:
    """``diffusion__seed0``; a sweep point of that cell: ``diffusion__seed0__sample_steps=5,sampler=ddim``."""
    return f"{model}__seed{seed}" + (f"__{point_label(point)}" if point else "")
