"""Inception-v3 on a CPU: images/s of torch-fidelity's extractor vs the fast exact path vs bf16, and FID exact vs bf16 (issue 12 part 2).

    python scripts/bench_inception.py                          # about 15 minutes on a busy 2-core CPU
    python scripts/bench_inception.py --images 16 --repeats 2 --fid-images 0   # throughput only, ~2 min

1. Throughput. MNIST test digits (28x28, grayscale repeated to 3 channels, resized to 299 by
   torch-fidelity's TF-1.x filter inside every variant) through torch-fidelity's
   ``FeatureExtractorInceptionV3`` and ``bench.metrics.inception_fast.FastInceptionV3`` in fp32
   and bf16, at each ``--batch-sizes``; ``--images`` images per run, the variants interleaved
   in a rotating order, ``--repeats`` times; medians of images/s. The maximum feature
   difference of each path against torch-fidelity's on the same images is reported too.
2. FID, exact vs bf16, on real sample sets of ``--fid-images`` images each against the same
   number of MNIST test images: other real digits (train split), train digits with seeded
   +-30 grey-level noise, and train digits blurred (3x3 box filter) -- close to and far from
   the reference. "Exact" is the fast fp32 path (features equal to torch-fidelity's to ~1e-5).

Prints one JSON object; wall-clock figures depend on what else runs on the machine.
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

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.data import load_dataset  # noqa: E402
from bench.metrics import fast, inception, inception_fast  # noqa: E402


def rgb(x: torch.Tensor) -> torch.Tensor:
    return x.expand(-1, 3, -1, -1)  # (N, 1, H, W) uint8 -> (N, 3, H, W), as bench's Extractor.prepare


def features(net: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    with torch.no_grad():
        return torch.cat([net(rgb(b))[0].float() for b in x.split(batch_size)])  # (N, 2048)


def throughput(nets: dict[str, torch.nn.Module], x: torch.Tensor, batch_sizes: list[int], repeats: int) -> dict[str, Any]:
    runs: dict[str, Callable[[], torch.Tensor]] = {
        f"{name}@{bs}": (lambda net=net, bs=bs: features(net, x, bs)) for name, net in nets.items() for bs in batch_sizes}
    for name, net in nets.items():
        features(net, x[:2], 2)  # warm-up: oneDNN primitive creation, first-touch allocations
    speed: dict[str, list[float]] = {k: [] for k in runs}
    outputs: dict[str, torch.Tensor] = {}
    names = list(runs)
    for r in range(repeats):
        for name in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            outputs[name] = runs[name]()
            speed[name].append(len(x) / (time.perf_counter() - t0))
    med = {k: round(statistics.median(v), 2) for k, v in speed.items()}
    best = {name: max((med[f"{name}@{bs}"], bs) for bs in batch_sizes) for name in nets}
    ref = outputs[f"torch_fidelity@{batch_sizes[0]}"]
    base = best["torch_fidelity"][0]
    return {
        "images_per_s_median": med,
        "best": {name: {"images_per_s": v, "batch_size": bs, "speedup_vs_torch_fidelity": round(v / base, 2)}
                 for name, (v, bs) in best.items()},
        "max_abs_feature_difference_vs_torch_fidelity": {
            name: float((outputs[f"{name}@{batch_sizes[0]}"] - ref).abs().max()) for name in nets},
        "relative_l2_feature_difference_vs_torch_fidelity": {
            name: float((outputs[f"{name}@{batch_sizes[0]}"] - ref).norm() / ref.norm()) for name in nets},
    }


def fid_sets(n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Reference (test digits) and three sample sets of n real MNIST digits each, near to far."""
    ds = load_dataset("mnist")
    g = torch.Generator().manual_seed(seed)
    train = ds.train_x
    noisy = (train[n : 2 * n].int() + torch.randint(-30, 31, (n, *train.shape[1:]), generator=g)).clamp(0, 255)
    blurred = F.avg_pool2d(train[2 * n : 3 * n].float(), 3, stride=1, padding=1, count_include_pad=False)
    return {"reference_test": ds.test_x[:n], "train": train[:n], "train_noised_30": noisy.to(torch.uint8),
            "train_blurred_3x3": blurred.round().to(torch.uint8)}


def fid_exact_vs_bf16(nets: dict[str, torch.nn.Module], n: int, batch_size: int) -> dict[str, Any]:
    sets = fid_sets(n)
    feats = {p: {name: features(nets[p], x, batch_size) for name, x in sets.items()} for p in ("fast_fp32", "fast_bf16")}
    out: dict[str, Any] = {"images_per_set": n, "reference": f"{n} MNIST test digits"}
    for name in sets:
        if name == "reference_test":
            continue
        exact = fast.fid(feats["fast_fp32"][name], fast.RealStats.build(feats["fast_fp32"]["reference_test"]))
        approx = fast.fid(feats["fast_bf16"][name], fast.RealStats.build(feats["fast_bf16"]["reference_test"]))
        out[name] = {"fid_exact": round(exact, 4), "fid_bf16": round(approx, 4),
                     "relative_difference": round((approx - exact) / exact, 5)}
    out["max_relative_difference"] = max(abs(v["relative_difference"]) for k, v in out.items() if isinstance(v, dict))
    out["within_BF16_FID_TOLERANCE"] = out["max_relative_difference"] <= inception_fast.BF16_FID_TOLERANCE
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=32, help="images per throughput run")
    ap.add_argument("--batch-sizes", default="8,16,32", help="comma-separated; the first is also the feature check's")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--fid-images", type=int, default=500, help="images per FID set (0: skip the FID part)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    weights = str(inception.weights_path())
    nets: dict[str, torch.nn.Module] = {
        "torch_fidelity": FeatureExtractorInceptionV3(inception.EXTRACTOR_NAME, [inception.FEATURE_LAYER],
                                                      feature_extractor_weights_path=weights),
        "fast_fp32": inception_fast.fast_inception(weights, "fp32"),
        "fast_bf16": inception_fast.fast_inception(weights, "bf16"),
    }
    report: dict[str, Any] = {"threads": args.threads, "cpus": os.cpu_count(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                              "bf16_instructions": inception_fast.bf16_supported(), "load_avg_start": os.getloadavg()[0]}
    x = load_dataset("mnist").test_x[: args.images]
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    report["throughput"] = throughput(nets, x, batch_sizes, args.repeats)
    if args.fid_images:
        report["fid"] = fid_exact_vs_bf16(nets, args.fid_images, report["throughput"]["best"]["fast_fp32"]["batch_size"])
    report["load_avg_end"] = os.getloadavg()[0]
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
