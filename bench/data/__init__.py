"""Datasets: every loader returns a ``Dataset`` the same way, from local, verified files.

Images are uint8 ``(N, C, H, W)`` with C = 1 or 3; 2-D toy data are float32 ``(N, D)`` points.
Labels are int64 ``(N,)``; unlabelled data have ``num_classes == 0`` and labels all zero. A
built-in loader is registered with ``register_dataset(name, loader, Options)``; ``Options`` is a
pydantic model (unknown keys are errors) validated from the suite's ``dataset:`` section.

Data from outside bench: the built-in ``folder`` and ``npz`` loaders (``bench.data.files``)
read a user's images or arrays; a loader of one's own is a ``DatasetSource`` subclass named by
import path (``dataset: {name: "mypkg.data:MyData"}``) or declared in the ``bench.datasets``
entry-point group. Whatever the loader, ``load_dataset`` checks what it returns (``check_dataset``).

A validation split for tuning (``load_dataset(..., split="validation")``) is carved out of the
training split with a stated seed (``dataset.validation``); its examples never come from the test split.
"""
from __future__ import annotations

import math
import numbers
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, ClassVar, Literal

import torch
from pydantic import ConfigDict, Field, ValidationError, model_validator

from bench.errors import BenchError
from bench.registry import Registry, check_class, describe
from bench.schema import Checked
from bench.seeds import Seed

Split = Literal["test", "validation"]

# Points farther out than this are refused, in data and in samples: their float32 squared distances overflow to inf
# (from ~1.8e19), so every distance-based metric of them (FID, KID, precision/recall, density/coverage) is NaN or
# meaningless. (Such radii once also hung the precision/recall threshold search; ``fast._sq_threshold`` now stops.)
MAX_POINT = 1e15


def bad_points(x: torch.Tensor) -> int:
    """How many points (rows of ``x``, (N, D)) are NaN, infinite or beyond ``MAX_POINT``: no metric can measure them."""
    return int((~(x.abs() <= MAX_POINT)).any(1).sum())


class ValidationOptions(Checked):
    """How a validation split is carved out of the training split (only when one is asked for: tuning)."""

    model_config = ConfigDict(extra="forbid")
    fraction: float = Field(0.1, gt=0, lt=1)  # share of the training split held out
    size: int | None = Field(None, gt=0)  # or exactly this many examples (give size or fraction, not both)
    seed: Seed = 0  # seeds the permutation that picks them

    @model_validator(mode="after")
    def _one(self) -> ValidationOptions:
        if {"fraction", "size"} <= self.model_fields_set:
            raise ValueError("give fraction or size, not both")
        return self


class DatasetOptions(Checked):
    """Options every dataset accepts. Loaders subclass this."""

    model_config = ConfigDict(extra="forbid")
    train_subset: int | None = Field(None, gt=0)  # keep only the first N training examples (fast suites)
    validation: ValidationOptions = ValidationOptions()  # the split load_dataset(split="validation") carves out


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
    train_y: torch.Tensor  # int64 (N,); all 0 when the data have no labels
    test_x: torch.Tensor  # the test split, or the validation split when split == "validation"
    test_y: torch.Tensor
    num_classes: int  # 0: no labels
    mixture: Mixture | None = None  # toy2d only: the true density
    meta: dict[str, Any] = field(default_factory=dict)  # source, checksum, ...
    split: Split = "test"  # what test_x holds
    # int64 positions of train_x / test_x in the data the loader read ("train", "test"): set when bench made the
    # split (a folder or npz without a test split; a validation split, whose positions are in the loader's
    # training split), so disjointness can be checked on indices. Empty when the source gives its split as is.
    indices: dict[str, torch.Tensor] = field(default_factory=dict)

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
        """Share of each class in the training split, (num_classes,); unlabelled data are one class, (1,)."""
        counts = torch.bincount(self.train_y, minlength=max(self.num_classes, 1)).double()
        return counts / counts.sum()


@dataclass(frozen=True)
class DatasetEntry:
    loader: Callable[..., Dataset]  # loader(options, cache_dir) -> Dataset
    options: type[DatasetOptions]
    description: str


class DatasetSource:
    """Base class of a dataset defined outside bench (import path, or the ``bench.datasets`` entry-point group).

    Subclass it, set ``Options`` to a ``DatasetOptions`` subclass if the data take options, and
    implement ``load``; bench checks what it returns (``check_dataset``) and treats it like a built-in::

        class Shapes(DatasetSource):
            \"\"\"Coloured shapes, 3x32x32.\"\"\"

            def load(self, options, cache_dir):
                return Dataset("shapes", "image", train_x, train_y, test_x, test_y, num_classes=3)
    """

    Options: ClassVar[type[DatasetOptions]] = DatasetOptions
    required: ClassVar[tuple[str, ...]] = ("load",)  # what a subclass must define (bench.registry.check_class)

    def load(self, options: DatasetOptions, cache_dir: Path) -> Dataset:
        """Both splits, uint8 images (N, C, H, W) or float32 points (N, D), int64 labels."""
        raise NotImplementedError


def _external_dataset(obj: object, where: str) -> DatasetEntry:
    cls = check_class(obj, DatasetSource, where, "dataset")
    return DatasetEntry(lambda options, cache: cls().load(options, cache), cls.Options, describe(cls))


DATASETS: Registry[DatasetEntry] = Registry("dataset", group="bench.datasets", adapt=_external_dataset)


def register_dataset(
    name: str, loader: Callable[..., Dataset], options: type[DatasetOptions] = DatasetOptions, description: str = ""
) -> None:
    DATASETS.register(name, DatasetEntry(loader, options, description))


