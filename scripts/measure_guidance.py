"""Controllability and measured NFE of the conditional families as the guidance knobs move (issue 13).

    python scripts/measure_guidance.py                     # 8x8 digits, 400 steps per model, a few minutes
    python scripts/measure_guidance.py --steps 200 --n 300 --models cfg_diffusion cvae

Each model trains once (``Engine.step`` on batches of 128, fixed seed), then every point of its
grid changes only sampling options (``set_sampling_options``) and draws ``n`` samples with the
labels 0..K-1 in turn. Per point: the share of samples the dataset's domain classifier (the one
the quality metrics use) assigns to the requested class ("controllability"; chance is 1/K), the
NFE per sample counted by ``measure_nfe`` beside the declared one, and seconds per sample. Timings
depend on what else runs on the machine (the 1-minute load average is printed). Prints one JSON
object, and a table on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.data import load_dataset  # noqa: E402
from bench.engine import Engine  # noqa: E402
from bench.evaluate import to_uint8  # noqa: E402
from bench.families.base import DataSpec, GenerativeModel, count_calls  # noqa: E402
from bench.families.autoregressive import Autoregressive, AutoregressiveOptions  # noqa: E402
from bench.families.diffusion import Diffusion, DiffusionOptions  # noqa: E402
from bench.families.flow_matching import FlowMatching, FlowMatchingOptions  # noqa: E402
from bench.families.gan import GAN, GANOptions  # noqa: E402
from bench.families.vae import VAE, VAEOptions  # noqa: E402
from bench.metrics.domain import ensure_domain_net, load_domain_net  # noqa: E402

# name -> (family class, options, the sampling knob and its grid)
MODELS: dict[str, tuple[type[GenerativeModel], Any, str | None, list[Any]]] = {
    "cfg_diffusion": (Diffusion, DiffusionOptions(conditional=True), "guidance", [0.0, 1.0, 2.0, 4.0]),
    "classifier_diffusion": (Diffusion, DiffusionOptions(classifier=True), "classifier_guidance",
                             [0.0, 1.0, 4.0, 16.0]),
    "cfg_flow_matching": (FlowMatching, FlowMatchingOptions(conditional=True, likelihood=False), "guidance",
                          [0.0, 1.0, 2.0, 4.0]),
    "cvae": (VAE, VAEOptions(conditional=True), None, [None]),
    "cpixelcnn": (Autoregressive, AutoregressiveOptions(conditional=True), None, [None]),
    "cgan": (GAN, GANOptions(conditional=True), "truncation", [None, 1.0, 0.5]),
}


def train(cls: type[GenerativeModel], opts: Any, spec: DataSpec, ds: Any, steps: int, seed: int) -> GenerativeModel:
    torch.manual_seed(seed)
    model = cls(spec, opts)
    model.seed_training(seed)
    engine, g = Engine(model), torch.Generator().manual_seed(seed)
    x_all, y_all = ds.train_x.float() / 255, ds.train_y
    for _ in range(steps):
        idx = torch.randint(0, len(x_all), (128,), generator=g)
        engine.step(x_all[idx], y_all[idx])
    return model.eval()


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", default="digits")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--n", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    ds = load_dataset(args.dataset)
    spec = DataSpec(ds.kind, ds.shape, ds.num_classes, tuple(ds.class_frequencies().tolist()))
    clf = load_domain_net(ensure_domain_net(ds))
    y = torch.arange(args.n) % ds.num_classes
    rows = []
    for name in args.models:
        cls, opts, knob, grid = MODELS[name]
        t0 = time.perf_counter()
        model = train(cls, opts, spec, ds, args.steps, args.seed)
        train_s = time.perf_counter() - t0
        for value in grid:
            if knob is not None:
                model.set_sampling_options(**{knob: value})
            t0 = time.perf_counter()
            with torch.no_grad(), count_calls(*model.nfe_modules()) as calls:
                x = model.sample(args.n, torch.Generator().manual_seed(args.seed + 1), y)
            seconds = time.perf_counter() - t0
            with torch.no_grad():
                pred = clf(to_uint8(x).float() / 255)[1].argmax(1)
            rows.append({"model": name, "knob": knob, "value": value, "train_steps": args.steps,
                         "train_s": round(train_s, 1),
                         "controllability": round((pred == y).float().mean().item(), 3),
                         "nfe_measured": calls.per_sample(args.n), "nfe_declared": model.nfe_per_sample,
                         "ms_per_sample": round(1000 * seconds / args.n, 3)})
            print(" ".join(f"{k}={v}" for k, v in rows[-1].items()), file=sys.stderr, flush=True)
    out = {"dataset": args.dataset, "n": args.n, "chance": 1 / ds.num_classes, "load_1min": os.getloadavg()[0],
           "rows": rows}
    print(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
