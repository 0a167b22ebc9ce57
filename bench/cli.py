"""Command line: ``python -m bench {run, tune, validate, list, report, compare, evaluate}``.

Exit status: 0 everything ran (a diverged cell is a result, not a failure); 1 a regression
against the baseline, or a cell that failed (raised, ran out of memory, or ran past
``--cell-time-limit``), listed on stderr; 2 a user error (``BenchError``: one line on stderr,
no traceback); 130 interrupted. Nothing else is caught, so a bug still shows its traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from bench.errors import BenchError
from bench.registry import Registry
from bench.seeds import seeds_problem

if TYPE_CHECKING:  # the CLI imports the schema only for commands that read a suite (`bench list` stays fast)
    from bench.config import ExecutorConfig


def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(s) for s in text.replace(",", " ").split()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--seeds takes integers like '0 1 2' or '0,1,2', got {text!r}") from None
    problem = seeds_problem(seeds) if seeds else (0, "give at least one seed, like '0 1 2'")
    if problem:
        raise argparse.ArgumentTypeError(problem[1])
    return seeds


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, like every other error of bench (the usage is one --help away)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="bench", description="Benchmark generative model families side by side.")
    sub = p.add_subparsers(dest="cmd", required=True)

    r = sub.add_parser("run", help="train and evaluate every model x seed of a suite, then write the report")
    r.add_argument("suite", type=Path)
    r.add_argument("--out", type=Path, help="run directory (default: reports/<suite>/<timestamp>)")
    r.add_argument("--resume", action="store_true", help="skip finished cells of the latest (or --out) run")
    r.add_argument("--dry-run", action="store_true", help="print the plan and exit")
    r.add_argument("--only", action="append", metavar="MODEL", help="run only this model (repeatable)")
    r.add_argument("--seeds", type=_seeds, help="override the suite's seeds, e.g. '0 1 2'")
    r.add_argument("--quiet", action="store_true", help="no progress output (CI)")
    r.add_argument("--cell-time-limit", type=float, metavar="SECONDS",
                   help="record a cell that runs longer than this (training + evaluation) as failed and go on")
    r.add_argument("--baseline", type=Path, help="after the run, compare against this run/results.json (default: the suite's "
                   "compare.baseline); exit 1 on a regression")
    r.add_argument("--executor", choices=["local", "ray"], help="where cells run (default: the suite's executor:, "
                   "else local): local = one after another in this process, ray = one Ray task per cell")
    r.add_argument("--address", help="with --executor ray: a running Ray cluster (auto, host:6379, ray://host:10001); "
                   "default: a local Ray instance on this machine")
    r.add_argument("--track", choices=["mlflow"], help="also log every cell (config, metrics, artefacts) to MLflow")
    r.add_argument("--tracking-uri", help="with --track mlflow: where (default: $MLFLOW_TRACKING_URI, else a local "
                   "store in ./mlruns)")
    r.add_argument("--reports-root", type=Path, default=Path("reports"), help=argparse.SUPPRESS)

    t = sub.add_parser("tune", help="search each model's options with the same number of trials, scored on a "
                       "validation split of the training data; writes a tuning report and the tuned suite")
    t.add_argument("suite", type=Path)
    t.add_argument("--trials", type=int, metavar="N", help="trials per model, the same for every model "
                   "(default: the suite's tuning.trials, else 12)")
    t.add_argument("--sampler", choices=["tpe", "random"], help="Optuna sampler (default: tuning.sampler, else tpe)")
    t.add_argument("--objective", metavar="METRIC", help="a registered metric with a direction, computed on the "
                   "validation split (default: tuning.objective, else fid_domain)")
    t.add_argument("--only", action="append", metavar="MODEL", help="tune only this model (repeatable)")
    t.add_argument("--out", type=Path, help="tuning run directory (default: reports/<suite>/tuning/<timestamp>)")
    t.add_argument("--resume", action="store_true", help="skip finished trials of the latest (or --out) tuning run")
    t.add_argument("--dry-run", action="store_true", help="print the plan (spaces, objective, split) and exit")
    t.add_argument("--quiet", action="store_true", help="no progress output")
    t.add_argument("--executor", choices=["local", "ray"], help="where trials run (default: the suite's executor:, "
                   "else local): ray = one Ray task per trial, a round (trial k of every model) at once")
    t.add_argument("--address", help="with --executor ray: a running Ray cluster (auto, host:6379, ray://host:10001)")
    t.add_argument("--reports-root", type=Path, default=Path("reports"), help=argparse.SUPPRESS)

    v = sub.add_parser("validate", help="check a suite file and print its resolved plan")
    v.add_argument("suite", type=Path)

    sub.add_parser("list", help="registered families, datasets and metrics")

    rp = sub.add_parser("report", help="re-render results.csv/json and index.html from a run's records")
    rp.add_argument("run_dir", type=Path)

    e = sub.add_parser("evaluate", help="quality metrics of samples made elsewhere (.npz/.npy, uint8 images)")
    e.add_argument("samples", type=Path)
    e.add_argument("--dataset", required=True, help="reference dataset, e.g. mnist (its test split)")
    e.add_argument("--feature-space", action="append", choices=["domain", "inception"],
                   help="repeatable; default: domain")
    e.add_argument("--n-reference", type=int, default=10000, help="real test images used as reference")
    e.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    e.add_argument("--json", type=Path, help="also write the metrics here as JSON")

    c = sub.add_parser("compare", help="regression check: exit 1 if CURRENT is worse than BASELINE")
    c.add_argument("baseline")
    c.add_argument("current")
    c.add_argument("--summary", help="write a JSON summary (and CI-dashboard benchmark files) here")
    c.add_argument("--quiet", action="store_true")
    return p


def _cmd_list() -> int:
    from bench.data import DATASETS
    from bench.families import FAMILIES
    from bench.metrics import EVALUATORS
    from bench.registry import describe

    print("families:")
    for name, fe in FAMILIES.items():
        print(f"  {name:<16} likelihood={fe.cls.likelihood_kind:<12} {fe.description}")
    _list_plugins(FAMILIES)
    print("datasets:")
    for name, de in DATASETS.items():
        print(f"  {name:<16} {de.description}")
    _list_plugins(DATASETS)
    print("evaluators (eval.metrics; options in eval.<name>) and their metrics:")
    for name, cls in EVALUATORS.in_order():
        needs = ", ".join(sorted(cls.needs)) or "spent budget"
        options = ", ".join(cls.Options.model_fields) or "-"
        print(f"  {name}{' (always)' if cls.always else ''}: {describe(cls)}")
        print(f"    needs: {needs}; options: {options}")
        for m in cls.metrics:
            arrow = {True: "higher is better", False: "lower is better", None: "informational"}[m.higher_is_better]
            flags = " ".join(f for f, on in (("headline", m.headline), ("axis", m.axis),
                                             ("machine-dependent", m.machine_dependent)) if on)
            print(f"    {m.name:<26} {m.role:<10} {arrow:<17} unit={m.unit or '-':<10} kind={m.kind:<11} {flags}".rstrip())
    _list_plugins(EVALUATORS)
    return 0


def _list_plugins(registry: Registry) -> None:
    """Names installed packages declare in the registry's entry-point group (listed, not imported)."""
    for name, ep in sorted(registry.entry_points().items()):
        if name not in registry:
            dist = f" from {ep.dist.name} {ep.dist.version}" if ep.dist is not None else ""
            print(f"  {name:<16} plugin {ep.value}{dist}")


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from pydantic import ValidationError

    from bench.data import load_dataset
    from bench.evaluate import evaluate_external
    from bench.metrics.quality import QualityOptions
    from bench.runner import resolve_device

    if args.json and args.json.is_dir():  # found now, not after the metrics are computed
        raise BenchError(f"--json {args.json}: is a folder; give the path of a file")
    try:
        opts = QualityOptions(feature_spaces=args.feature_space or ["domain"], n_reference=args.n_reference)
    except ValidationError as e:
        raise BenchError(f"--n-reference {args.n_reference}: {e.errors()[0]['msg']}") from None
    ds = load_dataset(args.dataset)
    metrics = evaluate_external(args.samples, ds, opts, resolve_device(args.device))
    for m in metrics:
        value = "n/a" if m.value is None else f"{m.value:.6g}"
        print(f"{m.name:<24} {value:>12} {m.unit:<10} {m.note}")
    if args.json:
        from bench.io import atomic_write_json

        atomic_write_json(args.json, {"samples": str(args.samples), "dataset": args.dataset,
                                      "metrics": [m.to_dict() for m in metrics]})
    return 0


