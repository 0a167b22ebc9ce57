"""Fashion-MNIST (Xiao et al., 2017) from a folder of the four standard IDX files.

Offline, Debian's ``dataset-fashion-mnist`` package puts them in
``/usr/share/datasets/fashion-mnist/`` (FACTS.md), which is the default ``root``.
Registered as ``fashion_mnist``: registry names must match ``^[a-z][a-z0-9_]*$``.
"""
from __future__ import annotations

from pathlib import Path

from bench.data import Dataset, DatasetOptions, register_dataset
from bench.data.idx import IDX_FILES, load_idx_split
from bench.errors import BenchError

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist/"
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")


class FashionMnistOptions(DatasetOptions):
    root: str = DEFAULT_ROOT  # folder of the four IDX files (gzipped or not)


def load_fashion_mnist(options: FashionMnistOptions, cache_dir: Path) -> Dataset:
    """Fashion-MNIST, 60k train / 10k test, uint8 (N, 1, 28, 28); read in place, nothing cached."""
    root = Path(options.root).expanduser()
    first = IDX_FILES["train"][0]
    if not ((root / first).is_file() or (root / f"{first}.gz").is_file()):
        raise BenchError(
            f"Fashion-MNIST not found in {root} (no {first}[.gz]); run `apt-get install dataset-fashion-mnist` "
            "or set dataset.root to a folder of the four Fashion-MNIST IDX files"
        )
    train_x, train_y, sums = load_idx_split(root, "train")
    test_x, test_y, test_sums = load_idx_split(root, "test")
    sums.update(test_sums)
    return Dataset(
        name="fashion_mnist",
        kind="image",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=10,
        meta={"source": "idx", "root": str(root), "sha256_decompressed": sums, "classes": list(CLASSES)},
    )


register_dataset("fashion_mnist", load_fashion_mnist, FashionMnistOptions, "Fashion-MNIST, 60k/10k, 28x28 (IDX folder)")
