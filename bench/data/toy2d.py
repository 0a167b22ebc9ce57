"""2-D Gaussian mixtures whose density is known exactly: the mode-collapse test beds.

- ``ring8``: 8 modes evenly spaced on a circle of radius 2, std 0.02
  (Metz et al. 2017, Unrolled GANs; Srivastava et al. 2017, VEEGAN).
- ``grid25``: 25 modes at {-4, -2, 0, 2, 4}^2, std 0.05 (VEEGAN; Lin et al. 2018, PacGAN).

Modes have equal weight; a point's label is the index of the mode it was drawn from.
Train and test come from independent generators derived from ``seed``, so changing
``n_train`` never changes the test set.
"""
from __future__ import annotations

import hashlib
import math
from pathlib import Path
from typing import Literal

import torch
from pydantic import Field

from bench.data import Dataset, DatasetOptions, Mixture, register_dataset

RING_RADIUS = 2.0
DEFAULT_STD = {"ring8": 0.02, "grid25": 0.05}


class Toy2dOptions(DatasetOptions):
    pattern: Literal["ring8", "grid25"] = "ring8"  # which mixture
    n_train: int = Field(20000, gt=0)  # training points
    n_test: int = Field(5000, gt=0)  # test points
    std: float | None = Field(None, gt=0)  # per-mode std; None: the literature default of the pattern
    seed: int = 0  # seeds the draws (the modes themselves are fixed)


def mode_means(pattern: str) -> torch.Tensor:
    """Mode centres, (K, 2) float64."""
    if pattern == "ring8":
        angles = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)  # (8,)
        return RING_RADIUS * torch.stack([angles.cos(), angles.sin()], dim=1)
    if pattern == "grid25":
        axis = torch.tensor([-4.0, -2.0, 0.0, 2.0, 4.0], dtype=torch.float64)
        gx, gy = torch.meshgrid(axis, axis, indexing="ij")
        return torch.stack([gx.reshape(-1), gy.reshape(-1)], dim=1)  # (25, 2)
    raise ValueError(f"unknown pattern {pattern!r}")


def _generator(seed: int, split: str) -> torch.Generator:
    """An independent, reproducible stream per (seed, split)."""
    digest = hashlib.sha256(f"toy2d/{split}/{seed}".encode()).digest()
    return torch.Generator().manual_seed(int.from_bytes(digest[:8], "little") & ((1 << 63) - 1))


def sample_mixture(
    means: torch.Tensor, std: float, n: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """n points of the equal-weight mixture: float32 (n, 2) and their mode index int64 (n,)."""
    y = torch.randint(len(means), (n,), generator=generator)  # (n,)
    noise = torch.randn(n, means.shape[1], generator=generator, dtype=torch.float64)  # (n, 2)
    return (means[y] + std * noise).float(), y


def load_toy2d(options: Toy2dOptions, cache_dir: Path) -> Dataset:
    """Generated points, float32 (N, 2); ``Dataset.mixture`` is the true density."""
    means = mode_means(options.pattern)
    std = options.std if options.std is not None else DEFAULT_STD[options.pattern]
    train_x, train_y = sample_mixture(means, std, options.n_train, _generator(options.seed, "train"))
    test_x, test_y = sample_mixture(means, std, options.n_test, _generator(options.seed, "test"))
    return Dataset(
        name="toy2d",
        kind="points",
        train_x=train_x,
        train_y=train_y,
        test_x=test_x,
        test_y=test_y,
        num_classes=len(means),
        mixture=Mixture(means=means.float(), std=std),
        meta={"source": "generated", "pattern": options.pattern, "std": std, "seed": options.seed},
    )


register_dataset("toy2d", load_toy2d, Toy2dOptions, "2-D Gaussian mixtures (ring8, grid25) with known density")
