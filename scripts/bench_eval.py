"""Quality evaluation per cell, before and after the fast metric path (issue 12: the wiring), in one run.

    python scripts/bench_eval.py                          # the smoke cell (digits) and one MNIST cell
    python scripts/bench_eval.py --cases smoke --repeats 5
    python scripts/bench_eval.py --smoke-samples RUN_DIR/samples   # also: a smoke run's saved samples

A cell's quality evaluation is one feature pass over its samples (the domain net: the same before
and after) and the feature-level metrics against the cached reference. Two cases, with the options
their suites use:

* ``smoke``: suites/smoke.yaml's cell, 500 samples of 8x8 digits vs the 297 test images, KID subsets
  of 100 (samples: the training images with uniform noise of +-40 grey levels);
* ``mnist``: one suites/mnist.yaml cell, 2,000 MNIST samples vs the 10,000 test images (the
  training images with noise of +-30).

``before`` is the evaluator as it was (torch-fidelity's ``fid_features_to_statistics`` and
``fid_statistics_to_metric``'s eigvals route with the reference's moments cached,
``kid_features_to_metric``, ``prc_features_to_metric`` with save_cpu_ram=False, and
``bench.metrics.coverage.density_coverage`` with the reference radii cached); ``after`` is
``bench.metrics.quality.feature_metrics`` with the reference's ``RealStats`` cached, as every cell
after the first sees it. ``after_first`` is the one-off ``RealStats`` build per reference. The
variants run interleaved, in alternating order, ``--repeats`` times; medians are reported and the
ratio ``before / after``. The values of both are printed with their differences. Wall-clock numbers
depend on the load of the machine (its 1-minute load average is printed). Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.data import Dataset, load_dataset  # noqa: E402
from bench.metrics import coverage  # noqa: E402
from bench.metrics.caches import reference_features  # noqa: E402
from bench.metrics.fidelity import Extractor, domain_extractor  # noqa: E402
from bench.metrics.quality import QualityOptions, feature_metrics, one_blas_thread  # noqa: E402

CPU = torch.device("cpu")
CASES = {  # dataset, samples, noise (grey levels), the suite's quality options
    "smoke": ("digits", 500, 40, QualityOptions(n_reference=297, kid_subset_size=100)),
    "mnist": ("mnist", 2000, 30, QualityOptions()),
}


def noisy_training_images(ds: Dataset, n: int, noise: int, seed: int = 0) -> torch.Tensor:
    """Stand-in samples: the first n training images plus uniform integer noise, uint8 (n, C, H, W)."""
    g = torch.Generator().manual_seed(seed)
    x = ds.train_x[:n]
    return (x.int() + torch.randint(-noise, noise + 1, x.shape, generator=g)).clamp(0, 255).to(torch.uint8)


def before(gen: torch.Tensor, real: torch.Tensor, cached: dict[str, Any], opts: QualityOptions) -> dict[str, float]:
    """The evaluator's feature metrics as they were, with what it cached (reference moments, DC radii)."""
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric
    from torch_fidelity.metric_kid import kid_features_to_metric
    from torch_fidelity.metric_prc import prc_features_to_metric

    with one_blas_thread():
        fid = fid_statistics_to_metric(fid_features_to_statistics(gen), cached["fid"], verbose=False)
        kid = kid_features_to_metric(gen, real, kid_subsets=opts.kid_subsets, verbose=False, rng_seed=opts.seed,
                                     kid_subset_size=min(opts.kid_subset_size, len(gen), len(real)))
        prc = prc_features_to_metric(gen, real, prc_neighborhood=opts.pr_k, prc_batch_size=10_000, save_cpu_ram=False,
                                     verbose=False)
        density, cov = coverage.density_coverage(real, gen, k=opts.dc_k, radii=cached["radii"])
    return {"fid_domain": fid["frechet_inception_distance"], "kid_domain": kid["kernel_inception_distance_mean"],
            "kid_domain_std": kid["kernel_inception_distance_std"], "precision_domain": prc["precision"],
            "recall_domain": prc["recall"], "density_domain": density, "coverage_domain": cov}