def _executor(suite: ExecutorConfig, name: str | None, address: str | None) -> ExecutorConfig:
    """The suite's ``executor:`` with the command line's --executor and --address over it."""
    name = name or suite.name
    if address and name != "ray":
        raise BenchError(f"--address {address}: is for the ray executor; add --executor ray")
    ray = suite.ray.model_copy(update={"address": address}) if address else suite.ray
    return suite.model_copy(update={"name": name, "ray": ray})


def _cmd_tune(cfg, args: argparse.Namespace) -> int:
    from bench.space import MAX_TRIALS
    from bench.tune import tune_suite

    if args.trials is not None and not 1 <= args.trials <= MAX_TRIALS:
        raise BenchError(f"--trials: give 1 to {MAX_TRIALS:,} trials per model, got {args.trials}")
    run_dir = tune_suite(cfg, args.suite, trials=args.trials, sampler=args.sampler, objective=args.objective,
                         only=args.only, out=args.out, reports_root=args.reports_root, resume=args.resume,
                         dry_run=args.dry_run, quiet=args.quiet,
                         executor=_executor(cfg.executor, args.executor, args.address))
    if run_dir is not None:
        print(f"tuning report: {run_dir / 'tuning.html'}\ntuned suite: {run_dir / 'tuned-suite.yaml'}")
        if (run_dir / "confirm-suite.yaml").is_file():
            print(f"confirm the winners without the test split: python -m bench run {run_dir / 'confirm-suite.yaml'}")
    return 0


