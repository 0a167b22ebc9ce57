"""The suite schema: one typed config object, validated from YAML (STYLE.md #5).

Every field has a default and a one-line comment. Unknown keys are errors, and every
error names the file, the line and the field, and says what is accepted, e.g.::

    suites/bad.yaml:7: models[0].family: unknown family 'vea'; choose one of: gan, naive_bayes, vae

Family options and dataset options are validated by the family's / dataset's own
``Options`` model, so a new family brings its schema with it.
"""
from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Annotated, Any, Callable, Literal

import yaml
from yaml.composer import ComposerError
from yaml.constructor import ConstructorError
from yaml.scanner import ScannerError
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from bench.engine import TrainSettings, resolve_settings
from bench.errors import BenchError

from bench.compare import CompareOptions
from bench.metrics import EVALUATORS, Evaluator, EvaluatorOptions
from bench.schema import Checked
from bench.seeds import seeds_problem
from bench.space import ModelTuning, TuningConfig, space_problem
from bench.sweep import sweep_problem


class _Strict(Checked):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)  # no field means anything at NaN/inf


# Upper bounds of fields whose typo would not fail but exhaust the machine: every sample of a cell is held in
# memory (1e13 samples ran for minutes, then ran out of memory), and libgomp aborts the whole process, without
# a Python error, when asked for 100,000 threads. Far above any real suite; low enough to be refused at once.
MAX_SAMPLES = 1_000_000  # generated samples per cell or snapshot: 20x the 50,000 of the standard FID protocol
MAX_THREADS = 1024  # torch CPU threads
MAX_NAME = 100  # characters of a suite or model name: they are file names (a cell adds its seed and sweep point)
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", max_length=MAX_NAME)]  # safe as a file name


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


class EvalConfig(Checked):
    """What is measured after training. ``metrics`` names registered evaluators (``bench list``); each
    evaluator's options sit in a block under its own name (``quality: {...}``, ``speed: {...}``), checked
    against its ``Options`` model; any other key is an error. The rest are settings shared by the harness."""

    model_config = ConfigDict(extra="allow")  # the evaluator option blocks; _check_eval rejects anything else
    metrics: list[str] = ["likelihood", "quality", "speed", "stability"]  # evaluators to run (cost always runs)
    n_samples: int = Field(10000, gt=0, le=MAX_SAMPLES)  # generated samples per cell for sample-based metrics (saved)
    likelihood_examples: int | None = Field(None, gt=0)  # test examples for likelihoods; None = the whole test split
    likelihood_batch_size: int = Field(500, gt=0)  # test examples per log_likelihood call
    save_samples: bool = True  # keep the evaluated samples as uint8 .npz in the run directory
    snapshot_every: int | None = Field(None, gt=0)  # cheap quality snapshot every N steps (stability); None = off
    snapshot_samples: int = Field(500, gt=0, le=MAX_SAMPLES)  # samples per snapshot
    explode_factor: float | None = Field(1e4, gt=1)  # a loss this many times its early scale counts as diverged
    split: Literal["test", "validation"] = "test"  # scored against the test split, or against the dataset's
    # validation part of the training split (dataset.validation: fraction/size/seed; the models train on the
    # rest and the test split is not read): to confirm a tuning choice without the test split deciding it

    def options(self, name: str) -> EvaluatorOptions:
        """The validated options of evaluator ``name`` (its block, or its defaults)."""
        return EVALUATORS.get(name).Options.model_validate((self.model_extra or {}).get(name) or {})

    def evaluators(self) -> list[Evaluator]:
        """The evaluators a cell runs, with their options: those named in ``metrics`` plus those that always
        run, in registration order (the order of their metrics in records and reports)."""
        for name in self.metrics:  # resolve evaluators from outside bench (a fresh worker process has not yet)
            EVALUATORS.get(name)
        return [cls(self.options(name)) for name, cls in EVALUATORS.in_order() if cls.always or name in self.metrics]


class DatasetConfig(Checked):
    """``dataset: mnist`` or ``dataset: {name: mnist, <dataset options>}``."""

    model_config = ConfigDict(extra="allow")  # the rest is the dataset's own options, checked against its Options model
    name: str  # a registered dataset (see `bench list`), an import path package.module:Class, or an entry point

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.model_extra or {})


class DebugConfig(_Strict):
    nan_at_step: int | None = Field(None, gt=0)  # replace the loss by NaN at this step: exercises the divergence path


