"""Speed of the quality-metric pipeline (issue 3): bench's one-pass evaluation vs torch-fidelity called per metric.

    python scripts/bench_metrics.py                 # MNIST, 10,000 vs 10,000, domain space
    python scripts/bench_metrics.py --n 2000 --inception 64 --models 5

Prints one JSON object. Wall-clock seconds depend on what else runs on the machine, so CPU
seconds (``time.process_time``, all threads) and the 1-minute load average are printed too.
The "generated" set is 10,000 MNIST training images with seeded pixel noise: the cost of the
metrics does not depend on what the images show.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.data import load_dataset  # noqa: E402
from bench.metrics import caches, coverage, domain, fidelity  # noqa: E402
from bench.metrics.quality import QualityOptions, evaluate_quality, quick_quality  # noqa: E402

CPU = torch.device("cpu")


def timed(fn: Callable[[], Any]) -> tuple[Any, dict[str, float]]:
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, {"wall_s": round(time.perf_counter() - w, 2), "cpu_s": round(time.process_time() - c, 2)}


class Images(torch.utils.data.Dataset):
    """A tensor of uint8 images as the torch Dataset torch-fidelity takes."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


def naive_torch_fidelity(gen: torch.Tensor, real: torch.Tensor, net_path: Path, opts: QualityOptions, as_user: bool) -> dict[str, Any]:
    """What a user without bench does: one calculate_metrics call per metric, each re-extracting both sets,
    plus one more feature pass for density/coverage (torch-fidelity has no D/C).

    Default: bench's batch size and one BLAS thread (see quality.one_blas_thread), so the ratio measures
    the single pass and the cached reference only. ``as_user``: torch-fidelity's defaults (batch 64,
    BLAS threads as they come), the way a user would call it."""
    from bench.metrics.quality import one_blas_thread

    if as_user:
        return _naive(gen, real, net_path, opts, batch_size=64)
    with one_blas_thread():
        return _naive(gen, real, net_path, opts, batch_size=opts.batch_size)


