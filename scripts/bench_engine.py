"""Training speed of the engine (issue 15): engine vs a bare hand-written loop, and bf16 vs fp32 autocast.

    python scripts/bench_engine.py                      # every family on MNIST, ~3 minutes
    python scripts/bench_engine.py --families vae gan --rounds 3 --block-seconds 0.5
    python scripts/bench_engine.py --smoke-seconds 10   # also: the smoke suite at equal seconds, fp32 vs bf16

Per family (default options, 1x28x28 MNIST; batch 128, flow and PixelCNN 32, GAN 64), three
variants train on the same batches, interleaved in one run so that load on the machine hits them
alike: ``engine`` (``Engine.step``, fp32), ``bare`` (zero_grad / backward / clip / step / EMA written
out by hand, what the families did before the engine) and ``bf16`` (``Engine.step`` with bf16
autocast; skipped where unsupported). Each round times a block of steps (at least
``--block-seconds``) per variant, in a rotating order; a variant's steps/s is the median over rounds,
and the ratios are medians of per-round ratios. Prints one JSON object (and a table on stderr).

``--smoke-seconds S`` then runs ``suites/smoke.yaml`` twice with ``budget: {seconds: S}``, once in
fp32 and once in bf16, and prints the change in its headline metrics: what bf16 buys at equal
training time. Wall-clock numbers depend on what else runs on the machine; the 1-minute load
average is printed beside them.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.config import Budget, load_suite  # noqa: E402
from bench.data import load_dataset  # noqa: E402
from bench.engine import Engine, TrainSettings, bf16_supported, ema_update_  # noqa: E402
from bench.errors import BenchError  # noqa: E402
from bench.families import FAMILIES, DataSpec, GenerativeModel  # noqa: E402
from bench.families.gan import GAN  # noqa: E402

BATCH = {"flow": 32, "autoregressive": 32, "gan": 64}
ROOT = Path(__file__).resolve().parent.parent

StepFn = Callable[[torch.Tensor, torch.Tensor], Any]


def mnist_images(n: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """n training images of MNIST (random uint8 of its shape if it cannot be loaded) and labels."""
    try:
        ds = load_dataset("mnist")
        return ds.train_x[:n], ds.train_y[:n], "mnist"
    except BenchError:
        g = torch.Generator().manual_seed(0)
        return (torch.randint(0, 256, (n, 1, 28, 28), generator=g, dtype=torch.uint8),
                torch.randint(0, 10, (n,), generator=g), "random uint8")


def build(name: str, spec: DataSpec) -> GenerativeModel:
    cls = FAMILIES.get(name).cls
    torch.manual_seed(0)
    m = cls(spec, cls.Options())
    m.train()
    m.seed_training(0)
    return m


def bare_step(model: GenerativeModel) -> StepFn:
    """What a family's training_step did before the engine, written out: the baseline the engine is timed against."""
    if isinstance(model, GAN):
        return bare_gan_step(model)
    if not list(model.parameters()):  # naive Bayes: counting, no optimiser
        return lambda x, y: model.training_step(x, y)
    d = type(model).train_defaults
    opt = model.configure_optimizers()["adam"]
    base_lr = opt.param_groups[0]["lr"]
    averaged = model.ema_modules()
    if averaged:
        model.init_ema()
    steps = [0]

    def step(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        losses = model.loss(x, y)
        loss = losses[model.watched_loss]
        steps[0] += 1
        if d.warmup_steps:
            for g in opt.param_groups:
                g["lr"] = base_lr * min(1.0, steps[0] / d.warmup_steps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if d.grad_clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), d.grad_clip)
        opt.step()
        for name, live in averaged.items():
            ema_update_(model.ema[name], live, min(d.ema or 0.0, (1 + steps[0]) / (10 + steps[0])))
        return {k: float(v.detach()) for k, v in losses.items()}

    return step


