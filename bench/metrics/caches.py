"""The on-disk caches that make the quality metrics cheap: dataset fingerprints and real-data features.

Every cache file (the domain net of ``bench.metrics.domain``, the reference features here) is
written with ``bench.io.torch_save_with_sidecar`` and read with ``bench.io.cached_torch_file``:
a ``<file>.sha256`` sidecar is checked on every load, a mismatch is a one-line ``BenchError``
naming the file, and a file without its sidecar (an interrupted write, or a cache from before
sidecars) counts as not cached and is rebuilt.

Reference (real test-split) features are keyed by dataset (name and a fingerprint of its
data), split, extractor (name, version, weights digest), sample count and subset seed
(``reference_path``). Derived statistics (FID mean/covariance, k-NN radii) are added to the
same file by ``update_reference``, so they too are computed once.
"""
from __future__ import annotations

import hashlib
import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from bench.data import Dataset, cache_dir
from bench.io import cached_torch_file, torch_save_with_sidecar

if TYPE_CHECKING:
    from bench.metrics.fidelity import Extractor

REFERENCE_FORMAT = "2"  # bump when the content of reference files changes

_FINGERPRINTS: dict[int, str] = {}
_REFERENCES: dict[str, dict[str, Any]] = {}  # loaded reference caches, keyed by path


def _tensor_digest(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes, memoised per tensor object (datasets are not mutated in place)."""
    key = id(t)
    if key not in _FINGERPRINTS:
        h = hashlib.sha256(str((tuple(t.shape), str(t.dtype))).encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
        _FINGERPRINTS[key] = h.hexdigest()
        weakref.finalize(t, _FINGERPRINTS.pop, key, None)
    return _FINGERPRINTS[key]


def split_fingerprint(ds: Dataset, split: str) -> str:
    """12 hex digits identifying the exact content of one split (images and labels)."""
    x, y = (ds.train_x, ds.train_y) if split == "train" else (ds.test_x, ds.test_y)
    return hashlib.sha256((_tensor_digest(x) + _tensor_digest(y)).encode()).hexdigest()[:12]


def features_dir() -> Path:
    return cache_dir() / "features"


def reference_subset(n_total: int, n: int, seed: int = 0) -> torch.Tensor:
    """Indices of the reference images: all of the split in order, or a seeded random subset of ``n``."""
    if n >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


def reference_path(ds: Dataset, ext: Extractor, n: int, split: str = "test", seed: int = 0) -> Path:
    name = f"ref{REFERENCE_FORMAT}-{ds.name}-{split}-{split_fingerprint(ds, split)}-{ext.key}-n{n}-s{seed}.pt"
    return features_dir() / name


def reference_features(
    ds: Dataset, ext: Extractor, n: int, batch_size: int, device: torch.device, split: str = "test", seed: int = 0
) -> dict[str, Any]:
    """Cached features of ``n`` real images of ``split`` (capped at the split size).

    Returns ``{"features": (n, F), ["logits": (n, K)], "n": n, ["labels": (n,)]}`` (labels when the
    dataset has them); callers add derived statistics with ``update_reference``.
    """
    x = ds.test_x if split == "test" else ds.train_x
    y = ds.test_y if split == "test" else ds.train_y
    n = min(n, len(x))
    path = reference_path(ds, ext, n, split, seed)
    if str(path) in _REFERENCES:
        return _REFERENCES[str(path)]
    ref = cached_torch_file(path)  # tensors and plain values only (weights_only), checked against its sidecar
    if ref is None:
        idx = reference_subset(len(x), n, seed)
        ref = ext.extract(x[idx], batch_size, device)
        ref.update({"n": n, "seed": seed, "split": split, "device": str(device)})
        if ds.has_labels:
            ref["labels"] = y[idx]
        torch_save_with_sidecar(ref, path)
    ref["_path"] = str(path)
    _REFERENCES[str(path)] = ref
    return ref


def update_reference(ref: dict[str, Any], **items: Any) -> None:
    """Add derived statistics to a reference cache and rewrite it (and its sidecar) atomically."""
    ref.update(items)
    if "_path" in ref:  # an in-memory reference (tests, ad-hoc use) has no file
        torch_save_with_sidecar({k: v for k, v in ref.items() if k != "_path"}, Path(ref["_path"]))


def clear_references() -> None:
    """Forget loaded references (tests that point BENCH_CACHE elsewhere)."""
    _REFERENCES.clear()
