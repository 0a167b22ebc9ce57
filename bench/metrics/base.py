"""The evaluator interface: a metric group is one class, registered like a family.

An evaluator declares, as class attributes, everything the harness needs to know about it:

* ``name``: what the suite writes in ``eval.metrics`` (and the key of its option block);
* ``Options``: a pydantic model; the suite's ``eval.<name>: {...}`` block validates into it
  (unknown keys are errors with the file's line number);
* ``metrics``: the ``MetricSpec`` of every metric name it can produce, with its metadata:
  unit, direction, kind, role (quality | coverage | speed | likelihood | stability | cost |
  info), ``machine_dependent`` (timings: never judged by ``bench compare``), ``headline``
  (a column of the report's summary table for its role) and ``axis`` (a candidate for the
  trilemma axis of its role). The report, ``bench compare``, ``bench list`` and the runner's
  one-line summary read only this metadata. Names are concrete: a group whose names vary (one per
  feature space, one per likelihood estimator) builds the tuple in a loop; ``metric()`` refuses a
  name nobody declared;
* ``needs``: what it reads from the ``EvalContext``. ``samples`` (the generated evaluation
  samples), ``model`` (the trained model itself, e.g. to time it), ``test_data`` (the test
  split): it runs after training, only for cells that trained without diverging.
  ``training`` (the training run: log, snapshots): it runs right after training, diverged
  cells included, and is skipped for a model loaded from a checkpoint. ``labels``: on a
  dataset without labels every metric it declares is reported unavailable, with the reason;
* ``always``: runs for every cell whatever ``eval.metrics`` says (training cost).

and implements ``evaluate(ctx) -> list[Metric]`` (build each value with ``metric(name, value,
**params)``, or ``unavailable(name, reason)``); an evaluator that watches training also
implements ``snapshot_fn(ctx)``, the probe the trainer calls every ``eval.snapshot_every`` steps.

Adding a metric group is one file plus one import line in ``bench/metrics/__init__.py``::

    from bench.metrics.base import EvalContext, Evaluator, EvaluatorOptions, register_evaluator
    from bench.results import Metric, MetricSpec, metric

    class MeanIntensityOptions(EvaluatorOptions):
        scale: float = 1.0  # multiply the mean by this

    class MeanIntensity(Evaluator):
        '''Mean pixel intensity of the samples, in [0, 1].'''
        name = "mean_intensity"
        Options = MeanIntensityOptions
        needs = frozenset({"samples"})
        metrics = (MetricSpec("mean_intensity", unit="", higher_is_better=None, role="quality", headline=True),)

        def evaluate(self, ctx: EvalContext) -> list[Metric]:
            return [metric("mean_intensity", ctx.samples.float().mean() / 255 * self.options.scale)]

    register_evaluator("mean_intensity", MeanIntensity)

after which ``eval: {metrics: [quality, mean_intensity], mean_intensity: {scale: 2}}`` works.

Order: evaluators run, and the report lays out their headline columns, in registration
order (the import order in ``bench/metrics/__init__.py``), metrics in declaration order.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Literal, get_args

import torch
from pydantic import ConfigDict

from bench.errors import BenchError
from bench.registry import Registry, check_class
from bench.results import METRICS, Metric, MetricRole, MetricSpec, register_metric, unavailable
from bench.schema import Checked

if TYPE_CHECKING:
    from bench.config import EvalConfig
    from bench.data import Dataset
    from bench.families.base import GenerativeModel
    from bench.train import TrainResult

Need = Literal["samples", "model", "test_data", "training", "labels"]
# Needs that require a model that finished training: evaluated only for cells that did not diverge.
TRAINED_MODEL_NEEDS: frozenset[str] = frozenset({"samples", "model", "test_data"})

SnapshotFn = Callable[["GenerativeModel", int], dict[str, float]]  # (model, step) -> values; the trainer's probe


def eval_generator(device: torch.device, seed: int, stream: int) -> torch.Generator:
    """A generator per (cell seed, purpose), so evaluators do not depend on each other's draws.
    Streams in use: 1 evaluation samples, 2 likelihood, 3 speed, 4 classification, 5 counted NFE,
    6 controllability, 7 memorization, 8 ood; a new evaluator takes a new number."""
    return torch.Generator(device=device).manual_seed(1_000_003 * stream + seed)


class EvaluatorOptions(Checked):
    """Options of an evaluator, validated from the suite's ``eval.<name>`` block (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")


@dataclass
class EvalContext:
    """What an evaluator may read for one cell. The runner builds one per cell before training and
    fills in the rest as the cell goes on; evaluators read it and write only ``curves``."""

    model: GenerativeModel
    dataset: Dataset  # the evaluation dataset (its full test split, whatever the training subset)
    eval: EvalConfig  # the suite's eval section: n_samples, snapshot settings, option blocks
    device: torch.device
    seed: int  # the cell's seed
    spent: dict[str, Any] = field(default_factory=dict)  # the budget the cell spent (seconds, steps, params, ...)
    train: TrainResult | None = None  # the training run (log, snapshots); None for a checkpoint-loaded model
    samples: torch.Tensor | None = None  # generated samples: uint8 (N, C, H, W) images or float (N, D) points
    sample_times: list[float] = field(default_factory=list)  # wall time of each full-size sample() batch
    curves: dict[str, Any] = field(default_factory=dict)  # small series an evaluator adds to the record

    def generator(self, stream: int) -> torch.Generator:
        """``eval_generator`` for this cell: streams 1 samples, 2 likelihood, 3 speed; a new evaluator takes a new number."""
        return eval_generator(self.device, self.seed, stream)