class ModelConfig(_Strict):
    name: Name  # unique within the suite; used in file names
    family: str  # a registered family (see `bench list`), an import path package.module:Class, or an entry point
    options: dict[str, Any] = {}  # the family's options (validated by the family's Options model)
    budget: Budget | None = None  # overrides the suite budget for this model
    batch_size: int | None = Field(None, gt=0)  # overrides the suite batch size
    train: TrainSettings = TrainSettings()  # engine settings for this model; the keys given override the suite's
    seeds: list[int] | None = None  # overrides the suite seeds
    checkpoint: str | None = None  # load this checkpoint instead of training (path relative to the suite file)
    debug: DebugConfig = DebugConfig()  # fault injection for tests
    tune: ModelTuning | None = None  # `bench tune`: this model's changes to its family's search space
    sweep: dict[str, list[Any]] | None = None  # sampling options to evaluate the trained model at, without
    # retraining: {sample_steps: [5, 25], sampler: [ddpm, ddim]} evaluates every point of the product grid


class RayOptions(_Strict):
    """Resources of one cell as a Ray task, and which cluster runs it."""

    num_cpus: float | None = Field(None, gt=0)  # CPUs per cell, also its torch threads; None: the suite's threads, else 1
    num_gpus: float | None = Field(None, ge=0)  # GPUs per cell; None: 1 where the cluster has GPUs and device is not cpu
    address: str | None = None  # a running cluster ("auto", "host:6379", "ray://host:10001"); None: a local instance


class ExecutorConfig(_Strict):
    """``executor: ray`` or ``executor: {name: ray, ray: {num_cpus: 2}}``; ``--executor`` overrides the name."""

    name: Literal["local", "ray"] = "local"  # local: cells one after another in this process; ray: one Ray task per cell
    ray: RayOptions = RayOptions()  # used when name is ray


class SuiteConfig(_Strict):
    name: Name  # names the run directory reports/<name>/<run-id>
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
    threads: int | None = Field(None, gt=0, le=MAX_THREADS)  # torch CPU threads; None = torch's default
    eval: EvalConfig = EvalConfig()  # what is measured after training
    compare: CompareOptions = CompareOptions()  # tolerances for `bench compare`
    executor: ExecutorConfig = ExecutorConfig()  # where cells run (how, not what: --resume may change it)
    models: list[ModelConfig] = Field(min_length=1)  # the families under test
    tuning: TuningConfig | None = None  # `bench tune`: trials per model, sampler, objective, validation split

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

# Limits on what a suite file may be. A real suite is a few KB, ~300 YAML nodes, 5 levels deep; these
# are far above that and low enough that no file can make loading slow or large: the size is checked
# before anything is parsed, depth and node count (aliases expanded) while the document is composed.
MAX_SUITE_BYTES = 256 * 1024  # PyYAML's pure-Python parser reads ~100 KB/s: at most a few seconds
MAX_DEPTH = 50  # nesting levels of lists and mappings
MAX_NODES = 20_000  # YAML nodes with every alias expanded (a "billion laughs" file is refused here)
MAX_SCALAR_DIGITS = 40  # an int/float scalar longer than this is refused before Python converts it
MAX_BUDGET = 1e12  # steps, seconds, epochs or examples: 30,000 years of seconds is a typo, not a budget
_PLAIN = "a suite holds plain values only: strings, numbers, booleans, null, lists and mappings"


