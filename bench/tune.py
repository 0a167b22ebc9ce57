"""``bench tune``: the same tuning budget for every family, selected on held-out training data.

Why: a table of families at their default settings ranks the defaults as much as the families.
Lucic et al. (2018, "Are GANs created equal?") showed that with an equal search budget most
differences between GAN variants shrink, and that the fair report is the *distribution* of the
score over the search, not one hand-picked point. The protocol here:

1. every model of the suite gets the same number of trials (``tuning.trials``), each a normal cell
   (``bench.runner.run_cell``) trained under the suite's budget with options drawn from the model's
   search space (``bench.space``) by Optuna's TPE (Bergstra et al. 2011) or random search, seeded;
   trial 0 trains the model exactly as the suite writes it (``include_defaults``);
2. trials train on the training split *less* a held-out validation part (``tuning.validation``:
   a seeded fraction of the training split; its indices are recorded) and are scored on that part,
   on one stated objective, a registered metric whose direction comes from its metadata. The test
   split is never loaded into a trial: the evaluation dataset of a trial *is* the validation part,
   and neither the suite schema nor the CLI has a way to name another split;
3. each finished trial is one JSON file, written atomically; a resumed run skips finished trials
   and proposes the same parameters a run without the interruption would have, because trial k's
   proposal depends only on the seed, k and trials 0..k-1 (the study is rebuilt from the files
   with ``add_trial``; no database);
4. trials go round-robin over the models (trial k of every model before trial k + 1), so a run
   stopped early still gave every family the same number of trials;
5. the run writes a tuning report (``bench.report.tuning``) and the suite again, with each model's
   chosen settings filled in and a comment naming the run (``write_tuned_suite``), and a confirmation
   suite: each winner against the settings it replaces, fresh seeds, ``eval.split: validation``
   (``write_confirm_suite``), to run before shipping a winner.

A run directory, ``reports/<suite>/tuning/<run-id>/``::

    suite.yaml environment.json   the resolved suite; versions, device, git commit, argv
    plan.json                     the protocol: objective and direction, sampler, seed, spaces per model
    validation.json               the held-out indices into the training split, and the split sizes
    trials/<model>__t<k>.json     one per finished trial: parameters, state, objective, the cell record
    logs/ checkpoints/ samples/   per trial cell, as in a run
    tuning.json tuning.csv tuning.html   the report     tuned-suite.yaml   the suite with the winners
    confirm-suite.yaml            winners vs the settings they replace, fresh seeds, on the validation split
"""
from __future__ import annotations

import copy
import json
import math
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

import optuna
import torch
import yaml
from pydantic import TypeAdapter, ValidationError

from bench.metrics import EVALUATORS  # importing it registers every metric: objectives are looked up by name
from bench.config import Budget, ExecutorConfig, ModelConfig, SuiteConfig, parse_suite, yaml_document
from bench.data import Dataset, ValidationOptions, load_dataset, validation_split
from bench.errors import BenchError
from bench.executors import TaskFailure, check_executor, executing, make_executor, output_dir
from bench.families import FAMILIES
from bench.io import atomic_write_json, atomic_write_text, read_json
from bench.results import METRICS, CellRecord
from bench.runner import Cell, fresh_run_dir, resolve_device, run_cell, shared_data, start_run
from bench.space import BATCH_SIZE, Space, TuningConfig, describe_space, model_space, space_problem, space_to_json
from bench.store import RunStore

TrialState = Literal["ok", "diverged", "failed", "no_value"]
Direction = Literal["minimize", "maximize"]

optuna.logging.set_verbosity(optuna.logging.WARNING)  # one line per trial is ours to print


# ------------------------------------------------------------------------------ the validation split


@dataclass
class ValidationSplit:
    """The training split cut in two: what trials train on and what they are scored on."""

    fit: Dataset  # what trials train on: the training split less the held-out part (train_subset applied)
    evaluation: Dataset  # what trials are scored on: its test_x/test_y ARE the held-out part of the training split
    validation_indices: torch.Tensor  # (n_val,) sorted indices into the training split
    fit_indices: torch.Tensor  # (n - n_val,) sorted, the complement

    def describe(self) -> dict[str, Any]:
        return {"n_train": len(self.validation_indices) + len(self.fit_indices),
                "n_validation": len(self.validation_indices), "n_fit": len(self.fit_indices),
                "n_fit_used": len(self.fit.train_x)}