def cache_dir() -> Path:
    """Where bench keeps downloaded wheels, extracted data and cached features.

    ``BENCH_CACHE`` overrides; the default is ``~/.cache/bench``.
    """
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench"))


def dataset_options(name: str, options: dict[str, Any] | DatasetOptions | None = None) -> DatasetOptions:
    """The validated options of dataset ``name`` (resolving an import path or entry point)."""
    entry = DATASETS.get(name)
    if isinstance(options, DatasetOptions):
        return options
    try:
        return entry.options(**(options or {}))
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise BenchError(f"dataset {name}: {where}: {err['msg'].removeprefix('Value error, ')}") from None


def load_dataset(name: str, options: dict[str, Any] | DatasetOptions | None = None, split: Split = "test") -> Dataset:
    """Load a dataset by name (registered, import path or entry point) with validated options.

    ``split="validation"``: ``test_*`` are ``options.validation`` examples carved out of the training
    split and ``train_*`` the rest (``validation_split``); the test split is not touched.
    """
    entry = DATASETS.get(name)
    opts = dataset_options(name, options)
    ds = entry.loader(opts, cache_dir())
    check_dataset(ds, name)
    if split == "validation":
        ds = validation_split(ds, opts.validation)
    elif split != "test":
        raise ValueError(f"split must be 'test' or 'validation', got {split!r}")
    if opts.train_subset is not None:
        ds.train_x, ds.train_y = ds.train_x[: opts.train_subset], ds.train_y[: opts.train_subset]
        if "train" in ds.indices:
            ds.indices["train"] = ds.indices["train"][: opts.train_subset]
    return ds


def validation_split(ds: Dataset, options: ValidationOptions) -> Dataset:
    """A Dataset whose test split is a seeded random part of ``ds``'s training split and whose training split is
    the rest (both in their original order); ``indices`` say where each example came from."""
    n = len(ds.train_x)
    n_val = options.size if options.size is not None else round(options.fraction * n)
    if not 1 <= n_val < n:
        raise BenchError(f"dataset {ds.name}: validation of {n_val} examples leaves no training or no validation "
                         f"examples out of {n}; set dataset.validation.fraction or size")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(options.seed))
    val, rest = perm[:n_val].sort().values, perm[n_val:].sort().values
    origin = ds.indices.get("train", torch.arange(n))  # positions in what the loader read
    meta = {**ds.meta, "validation": {"seed": options.seed, "size": n_val, "of": n}}
    return Dataset(ds.name, ds.kind, ds.train_x[rest], ds.train_y[rest], ds.train_x[val], ds.train_y[val],
                   ds.num_classes, ds.mixture, meta, split="validation", indices={"train": origin[rest], "test": origin[val]})


def check_dataset(ds: object, name: str) -> Dataset:
    """What every loader must return; a loader from outside bench is held to it too (one-line BenchError)."""
    if not isinstance(ds, Dataset):
        raise BenchError(f"dataset {name}: the loader returned a {type(ds).__name__}, not a bench.data.Dataset")

    def bad(msg: str) -> BenchError:
        return BenchError(f"dataset {name}: {msg}")

    if ds.kind not in ("image", "points"):
        raise bad(f"kind must be 'image' or 'points', got {ds.kind!r}")
    if not isinstance(ds.num_classes, numbers.Integral) or ds.num_classes < 0:
        raise bad(f"num_classes must be a count of classes (0: no labels), got {ds.num_classes!r}")
    for split in ("train", "test"):
        x, y = getattr(ds, f"{split}_x"), getattr(ds, f"{split}_y")
        if not (isinstance(x, torch.Tensor) and isinstance(y, torch.Tensor)):
            raise bad(f"{split}_x and {split}_y must be torch tensors")
        if ds.kind == "image" and (x.dtype != torch.uint8 or x.dim() != 4 or x.shape[1] not in (1, 3)):
            raise bad(f"{split}_x must be uint8 images (N, C, H, W) with 1 or 3 channels, got {x.dtype} {tuple(x.shape)}")
        if ds.kind == "points" and (x.dtype != torch.float32 or x.dim() != 2):
            raise bad(f"{split}_x must be float32 points (N, D), got {x.dtype} {tuple(x.shape)}")
        if ds.kind == "points" and bad_points(x):
            raise bad(f"{split}_x: {bad_points(x)} points are NaN, infinite or beyond ±{MAX_POINT:g}")
        if y.dtype != torch.int64 or y.shape != (len(x),):
            raise bad(f"{split}_y must be int64 ({len(x)},) labels, got {y.dtype} {tuple(y.shape)}")
        if len(x) == 0:
            raise bad(f"the {split} split is empty")
        hi = max(ds.num_classes, 1)  # unlabelled: every label is 0
        if int(y.min()) < 0 or int(y.max()) >= hi:
            what = f"0..{ds.num_classes - 1} (num_classes={ds.num_classes})" if ds.has_labels else "0 (no labels)"
            raise bad(f"{split}_y holds labels {int(y.min())}..{int(y.max())}, expected {what}")
    if ds.train_x.shape[1:] != ds.test_x.shape[1:]:
        raise bad(f"train and test examples differ in shape: {tuple(ds.train_x.shape[1:])} vs {tuple(ds.test_x.shape[1:])}")
    n = len(ds.train_x) + len(ds.test_x)
    if ds.num_classes > n:  # a label that is no class index (say 10**9): every per-class table would exhaust the memory
        raise bad(f"num_classes is {ds.num_classes} for {n} examples; labels number the classes 0..K-1, so K is at "
                  "most the number of examples (renumber them: np.unique(y, return_inverse=True))")
    return ds


from bench.data import registered  # noqa: E402,F401  (registers the built-in datasets)