class _SuiteLoader(yaml.SafeLoader):
    """PyYAML's safe loader with the limits above, duplicate keys refused and only JSON-like values.

    The pure-Python loader on purpose: its parser is a state machine, so only composition recurses,
    and composition is where depth is counted. The scanner counts depth too: it looks ahead over
    every open ``[``/``{`` and does so in quadratic time. Every refusal is a ``yaml.YAMLError`` with a
    mark, so ``parse_suite`` turns it into the usual ``file:line: ...`` message.
    """

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0
        self._nodes = 0
        self._expanded: dict[int, int] = {}  # id(node) -> its size with aliases expanded

    def fetch_flow_collection_start(self, token_class: type) -> None:
        if self.flow_level >= MAX_DEPTH:
            raise ScannerError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.get_mark())
        super().fetch_flow_collection_start(token_class)

    def add_indent(self, column: int) -> bool:
        if len(self.indents) >= MAX_DEPTH:
            raise ScannerError(None, None, f"nested deeper than {MAX_DEPTH} levels", self.get_mark())
        return super().add_indent(column)

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            target = self.anchors.get(event.anchor)
            if target is not None:
                size = self._expanded.get(id(target))
                if size is None:  # the anchor is still open: the alias sits inside what it names
                    raise ComposerError(None, None, f"alias *{event.anchor} refers to a node that contains it "
                                        "(a recursive alias)", event.start_mark)
                self._count(size, event)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise ComposerError(None, None, f"nested deeper than {MAX_DEPTH} levels", event.start_mark)
        before = self._nodes
        node = super().compose_node(parent, index)
        self._depth -= 1
        self._count(1, event)
        self._expanded[id(node)] = self._nodes - before  # its own node, its children, their aliases
        return node

    def _count(self, n: int, event: yaml.Event) -> None:
        self._nodes += n
        if self._nodes > MAX_NODES:
            raise ComposerError(None, None, f"more than {MAX_NODES:,} values once aliases are expanded "
                                "(an alias bomb?)", event.start_mark)

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        """Refuse a key given twice in one mapping; YAML says keys are unique, PyYAML keeps the last.

        Keys merged in with ``<<: *defaults`` may be overridden, as the merge-key spec intends."""
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, int] = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge" or not isinstance(key_node, yaml.ScalarNode):
                    continue
                key = self.construct_object(key_node)
                if not isinstance(key, str):  # every key of a suite is a name; YAML reads `yes:` or `1:` as another type
                    raise ConstructorError("while constructing a mapping", node.start_mark,
                                           f"key {key_node.value!r} is read as {key!r}, not as a name (a suite's "
                                           "keys are names; quote it if it is one)", key_node.start_mark)
                if key in seen:
                    raise ConstructorError("while constructing a mapping", node.start_mark,
                                           f"key {key!r} appears twice (first on line {seen[key]}); keys must be "
                                           "unique", key_node.start_mark)
                seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        self._short_number(node)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: yaml.ScalarNode) -> float:
        self._short_number(node)
        value = super().construct_yaml_float(node)
        if not math.isfinite(value):
            raise ConstructorError(None, None, f"{node.value!r} is not a finite number; no suite field takes "
                                   "NaN or infinity", node.start_mark)
        return value

    def _short_number(self, node: yaml.ScalarNode) -> None:
        # Python refuses ints over 4,300 digits with a ValueError and sexagesimal "1:2:3:..." is
        # quadratic in its length: refuse long numerals before converting them
        if len(node.value) > MAX_SCALAR_DIGITS:
            raise ConstructorError(None, None, f"number {node.value[:20]}... has more than {MAX_SCALAR_DIGITS} "
                                   "characters", node.start_mark)

    def construct_as_text(self, node: yaml.ScalarNode) -> str:
        return self.construct_scalar(node)  # a date stays the text the user wrote

    def refuse_tag(self, node: yaml.Node) -> None:
        raise ConstructorError(None, None, f"tag {node.tag!r} is not allowed; {_PLAIN}", node.start_mark)


# the registry holds functions, not method names: an override is registered again to take effect
_SuiteLoader.add_constructor("tag:yaml.org,2002:int", _SuiteLoader.construct_yaml_int)
_SuiteLoader.add_constructor("tag:yaml.org,2002:float", _SuiteLoader.construct_yaml_float)
_SuiteLoader.add_constructor("tag:yaml.org,2002:timestamp", _SuiteLoader.construct_as_text)
for _tag in ("binary", "omap", "pairs", "set"):
    _SuiteLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", _SuiteLoader.refuse_tag)
_SuiteLoader.add_constructor(None, _SuiteLoader.refuse_tag)  # !!python/object/apply:..., !custom, ...
# YAML 1.1, which PyYAML implements, reads 1e-3 and 1E5 as text (its floats need a dot); YAML 1.2 and every
# reader of a suite read numbers. Without this, `lr: 1e-3` reached the schema as the text '1e-3'.
_SuiteLoader.add_implicit_resolver("tag:yaml.org,2002:float",
                                   re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
                                   list("-+0123456789"))


