"""The suite schema: one typed config object, validated from YAML (STYLE.md #5).

Every field has a default and a one-line comment. Unknown keys are errors, and every
error names the file, the line and the field, and says what is accepted, e.g.::

    suites/bad.yaml:7: models[0].family: unknown family 'vea'; choose one of: gan, naive_bayes, vae

Family options and dataset options are validated by the family's / dataset's own
``Options`` model, so a new family brings its schema with it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bench.engine import TrainSettings, resolve_settings
from bench.errors import BenchError

from bench.compare import CompareOptions

from bench.metrics.quality import QualityOptions


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Budget(_Strict):
    """Exactly one of: optimizer steps, wall-clock seconds, epochs, examples seen."""

    steps: int | None = Field(None, gt=0)  # optimizer steps (a GAN step = one G step with its D steps)
    seconds: float | None = Field(None, gt=0)  # training wall-clock seconds (evaluation is not charged)
    epochs: float | None = Field(None, gt=0)  # passes over the training split (fractions allowed)
    examples: int | None = Field(None, gt=0)  # training examples seen

    @model_validator(mode="after")
    def _one(self) -> Budget:
        given = [k for k, v in self.model_dump().items() if v is not None]
        if len(given) != 1:
            raise ValueError(f"give exactly one of steps, seconds, epochs, examples (got {given or 'none'})")
        return self

    def as_dict(self) -> dict[str, float]:
        return {k: v for k, v in self.model_dump().items() if v is not None}

    @property
    def label(self) -> str:
        """Short and file-name safe: 45s, 500steps, 2epochs, 60000examples (the suffix of a sweep's model names)."""
        ((unit, value),) = self.as_dict().items()
        return f"{value:g}{'s' if unit == 'seconds' else unit}"


class SpeedConfig(_Strict):
    """Sampling speed: the median of timed ``sample(batch_size)`` calls. When the evaluation samples
    were generated in at least ``warmup + repeats`` full batches, those timings are used."""

    batch_size: int = Field(500, gt=0)  # samples per sample() call (also the batch of evaluation sampling)
    repeats: int = Field(3, gt=0)  # timed calls at least; the median is reported
    warmup: int = Field(1, ge=0)  # untimed calls first (allocator, lazy init, cudnn autotune)


class EvalConfig(_Strict):
    metrics: list[Literal["likelihood", "quality", "speed", "stability"]] = [
        "likelihood",
        "quality",
        "speed",
        "stability",
    ]  # which metric groups to compute
    n_samples: int = Field(10000, gt=0)  # generated samples per cell for quality metrics (and saved)
    likelihood_examples: int | None = Field(None, gt=0)  # test examples for likelihoods; None = the whole test split
    likelihood_batch_size: int = Field(500, gt=0)  # test examples per log_likelihood call
    save_samples: bool = True  # keep the evaluated samples as uint8 .npz in the run directory
    speed: SpeedConfig = SpeedConfig()  # sampling-speed protocol
    quality: QualityOptions = QualityOptions()  # feature spaces, metrics, reference counts
    snapshot_every: int | None = Field(None, gt=0)  # cheap quality snapshot every N steps (stability); None = off
    snapshot_samples: int = Field(500, gt=0)  # samples per snapshot
    explode_factor: float | None = Field(1e4, gt=1)  # a loss this many times its early scale counts as diverged


class DatasetConfig(BaseModel):
    """``dataset: mnist`` or ``dataset: {name: mnist, <dataset options>}``."""

    model_config = ConfigDict(extra="allow")  # the rest is the dataset's own options, checked against its Options model
    name: str  # a registered dataset (see `bench list`)

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DebugConfig(_Strict):
    nan_at_step: int | None = Field(None, gt=0)  # replace the loss by NaN at this step: exercises the divergence path


class ModelConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # unique within the suite; used in file names
    family: str  # a registered family (see `bench list`)
    options: dict[str, Any] = {}  # the family's options (validated by the family's Options model)
    budget: Budget | None = None  # overrides the suite budget for this model
    batch_size: int | None = Field(None, gt=0)  # overrides the suite batch size
    train: TrainSettings = TrainSettings()  # engine settings for this model; the keys given override the suite's
    seeds: list[int] | None = None  # overrides the suite seeds
    checkpoint: str | None = None  # load this checkpoint instead of training (path relative to the suite file)
    debug: DebugConfig = DebugConfig()  # fault injection for tests


class SuiteConfig(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")  # names the run directory reports/<name>/<run-id>
    description: str = ""  # free text, shown in the report
    dataset: DatasetConfig  # what every model trains and is evaluated on
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: CUDA when present
    seeds: list[int] = Field([0], min_length=1)  # each model runs once per seed
    budget: Budget | None = None  # the training budget every model gets unless it overrides it
    budgets: list[Budget] | None = Field(None, min_length=1)  # a sweep instead: every model without a budget of
    # its own trains once per budget, as model "<name>@<budget>" (e.g. flow@45s); cells = model x budget x seed
    batch_size: int = Field(128, gt=0)  # training batch size
    train: TrainSettings = TrainSettings()  # engine settings (precision, grad_clip, ema, warmup_steps, schedule,
    # compile); the keys given override each family's own defaults, and a model's train: overrides these
    deterministic: bool = True  # torch deterministic algorithms (bit-identical reruns on CPU)
    threads: int | None = Field(None, gt=0)  # torch CPU threads; None = torch's default
    eval: EvalConfig = EvalConfig()  # what is measured after training
    compare: CompareOptions = CompareOptions()  # tolerances for `bench compare`
    models: list[ModelConfig] = Field(min_length=1)  # the families under test

    def expanded_models(self) -> list[ModelConfig]:
        """The models as cells see them: a budget sweep turns each model without its own budget into
        one model per budget, named ``<name>@<label>``; everything else is unchanged."""
        if self.budgets is None:
            return list(self.models)
        out = []
        for m in self.models:
            if m.budget is not None:
                out.append(m)
            else:
                out += [m.model_copy(update={"name": f"{m.name}@{b.label}", "budget": b}) for b in self.budgets]
        return out

    def seeds_for(self, m: ModelConfig) -> list[int]:
        return m.seeds if m.seeds is not None else self.seeds

    def budget_for(self, m: ModelConfig) -> Budget:
        budget = m.budget or self.budget
        if budget is None:
            raise ValueError(f"model {m.name!r} has no budget: plan cells from expanded_models()")
        return budget

    def batch_size_for(self, m: ModelConfig) -> int:
        return m.batch_size or self.batch_size

    def train_for(self, m: ModelConfig) -> TrainSettings:
        """The engine settings of a model: its family's ``train_defaults``, then the suite's ``train:``, then the
        model's own, each overriding only the keys it gives."""
        from bench.families import FAMILIES  # the registry, imported where used as in _check_references

        return resolve_settings(FAMILIES.get(m.family).cls.train_defaults, self.train, m.train)


# ----------------------------------------------------------------------------- loading


def _line_map(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map every key path in a YAML document to its 1-based line, for error messages."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            key = (*path, k.value)
            out[key] = k.start_mark.line + 1
            _line_map(v, key, out)
            out[key] = k.start_mark.line + 1  # the key's own line wins over its value's
    elif isinstance(node, yaml.SequenceNode):
        for i, v in enumerate(node.value):
            _line_map(v, (*path, i), out)
    return out


def _where(lines: dict[tuple, int], loc: tuple) -> int:
    """The line of the deepest known prefix of ``loc``."""
    for n in range(len(loc), -1, -1):
        if tuple(loc[:n]) in lines:
            return lines[tuple(loc[:n])]
    return 1


def _dotted(loc: tuple) -> str:
    s = ""
    for part in loc:
        s += f"[{part}]" if isinstance(part, int) else (f".{part}" if s else str(part))
    return s or "(top level)"


def _pydantic_message(err: dict[str, Any]) -> str:
    if err["type"] == "extra_forbidden":
        return "unknown key"
    if err["type"] == "missing":
        return "required field is missing"
    msg = err["msg"].removeprefix("Value error, ")
    if isinstance(err.get("input"), (str, int, float, bool)) and err["type"] not in ("value_error",):
        msg += f" (got {err['input']!r})"
    return msg


def _raise_from(e: ValidationError, source: str, lines: dict[tuple, int], prefix: tuple = (), fields: str = "") -> None:
    err = e.errors()[0]
    loc = (*prefix, *err["loc"])
    # pydantic adds the union member / validator name to some locs ("function-after[...]"); drop non-keys
    loc = tuple(p for p in loc if isinstance(p, int) or "[" not in str(p))
    msg = _pydantic_message(err)
    if err["type"] == "extra_forbidden" and fields:
        msg += f"; accepted keys: {fields}"
    extra = f" (and {len(e.errors()) - 1} more)" if len(e.errors()) > 1 else ""
    raise BenchError(f"{source}:{_where(lines, loc)}: {_dotted(loc)}: {msg}{extra}") from None


def _model_fields(cls: type[BaseModel], loc: tuple) -> str:
    """The accepted keys at ``loc`` (for 'unknown key' messages)."""
    m: Any = cls
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        f = getattr(m, "model_fields", {}).get(part)
        if f is None:
            return ""
        ann = f.annotation
        args = getattr(ann, "__args__", ())
        cand = [a for a in (ann, *args) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not cand:
            return ""
        m = cand[0]
    return ", ".join(getattr(m, "model_fields", {}))


def parse_suite(text: str, source: str = "<suite>") -> SuiteConfig:
    """Parse and validate a suite from YAML text; ``source`` names the file in messages."""
    try:
        node = yaml.compose(text)
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise BenchError(f"{source}:{line}: not valid YAML: {problem}") from None
    if not isinstance(raw, dict):
        raise BenchError(f"{source}:1: a suite is a YAML mapping with keys name, dataset, budget, models, ...")
    lines = _line_map(node) if node is not None else {}
    if isinstance(raw.get("dataset"), str):
        raw["dataset"] = {"name": raw["dataset"]}
    try:
        cfg = SuiteConfig.model_validate(raw)
    except ValidationError as e:
        loc = e.errors()[0]["loc"]
        _raise_from(e, source, lines, fields=_model_fields(SuiteConfig, loc))
    _check_references(cfg, source, lines)
    return cfg


def _check_references(cfg: SuiteConfig, source: str, lines: dict[tuple, int]) -> None:
    """Names that point into registries (family, dataset) and the options they own."""
    from bench.data import DATASETS
    from bench.families import FAMILIES

    def fail(loc: tuple, msg: str) -> None:
        raise BenchError(f"{source}:{_where(lines, loc)}: {_dotted(loc)}: {msg}")

    if cfg.budget is not None and cfg.budgets is not None:
        fail(("budgets",), "give budget (one for every model) or budgets (a sweep), not both")
    if cfg.budget is None and cfg.budgets is None:
        fail(("budget",), "required field is missing (or give budgets: for a sweep)")
    if cfg.budgets is not None and len({b.label for b in cfg.budgets}) < len(cfg.budgets):
        fail(("budgets",), f"the same budget appears twice: {', '.join(b.label for b in cfg.budgets)}")
    if cfg.dataset.name not in DATASETS:
        fail(("dataset", "name"), f"unknown dataset {cfg.dataset.name!r}; choose one of: {', '.join(DATASETS.names())}")
    dentry = DATASETS.get(cfg.dataset.name)
    try:
        dentry.options(**cfg.dataset.options)
    except ValidationError as e:
        _raise_from(e, source, lines, ("dataset",), ", ".join(dentry.options.model_fields))
    seen: set[str] = set()
    for i, m in enumerate(cfg.models):
        if m.name in seen:
            fail(("models", i, "name"), f"model name {m.name!r} appears twice; names must be unique")
        seen.add(m.name)
        if m.family not in FAMILIES:
            fail(("models", i, "family"), f"unknown family {m.family!r}; choose one of: {', '.join(FAMILIES.names())}")
        cls = FAMILIES.get(m.family).cls
        try:
            cls.Options(**m.options)
        except ValidationError as e:
            _raise_from(e, source, lines, ("models", i, "options"), ", ".join(cls.Options.model_fields))


def load_suite(path: str | Path) -> SuiteConfig:
    """Read and validate a suite file. Errors are ``BenchError`` naming file, line and field."""
    p = Path(path)
    if not p.is_file():
        raise BenchError(f"{p}: no such suite file (the suites that ship with bench are in suites/)")
    return parse_suite(p.read_text(), str(p))
