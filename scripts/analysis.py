"""What generative models are for beyond sampling (issue 9), measured from the command line.

    python scripts/analysis.py curves --dataset mnist --out reports/analysis/curves-mnist
        naive Bayes (both pixel models) vs logistic regression vs a small CNN over training-set sizes,
        several seeds; writes curve.csv, crossings.json and curves.png

Everything here calls ``bench.analysis``; this file only wires datasets and files to it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from bench.analysis.classify import CLASSIFIERS, crossing_point, learning_curve
from bench.analysis.plots import learning_curves
from bench.data import load_dataset
from bench.io import atomic_write_bytes, atomic_write_json, atomic_write_text

SIZES = "1 2 5 10 20 50 100 200 500 full"


def _sizes(text: str) -> list[int | None]:
    return [None if s == "full" else int(s) for s in text.split()]


def curves(args: argparse.Namespace) -> None:
    ds = load_dataset(args.dataset)
    out = Path(args.out)
    t0, c0 = time.perf_counter(), time.process_time()
    curve = learning_curve(ds, _sizes(args.sizes), [int(s) for s in args.seeds.split()], args.classifiers.split(),
                           val_size=args.val_size)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    atomic_write_text(out / "curve.csv", curve.to_csv(index=False))
    crossings = {f"{g} / {d}": crossing_point(curve, g, d)
                 for g in ("nb_gaussian", "nb_categorical") for d in ("logistic", "cnn")
                 if g in set(curve.classifier) and d in set(curve.classifier)}
    summary = {
        "dataset": ds.name, "seeds": args.seeds, "sizes_per_class": args.sizes, "val_size": args.val_size,
        "wall_seconds": round(wall, 1), "cpu_seconds": round(cpu, 1), "torch_threads": torch.get_num_threads(),
        "crossings": {k: {"n_train": c.n_train, "per_class": None if c.n_train is None else c.n_train / ds.num_classes,
                          "note": c.note} for k, c in crossings.items()},
        "accuracy_mean": curve.groupby(["classifier", "n_train"])["accuracy"].mean().unstack(0).round(4)
                         .to_dict(orient="index"),
    }
    atomic_write_json(out / "crossings.json", summary)
    shown = {k.replace("nb_", "NB ").replace(" / ", " -> "): c for k, c in crossings.items() if k.endswith("logistic")}
    atomic_write_bytes(out / "curves.png", learning_curves(curve, shown, f"{ds.name}: generative vs discriminative"))
    print(json.dumps(summary["crossings"], indent=1))
    print(f"{len(curve)} fits in {wall:.0f} s wall, {cpu:.0f} s CPU -> {out}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("curves", help="generative vs discriminative learning curves")
    c.add_argument("--dataset", default="mnist")
    c.add_argument("--sizes", default=SIZES, help=f"examples per class, 'full' = the whole pool (default: {SIZES})")
    c.add_argument("--seeds", default="0 1 2")
    c.add_argument("--classifiers", default=" ".join(CLASSIFIERS))
    c.add_argument("--val-size", type=int, default=5000, help="training images held out to choose logistic C")
    c.add_argument("--out", required=True)
    c.set_defaults(fn=curves)
    args = p.parse_args(argv)
    args.fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