def yaml_document(text: str, source: str) -> tuple[Any, yaml.Node | None]:
    """The one YAML document in ``text`` as plain values, and its node tree (for line numbers)."""
    loader = None
    try:
        loader = _SuiteLoader(text)  # the reader checks for control characters right here
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), node
    except yaml.reader.ReaderError as e:  # a control character: no mark, a character position instead
        line = text.count("\n", 0, e.position) + 1
        raise BenchError(f"{source}:{line}: not valid YAML: character {e.character!r} is not allowed in a "
                         "YAML file (control character)") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = mark.line + 1 if mark else 1
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise BenchError(f"{source}:{line}: not valid YAML: {problem}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _line_map(node: yaml.Node, path: tuple = (), out: dict | None = None) -> dict[tuple, int]:
    """Map every key path in a YAML document to its 1-based line, for error messages."""
    out = {} if out is None else out
    out.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        for k, v in node.value:
            if not isinstance(k, yaml.ScalarNode):
                continue  # a list or mapping as a key: construction has refused it already
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
        got = repr(err["input"])
        msg += f" (got {got if len(got) <= 60 else got[:50] + '...'})"
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
    """Parse and validate a suite from YAML text; ``source`` names the file in messages.

    Every problem a file can have (bad YAML, a key given twice, a Python tag, an alias bomb, nesting
    past ``MAX_DEPTH``, a wrong field) is a one-line ``BenchError`` naming the file and line.
    """
    raw, node = yaml_document(text, source)
    if not isinstance(raw, dict):
        raise BenchError(f"{source}:1: a suite is a YAML mapping with keys name, dataset, budget, models, ...")
    lines = _line_map(node) if node is not None else {}
    for key in ("dataset", "executor"):  # the short form names the thing
        if isinstance(raw.get(key), str):
            raw[key] = {"name": raw[key]}
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

    seed_lists = [(("seeds",), cfg.seeds)] + [(("models", i, "seeds"), m.seeds or []) for i, m in enumerate(cfg.models)]
    for loc, seeds in seed_lists:
        problem = seeds_problem(seeds)
        if problem:
            fail((*loc, problem[0]), problem[1])
    found = _non_finite(cfg.model_dump())  # typed fields given as text: 'inf' and 'nan' pass pydantic's float
    if found:
        fail(*found)
    budgets = [(("budget",), cfg.budget)] + [(("budgets", i), b) for i, b in enumerate(cfg.budgets or [])]
    budgets += [(("models", i, "budget"), m.budget) for i, m in enumerate(cfg.models)]
    for loc, b in budgets:
        for unit, value in (b.as_dict() if b is not None else {}).items():
            if value > MAX_BUDGET:
                shown = f"{value:.3g}" if value < 1e300 else "a number over 1e300"  # a float cannot hold a bigger int
                fail((*loc, unit), f"{shown} is more than {MAX_BUDGET:.0e}; no run spends that much")
    if cfg.budget is not None and cfg.budgets is not None:
        fail(("budgets",), "give budget (one for every model) or budgets (a sweep), not both")
    if cfg.budget is None and cfg.budgets is None:
        fail(("budget",), "required field is missing (or give budgets: for a sweep)")
    if cfg.budgets is not None and len({b.label for b in cfg.budgets}) < len(cfg.budgets):
        fail(("budgets",), f"the same budget appears twice: {', '.join(b.label for b in cfg.budgets)}")
    try:  # a registered name, an import path or an installed entry point (bench.registry)
        dentry = DATASETS.get(cfg.dataset.name)
    except BenchError as e:
        fail(("dataset", "name"), str(e))
    try:
        found = _non_finite(dentry.options(**cfg.dataset.options).model_dump(), ("dataset",))
    except ValidationError as e:
        _raise_from(e, source, lines, ("dataset",), ", ".join(dentry.options.model_fields))
    if found:
        fail(*found)
    _check_eval(cfg.eval, source, lines, fail)
    seen: set[str] = set()
    for i, m in enumerate(cfg.models):
        if m.name in seen:
            fail(("models", i, "name"), f"model name {m.name!r} appears twice; names must be unique")
        seen.add(m.name)
        try:
            cls = FAMILIES.get(m.family).cls
        except BenchError as e:
            fail(("models", i, "family"), str(e))
        try:
            found = _non_finite(cls.Options(**m.options).model_dump(), ("models", i, "options"))
        except ValidationError as e:
            _raise_from(e, source, lines, ("models", i, "options"), ", ".join(cls.Options.model_fields))
        if found:
            fail(*found)
        problem = space_problem(cls, m.options, m.tune)
        if problem:
            fail(("models", i, "tune", "space", problem[0]), problem[1])
        if m.sweep is not None:
            problem = sweep_problem(cls, m.options, m.sweep)
            if problem:
                fail(("models", i, "sweep", *problem[0]), problem[1])


def _non_finite(value: Any, loc: tuple = ()) -> tuple[tuple, str] | None:
    """The location of the first NaN or infinite number in validated values, and the message, or None.

    The YAML loader refuses ``.inf`` and ``.nan``; pydantic still turns the text ``'inf'`` or ``'nan'`` into a
    float for a float field, so the validated options are checked too."""
    if isinstance(value, float) and not math.isfinite(value):
        return loc, f"{value} is not a finite number; no suite field takes NaN or infinity"
    items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, (list, tuple)) else ()
    for key, v in items:
        found = _non_finite(v, (*loc, key))
        if found:
            return found
    return None