def carve_validation(ds: Dataset, fraction: float, seed: int, train_subset: int | None = None) -> ValidationSplit:
    """Hold out a seeded ``fraction`` of ``ds``'s training split (``bench.data.validation_split``, the
    dataset's own validation split); the test split is dropped, not kept.

    The evaluation dataset keeps the fit part as its training split too (class frequencies, and the
    domain feature net, which is then trained on the fit part and checked on the held-out part: no
    number a trial is scored with has seen the test split).
    """
    try:
        evaluation = validation_split(ds, ValidationOptions(fraction=fraction, seed=seed))
    except BenchError:
        raise BenchError(f"tuning.validation.fraction: {fraction} of {len(ds.train_x)} training examples leaves an "
                         "empty part") from None
    evaluation.meta = {**evaluation.meta, "evaluation_split": "validation",
                       "validation": {"fraction": fraction, "seed": seed}}
    fit = evaluation
    if train_subset:
        fit = replace(evaluation, train_x=evaluation.train_x[:train_subset], train_y=evaluation.train_y[:train_subset])
    return ValidationSplit(fit, evaluation, evaluation.indices["test"], evaluation.indices["train"])


# ------------------------------------------------------------------------------ trials and their files


@dataclass
class Trial:
    """One finished trial: what was tried and what it scored on the validation split."""

    model: str
    family: str
    number: int  # 0-based; trial 0 is the suite's own settings when include_defaults
    source: Literal["defaults", "sampler"]
    params: dict[str, Any]  # the searched values (defaults: those the space can represent)
    state: TrialState
    objective: str
    value: float | None  # the objective on the validation split; None unless state == "ok"
    note: str = ""  # why a trial has no value
    options: dict[str, Any] = field(default_factory=dict)  # the options the cell was built with, as given
    batch_size: int | None = None
    record: dict[str, Any] | None = None  # the cell record (metrics on the validation split)

    @property
    def id(self) -> str:
        return trial_id(self.model, self.number)


_TRIAL = TypeAdapter(Trial)


def trial_id(model: str, number: int) -> str:
    return f"{model}__t{number:03d}"


class TrialStore:
    """``trials/<model>__t<k>.json`` in a tuning run directory: one atomic file per finished trial."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir) / "trials"

    def path(self, model: str, number: int) -> Path:
        return self.dir / f"{trial_id(model, number)}.json"

    def has(self, model: str, number: int) -> bool:
        return self.path(model, number).is_file()

    def write(self, t: Trial) -> None:
        atomic_write_json(self.path(t.model, t.number), asdict(t))

    def load(self, model: str) -> list[Trial]:
        out = []
        for p in sorted(self.dir.glob(f"{model}__t[0-9][0-9][0-9].json")):
            try:
                out.append(_TRIAL.validate_json(p.read_bytes(), strict=True))  # the types too: a trial is read back
            except ValidationError as e:
                err = e.errors()[0]
                where = ".".join(str(x) for x in err["loc"]) or "top level"
                raise BenchError(f"{p}: not a trial record ({where}: {err['msg']}); delete it and rerun with "
                                 "--resume") from None
            except OSError as e:
                raise BenchError(f"{p}: cannot read it ({e.strerror or e}); remove it, then --resume") from None
        return out


# ------------------------------------------------------------------------------ the search


@dataclass
class Study:
    """One model's search: its space, its suite settings as parameters, and how a trial is run."""

    name: str
    space: Space
    defaults: dict[str, Any]  # trial 0's parameters: the suite's settings that the space can represent
    run: Callable[[int, dict[str, Any], Literal["defaults", "sampler"]], Trial]


def trial_seed(seed: int, model: str, number: int) -> int:
    """The sampler seed of one proposal: a fresh sampler per trial makes trial k depend only on (seed, k, history)."""
    return (seed * 1_000_003 + zlib.crc32(model.encode()) * 1009 + number) % 2**31


def propose(space: Space, history: list[Trial], tuning: TuningConfig, direction: Direction, model: str,
            number: int) -> dict[str, Any]:
    """Parameters for trial ``number``, from an in-memory study rebuilt from the finished ``history``."""
    if not space:
        return {}
    seed = trial_seed(tuning.seed, model, number)
    sampler: optuna.samplers.BaseSampler = (
        optuna.samplers.TPESampler(seed=seed, n_startup_trials=tuning.startup_trials)
        if tuning.sampler == "tpe" else optuna.samplers.RandomSampler(seed=seed))
    study = optuna.create_study(direction=direction, sampler=sampler)
    for t in history:
        params = {k: v for k, v in t.params.items() if k in space and space[k].contains(v)}
        ok = t.state == "ok" and t.value is not None
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: space[k].distribution() for k in params},
            value=t.value if ok else None,
            state=optuna.trial.TrialState.COMPLETE if ok else optuna.trial.TrialState.FAIL))
    trial = study.ask({k: p.distribution() for k, p in space.items()})
    return {k: space[k].tidy(v) for k, v in trial.params.items()}


