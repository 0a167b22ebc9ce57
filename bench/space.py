"""Search spaces and the tuning schema: what ``bench tune`` may vary, and how a suite says so.

A family declares beside its options what a tuner may search, as a class attribute::

    class VAE(GenerativeModel):
        search_space = {
            "lr": Float(1e-4, 3e-3, log=True),
            "arch": Categorical(["conv", "mlp"]),
            "batch_size": Categorical([32, 64, 128, 256]),   # the one key that is not an option
        }

Every key is a field of the family's ``Options`` or ``batch_size`` (the model's training batch size:
at a fixed wall-clock budget it trades updates against gradient noise, so it belongs in the search).
A suite changes the space per model (``models[i].tune.space``: add or replace a key, ``null`` drops
one, which holds that option at the model's value) and sets the protocol in a ``tuning:`` block. A
model's ``options:`` and ``batch_size:`` are where the search starts (trial 0 trains them as written),
not a constraint: so a tuned suite, whose options are the winners, can be tuned again.

In YAML a parameter is ``{type: float, low: 1e-4, high: 1e-2, log: true}``, ``{type: int, low: 2,
high: 64, log: true}`` or ``{type: categorical, choices: [conv, mlp]}``. This module imports nothing
from bench but the seed range (bench.seeds), so family modules can import it.
"""
from __future__ import annotations

import math
from dataclasses import asdict
from typing import Annotated, Any, Literal, Union

import optuna
from pydantic import ConfigDict, Field, TypeAdapter, ValidationError
from pydantic.dataclasses import dataclass

from bench.seeds import Seed
from bench.schema import Checked, no_type_guessing

_STRICT = ConfigDict(extra="forbid")
MAX_TRIALS = 10_000  # trials per model: far beyond any tuning budget; a typo of 1e20 would never finish
Scalar = Union[bool, int, float, str, None]  # what Optuna can store as a categorical choice

BATCH_SIZE = "batch_size"  # the searchable key that sets ModelConfig.batch_size, not an option
FLOAT_DIGITS = 3  # proposed floats are rounded to 3 significant digits, so a tuned suite reads lr: 0.00123


@dataclass(frozen=True, config=_STRICT)
class Float:
    """A real in [low, high]; ``log``: uniform in log space (learning rates, weights spanning decades)."""

    _no_type_guessing = no_type_guessing("low", "high", "log")  # not "type", the discriminator

    low: float
    high: float
    log: bool = False
    type: Literal["float"] = "float"

    def __post_init__(self) -> None:
        _check_range(self.low, self.high, self.log)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.FloatDistribution(self.low, self.high, log=self.log)

    def contains(self, v: Any) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and self.low <= v <= self.high

    def tidy(self, v: float) -> float:
        """Round to FLOAT_DIGITS significant digits, kept inside the range."""
        r = float(f"{v:.{FLOAT_DIGITS}g}")
        return min(max(r, self.low), self.high)

    def describe(self) -> str:
        return f"{self.low:g}..{self.high:g}{' (log)' if self.log else ''}"


