"""What generative models are for beyond sampling (issue 9), measured from the command line.

    python scripts/analysis.py curves --dataset mnist --out reports/analysis/curves-mnist
        naive Bayes (both pixel models) vs logistic regression vs a small CNN over training-set sizes,
        several seeds; writes curve.csv, crossings.json and curves.png

    python scripts/analysis.py run reports/mnist/<run-id> [--ood fashion_mnist noise hflip vflip]
        for every finished cell of a run (its checkpoint and samples): memorization in pixel and domain
        space, the train-test NLL gap, the OOD AUROC table (raw and corrected) and, for class-conditional
        models, the generative-classifier accuracy; writes <run>/analysis/*.csv, pairs/*.png, summary.md

    python scripts/analysis.py per-class --dataset mnist --family flow --budget-steps 74 --out DIR
        the generative classifier of an unconditional family: one model per class, Bayes' rule on test

Everything here calls ``bench.analysis``; this file only wires datasets and files to it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import pandas as pd
import torch
from threadpoolctl import threadpool_limits

from bench.analysis.classify import CLASSIFIERS, GENERATIVE, class_conditional, crossing_point, learning_curve
from bench.analysis.measure import (background_model, generative_classifier, memorization, ood_sets, ood_table,
                                    train_per_class, train_test_gap)
from bench.analysis.plots import closest_pairs_grid, learning_curves
from bench.analysis.probes import has_encoder
from bench.config import Budget, load_suite
from bench.data import load_dataset
from bench.errors import BenchError
from bench.evaluate import load_samples
from bench.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from bench.runner import data_spec, load_checkpoint, resolve_device
from bench.store import RunStore

SIZES = "1 2 5 10 20 50 100 200 500 full"
ANALYSES = ("memorization", "gap", "ood", "classify")


def _sizes(text: str) -> list[int | None]:
    return [None if s == "full" else int(s) for s in text.split()]


def curves(args: argparse.Namespace) -> None:
    ds = load_dataset(args.dataset)
    out = Path(args.out)
    t0, c0 = time.perf_counter(), time.process_time()
    curve = learning_curve(ds, _sizes(args.sizes), [int(s) for s in args.seeds.split()], args.classifiers.split(),
                           val_size=args.val_size, log=lambda line: print(line, flush=True))
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n_fits, timings = len(curve), []
    if args.append and (out / "curve.csv").is_file():  # add classifiers to a curve measured earlier
        timings = json.loads((out / "crossings.json").read_text()).get("timings", [])
        before = pd.read_csv(out / "curve.csv")
        curve = pd.concat([before[~before.classifier.isin(set(curve.classifier))], curve], ignore_index=True)
    atomic_write_text(out / "curve.csv", curve.to_csv(index=False))
    crossings = {f"{g} / {d}": crossing_point(curve, g, d)
                 for g in GENERATIVE for d in CLASSIFIERS if d not in GENERATIVE
                 if g in set(curve.classifier) and d in set(curve.classifier)}
    summary = {
        "dataset": ds.name, "seeds": args.seeds, "sizes_per_class": args.sizes, "val_size": args.val_size,
        "timings": timings + [{"classifiers": args.classifiers, "fits": n_fits, "wall_seconds": round(wall, 1),
                               "cpu_seconds": round(cpu, 1), "threads": torch.get_num_threads()}],
        "crossings": {k: {"n_train": c.n_train, "per_class": None if c.n_train is None else c.n_train / ds.num_classes,
                          "note": c.note} for k, c in crossings.items()},
        "accuracy_mean": curve.groupby(["classifier", "n_train"])["accuracy"].mean().unstack(0).round(4)
                         .to_dict(orient="index"),
    }
    atomic_write_json(out / "crossings.json", summary)
    shown = {k.replace("nb_", "NB ").replace(" / ", " -> "): c for k, c in crossings.items()
             if k.endswith("/ logistic") and "_tuned" in k}
    atomic_write_bytes(out / "curves.png", learning_curves(curve, shown, f"{ds.name}: generative vs discriminative"))
    print(json.dumps(summary["crossings"], indent=1))
    print(f"{n_fits} fits in {wall:.0f} s wall, {cpu:.0f} s CPU -> {out}")


def _classifies(model: object) -> bool:
    """Whether the model gives log p(x|y) (unconditional families: see the per-class command)."""
    try:
        class_conditional(model)
    except BenchError:
        return False
    return True


def run(args: argparse.Namespace) -> None:
    run_dir = Path(args.run_dir)
    cfg = load_suite(run_dir / "suite.yaml")
    models = {m.name: m for m in cfg.expanded_models()}
    ds = load_dataset(cfg.dataset.name, {**cfg.dataset.options, "train_subset": None})
    device = resolve_device(args.device)
    out = Path(args.out) if args.out else run_dir / "analysis"
    sets = ood_sets(ds, args.ood, args.n_ood)
    background = background_model(ds)
    rows: dict[str, list[dict]] = {"memorization": [], "gap": [], "ood": [], "classify": []}
    for rec in RunStore(run_dir).records():
        if rec.status != "ok" or "checkpoint" not in rec.artifacts or "samples" not in rec.artifacts:
            continue
        t0 = time.perf_counter()
        # the checkpoint carries its options; comparing them with the suite's trips on tuple-valued options
        # (the GAN's betas come back from torch.load as a list), so let the checkpoint speak for itself
        m = models[rec.model].model_copy(update={"options": {}})
        model = load_checkpoint(run_dir / rec.artifacts["checkpoint"], m, data_spec(ds), device).eval()
        key = {"model": rec.model, "family": rec.family, "seed": rec.seed}
        samples = load_samples(run_dir / rec.artifacts["samples"])
        g = torch.Generator(device=device).manual_seed(rec.seed)
        for space in (("pixel", "domain") if "memorization" in args.analyses else ()):
            mem = memorization(samples, ds, space, device, n_test=args.n_test, seed=rec.seed)
            rows["memorization"].append({**key, **mem.row()})
            if space == "pixel":
                atomic_write_bytes(out / "pairs" / f"{rec.cell_id}.png",
                                   closest_pairs_grid(samples.numpy(), ds.train_x.numpy(), mem.pairs))
        if model.likelihood_kind != "none" and "gap" in args.analyses:
            rows["gap"].append({**key, **(train_test_gap(model, ds, args.n_ood, g) or {})})
        if (model.likelihood_kind != "none" or has_encoder(model)) and "ood" in args.analyses:
            rows["ood"] += [{**key, **r} for r in ood_table(model, ds, sets, args.n_ood, g, background)]
        if "classify" in args.analyses and _classifies(model):
            rows["classify"] += [{**key, **r} for r in generative_classifier(model, ds, len(ds.test_x), g)]
        print(f"{rec.cell_id}: {time.perf_counter() - t0:.0f} s", flush=True)
    for name, r in rows.items():
        atomic_write_text(out / f"{name}.csv", pd.DataFrame(r).to_csv(index=False))
    atomic_write_text(out / "summary.md", summary(rows))
    print(f"-> {out}")


def _mean_std(df: pd.DataFrame, by: list[str], cols: list[str]) -> pd.DataFrame:
    """'mean +- std' over seeds per group, as strings (std left out for a single seed)."""
    g = df.groupby(by, sort=False)[cols]
    mean, std, n = g.mean(), g.std(), g.size()
    return mean.apply(lambda col: [f"{m:.3f}" + (f" ± {s:.3f}" if k > 1 else "")
                                   for m, s, k in zip(col, std[col.name], n)])


def _markdown(df: pd.DataFrame) -> str:
    """A pipe table (pandas' to_markdown needs the tabulate package, which bench does not depend on)."""
    df = df.reset_index()
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    lines += ["| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join(lines)


def summary(rows: dict[str, list[dict]]) -> str:
    parts = ["# Analysis of a run (issue 9)\n"]
    if rows["memorization"]:
        mem = pd.DataFrame(rows["memorization"])
        cols = ["closer_share", "c_t", "near_copy_share", "exact_copy_share"]
        parts += ["## Memorization (0.5 / 0 / 0.01 / 0 = as novel as test data)\n",
                  _markdown(_mean_std(mem, ["model", "space"], cols)) + "\n"]
    if rows["gap"]:
        parts += ["## Train-test NLL gap (bits/dim; > 0: higher likelihood on training images)\n",
                  _markdown(_mean_std(pd.DataFrame(rows["gap"]), ["model", "estimator", "kind"], ["nll_gap_bpd"]))
                  + "\n"]
    if rows["ood"]:
        ood = pd.DataFrame(rows["ood"])
        table = _mean_std(ood, ["model", "ood_set", "score"], ["auroc"])["auroc"].unstack("score")
        parts += ["## OOD AUROC (test split vs set; 0.5 = chance, < 0.5 = ranks the wrong way)\n",
                  _markdown(table) + "\n"]
    if rows["classify"]:
        parts += ["## Generative classifier (Bayes' rule) test accuracy\n",
                  _markdown(_mean_std(pd.DataFrame(rows["classify"]), ["model", "estimator", "kind"], ["accuracy"]))
                  + "\n"]
    return "\n".join(parts)


def per_class(args: argparse.Namespace) -> None:
    ds = load_dataset(args.dataset)
    device = resolve_device(args.device)
    t0 = time.perf_counter()
    budget = Budget(steps=args.budget_steps) if args.budget_steps else Budget(seconds=args.budget_seconds)
    models = train_per_class(args.family, json.loads(args.options), ds, budget, args.batch_size, args.seed, device)
    spent = time.perf_counter() - t0
    g = torch.Generator(device=device).manual_seed(args.seed)
    rows = [{"dataset": ds.name, "family": args.family, "options": args.options, "seed": args.seed,
             "budget_per_class": budget.label, "train_seconds": round(spent, 1), **r}
            for r in generative_classifier(models, ds, args.n_test, g)]
    out = Path(args.out)
    atomic_write_text(out / f"per-class-{args.family}-seed{args.seed}.csv", pd.DataFrame(rows).to_csv(index=False))
    print(pd.DataFrame(rows).to_string(index=False))
    print(f"trained {ds.num_classes} models in {spent:.0f} s; classified in {time.perf_counter() - t0 - spent:.0f} s")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--threads", type=int, default=1, help="torch and BLAS threads (on a busy machine more threads spin)")
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("curves", help="generative vs discriminative learning curves")
    c.add_argument("--dataset", default="mnist")
    c.add_argument("--sizes", default=SIZES, help=f"examples per class, 'full' = the whole pool (default: {SIZES})")
    c.add_argument("--seeds", default="0 1 2")
    c.add_argument("--classifiers", default=" ".join(CLASSIFIERS))
    c.add_argument("--val-size", type=int, default=5000, help="training images held out to choose logistic C")
    c.add_argument("--out", required=True)
    c.add_argument("--append", action="store_true", help="keep OUT/curve.csv's other classifiers (same sizes, seeds)")
    c.set_defaults(fn=curves)
    r = sub.add_parser("run", help="memorization, NLL gap, OOD and generative classifier of a run's cells")
    r.add_argument("run_dir")
    r.add_argument("--ood", nargs="+", default=["noise", "hflip", "vflip"],
                   help="out-of-distribution sets: noise, hflip, vflip or a dataset name (fashion_mnist, mnist)")
    r.add_argument("--n-ood", type=int, default=1000, help="images per set (in-distribution test images too)")
    r.add_argument("--n-test", type=int, default=2000, help="test images the memorization statistics compare with")
    r.add_argument("--analyses", nargs="+", default=list(ANALYSES), choices=ANALYSES)
    r.add_argument("--device", default="auto")
    r.add_argument("--out", help="default: RUN_DIR/analysis")
    r.set_defaults(fn=run)
    q = sub.add_parser("per-class", help="generative classifier of an unconditional family: one model per class")
    q.add_argument("--dataset", default="mnist")
    q.add_argument("--family", required=True)
    q.add_argument("--options", default="{}", help="family options as JSON")
    q.add_argument("--budget-seconds", type=float, default=10.0, help="training seconds per class model")
    q.add_argument("--budget-steps", type=int, help="optimizer steps per class model (instead of seconds)")
    q.add_argument("--batch-size", type=int, default=64)
    q.add_argument("--n-test", type=int, default=1000)
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--device", default="auto")
    q.add_argument("--out", required=True)
    q.set_defaults(fn=per_class)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    with threadpool_limits(limits=args.threads):
        args.fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