Job = tuple[Study, int, dict[str, Any], Literal["defaults", "sampler"]]  # a study's trial k with its parameters
RoundRunner = Callable[[list[Job], Callable[[Trial], None]], None]


def one_by_one(jobs: list[Job], done: Callable[[Trial], None]) -> None:
    """Run a round's trials here, in order, each handed to ``done`` as it finishes."""
    for s, k, params, source in jobs:
        done(s.run(k, params, source))


def search(studies: list[Study], n_trials: int, tuning: TuningConfig, direction: Direction, store: TrialStore,
           on_trial: Callable[[Trial, int], None] | None = None, run_round: RoundRunner = one_by_one) -> None:
    """Run every missing trial, round-robin over the studies; finished trials on disk are skipped.

    Round k holds trial k of every study. A proposal depends only on its own study's trials before k, so
    the trials of one round are independent of each other: ``run_round`` may run them at once (an executor)
    and in any order, and the proposals are those of a run that ran them one by one.
    """
    for k in range(n_trials):
        jobs: list[Job] = []
        for s in studies:
            if store.has(s.name, k) or (k > 0 and not s.space):  # nothing to search: the suite's settings only
                continue
            if k == 0 and tuning.include_defaults:
                jobs.append((s, k, dict(s.defaults), "defaults"))
            else:
                history = [t for t in store.load(s.name) if t.number < k]
                jobs.append((s, k, propose(s.space, history, tuning, direction, s.name, k), "sampler"))

        def done(t: Trial) -> None:
            store.write(t)
            if on_trial:
                on_trial(t, n_trials)

        if jobs:
            run_round(jobs, done)


def best_trial(trials: list[Trial], direction: Direction) -> Trial | None:
    """The best trial with a value; ties go to the earlier trial."""
    done = [t for t in trials if t.state == "ok" and t.value is not None]
    if not done:
        return None
    sign = 1 if direction == "minimize" else -1
    return min(done, key=lambda t: (sign * t.value, t.number))


# ------------------------------------------------------------------------------ the plan


@dataclass
class ModelPlan:
    model: ModelConfig
    space: Space
    budget: Budget
    batch_size: int  # the model's own batch size (trial 0, and every trial when not searched)
    defaults: dict[str, Any]


def objective_direction(name: str) -> Direction:
    """The direction of a registered metric, from its metadata; informational metrics cannot be objectives."""
    if name not in METRICS:
        raise BenchError(f"objective: unknown metric {name!r}; `bench list` shows every metric with its direction")
    spec = METRICS.get(name)
    if spec.higher_is_better is None:
        choices = ", ".join(n for n, s in METRICS.items() if s.higher_is_better is not None and s.group in EVALUATORS)
        raise BenchError(f"objective: {name!r} is informational (no direction); choose one of: {choices}")
    return "maximize" if spec.higher_is_better else "minimize"


def resolve_tuning(cfg: SuiteConfig, trials: int | None = None, sampler: str | None = None,
                   objective: str | None = None) -> TuningConfig:
    """The suite's ``tuning:`` block (or the defaults) with the command line's overrides."""
    t = cfg.tuning or TuningConfig()
    update = {k: v for k, v in {"trials": trials, "sampler": sampler, "objective": objective}.items() if v is not None}
    return TuningConfig.model_validate({**t.model_dump(), **update})


def plan_models(cfg: SuiteConfig, only: list[str] | None = None) -> list[ModelPlan]:
    """Every model `bench tune` searches, with its resolved space; ``only`` picks some by name."""
    if cfg.budgets is not None:
        raise BenchError("tuning needs one budget per model: tune a suite with budget:, not a budgets: sweep")
    names = [m.name for m in cfg.models]
    if only and set(only) - set(names):
        raise BenchError(f"--only: no model named {', '.join(sorted(set(only) - set(names)))}; "
                         f"the suite has: {', '.join(names)}")
    plans = []
    for m in cfg.models:
        if (only and m.name not in only) or m.checkpoint or (m.tune is not None and not m.tune.enabled):
            continue
        cls = FAMILIES.get(m.family).cls
        problem = space_problem(cls, m.options, m.tune, whole=True)
        if problem:
            raise BenchError(f"models[{m.name}] search space: {problem[0]}: {problem[1]} "
                             f"(declared by family {m.family!r} or in the model's tune.space)")
        space = model_space(cls, m.tune)
        resolved = {**cls.Options(**m.options).model_dump(), BATCH_SIZE: cfg.batch_size_for(m)}
        defaults = {k: resolved[k] for k, p in space.items() if p.contains(resolved.get(k))}
        plans.append(ModelPlan(m, space, cfg.budget_for(m), cfg.batch_size_for(m), defaults))
    if not plans:
        raise BenchError("no model to tune (models that load a checkpoint or set tune.enabled: false are left out)")
    return plans