@dataclass(frozen=True, config=_STRICT)
class Int:
    """An integer in [low, high] (both included); ``log``: uniform in log space (widths, latent sizes)."""

    _no_type_guessing = no_type_guessing("low", "high", "log")  # not "type", the discriminator

    low: int
    high: int
    log: bool = False
    type: Literal["int"] = "int"

    def __post_init__(self) -> None:
        _check_range(self.low, self.high, self.log)

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.IntDistribution(self.low, self.high, log=self.log)

    def contains(self, v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and self.low <= v <= self.high

    def tidy(self, v: int) -> int:
        return int(v)

    def describe(self) -> str:
        return f"{self.low}..{self.high}{' (log)' if self.log else ''}"


@dataclass(frozen=True, config=_STRICT)
class Categorical:
    """One of a few listed values (architectures, losses, batch sizes)."""

    _no_type_guessing = no_type_guessing("choices")

    choices: list[Scalar]
    type: Literal["categorical"] = "categorical"

    def __post_init__(self) -> None:
        if not self.choices:
            raise ValueError("choices must list at least one value")
        if len(set(map(repr, self.choices))) < len(self.choices):
            raise ValueError(f"choices {self.choices} list a value twice")

    def distribution(self) -> optuna.distributions.BaseDistribution:
        return optuna.distributions.CategoricalDistribution(list(self.choices))

    def contains(self, v: Any) -> bool:
        return any(type(v) is type(c) and v == c for c in self.choices)

    def tidy(self, v: Scalar) -> Scalar:
        return v

    def describe(self) -> str:
        return "{" + ", ".join(str(c) for c in self.choices) + "}"


def _check_range(low: float, high: float, log: bool) -> None:
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise ValueError(f"need finite low < high, got low={low}, high={high}")
    if log and low <= 0:
        raise ValueError(f"a log-scale range needs low > 0, got low={low}")


Param = Annotated[Union[Float, Int, Categorical], Field(discriminator="type")]
Space = dict[str, Union[Float, Int, Categorical]]
_SPACE: TypeAdapter[Space] = TypeAdapter(dict[str, Param])


# ------------------------------------------------------------------------------ the suite's schema


class ValidationSplitConfig(Checked):
    """The held-out part of the *training* split that trials are scored on (never the test split)."""

    model_config = _STRICT
    fraction: float = Field(0.1, gt=0, le=0.5)  # share of the training split held out (seeded, without replacement)
    seed: Seed = 0  # which examples are held out


class ModelTuning(Checked):
    """``models[i].tune``: this model's changes to its family's search space."""

    model_config = _STRICT
    enabled: bool = True  # false: `bench tune` leaves this model as it is
    space: dict[str, Param | None] = {}  # add or replace a parameter; null drops one from the family's space


class TuningConfig(Checked):
    """The suite's ``tuning:`` block: one protocol, the same number of trials for every model."""

    model_config = _STRICT
    trials: int = Field(12, gt=0, le=MAX_TRIALS)  # trials per model, the same for every model (the tuning budget)
    sampler: Literal["tpe", "random"] = "tpe"  # Optuna's TPE (Bergstra et al. 2011) or random search
    seed: Seed = 0  # sampler seed and the training seed of every trial
    startup_trials: int = Field(4, ge=1)  # tpe: random proposals before the model-based ones
    include_defaults: bool = True  # trial 0 trains the model exactly as the suite writes it
    objective: str = "fid_domain"  # a registered metric with a direction; scored on the validation split
    validation: ValidationSplitConfig = ValidationSplitConfig()  # carved from the training split
    n_samples: int | None = Field(None, gt=0)  # generated samples per trial; None: the suite's eval.n_samples


# ------------------------------------------------------------------------------ resolving a model's space


def family_space(cls: type) -> Space:
    """The space a family declares (``search_space``); empty when it declares none."""
    return dict(getattr(cls, "search_space", None) or {})


def model_space(cls: type, tune: ModelTuning | None) -> Space:
    """The space searched for one model: its family's, changed by the model's ``tune.space``."""
    space = family_space(cls)
    for k, p in (tune.space if tune else {}).items():
        if p is None:
            space.pop(k, None)
        else:
            space[k] = p
    return space


def space_problem(cls: type, options: dict[str, Any], tune: ModelTuning | None,
                  whole: bool = False) -> tuple[str, str] | None:
    """The first thing wrong with a model's search space, as (key, message); None when it is sound.

    A key of ``tune.space`` must be an option of the family (or ``batch_size``), and every end of a
    range and every choice must be a valid value of that option beside the model's other options.
    ``whole``: check the family's own entries as well (``bench tune`` does; ``bench run`` never searches).
    """
    fields = list(cls.Options.model_fields)
    for k in (tune.space if tune else {}):
        if k != BATCH_SIZE and k not in fields:
            return k, f"not an option of family {cls.family!r}; searchable: {', '.join([*fields, BATCH_SIZE])}"
    own = {k: p for k, p in (tune.space if tune else {}).items() if p is not None}
    for k, p in (model_space(cls, tune) if whole else own).items():
        for v in _corners(p):
            if k == BATCH_SIZE:
                if not (isinstance(v, int) and not isinstance(v, bool) and v > 0):
                    return k, f"batch sizes are positive integers, got {v!r}"
                continue
            try:
                cls.Options(**{**options, k: v})
            except ValidationError as e:
                return k, f"value {v!r} is not a valid {k}: {e.errors()[0]['msg'].removeprefix('Value error, ')}"
    return None


def _corners(p: Float | Int | Categorical) -> list[Any]:
    return list(p.choices) if isinstance(p, Categorical) else [p.low, p.high]


def describe_space(space: Space) -> str:
    return ", ".join(f"{k} {p.describe()}" for k, p in space.items()) or "(nothing to search)"


def space_to_json(space: Space) -> dict[str, dict[str, Any]]:
    return {k: asdict(p) for k, p in space.items()}


def space_from_json(data: dict[str, dict[str, Any]]) -> Space:
    """The inverse of ``space_to_json`` (a tuning run's plan.json back into parameters)."""
    return _SPACE.validate_python(data)