def after(gen: torch.Tensor, ref: dict[str, Any], ext: Extractor, opts: QualityOptions) -> dict[str, float]:
    return {m.name: m.value for m in feature_metrics(gen, ref, "domain", ext, opts)}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def run_case(name: str, samples: torch.Tensor | None, repeats: int) -> dict[str, Any]:
    """Median seconds of one cell's quality evaluation, before and after, and both sets of values."""
    from torch_fidelity.metric_fid import fid_features_to_statistics

    ds_name, n, noise, opts = CASES[name]
    ds = load_dataset(ds_name)
    x = noisy_training_images(ds, n, noise) if samples is None else samples
    ext = domain_extractor(ds, CPU)
    ext.extract(x[:10], opts.batch_size, CPU)  # warm: the net is loaded, its first call costs more
    gen, extract_s = timed(lambda: ext.extract(x, opts.batch_size, CPU)["features"])
    ref = dict(reference_features(ds, ext, opts.n_reference, opts.batch_size, CPU))
    ref.pop("_path", None)  # an in-memory copy: the timing runs never rewrite the cache file
    ref.pop("fast_stats", None)
    real = ref["features"]
    cached = {"fid": fid_features_to_statistics(real), "radii": coverage.knn_radii(real, opts.dc_k)}
    _, first_s = timed(lambda: after(gen, ref, ext, opts))  # builds and keeps ref["fast_stats"]
    build_s = first_s
    variants = {"before": lambda: before(gen, real, cached, opts), "after": lambda: after(gen, ref, ext, opts)}
    times: dict[str, list[float]] = {k: [] for k in variants}
    values: dict[str, dict[str, float]] = {}
    for r in range(repeats):
        for v in (list(variants) if r % 2 == 0 else list(variants)[::-1]):
            values[v], t = timed(variants[v])
            times[v].append(t)
    med = {k: statistics.median(v) for k, v in times.items()}
    build_s -= med["after"]  # the first call is a per-model call plus the RealStats build
    return {
        "dataset": ds_name, "n_samples": len(gen), "n_reference": len(real), "dim": gen.shape[1],
        "kid_subsets": opts.kid_subsets, "kid_subset_size": min(opts.kid_subset_size, len(gen), len(real)),
        "feature_pass_seconds": round(extract_s, 3),
        "metrics_seconds": {k: round(v, 4) for k, v in med.items()},
        "metrics_speedup": round(med["before"] / med["after"], 2),
        "cell_quality_seconds": {k: round(extract_s + v, 3) for k, v in med.items()},
        "cell_quality_speedup": round((extract_s + med["before"]) / (extract_s + med["after"]), 2),
        "real_stats_build_seconds_once_per_reference": round(max(build_s, 0.0), 3),
        "values": values,
        "abs_difference": {k: abs(values["before"][k] - values["after"][k]) for k in values["before"]},
        "rel_difference": {k: abs(values["before"][k] - values["after"][k]) / max(abs(values["before"][k]), 1e-300)
                           for k in values["before"]},
    }


def saved_samples(path: Path) -> torch.Tensor:
    """The first saved sample set (``<model>__seed<k>.npz``) of a run directory's samples/."""
    first = min(path.glob("*.npz"))
    return torch.from_numpy(np.load(first)["samples"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the smoke suite's: 1)")
    ap.add_argument("--smoke-samples", type=Path, default=None, help="a smoke run's samples/ directory")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    report: dict[str, Any] = {"threads": args.threads, "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()[0],
                              "repeats": args.repeats}
    for case in args.cases:
        report[case] = run_case(case, None, args.repeats)
    if args.smoke_samples is not None:
        report["smoke_saved_samples"] = run_case("smoke", saved_samples(args.smoke_samples), args.repeats)
    report["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