def trial_suite(cfg: SuiteConfig, tuning: TuningConfig) -> SuiteConfig:
    """The suite as trials see it: only the metric group the objective needs is computed."""
    spec = METRICS.get(tuning.objective)
    ev = cfg.eval
    spaces = getattr(ev.options("quality"), "feature_spaces", [])
    for space in ("domain", "inception"):
        if tuning.objective.endswith(f"_{space}") and space not in spaces:
            raise BenchError(f"objective {tuning.objective!r} needs the {space} feature space: add it to "
                             f"eval.quality.feature_spaces (now {spaces})")
    # the evaluator that computes the objective; one that always runs (cost) needs no naming
    groups = [spec.group] if spec.group in EVALUATORS and not EVALUATORS.get(spec.group).always else []
    update: dict[str, Any] = {"metrics": groups, "n_samples": tuning.n_samples or ev.n_samples}
    if spec.group != "stability":
        update["snapshot_every"] = None  # snapshots are outside the budget: dropping them changes no training
    return cfg.model_copy(update={"eval": ev.model_copy(update=update)})


def describe_plan(cfg: SuiteConfig, tuning: TuningConfig, plans: list[ModelPlan], run_dir: Path | str,
                  split: dict[str, Any] | None = None) -> str:
    direction = objective_direction(tuning.objective)
    lines = [f"tune {cfg.name}: {len(plans)} models x {tuning.trials} trials ({tuning.sampler}, seed {tuning.seed}), "
             f"output -> {run_dir}",
             f"objective: {tuning.objective} ({'lower' if direction == 'minimize' else 'higher'} is better) on a "
             f"{tuning.validation.fraction:g} validation split of the training data (seed {tuning.validation.seed})"
             + (f": {split['n_validation']} held out, {split['n_fit_used']} to train on" if split else "")
             + "; the test split is not used"]
    seconds = 0.0
    for p in plans:
        b = ", ".join(f"{k}={v:g}" for k, v in p.budget.as_dict().items())
        seconds += (p.budget.seconds or 0) * tuning.trials
        lines.append(f"  {p.model.name:<20} {p.model.family:<14} {b}: {describe_space(p.space)}")
    if seconds:
        lines.append(f"training time alone: {seconds / 60:.0f} min (plus evaluation per trial)")
    return "\n".join(lines)


def plan_json(cfg: SuiteConfig, tuning: TuningConfig, plans: list[ModelPlan]) -> dict[str, Any]:
    """What a resumed run must agree with (everything but the trial count, which may grow)."""
    return {
        "suite": json.loads(cfg.model_dump_json()),
        "tuning": tuning.model_dump(exclude={"trials"}),
        "direction": objective_direction(tuning.objective),
        "models": {p.model.name: {"family": p.model.family, "space": space_to_json(p.space), "defaults": p.defaults,
                                  "budget": p.budget.as_dict(), "batch_size": p.batch_size} for p in plans},
    }


# ------------------------------------------------------------------------------ one trial = one cell


@dataclass
class TrialContext:
    """What every trial cell shares."""

    cfg: SuiteConfig  # the suite as trials see it (trial_suite)
    split: ValidationSplit
    store: RunStore
    device: torch.device
    env: dict[str, Any]
    suite_dir: Path
    objective: str
    seed: int
    progress: bool