def _check_eval(ev: EvalConfig, source: str, lines: dict[tuple, int], fail: Callable[[tuple, str], None]) -> None:
    """``eval.metrics`` names registered evaluators; every other unknown key is an evaluator's option block.

    Each block is validated by its evaluator's ``Options`` (with the line of the offending key) and replaced by
    its resolved form, so the run directory's suite.yaml shows every option as it was used.
    """
    resolved: dict[str, str] = {}  # an evaluator's own name -> what eval.metrics calls it (an import path)
    for i, name in enumerate(ev.metrics):
        try:
            resolved[EVALUATORS.get(name).name] = name
        except BenchError as e:
            fail(("eval", "metrics", i), str(e))
    if len(set(ev.metrics)) < len(ev.metrics):
        fail(("eval", "metrics"), f"an evaluator appears twice: {', '.join(ev.metrics)}")
    blocks = ev.model_extra if ev.model_extra is not None else {}
    for key in list(blocks):
        if key in resolved and key not in EVALUATORS:  # the block of an evaluator from outside bench, by its name
            blocks[resolved[key]] = blocks.pop(key)
        elif key not in EVALUATORS and key not in resolved.values():
            accepted = ", ".join([*EvalConfig.model_fields, *EVALUATORS.names()])
            fail(("eval", key), f"unknown key; accepted keys: {accepted}")
    for name, cls in EVALUATORS.in_order():
        if name not in blocks and name not in ev.metrics:
            continue
        try:
            opts = cls.Options.model_validate(blocks.get(name) or {})
        except ValidationError as e:
            _raise_from(e, source, lines, ("eval", name), ", ".join(cls.Options.model_fields))
        found = _non_finite(opts.model_dump(), ("eval", name))
        if found:
            fail(*found)
        if cls.Options.model_fields:
            blocks[name] = opts.model_dump(mode="json")


def load_suite(path: str | Path) -> SuiteConfig:
    """Read and validate a suite file. Errors are ``BenchError`` naming file, line and field.

    A file over ``MAX_SUITE_BYTES`` is refused before it is parsed; it must be UTF-8 (a BOM is fine).
    """
    p = Path(path)
    if not p.is_file():
        what = "not a regular file" if p.exists() else "no such suite file"
        raise BenchError(f"{p}: {what} (the suites that ship with bench are in suites/)")
    return parse_suite(_read_text(p), str(p))


def _read_text(p: Path) -> str:
    try:
        with open(p, "rb") as f:
            data = f.read(MAX_SUITE_BYTES + 1)  # never more, whatever stat() says
    except OSError as e:
        raise BenchError(f"{p}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_SUITE_BYTES:
        raise BenchError(f"{p}: larger than {MAX_SUITE_BYTES // 1024} KiB; a suite is a few KB of YAML (is this the "
                         "right file?)")
    return _decode(data, str(p))


# the sections of a run's suite.yaml that the report and --resume read, and the type bench writes them as
_RUN_CONFIG_SHAPE = {"name": str, "description": str, "dataset": dict, "models": list, "budgets": list}


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The resolved suite a run directory holds (its ``suite.yaml``) as plain values; ``{}`` when it has none.

    Read like a suite file (size, depth and alias limits, plain values only): a run directory may come from
    elsewhere (a CI artefact, a copy). It is not validated against the schema, since a report renders hand-made
    runs too; a file that is not a mapping, or whose sections have another type than bench writes, is a
    one-line ``BenchError``.
    """
    p = Path(run_dir) / "suite.yaml"
    if not p.exists():
        return {}
    fix = "it is the resolved suite bench wrote at the start of the run: restore it (or start a new run)"
    if not p.is_file():
        raise BenchError(f"{p}: not a regular file; {fix}")
    raw, _ = yaml_document(_read_text(p), str(p))
    if not isinstance(raw, dict):
        raise BenchError(f"{p}: not a suite (a YAML mapping); {fix}")
    for key, kind in _RUN_CONFIG_SHAPE.items():
        if raw.get(key) is not None and not isinstance(raw[key], kind):
            raise BenchError(f"{p}: {key}: expected a {kind.__name__}, got {type(raw[key]).__name__}; {fix}")
    return raw


def _decode(data: bytes, source: str) -> str:
    """UTF-8 text (with or without a BOM); anything else is one line saying where it broke."""
    if data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        raise BenchError(f"{source}:1: the file is UTF-16; save it as UTF-8")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise BenchError(f"{source}:{line}: not UTF-8 text (byte 0x{data[e.start]:02x} at offset {e.start}); "
                         "save the file as UTF-8") from None