class Evaluator:
    """Base class of every metric group; see the module docstring for the contract."""

    name: ClassVar[str] = ""
    Options: ClassVar[type[EvaluatorOptions]] = EvaluatorOptions
    metrics: ClassVar[tuple[MetricSpec, ...]] = ()
    needs: ClassVar[frozenset[Need]] = frozenset()
    always: ClassVar[bool] = False  # runs for every cell, named in eval.metrics or not
    # what a class from outside bench (import path or entry point) must define itself (bench.registry.check_class)
    required: ClassVar[tuple[str, ...]] = ("name", "metrics", "evaluate")

    def __init__(self, options: EvaluatorOptions | None = None):
        self.options = options if options is not None else self.Options()

    def evaluate(self, ctx: EvalContext) -> list[Metric]:
        """Every metric of this group for one cell (a subset of ``metrics``)."""
        raise NotImplementedError

    def snapshot_fn(self, ctx: EvalContext) -> SnapshotFn | None:
        """A probe the trainer calls every ``eval.snapshot_every`` steps; None: this group watches nothing."""
        return None

    def unavailable_without_labels(self, ctx: EvalContext) -> list[Metric]:
        """What the harness records instead of calling ``evaluate`` when a ``labels`` need is not met."""
        reason = f"no labels: dataset {ctx.dataset.name!r} has none"
        return [unavailable(s.name, reason) for s in self.metrics]


def _check_evaluator(name: str, cls: type[Evaluator]) -> None:
    """The contract an evaluator class must meet; ``ValueError`` naming what is wrong."""
    if not (isinstance(cls, type) and issubclass(cls, Evaluator)):
        raise ValueError(f"evaluator {name!r}: {cls!r} is not an Evaluator subclass")
    if not (isinstance(cls.Options, type) and issubclass(cls.Options, EvaluatorOptions)):
        raise ValueError(f"evaluator {name!r}: Options must subclass EvaluatorOptions")
    bad = set(cls.needs) - set(get_args(Need))
    if bad:
        raise ValueError(f"evaluator {name!r}: unknown needs {sorted(bad)}; choose from {get_args(Need)}")
    if not cls.metrics or not all(isinstance(s, MetricSpec) for s in cls.metrics):
        raise ValueError(f"evaluator {name!r}: metrics must be a non-empty tuple of MetricSpec")
    if cls.evaluate is Evaluator.evaluate:
        raise ValueError(f"evaluator {name!r}: implement evaluate(ctx)")
    names = [s.name for s in cls.metrics]
    taken = sorted({n for n in names if n in METRICS or names.count(n) > 1})
    if taken:
        raise ValueError(f"evaluator {name!r}: metric names already declared: {taken}")


def _declare_metrics(name: str, cls: type[Evaluator]) -> None:
    cls.metrics = tuple(register_metric(replace(s, group=name)) for s in cls.metrics)


def _external_evaluator(obj: object, where: str) -> type[Evaluator]:
    """An evaluator named by import path or entry point: the built-ins' checks, as a one-line BenchError."""
    cls = check_class(obj, Evaluator, where, "evaluator")
    try:
        _check_evaluator(cls.name, cls)
    except ValueError as e:
        raise BenchError(f"evaluator {where}: {str(e).split(': ', 1)[-1]}") from None
    _declare_metrics(cls.name, cls)
    return cls


EVALUATORS: Registry[type[Evaluator]] = Registry("evaluator", group="bench.evaluators", adapt=_external_evaluator)


def register_evaluator(name: str, cls: type[Evaluator]) -> type[Evaluator]:
    """Register a metric group under ``name`` (must equal ``cls.name``) and declare its metrics.

    A malformed evaluator is a programming error (``ValueError``) named here, not at its first use.
    """
    _check_evaluator(name, cls)
    if cls.name != name:
        raise ValueError(f"evaluator {name!r}: class declares name={cls.name!r}")
    EVALUATORS.register(name, cls)  # checks the evaluator's name and duplicates before any metric is declared
    _declare_metrics(name, cls)
    return cls


# ----------------------------------------------------------------------------- reading the metadata


def metric_specs() -> list[MetricSpec]:
    """Every declared metric, evaluators in registration order, metrics in declaration order."""
    return [s for _, cls in EVALUATORS.in_order() for s in cls.metrics]


def headline(roles: tuple[MetricRole, ...], present: set[str] | None = None) -> list[str]:
    """The headline metrics of ``roles`` (that a run has, when ``present`` is given), in registration order."""
    return [s.name for s in metric_specs() if s.headline and s.role in roles and (present is None or s.name in present)]


def axis(role: MetricRole, present: set[str]) -> str | None:
    """The metric that stands for ``role`` in a run: its first axis candidate that is present."""
    return next((s.name for s in metric_specs() if s.axis and s.role == role and s.name in present), None)


def is_machine_dependent(name: str, recorded: bool = False) -> bool:
    """A registered metric's declaration wins; an unregistered one (a plugin not imported here) keeps
    what its record says."""
    return METRICS.get(name).machine_dependent if name in METRICS else recorded