def run_trial(p: ModelPlan, number: int, params: dict[str, Any], source: Literal["defaults", "sampler"],
              ctx: TrialContext) -> Trial:
    """Train and score one trial as a normal cell (``run_cell``) on the fit / validation split."""
    m = p.model
    options = dict(m.options) if source == "defaults" else {**m.options, **{k: v for k, v in params.items() if k != BATCH_SIZE}}
    batch_size = p.batch_size if source == "defaults" else params.get(BATCH_SIZE, p.batch_size)
    base = dict(model=m.name, family=m.family, number=number, source=source, params=params, objective=ctx.objective,
                options=options, batch_size=batch_size)
    cls = FAMILIES.get(m.family).cls
    try:
        cls.Options(**options)
    except ValidationError as e:  # a combination the family rejects costs no training
        return Trial(**base, state="failed", value=None, note=f"invalid options: {e.errors()[0]['msg']}")
    model = m.model_copy(update={"name": f"{m.name}.t{number:03d}", "options": options, "batch_size": batch_size,
                                 "seeds": [ctx.seed], "tune": None})
    cell = Cell(model, ctx.seed, p.budget, batch_size)
    rec = run_cell(cell, ctx.cfg, ctx.split.fit, ctx.split.evaluation, ctx.store, ctx.store.dir.name, ctx.device,
                   ctx.env, ctx.suite_dir, ctx.progress)
    _label_validation(rec)
    value = rec.value(ctx.objective) if rec.status == "ok" else None
    if rec.status != "ok":
        state, note = rec.status, rec.error
    elif value is None or not math.isfinite(value):
        state, note, value = "no_value", f"the cell gave no {ctx.objective}", None
    else:
        state, note = "ok", ""
    return Trial(**base, state=state, value=value, note=note, record=rec.to_dict())


def _label_validation(rec: CellRecord) -> None:
    """Evaluators name the split they read 'test'; in a trial that split is the validation part."""
    for m in rec.metrics:
        for key in ("split", "reference_split"):
            if m.params.get(key) == "test":
                m.params[key] = "validation"


@dataclass(frozen=True)
class TrialSpec:
    """One trial as a unit of work for an executor (picklable; the datasets travel once, in ``Shared``)."""

    plan: ModelPlan
    number: int
    params: dict[str, Any]
    source: Literal["defaults", "sampler"]
    cfg: SuiteConfig  # the suite as trials see it
    run_dir: Path  # absolute: the tuning run's directory (artefacts go there where the worker can see it)
    device: str
    suite_dir: Path
    objective: str
    seed: int
    progress: bool = False


def execute_trial(spec: TrialSpec, data: tuple[Dataset, Dataset]) -> Trial:
    """Run one trial where an executor placed it: ``data`` is (fit split, validation split as the test split).

    On a node that does not see the run directory the trial's artefacts (checkpoint, samples) go to a
    scratch directory and are dropped: a trial's result is its JSON, which the driver writes.
    """
    import bench.metrics  # noqa: F401  (registers every metric name: a fresh worker process has none)

    fit, evaluation = data
    none = torch.empty(0, dtype=torch.long)
    with output_dir(spec.run_dir, "plan.json", "bench-trial-") as (out_dir, _):
        ctx = TrialContext(spec.cfg, ValidationSplit(fit, evaluation, none, none), RunStore(out_dir),
                           torch.device(spec.device), {"device": spec.device}, spec.suite_dir, spec.objective,
                           spec.seed, spec.progress)
        return run_trial(spec.plan, spec.number, spec.params, spec.source, ctx)


def _lost_trial(spec: TrialSpec, failure: TaskFailure) -> Trial:
    """The trial of a task that raised or died (out of memory, worker lost): failed, with the reason."""
    return Trial(spec.plan.model.name, spec.plan.model.family, spec.number, spec.source, spec.params, "failed",
                 spec.objective, None, note=failure.message)


# ------------------------------------------------------------------------------ the run


