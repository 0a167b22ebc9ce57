"""scikit-learn's 8x8 handwritten digits (UCI optdigits): 1,797 images shipped inside the package.

Values 0..16 become uint8 by ``round(v * 255 / 16)`` so every dataset is 8-bit. The
train/test split is a seeded permutation (seed 0): the last 297 shuffled images are the test set.
"""
from __future__ import annotations

from pathlib import Path

import torch

from bench.data import Dataset, DatasetOptions, register_dataset

SPLIT_SEED = 0
N_TEST = 297  # the last ~1/6 of 1,797; train = 1,500


def load_digits(options: DatasetOptions, cache_dir: Path) -> Dataset:
    """Digits 8x8, 1500 train / 297 test, uint8 (N, 1, 8, 8); no file I/O beyond scikit-learn's own."""
    from sklearn.datasets import load_digits as sk_load_digits

    bunch = sk_load_digits()
    values = torch.from_numpy(bunch.images).double()  # (1797, 8, 8), 0..16
    x = torch.round(values * 255.0 / 16.0).to(torch.uint8).unsqueeze(1)  # (1797, 1, 8, 8)
    y = torch.from_numpy(bunch.target).long()  # (1797,)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(SPLIT_SEED))
    train_idx, test_idx = perm[:-N_TEST], perm[-N_TEST:]
    return Dataset(
        name="digits",
        kind="image",
        train_x=x[train_idx],
        train_y=y[train_idx],
        test_x=x[test_idx],
        test_y=y[test_idx],
        num_classes=10,
        meta={"source": "sklearn.datasets.load_digits", "split_seed": SPLIT_SEED, "n_test": N_TEST},
    )


register_dataset("digits", load_digits, DatasetOptions, "scikit-learn 8x8 digits, 1500/297 (no download)")