def bare_gan_step(m: GAN) -> StepFn:
    """The GAN's alternating update (default non-saturating loss, one D step) written out."""
    opts = m.configure_optimizers()

    def step(x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
        real, b = x * 2 - 1, x.shape[0]
        m.D.requires_grad_(True)
        with torch.no_grad():
            fake = m.G(m._noise(b, m.gen), None)
        loss_d = m._d_loss(m.D(real, None), m.D(fake, None))
        opts["d"].zero_grad(set_to_none=True)
        loss_d.backward()
        opts["d"].step()
        m.D.requires_grad_(False)
        loss_g = m._g_loss(m.D(m.G(m._noise(b, m.gen), None), None))
        opts["g"].zero_grad(set_to_none=True)
        loss_g.backward()
        opts["g"].step()
        m.D.requires_grad_(True)
        return {"loss_d": float(loss_d.detach()), "loss_g": float(loss_g.detach())}

    return step


def engine_step(model: GenerativeModel, settings: TrainSettings | None = None) -> StepFn:
    engine = Engine(model, settings)
    return lambda x, y: {k: float(v) for k, v in engine.step(x, y).items()}  # float(): as the loop logs them


def time_block(step: StepFn, batches: list[tuple[torch.Tensor, torch.Tensor]], start: int,
               min_seconds: float) -> tuple[float, int]:
    """Steps/s over a block of at least ``min_seconds`` (and 2 steps), cycling through the batches."""
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < min_seconds:
        x, y = batches[(start + n) % len(batches)]
        step(x.float() / 255, y)
        n += 1
    return n / (time.perf_counter() - t0), n


def measure(name: str, images: torch.Tensor, labels: torch.Tensor, rounds: int, block_s: float,
            bf16: bool) -> dict[str, Any]:
    """Interleaved rounds of engine / bare / bf16 on the same batches; medians of steps/s and of per-round ratios."""
    spec = DataSpec("image", tuple(images.shape[1:]), 10, (0.1,) * 10)
    bs = BATCH.get(name, 128)
    batches = [(images[i:i + bs], labels[i:i + bs]) for i in range(0, len(images) - bs + 1, bs)]
    variants: dict[str, StepFn] = {"engine": engine_step(build(name, spec)), "bare": bare_step(build(name, spec))}
    bf16 = bf16 and bool(list(build(name, spec).parameters()))  # naive Bayes counts: nothing to autocast
    if bf16:
        variants["bf16"] = engine_step(build(name, spec), TrainSettings(precision="bf16"))
    for step in variants.values():  # warm-up: lazy init (ActNorm, allocator, oneDNN kernels)
        time_block(step, batches, 0, 0.0)
    rates: dict[str, list[float]] = {v: [] for v in variants}
    pos = {v: 2 for v in variants}
    order = list(variants)
    for r in range(rounds):
        for v in order[r % len(order):] + order[: r % len(order)]:  # rotate who goes first
            rate, n = time_block(variants[v], batches, pos[v], block_s)
            rates[v].append(rate)
            pos[v] += n
    out: dict[str, Any] = {"batch_size": bs, "rounds": rounds}
    for v, rs in rates.items():
        out[f"{v}_steps_per_s"] = round(statistics.median(rs), 3)
    out["engine_vs_bare"] = round(statistics.median(e / b for e, b in zip(rates["engine"], rates["bare"])), 3)
    if bf16:
        out["bf16_vs_fp32"] = round(statistics.median(h / e for h, e in zip(rates["bf16"], rates["engine"])), 3)
    return out


# ---------------------------------------------------------------------- smoke at equal seconds
SMOKE_METRICS = ("fid_domain", "classes_covered", "nll_bpd_exact", "nll_bpd_elbo", "nll_bpd_vlb", "nll_bpd_ode",
                 "train_steps_per_s")


def smoke_at_equal_seconds(seconds: float, seeds: list[int] | None) -> dict[str, Any]:
    """The smoke suite with a wall-clock budget, fp32 then bf16: per model, the mean of each headline metric."""
    from bench.runner import run_suite
    from bench.store import RunStore

    path = ROOT / "suites" / "smoke.yaml"
    cfg = load_suite(path)
    out: dict[str, Any] = {"seconds": seconds}
    with tempfile.TemporaryDirectory(prefix="bench-engine-") as tmp:
        for precision in ("fp32", "bf16"):
            run = cfg.model_copy(update={"budget": Budget(seconds=seconds),
                                         "train": TrainSettings(precision=precision)})
            run_dir = run_suite(run, path, out=Path(tmp) / precision, seeds=seeds, quiet=True)
            for rec in RunStore(run_dir).records():
                row = out.setdefault(rec.model, {})
                for k in SMOKE_METRICS:
                    v = rec.value(k)
                    if v is not None and math.isfinite(v):
                        row.setdefault(f"{k}_{precision}", []).append(v)
    for model, row in out.items():
        if isinstance(row, dict):
            for k in list(row):
                row[k] = round(statistics.fmean(row[k]), 4)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", nargs="*", default=FAMILIES.names())
    ap.add_argument("--rounds", type=int, default=5, help="interleaved timing rounds per family")
    ap.add_argument("--block-seconds", type=float, default=1.0, help="minimum length of one timed block")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--smoke-seconds", type=float, default=None, help="also run the smoke suite at this many "
                    "seconds per cell, fp32 vs bf16")
    ap.add_argument("--smoke-seeds", type=int, nargs="*", default=None, help="seeds of the smoke comparison "
                    "(default: the suite's)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    images, labels, source = mnist_images(4096)
    bf16 = bf16_supported(torch.device("cpu"))
    result: dict[str, Any] = {"data": source, "torch": torch.__version__, "threads": torch.get_num_threads(),
                              "bf16_supported": bf16, "load_avg_1min_before": round(os.getloadavg()[0], 2),
                              "families": {}}
    t0 = time.perf_counter()
    for name in args.families:
        result["families"][name] = r = measure(name, images, labels, args.rounds, args.block_seconds, bf16)
        print(f"{name:<15} engine {r['engine_steps_per_s']:8.2f}  bare {r['bare_steps_per_s']:8.2f}  "
              f"engine/bare {r['engine_vs_bare']:.3f}" + (f"  bf16 {r['bf16_steps_per_s']:8.2f}  "
                                                         f"bf16/fp32 {r['bf16_vs_fp32']:.3f}" if "bf16_vs_fp32" in r else ""),
              file=sys.stderr, flush=True)
    result["timing_seconds"] = round(time.perf_counter() - t0, 1)
    result["load_avg_1min_after"] = round(os.getloadavg()[0], 2)
    if args.smoke_seconds:
        if not bf16:
            raise SystemExit("--smoke-seconds compares bf16 with fp32, and this CPU has no bf16 support")
        result["smoke_equal_seconds"] = smoke_at_equal_seconds(args.smoke_seconds, args.smoke_seeds)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
