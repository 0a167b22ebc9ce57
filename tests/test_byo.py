"""Bring your own data, model and metric, through ``bench run`` in a real subprocess.

* Every family trains and is evaluated on 1- and 3-channel images of 28-32 px that the test makes
  (an .npz of coloured shapes; an unlabelled folder of grayscale PNGs).
* The worked example package ``examples/bench-example`` is pip-installed into a folder of its own and
  its model, metric and dataset are used by their entry-point names and by import path. The model half
  needs the engine's family contract (loss / configure_optimizers) and the metric half the evaluator
  registry (``bench.metrics.base``): each is skipped, saying why, on a checkout that has not got them."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from bench.families import FAMILIES, GenerativeModel
from conftest import ROOT, run_cli

# exact likelihood, bound or estimate: the families that report some nll_bpd_* (GAN and autoencoder report none)
LIKELIHOOD_FAMILIES = {"naive_bayes", "vae", "flow", "autoregressive", "diffusion", "flow_matching"}


def shapes(n: int, size: int, channels: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Squares, discs and crosses (class 0, 1, 2) in a random bright colour on a random dark background,
    at random positions and sizes: uint8 (N, H, W, C) and int64 (N,) labels."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    x = np.zeros((n, size, size, channels), np.uint8)
    y = rng.integers(0, 3, n)
    for i in range(n):
        r = int(rng.integers(size // 6, size // 3))
        cy, cx = rng.integers(r, size - r, 2)
        dy, dx = abs(yy - cy), abs(xx - cx)
        mask = [(dy <= r) & (dx <= r), dy**2 + dx**2 <= r * r, ((dy <= r // 3) & (dx <= r)) | ((dx <= r // 3) & (dy <= r))][y[i]]
        x[i] = rng.integers(0, 40, channels)
        x[i][mask] = rng.integers(120, 256, channels)
    return x, y.astype(np.int64)


def every_family_suite(dataset: str, extra_models: str = "") -> str:
    models = "".join(f"  - {{name: {f}, family: {f}}}\n" for f in FAMILIES.names())
    return (
        f"name: byo\ndataset: {dataset}\nbudget: {{steps: 3}}\nbatch_size: 16\nthreads: 1\n"
        "eval: {metrics: [likelihood, speed], n_samples: 8, likelihood_examples: 8, likelihood_batch_size: 8,\n"
        "       speed: {batch_size: 8, repeats: 1, warmup: 0}}\n"
        f"models:\n{models}{extra_models}"
    )


def records(run_dir: Path) -> dict[str, dict]:
    return {p.stem.split("__")[0]: json.loads(p.read_text()) for p in (run_dir / "records").glob("*.json")}


def check_every_family(run_dir: Path, shape: tuple[int, int, int]) -> None:
    recs = records(run_dir)
    assert set(recs) == set(FAMILIES.names())
    for name, rec in recs.items():
        assert rec["status"] == "ok", (name, rec["error"])
        with np.load(run_dir / rec["artifacts"]["samples"]) as npz:
            samples = npz["samples"]
        assert samples.dtype == np.uint8 and samples.shape == (8, *shape), (name, samples.shape)
        metrics = {m["name"]: m["value"] for m in rec["metrics"]}
        assert metrics["samples_per_s"] > 0
        bpd = [v for k, v in metrics.items() if k.startswith("nll_bpd_")]
        if name in LIKELIHOOD_FAMILIES:
            # 8-bit data: any proper model gives a finite, positive number of bits per dimension; an untrained
            # one lands within a few bits of uniform (8 bits/dim); anything beyond 20 is a unit or scale bug
            assert bpd and all(0 < v < 20 for v in bpd), (name, bpd)


@pytest.fixture
def colour_npz(tmp_path) -> Path:
    x, y = shapes(240, 32, 3)
    path = tmp_path / "shapes.npz"
    np.savez(path, x=x, y=y)  # (N, H, W, C): channels last, as most image arrays come
    return path


def test_every_family_on_colour_32px_npz(colour_npz, tmp_path, write_suite):
    suite = write_suite(every_family_suite(f"{{name: npz, path: {colour_npz}}}"))
    out = tmp_path / "run"
    proc = run_cli("run", str(suite), "--quiet", "--out", str(out), env={"BENCH_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_every_family(out, (3, 32, 32))
    assert list((tmp_path / "cache" / "datasets").glob("npz-*.npz.sha256"))  # converted once, checksummed


def test_every_family_on_grayscale_28px_png_folder_without_labels(tmp_path, write_suite):
    """A flat folder of PNGs: no labels, so naive Bayes fits one component and a conditional GAN is refused."""
    x, _ = shapes(200, 28, 1, seed=1)
    root = tmp_path / "pngs"
    root.mkdir()
    for i, img in enumerate(x):
        Image.fromarray(img[:, :, 0]).save(root / f"{i:03d}.png")  # a 2-D uint8 array: mode L
    dataset = f"{{name: folder, root: {root}}}"
    env = {"BENCH_CACHE": str(tmp_path / "cache")}
    cond = write_suite(every_family_suite(dataset, "  - {name: cgan, family: gan, options: {conditional: true}}\n"), "c.yaml")
    proc = run_cli("run", str(cond), "--quiet", "--out", str(tmp_path / "refused"), env=env)
    assert proc.returncode == 2 and "conditional: dataset folder has no labels" in proc.stderr, proc.stderr[-2000:]
    out = tmp_path / "run"
    proc = run_cli("run", str(write_suite(every_family_suite(dataset))), "--quiet", "--out", str(out), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    check_every_family(out, (1, 28, 28))


# --- the worked example package -------------------------------------------------------------------------

EXAMPLE = ROOT / "examples" / "bench-example"
HAS_ENGINE = hasattr(GenerativeModel, "configure_optimizers")  # the family contract the example model is written to
HAS_EVALUATORS = importlib.util.find_spec("bench.metrics.base") is not None  # the evaluator registry


@pytest.fixture(scope="module")
def example_env(tmp_path_factory) -> dict[str, str]:
    """The example installed the way a user installs a plugin (pip reads its pyproject and writes the entry
    points), into a folder of its own that the bench subprocess gets on PYTHONPATH."""
    tmp = tmp_path_factory.mktemp("example")
    src = tmp / "bench-example"
    shutil.copytree(EXAMPLE, src)  # pip builds inside the source tree: keep the repository clean
    site = tmp / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(src)], check=True, capture_output=True, timeout=300)
    return {"PYTHONPATH": f"{ROOT}{os.pathsep}{site}", "BENCH_CACHE": str(tmp / "cache")}


EXAMPLE_SUITE = """
name: example
dataset: {dataset}
budget: {{steps: {steps}}}
batch_size: 64
threads: 1
eval: {{metrics: {metrics}, n_samples: 64, likelihood_batch_size: 64, speed: {{batch_size: 64, repeats: 1, warmup: 0}}}}
models:
{models}
"""


def run_example(write_suite, env: dict[str, str], out: Path, *, dataset: str = "{name: stripes, n_train: 256, n_test: 64}",
                steps: int = 5, metrics: str = "[likelihood, speed]", models: str = "  - {name: nb, family: naive_bayes}",
                validate_only: bool = False) -> subprocess.CompletedProcess:
    text = EXAMPLE_SUITE.format(dataset=dataset, steps=steps, metrics=metrics, models=models)
    suite = write_suite(text, f"{out.name}.yaml")
    args = ("validate", str(suite)) if validate_only else ("run", str(suite), "--quiet", "--out", str(out))
    return run_cli(*args, env=env)


def test_example_dataset_by_entry_point_and_import_path(example_env, tmp_path, write_suite):
    listed = run_cli("list", env=example_env)
    assert listed.returncode == 0, listed.stderr
    assert "plugin bench_example.data:Stripes from bench-example 0.1.0" in listed.stdout
    assert "plugin bench_example.model:PixelGaussian from bench-example 0.1.0" in listed.stdout
    proc = run_example(write_suite, example_env, tmp_path / "entry")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rec,) = records(tmp_path / "entry").values()
    assert rec["status"] == "ok" and any(m["name"] == "nll_bpd_exact" for m in rec["metrics"])
    by_path = run_example(write_suite, example_env, tmp_path / "path", validate_only=True,
                          dataset="{name: 'bench_example.data:Stripes', n_train: 256}")
    assert by_path.returncode == 0 and "ok" in by_path.stdout, by_path.stderr
    wrong = run_example(write_suite, example_env, tmp_path / "wrong", validate_only=True,
                        dataset="{name: 'bench_example.data:Stripe'}")
    assert wrong.returncode == 2 and "dataset.name: dataset 'bench_example.data:Stripe': bench_example.data has no " \
        "attribute 'Stripe'" in wrong.stderr, wrong.stderr


@pytest.mark.skipif(not HAS_ENGINE, reason="the example model is written to the engine's family contract "
                    "(loss, watched_loss, configure_optimizers): passes once the engine branch is merged")
def test_example_model_trains_by_entry_point_and_import_path(example_env, tmp_path, write_suite):
    models = ("  - {name: pg, family: pixel_gaussian}\n"
              "  - {name: pg-path, family: 'bench_example.model:PixelGaussian', options: {lr: 0.02}}")
    out = tmp_path / "model"
    proc = run_example(write_suite, example_env, out, steps=60, models=models)
    assert proc.returncode == 0, proc.stderr[-3000:]
    recs = records(out)
    assert recs["pg"]["family"] == "pixel_gaussian" and recs["pg-path"]["family"] == "bench_example.model:PixelGaussian"
    for name, rec in recs.items():
        assert rec["status"] == "ok", (name, rec["error"])
        log = pd.read_csv(out / rec["artifacts"]["log"])
        assert log["nll"].iloc[-5:].mean() < 0.9 * log["nll"].iloc[:5].mean(), name  # it learns
        bpd = next(m["value"] for m in rec["metrics"] if m["name"] == "nll_bpd_exact")
        assert 0 < bpd < 8, (name, bpd)  # better than uniform over 256 values (8 bits/dim)


@pytest.mark.skipif(not HAS_EVALUATORS, reason="the example metric is written to the evaluator registry "
                    "(bench.metrics.base): passes once the evaluators branch is merged")
def test_example_metric_by_entry_point_and_import_path(example_env, tmp_path, write_suite):
    out = tmp_path / "metric"
    proc = run_example(write_suite, example_env, out, metrics="[likelihood, mean_brightness]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    (rec,) = records(out).values()
    values = {m["name"]: m["value"] for m in rec["metrics"]}
    assert 0 <= values["brightness_gap"] <= 1 and 0 <= values["mean_brightness"] <= 1
    by_path = run_example(write_suite, example_env, tmp_path / "path", validate_only=True,
                          metrics="[likelihood, 'bench_example.metric:MeanBrightness']")
    assert by_path.returncode == 0, by_path.stderr


@pytest.mark.slow
def test_domain_feature_space_on_colour_32px(colour_npz, tmp_path, write_suite):
    """The domain classifier trains on 3x32x32 colour data (about a minute on a busy 2-core CPU) and the
    quality metrics read it: real shapes are told apart, so the classifier passes its accuracy floor."""
    text = (f"name: colour-quality\ndataset: {{name: npz, path: {colour_npz}}}\nbudget: {{steps: 3}}\nbatch_size: 16\n"
            "threads: 1\neval: {metrics: [quality], n_samples: 32, quality: {n_reference: 48, kid_subset_size: 16}}\n"
            "models:\n  - {name: vae, family: vae}\n  - {name: gan, family: gan}\n")
    out = tmp_path / "run"
    proc = run_cli("run", str(write_suite(text)), "--quiet", "--out", str(out), env={"BENCH_CACHE": str(tmp_path / "cache")})
    assert proc.returncode == 0, proc.stderr[-3000:]
    for name, rec in records(out).items():
        values = {m["name"]: m["value"] for m in rec["metrics"]}
        assert rec["status"] == "ok" and values["fid_domain"] is not None and values["fid_domain"] > 0, (name, values)