def tune_suite(
    cfg: SuiteConfig,
    suite_path: Path,
    *,
    trials: int | None = None,
    sampler: str | None = None,
    objective: str | None = None,
    only: list[str] | None = None,
    out: Path | None = None,
    reports_root: Path = Path("reports"),
    resume: bool = False,
    dry_run: bool = False,
    quiet: bool = False,
    executor: ExecutorConfig | None = None,
) -> Path | None:
    """Tune every model of a suite with the same number of trials; returns the run directory (None: dry run).

    Trials run through the suite's executor (``executor`` overrides it): locally one after another, or on
    Ray one task per trial, the trials of one round (trial k of every model) at once.
    """
    # 1. the protocol: objective and its direction, the spaces, what trials compute
    tuning = resolve_tuning(cfg, trials, sampler, objective)
    direction = objective_direction(tuning.objective)
    plans = plan_models(cfg, only)
    tcfg = trial_suite(cfg, tuning)
    device = resolve_device(cfg.device)
    executor = executor or cfg.executor
    check_executor(executor)  # a missing optional install fails before any directory is made

    # 2. where the output goes: a fresh directory, or the one being resumed (which must share the protocol)
    base = reports_root / cfg.name
    all_plans = plan_models(cfg)
    plan = plan_json(cfg, tuning, all_plans)
    if resume:
        run_dir = out or _latest(base / "tuning")
        if run_dir is None or not (run_dir / "plan.json").is_file():
            raise BenchError(f"--resume: no earlier tuning run of suite {cfg.name!r} under {base / 'tuning'}; "
                             f"run without --resume")
        before = read_json(run_dir / "plan.json", "it is the tuning run's protocol; restore it, or run without --resume")
        if before != json.loads(json.dumps(plan)):
            raise BenchError(f"--resume: {run_dir} was tuned with a different suite or protocol (only --trials may "
                             f"change); start a new run instead")
    elif dry_run:
        run_dir = out or base / "tuning" / "<new run id>"
    else:
        run_dir = fresh_run_dir(out, base, "tuning")
    if dry_run:
        print(describe_plan(cfg, tuning, plans, run_dir))
        return None

    # 3. the run directory tells its own story; the validation split is carved and recorded
    env = start_run(cfg, run_dir, device, suite_path, fresh=not resume)
    full = load_dataset(cfg.dataset.name, {**cfg.dataset.options, "train_subset": None})
    split = carve_validation(full, tuning.validation.fraction, tuning.validation.seed,
                             cfg.dataset.options.get("train_subset"))
    if not resume:
        atomic_write_json(run_dir / "plan.json", plan)
        atomic_write_json(run_dir / "validation.json", {
            **tuning.validation.model_dump(), **split.describe(), "dataset": cfg.dataset.name,
            "validation_indices": split.validation_indices.tolist()})
    if not quiet:
        print(describe_plan(cfg, tuning, plans, run_dir, split.describe()), flush=True)

    # 4. the trials, round-robin over the models; finished ones are on disk and skipped
    store = TrialStore(run_dir)
    ctx = TrialContext(tcfg, split, RunStore(run_dir), device, env, suite_path.parent, tuning.objective,
                       tuning.seed, progress=not quiet)
    studies = [Study(p.model.name, p.space, p.defaults,
                     lambda k, params, source, p=p: run_trial(p, k, params, source, ctx)) for p in plans]
    done = sum(store.has(p.model.name, k) for p in plans for k in range(tuning.trials))
    if resume and not quiet:
        print(f"resuming: {done} of {len(plans) * tuning.trials} trials already finished", flush=True)
    t_start = clock = time.perf_counter()

    def report(t: Trial, n: int) -> None:
        nonlocal clock
        if quiet:
            return
        best = best_trial(store.load(t.model), direction)
        tried = ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in t.params.items())
        score = f"{t.objective}={t.value:.4g}" if t.value is not None else f"{t.state} ({t.note})"
        best_s = f"; best {best.value:.4g} (trial {best.number})" if best else ""
        print(f"[{t.model} {t.number + 1}/{n}] {tried or 'as the suite says'}"
              f"{' (suite settings)' if t.source == 'defaults' else ''}: {score}{best_s}; "
              f"{time.perf_counter() - clock:.0f}s", flush=True)
        clock = time.perf_counter()

    pool = make_executor(executor, suite_threads=cfg.threads, device=cfg.device, resolved_device=device.type,
                         quiet=quiet)
    by_plan = {p.model.name: p for p in plans}

    def run_round(jobs: list[Job], done: Callable[[Trial], None]) -> None:
        specs = [TrialSpec(by_plan[s.name], k, params, source, tcfg, run_dir.resolve(), pool.device,
                           suite_path.parent.resolve(), tuning.objective, tuning.seed,
                           progress=not quiet and pool.slots == 1) for s, k, params, source in jobs]
        pool.run_all(execute_trial, specs,
                     lambda spec, out: done(out if isinstance(out, Trial) else _lost_trial(spec, out)),
                     shared, label=lambda spec: f"trial {spec.plan.model.name} {spec.number}")

    with executing(pool, run_dir, "trials", quiet):
        shared = shared_data(tcfg, split.fit, split.evaluation, device) if done < len(plans) * tuning.trials else None
        search(studies, tuning.trials, tuning, direction, store, report, run_round)
    if not quiet:
        print(f"all trials done in {time.perf_counter() - t_start:.0f}s", flush=True)

    # 5. the report, and the suite with each model's winner filled in
    from bench.report.tuning import write_tuning_report

    results = {p.model.name: store.load(p.model.name) for p in all_plans}
    write_tuning_report(run_dir, plan, results, tuning.trials)
    write_tuned_suite(suite_path, run_dir / "tuned-suite.yaml", run_dir, plan, results, tuning.trials)
    write_confirm_suite(suite_path, run_dir / "confirm-suite.yaml", run_dir, plan, results)
    return run_dir


def _latest(parent: Path) -> Path | None:
    runs = sorted(p for p in parent.glob("*") if (p / "plan.json").is_file()) if parent.is_dir() else []
    return runs[-1] if runs else None


