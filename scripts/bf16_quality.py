"""Quality at equal training seconds, fp32 vs bf16 autocast (issue 12 part 3): does bf16 buy quality?

    python scripts/bf16_quality.py                                  # autoencoder, pixelcnn, gan; 20 s, 3 seeds
    python scripts/bf16_quality.py --seconds 10 --seeds 0 --models gan --n-samples 500
    python scripts/bf16_quality.py --models pixelcnn --steps 740 --emulate   # numerics only, any CPU

The candidates are the families whose bf16 steps/s gain was >= 1.3x in scripts/bench_engine.py
(autoencoder 1.39, PixelCNN 1.72, GAN 1.37). Each trains as ``suites/mnist.yaml`` defines it
(options, batch size) on MNIST with a wall-clock budget of ``--seconds`` per cell, once with
``train: {precision: fp32}`` and once with ``bf16``; per seed the two runs follow each other, in an
order that alternates from seed to seed, so a change of load on the machine hits both alike.
Evaluation is the same for both and always fp32 (likelihood included): ``--n-samples`` samples
against the 10,000 MNIST test images in the domain feature space; likelihoods on
``--likelihood-examples`` test images.

Per model it prints the steps each precision bought, each headline metric's mean per precision,
the paired difference bf16 - fp32 (mean and standard error over seeds) and ``worse``: whether
bf16 is worse beyond ``--sigmas`` standard errors of the paired differences, in the metric's
declared direction (density: further from its ideal 1). Wall-clock budgets make every number depend on the load on the machine; the
1-minute load average is printed beside them. Prints one JSON object.

``--steps N`` trains both precisions for the same N optimizer steps instead: the comparison is then of
bf16's numerics alone (quality per step), independent of the machine's speed and load. Under a
wall-clock budget the engine's learning rate is constant (a cosine schedule needs a step budget), so
a bf16 cell at equal seconds follows the same kind of trajectory for more steps: quality per step
that holds, together with the steps/s ratio of ``scripts/bench_engine.py``, is the equal-seconds
argument in two measured halves. ``--emulate`` (only with ``--steps``) lets bf16 autocast run on a
CPU without AMX / AVX512-BF16: PyTorch then rounds to bfloat16 in software (about 2x slower than
fp32, so its speed says nothing) with the same bfloat16 rounding of each autocast op's inputs and
outputs; oneDNN's native kernels may differ in accumulation order, not in precision.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench import engine  # noqa: E402
from bench.config import Budget, EvalConfig, load_suite  # noqa: E402
from bench.engine import TrainSettings, bf16_supported  # noqa: E402
from bench.results import METRICS  # noqa: E402
from bench.runner import run_suite  # noqa: E402
from bench.store import RunStore  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
CANDIDATES = ["autoencoder", "pixelcnn", "gan"]  # suites/mnist.yaml model names
# the headline quality and coverage metrics of the domain space, and the likelihoods (where a family has one)
WATCHED = ["fid_domain", "precision_domain", "recall_domain", "density_domain", "coverage_domain", "classes_covered",
           "nll_bpd_exact", "nll_bpd_bound"]


def paired(fp32: list[float], bf16: list[float]) -> tuple[float, float]:
    """Mean and standard error of the per-seed differences bf16 - fp32 (SE nan for one seed)."""
    d = [b - a for a, b in zip(fp32, bf16)]
    se = statistics.stdev(d) / math.sqrt(len(d)) if len(d) > 1 else math.nan
    return statistics.fmean(d), se


def summarise(values: dict[str, dict[str, dict[str, list[float]]]], sigmas: float) -> dict[str, Any]:
    """{model: {metric: {fp32, bf16, delta, se, worse}}} from {model: {precision: {metric: per-seed values}}}."""
    out: dict[str, Any] = {}
    for model, by_precision in values.items():
        row: dict[str, Any] = {}
        for name in by_precision["fp32"]:
            a, b = by_precision["fp32"][name], by_precision["bf16"].get(name, [])
            if len(a) != len(b) or not a:
                continue
            delta, se = paired(a, b)
            entry = {"fp32": round(statistics.fmean(a), 4), "bf16": round(statistics.fmean(b), 4),
                     "delta": round(delta, 4), "se": round(se, 4)}
            direction = METRICS.get(name).higher_is_better if name in METRICS else None
            if name.startswith("density_"):  # its ideal is 1 (Naeem et al.): worse = further from 1
                delta, se = paired([abs(v - 1) for v in a], [abs(v - 1) for v in b])
                direction = False
            if direction is not None:
                bad = -delta if direction else delta  # > 0: bf16 is worse
                entry["worse"] = bool(bad > sigmas * se) if math.isfinite(se) else None
            row[name] = entry
        steps = row.get("steps")
        if steps:
            row["steps_ratio_bf16_over_fp32"] = round(steps["bf16"] / steps["fp32"], 2)
        row["quality_holds"] = not any(e.get("worse") for e in row.values() if isinstance(e, dict))
        out[model] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=CANDIDATES, help="model names of suites/mnist.yaml")
    ap.add_argument("--seconds", type=float, default=20.0, help="training budget per cell")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n-samples", type=int, default=1000)
    ap.add_argument("--likelihood-examples", type=int, default=500)
    ap.add_argument("--sigmas", type=float, default=2.0, help="bf16 counts as worse beyond this many paired SEs")
    ap.add_argument("--threads", type=int, default=None, help="torch threads per cell (default: the suite's)")
    ap.add_argument("--steps", type=int, default=None,
                    help="equal optimizer steps instead of equal seconds (quality per step: bf16's numerics alone)")
    ap.add_argument("--emulate", action="store_true",
                    help="with --steps: run bf16 autocast on a CPU without AMX / AVX512-BF16 (software rounding)")
    args = ap.parse_args()
    if args.emulate and args.steps is None:
        raise SystemExit("--emulate compares numerics only: give --steps (emulated bf16 speed says nothing)")
    if args.steps is not None and args.steps <= 0:
        raise SystemExit("--steps must be a positive number of optimizer steps")
    native = bf16_supported(torch.device("cpu"))
    if not native and not args.emulate:
        raise SystemExit("this CPU has no bf16 support (AMX / AVX512-BF16): nothing to compare at equal seconds; "
                         "--steps N --emulate compares the numerics alone")
    if args.emulate and not native:
        engine.bf16_supported = lambda device: device.type == "cpu" or torch.cuda.is_bf16_supported()

    path = ROOT / "suites" / "mnist.yaml"
    base = load_suite(path)
    unknown = sorted(set(args.models) - {m.name for m in base.models})
    if unknown:
        raise SystemExit(f"--models: {unknown} are not in {path.name} ({[m.name for m in base.models]})")
    cfg = base.model_copy(update={
        "models": [m for m in base.models if m.name in args.models],
        "budget": Budget(steps=args.steps) if args.steps else Budget(seconds=args.seconds),
        "eval": EvalConfig(metrics=["likelihood", "quality"], n_samples=args.n_samples,
                           likelihood_examples=args.likelihood_examples, quality=base.eval.quality),
        **({"threads": args.threads} if args.threads else {}),
    })
    values: dict[str, dict[str, dict[str, list[float]]]] = {}
    report: dict[str, Any] = {**({"steps": args.steps, "bf16": "native" if native else "emulated"} if args.steps
                                 else {"seconds": args.seconds}),
                              "seeds": args.seeds, "n_samples": args.n_samples,
                              "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()[0], "depends_on_load": args.steps is None}
    with tempfile.TemporaryDirectory(prefix="bench-bf16-") as tmp:
        for i, seed in enumerate(args.seeds):
            for precision in (("fp32", "bf16") if i % 2 == 0 else ("bf16", "fp32")):
                run = cfg.model_copy(update={"train": TrainSettings(precision=precision)})
                run_dir = run_suite(run, path, out=Path(tmp) / f"{precision}-{seed}", seeds=[seed], quiet=True)
                for rec in RunStore(run_dir).records():
                    got = values.setdefault(rec.model, {"fp32": {}, "bf16": {}})[precision]
                    got.setdefault("steps", []).append(float(rec.spent.get("steps", 0)))
                    for name in WATCHED:
                        v = rec.value(name)
                        if v is not None and math.isfinite(v):
                            got.setdefault(name, []).append(v)
                print(f"seed {seed} {precision}: done (load {os.getloadavg()[0]:.1f})", file=sys.stderr)
    report["models"] = summarise(values, args.sigmas)
    report["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
