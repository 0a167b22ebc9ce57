"""Bring your own data: every family trains and is evaluated through ``bench run`` on 1- and 3-channel
images of 28-32 px that the test makes (an .npz of coloured shapes; a folder of grayscale PNGs), labelled
or not. The worked example package (examples/bench-example) is in test_example_package.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bench.families import FAMILIES
from conftest import run_cli

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