# ------------------------------------------------------------------------------ the tuned suite


def chosen_settings(t: Trial, p: dict[str, Any]) -> dict[str, Any]:
    """The options and batch size to write for a model whose best trial is ``t``."""
    out: dict[str, Any] = {}
    opts = {k: v for k, v in t.params.items() if k != BATCH_SIZE}
    if opts:
        out["options"] = opts
    if BATCH_SIZE in t.params and t.params[BATCH_SIZE] != p["batch_size"]:
        out["batch_size"] = t.params[BATCH_SIZE]
    return out


def entry_winner(entry: dict[str, Any], results: dict[str, list[Trial]], plan: dict[str, Any]
                 ) -> tuple[Trial, dict[str, Any], dict[str, Any], int | None] | None:
    """For a suite's model entry (plain values): its best trial, the settings to write (``chosen_settings``), and
    the options and batch size the entry has with them filled in; None for a model without a scored trial."""
    best = best_trial(results.get(entry["name"]) or [], plan["direction"])
    if best is None:
        return None
    chosen = chosen_settings(best, plan["models"][entry["name"]])
    options = {**(entry.get("options") or {}), **chosen.get("options", {})}
    return best, chosen, options, chosen.get("batch_size", entry.get("batch_size"))


def write_tuned_suite(suite_path: Path, dest: Path, run_dir: Path, plan: dict[str, Any],
                      results: dict[str, list[Trial]], n_trials: int) -> Path:
    """The suite file again, each tuned model's chosen settings filled in, comments kept, the run named.

    PyYAML drops comments, so the file is edited as text at the positions its parser reports: a tuned
    model's ``options:`` value is rewritten (or inserted after ``family:``) as a flow mapping, likewise
    ``batch_size:``; the entry's first line gets a comment with the winning trial, and a comment heads
    the file. The result is parsed back and checked against what was meant.
    """
    text = original = suite_path.read_text()
    raw = yaml_document(text, str(suite_path))[0]  # the reader parse_suite uses: 1e-3 is a number there
    root = yaml.compose(text)
    items = next(v for k, v in root.value if k.value == "models").value  # the models: sequence's nodes
    direction = plan["direction"]
    edits: list[tuple[int, int, str]] = []  # (start, end, replacement) in the original text
    expected: dict[str, tuple[dict[str, Any], int | None]] = {}
    for node, entry in zip(items, raw["models"]):
        won = entry_winner(entry, results, plan)
        if won is None:
            continue
        best, chosen, options, batch_size = won
        trials = results[entry["name"]]
        expected[entry["name"]] = (options, batch_size)
        keys = {k.value: (k, v) for k, v in node.value}
        sep = ", " if node.flow_style else "\n" + " " * node.value[0][0].start_mark.column
        # new keys go right after family's value, or after the last key's where family comes from a merge key
        after = _trimmed_end(text, keys["family"][1] if "family" in keys else node.value[-1][1])
        inserted = ""
        for key, value in (("options", options), ("batch_size", batch_size)):
            if key not in chosen:
                continue
            if key in keys:
                k_node, v_node = keys[key]
                edits.append((k_node.end_mark.index, _trimmed_end(text, v_node), f": {_flow(value)}"))
            else:
                inserted += f"{sep}{key}: {_flow(value)}"
        if inserted:
            edits.append((after, after, inserted))
        line_start, eol = node.start_mark.index, _line_end(text, node.start_mark.index)
        for start, end, _ in sorted(e for e in edits if node.start_mark.index <= e[0]):
            if start < eol < end:  # the first line ends inside a rewritten value (an entry over several
                line_start, eol = end, _line_end(text, end)  # lines): the comment goes after that value
        if "#" not in text[line_start:eol]:
            n_ok = sum(t.state == "ok" for t in trials)
            edits.append((eol, eol, f"  # tuned: trial {best.number} of {len(trials)} ({n_ok} scored), "
                                    f"{best.objective} {best.value:.4g} on validation"))
    for start, end, body in sorted(edits, key=lambda e: (e[0], e[1]), reverse=True):
        text = text[:start] + body + text[end:]
    tuning = plan["tuning"]
    header = (f"# Tuned by `bench tune` (run {run_dir}): {n_trials} trials per model, {tuning['sampler']} seed "
              f"{tuning['seed']}, objective {tuning['objective']} ({'lower' if direction == 'minimize' else 'higher'} "
              f"is better)\n# on a {tuning['validation']['fraction']:g} validation split of the training data. Each "
              f"tuned model's chosen settings are filled in below;\n# the report is {run_dir / 'tuning.html'}. "
              f"Relative paths are as in {suite_path}: keep this file beside it.\n")
    text = header + text
    # Read back: a tuned model has its winner, every other is as it was. Text shared through a YAML anchor and
    # alias defeats editing by position (an edited value drops its anchor, or changes the entries aliasing it)
    fix = (f"the tuning itself is in {run_dir / 'tuning.json'}; fill in the chosen settings by hand: "
           + "; ".join(f"{n}: options {o}, batch_size {b}" for n, (o, b) in expected.items()))
    before = {m.name: (m.options, m.batch_size) for m in parse_suite(original, str(suite_path)).models}
    try:
        check = {m.name: (m.options, m.batch_size) for m in parse_suite(text, str(dest)).models}
    except BenchError as e:
        raise BenchError(f"cannot write {dest}: the edited suite does not read back ({e}; a YAML alias of an "
                         f"edited value?); {fix}") from None
    for name, settings in check.items():
        if settings != expected.get(name, before.get(name)):
            raise BenchError(f"cannot write {dest}: editing the suite's text would also change {name}'s settings "
                             f"(entries that share text through a YAML alias); {fix}")
    atomic_write_text(dest, text)
    return dest


