"""Side by side: the feature-level metric set of bench.metrics.fast vs torch-fidelity per metric plus prdc (issue 12 part 1).

    python scripts/bench_fast_metrics.py                   # MNIST domain features, 10,000 vs 10,000
    python scripts/bench_fast_metrics.py --n 2000 --repeats 2 --threads 1

Both sides get the same features (extracted once, not timed) and compute FID, KID (100 subsets of
1,000), precision/recall (k = 3) and density/coverage (k = 5):

* reference: torch-fidelity 0.4.0's feature-level functions, one call per metric
  (``fid_features_to_statistics`` x 2 + ``fid_statistics_to_metric``, ``kid_features_to_metric``,
  ``prc_features_to_metric`` as bench called it: save_cpu_ram=False, batch 10,000), plus
  ``prdc.compute_prdc`` for density/coverage (it also computes its own precision/recall);
* fast, per model: ``fast.fid``, ``fast.kid``, ``fast.neighbourhood_metrics`` with the real
  set's ``RealStats`` already built, as every model after the first sees it;
* fast, once per reference: ``RealStats.build`` (FID moments, radii for k = 3 and 5, KID sums).

``--fid-dim 2048`` adds FID alone at Inception's width (seeded ReLU'd Gaussian features, n per
side): torch-fidelity's general ``eigvals`` of S_r S_g vs ``fast.fid``'s symmetric ``eigvalsh``.

The variants run interleaved, in a rotating order, ``--repeats`` times; the medians are reported,
so a change of load hits all of them alike. Torch and BLAS threads are set to ``--threads`` for
both sides (prdc's scikit-learn call asks for 8 jobs itself). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from threadpoolctl import threadpool_limits

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.data import load_dataset  # noqa: E402
from bench.metrics import fast, fidelity  # noqa: E402

CPU = torch.device("cpu")


def mnist_features(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Domain features of n noisy MNIST training images ("generated") and n test images (real)."""
    ds = load_dataset("mnist")
    ext = fidelity.domain_extractor(ds, CPU)
    g = torch.Generator().manual_seed(seed)
    x = ds.train_x[:n]
    noisy = (x.int() + torch.randint(-30, 31, x.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    return ext.extract(noisy, 500, CPU)["features"], ext.extract(ds.test_x[:n], 500, CPU)["features"]


def reference_set(gen: torch.Tensor, real: torch.Tensor, plan: fast.KidPlan, pr_k: int, dc_k: int) -> dict[str, Callable[[], Any]]:
    """torch-fidelity's feature-level functions, one call per metric, and prdc for density/coverage."""
    import prdc
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    def density_coverage() -> dict[str, float]:
        with contextlib.redirect_stdout(io.StringIO()):  # prdc prints the set sizes
            out = prdc.compute_prdc(real.numpy(), gen.numpy(), nearest_k=dc_k)
        return {"density": float(out["density"]), "coverage": float(out["coverage"])}

    kid_args = {"kid_subsets": plan.subsets, "kid_subset_size": plan.subset_size, "rng_seed": plan.seed, "verbose": False,
                "kid_kernel": "poly", "kid_kernel_poly_degree": 3, "kid_kernel_poly_gamma": None, "kid_kernel_poly_coef0": 1}
    return {
        "fid": lambda: {"fid": fid_statistics_to_metric(fid_features_to_statistics(gen), fid_features_to_statistics(real),
                                                        verbose=False)["frechet_inception_distance"]},
        "kid": lambda: _named(kid_features_to_metric(gen, real, **kid_args),
                              kid_mean="kernel_inception_distance_mean", kid_std="kernel_inception_distance_std"),
        "precision_recall": lambda: _named(prc_features_to_metric(gen, real, prc_neighborhood=pr_k, prc_batch_size=10_000,
                                                                  save_cpu_ram=False, verbose=False),
                                           precision="precision", recall="recall"),
        "density_coverage": density_coverage,
    }


def fast_set(gen: torch.Tensor, real: torch.Tensor, stats: fast.RealStats, plan: fast.KidPlan, pr_k: int,
             dc_k: int) -> dict[str, Callable[[], Any]]:
    return {
        "fid": lambda: {"fid": fast.fid(gen, stats)},
        "kid": lambda: dict(zip(("kid_mean", "kid_std"), fast.kid(gen, real, stats, plan))),
        "neighbourhood": lambda: fast.neighbourhood_metrics(gen, real, stats, pr_k=pr_k, dc_k=dc_k),
    }


def wide_fid(n: int, dim: int, repeats: int) -> dict[str, Any]:
    """FID of two n x dim feature sets: torch-fidelity's per call vs fast per model (real statistics cached)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    g = torch.Generator().manual_seed(0)
    real, gen = ((torch.randn(n, dim, generator=g) + shift).relu() for shift in (0.0, 0.1))
    t0 = time.perf_counter()
    stats = fast.RealStats.build(real)
    build = time.perf_counter() - t0
    times: dict[str, list[float]] = {"torch_fidelity": [], "fast_per_model": []}
    values: dict[str, float] = {}
    runs = {"torch_fidelity": lambda: fid_statistics_to_metric(fid_features_to_statistics(gen), fid_features_to_statistics(real),
                                                               verbose=False)["frechet_inception_distance"],
            "fast_per_model": lambda: fast.fid(gen, stats)}
    for r in range(repeats):
        for name in (list(runs) if r % 2 == 0 else list(runs)[::-1]):
            t0 = time.perf_counter()
            values[name] = runs[name]()
            times[name].append(time.perf_counter() - t0)
    med = {k: round(statistics.median(v), 3) for k, v in times.items()}
    return {"n": n, "dim": dim, "median_seconds": med, "fast_real_stats_build_seconds": round(build, 3),
            "speedup_per_model": round(med["torch_fidelity"] / med["fast_per_model"], 2), "values": values,
            "relative_difference": abs(values["fast_per_model"] - values["torch_fidelity"]) / values["torch_fidelity"]}


def _named(out: dict[str, float], **names: str) -> dict[str, float]:
    return {ours: float(out[theirs]) for ours, theirs in names.items()}


def run_set(steps: dict[str, Callable[[], Any]]) -> tuple[dict[str, float], dict[str, float]]:
    """Run every step once: ({step: seconds}, merged values)."""
    times, values = {}, {}
    for name, fn in steps.items():
        t0 = time.perf_counter()
        values.update(fn())
        times[name] = time.perf_counter() - t0
    return times, values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="generated and real feature vectors")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=torch.get_num_threads(), help="torch and BLAS threads, both sides")
    ap.add_argument("--pr-k", type=int, default=3)
    ap.add_argument("--dc-k", type=int, default=5)
    ap.add_argument("--fid-dim", type=int, default=0, help="also time FID alone at this width (e.g. 2048; 0: skip)")
    args = ap.parse_args()

    torch.set_num_threads(args.threads)
    gen, real = mnist_features(args.n)
    plan = fast.KidPlan(subsets=100, subset_size=min(1000, args.n))
    build = lambda: fast.RealStats.build(real, [args.pr_k, args.dc_k], plan, n_gen=len(gen))  # noqa: E731
    stats = build()
    variants: dict[str, Callable[[], tuple[dict[str, float], dict[str, float]]]] = {
        "torch_fidelity_plus_prdc": lambda: run_set(reference_set(gen, real, plan, args.pr_k, args.dc_k)),
        "fast_per_model": lambda: run_set(fast_set(gen, real, stats, plan, args.pr_k, args.dc_k)),
        "fast_real_stats_build": lambda: run_set({"build": lambda: (build(), {})[1]}),
    }
    report: dict[str, Any] = {"n_generated": len(gen), "n_real": len(real), "dim": gen.shape[1], "threads": args.threads,
                              "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()[0]}
    times: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
    values: dict[str, dict[str, float]] = {}
    names = list(variants)
    with threadpool_limits(limits=args.threads, user_api="blas"):
        for r in range(args.repeats):
            for name in names[r % len(names):] + names[: r % len(names)]:  # rotate the order every repeat
                t, v = variants[name]()
                times[name].append(t)
                values[name] = v
    med = {name: {step: round(statistics.median(t[step] for t in runs), 3) for step in runs[0]} for name, runs in times.items()}
    total = {name: round(sum(steps.values()), 3) for name, steps in med.items()}
    report["median_seconds"] = med
    report["median_total_seconds"] = total
    ref, per_model, once = (total[k] for k in names)
    report["speedup_per_model"] = round(ref / per_model, 2)  # every model after the first
    report["speedup_first_model"] = round(ref / (per_model + once), 2)  # the build included
    report["values"] = {"torch_fidelity_plus_prdc": values[names[0]], "fast": values[names[1]]}
    report["abs_difference"] = {k: abs(values[names[0]][k] - values[names[1]][k]) for k in values[names[0]]}
    if args.fid_dim:
        with threadpool_limits(limits=args.threads, user_api="blas"):
            report[f"fid_{args.fid_dim}d"] = wide_fid(args.n, args.fid_dim, args.repeats)
    report["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