def _dispatch(args: argparse.Namespace) -> int:
    if args.cmd == "list":
        return _cmd_list()
    if args.cmd == "report":
        from bench.report import write_report

        if not (args.run_dir / "records").is_dir():
            raise BenchError(f"{args.run_dir}: not a run directory (no records/)")
        from bench.store import describe_owner, lock_holder

        # no lock taken: records are written whole (atomic renames), so a report of a run in progress is a
        # consistent view of its finished cells, and the run's own report replaces it when the run ends
        holder = lock_holder(args.run_dir)
        out = write_report(args.run_dir)
        print(f"wrote {out['html']}, {out['csv']}, {out['json']}")
        if holder is not None:
            print(f"note: {args.run_dir} is still being written ({describe_owner(holder)}): the report shows the "
                  "cells finished so far; the run rewrites it when it ends", file=sys.stderr)
        return 0
    if args.cmd == "evaluate":
        return _cmd_evaluate(args)
    if args.cmd == "compare":
        from bench import compare

        return compare.main(args.baseline, args.current, args.summary, args.quiet)

    from bench.config import load_suite
    from bench.runner import run_suite

    cfg = load_suite(args.suite)
    if args.cmd == "tune":
        return _cmd_tune(cfg, args)
    if args.cmd == "validate":
        run_suite(cfg, args.suite, dry_run=True)
        print(f"{args.suite}: ok")
        return 0
    baseline = args.baseline or (args.suite.parent / cfg.compare.baseline if cfg.compare.baseline else None)
    if baseline is not None and not baseline.exists():  # found now, not after the run has spent its budget
        where = "--baseline" if args.baseline else "compare.baseline"
        raise BenchError(f"{where} {baseline}: no such run directory or results.json")
    tracker = None
    if args.track == "mlflow" and not args.dry_run:
        from bench.tracking import MlflowTracker

        tracker = MlflowTracker(cfg.name, args.tracking_uri)
    elif args.tracking_uri:
        raise BenchError("--tracking-uri is for --track mlflow; add --track mlflow or drop it")
    run_dir = run_suite(cfg, args.suite, out=args.out, reports_root=args.reports_root, resume=args.resume,
                        only=args.only, seeds=args.seeds, dry_run=args.dry_run, quiet=args.quiet,
                        cell_time_limit=args.cell_time_limit,
                        executor=_executor(cfg.executor, args.executor, args.address),
                        on_record=tracker.log_cell if tracker else None)
    if run_dir is None:
        return 0
    print(f"report: {run_dir / 'index.html'}")
    status = _failed_cells(run_dir)
    if baseline:
        from bench import compare

        status = max(status, compare.main(str(baseline), str(run_dir), str(run_dir / "compare.json"), args.quiet))
    return status


def _failed_cells(run_dir: Path) -> int:
    """1 (and the failed cells on stderr, each with its reason and log) when a cell failed, else 0."""
    from bench.store import RunStore

    failed = [r for r in RunStore(run_dir).records() if r.status == "failed"]
    for r in failed:
        print(f"bench: cell {r.cell_id} failed: {r.error}", file=sys.stderr)
    if failed:
        print(f"bench: {len(failed)} cell(s) failed; the other results are in {run_dir}", file=sys.stderr)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return _dispatch(args)
    except BenchError as e:
        print(f"bench: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bench list | head`
        sys.stderr.close()
        return 0