CONFIRM_SUFFIX = "-before"  # the confirmation suite's name for a model's settings before tuning


def write_confirm_suite(suite_path: Path, dest: Path, run_dir: Path, plan: dict[str, Any],
                        results: dict[str, list[Trial]]) -> Path | None:
    """A suite that checks each winner against the settings it replaces without the test split deciding.

    Every model whose winner is not its own suite settings appears twice, with the winner under its name and
    as the suite had it under ``<name>-before``, trained on fresh seeds (the tuning seed + 1 and + 2: the
    trials trained on the tuning seed) and scored with ``eval.split: validation`` on the part the tuning held
    out (``dataset.validation`` set to ``tuning.validation``); the test split is not read. A dozen trials can
    crown a lucky one; two fresh seeds on the same held-out images say whether it stays ahead. None (nothing
    written) when no winner differs from the suite, or when the result would not be a valid suite (a name
    too long for the suffix).
    """
    raw = yaml_document(suite_path.read_text(), str(suite_path))[0]
    tuning = plan["tuning"]
    models: list[dict[str, Any]] = []
    for entry in raw["models"]:
        won = entry_winner(entry, results, plan)
        if won is None or won[0].source == "defaults":
            continue
        _, _, options, batch_size = won
        if (options, batch_size) == (entry.get("options") or {}, entry.get("batch_size")):
            continue  # the suite already holds the winner (it was filled in after the tuning): nothing to confirm
        winner = {**entry, "options": options, **({"batch_size": batch_size} if batch_size is not None else {})}
        # deep copies: entries sharing a dict would be dumped as YAML anchors and aliases
        models += [copy.deepcopy(winner), copy.deepcopy({**entry, "name": entry["name"] + CONFIRM_SUFFIX})]
    if not models:
        return None
    seed = int(tuning["seed"])
    dataset = raw["dataset"] if isinstance(raw["dataset"], dict) else {"name": raw["dataset"]}
    confirm = {**raw, "name": f"{raw['name']}-confirm",
               "description": f"tuning winners of {run_dir.name} against the settings they replace, on the validation split",
               "seeds": [seed + 1, seed + 2] if seed + 2 < 2**63 else [seed - 1, seed - 2],
               "dataset": {**dataset, "validation": {"fraction": tuning["validation"]["fraction"],
                                                     "seed": tuning["validation"]["seed"]}},
               "eval": {**(raw.get("eval") or {}), "split": "validation"}, "models": models}
    text = (f"# Written by `bench tune` (run {run_dir}): each tuned model's winner (its own name) against the\n"
            f"# settings it replaces (<name>{CONFIRM_SUFFIX}), fresh seeds, scored on the part of the training split the\n"
            f"# tuning held out; the test split is not read. Relative paths are as in {suite_path}.\n"
            + yaml.safe_dump(confirm, sort_keys=False, width=110, default_flow_style=None))
    try:
        parse_suite(text, str(dest))
    except BenchError:
        return None
    atomic_write_text(dest, text)
    return dest


def _line_end(text: str, index: int) -> int:
    eol = text.find("\n", index)
    return len(text) if eol < 0 else eol


def _trimmed_end(text: str, node: yaml.Node) -> int:
    """Where a node's text ends, without the newline and indentation a block node's end mark includes."""
    end = node.end_mark.index
    while end > node.start_mark.index and text[end - 1] in " \n":
        end -= 1
    return end


def _flow(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip().removesuffix("...").strip()