def _naive(gen: torch.Tensor, real: torch.Tensor, net_path: Path, opts: QualityOptions, batch_size: int) -> dict[str, Any]:
    import torch_fidelity

    common = dict(input1=Images(gen), input2=Images(real), cuda=False, verbose=False, cache=False, batch_size=batch_size,
                  feature_extractor=fidelity.DOMAIN_EXTRACTOR, feature_extractor_weights_path=str(net_path))
    out, t = {}, {}
    out["fid"], t["fid"] = timed(lambda: torch_fidelity.calculate_metrics(fid=True, **common))
    out["kid"], t["kid"] = timed(lambda: torch_fidelity.calculate_metrics(
        kid=True, kid_subsets=opts.kid_subsets, kid_subset_size=opts.kid_subset_size, **common))
    out["prc"], t["prc"] = timed(lambda: torch_fidelity.calculate_metrics(prc=True, **common))

    def dc() -> tuple[float, float]:
        ext = fidelity.DomainFeatureExtractor(fidelity.DOMAIN_EXTRACTOR, ["features"], feature_extractor_weights_path=str(net_path))
        with torch.no_grad():
            fg = torch.cat([ext(b)[0] for b in gen.split(batch_size)])
            fr = torch.cat([ext(b)[0] for b in real.split(batch_size)])
        return coverage.density_coverage(fr, fg, k=opts.dc_k)

    out["dc"], t["dc"] = timed(dc)
    t["total_wall_s"] = round(sum(v["wall_s"] for v in t.values()), 2)
    t["total_cpu_s"] = round(sum(v["cpu_s"] for k, v in t.items() if isinstance(v, dict)), 2)
    return {"values": out, "times": t}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=10_000, help="generated and reference images")
    ap.add_argument("--models", type=int, default=5, help="suite size for the extrapolated ratio")
    ap.add_argument("--inception", type=int, default=32, help="images for the Inception images/s figure (0: skip)")
    ap.add_argument("--skip-naive", action="store_true")
    ap.add_argument("--naive-as-user", action="store_true", help="torch-fidelity with its defaults (batch 64, BLAS threads)")
    args = ap.parse_args()

    report: dict[str, Any] = {"threads": torch.get_num_threads(), "cpus": os.cpu_count(), "load_avg_start": os.getloadavg()[0]}
    ds = load_dataset("mnist")
    path, t = timed(lambda: domain.ensure_domain_net(ds))
    info = domain.load_domain_payload(path)["info"]
    report["domain_net"] = {"file": path.name, "test_accuracy": info["test_accuracy"],
                            "build_wall_s": round(info["build_seconds"], 1), "build_cpu_s": round(info["build_cpu_seconds"], 1),
                            "load": t}

    g = torch.Generator().manual_seed(0)
    gen = (ds.train_x[: args.n].int() + torch.randint(-30, 31, ds.train_x[: args.n].shape, generator=g)).clamp(0, 255).to(torch.uint8)
    opts = QualityOptions(n_reference=args.n)

    # cold: reference features not cached yet (first model of the first run); warm: every later model
    ext = fidelity.domain_extractor(ds, CPU)
    ref_file = caches.reference_path(ds, ext, min(args.n, len(ds.test_x)))
    if ref_file.exists():
        ref_file.unlink()
    fidelity.clear_memory_caches()
    ms, report["bench_cold"] = timed(lambda: evaluate_quality(gen, ds, opts, CPU))
    fidelity.clear_memory_caches()  # warm from disk, as a new process would be
    ms, report["bench_warm"] = timed(lambda: evaluate_quality(gen, ds, opts, CPU))
    report["bench_values"] = {m.name: m.value for m in ms}
    report["bench_warm_breakdown"] = breakdown(gen, ds, opts)

    quick_quality(gen[:500], ds, CPU)
    _, report["quick_quality_500"] = timed(lambda: quick_quality(gen[:500], ds, CPU))

    if not args.skip_naive:
        naive = naive_torch_fidelity(gen, ds.test_x[: args.n], path, opts, args.naive_as_user)
        naive["settings"] = "torch-fidelity defaults" if args.naive_as_user else "bench's batch size, one BLAS thread"
        report["naive_torch_fidelity"] = naive
        m = args.models
        b1, bw, nv = report["bench_cold"]["wall_s"], report["bench_warm"]["wall_s"], naive["times"]["total_wall_s"]
        report["ratio_one_model_cold"] = round(nv / b1, 2)
        report["ratio_one_model_warm"] = round(nv / bw, 2)
        report[f"ratio_suite_{m}_models"] = round(m * nv / (b1 + (m - 1) * bw), 2)
        c1, cw, nc = report["bench_cold"]["cpu_s"], report["bench_warm"]["cpu_s"], naive["times"]["total_cpu_s"]
        report[f"ratio_suite_{m}_models_cpu"] = round(m * nc / (c1 + (m - 1) * cw), 2)

    if args.inception:
        ext_i, t = timed(lambda: fidelity.inception_extractor(CPU))
        x = ds.test_x[: args.inception]
        ext_i.extract(x[:2], 2, CPU)  # warm-up
        _, t = timed(lambda: ext_i.extract(x, 16, CPU))
        report["inception_images_per_s"] = {"images": len(x), **t, "img_per_s_wall": round(len(x) / t["wall_s"], 2),
                                            "img_per_s_per_cpu_s": round(len(x) / t["cpu_s"], 2)}
    report["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=1, default=str))


def breakdown(gen: torch.Tensor, ds, opts: QualityOptions) -> dict[str, dict[str, float]]:
    """Where the warm evaluation spends its time, step by step."""
    from bench.metrics.quality import class_metrics, feature_metrics

    out = {}
    ext = fidelity.domain_extractor(ds, CPU)
    feats, out["extract_generated"] = timed(lambda: ext.extract(gen, opts.batch_size, CPU))
    ref, out["load_reference"] = timed(lambda: caches.reference_features(ds, ext, opts.n_reference, opts.batch_size, CPU))
    for name in ("fid", "kid", "precision_recall", "density_coverage"):
        o = opts.model_copy(update={"metrics": [name]})
        _, out[name] = timed(lambda: feature_metrics(feats["features"], ref, "domain", ext, o))
    _, out["class_coverage"] = timed(lambda: class_metrics(feats["logits"], ds, opts, ext.key))
    return out


if __name__ == "__main__":
    main()
