"""A dataset bench does not ship: horizontal and vertical stripes (class 0 and 1), made from a seed."""
from __future__ import annotations

from pathlib import Path

import torch
from pydantic import Field

from bench.data import Dataset, DatasetOptions, DatasetSource


class StripesOptions(DatasetOptions):
    size: int = Field(16, ge=4)  # images are size x size, one channel
    n_train: int = Field(512, gt=0)
    n_test: int = Field(128, gt=0)
    seed: int = 0  # train and test are independent draws from it


def stripes(n: int, size: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """uint8 (n, 1, size, size): every other row (class 0) or column (class 1) bright, at a random phase and level."""
    y = torch.randint(0, 2, (n,), generator=generator)
    phase = torch.randint(0, 2, (n, 1, 1), generator=generator)
    level = torch.randint(128, 256, (n, 1, 1), generator=generator)
    idx = torch.arange(size)
    rows = ((idx[None, :, None] + phase) % 2).expand(n, size, size)  # (n, H, W): stripes along rows
    on = torch.where(y[:, None, None] == 0, rows, rows.transpose(1, 2))
    return (on * level).to(torch.uint8)[:, None], y


class Stripes(DatasetSource):
    """Horizontal vs vertical stripes, 1 x 16 x 16, two classes (a bench-example plugin)."""

    Options = StripesOptions

    def load(self, options: StripesOptions, cache_dir: Path) -> Dataset:
        g = torch.Generator().manual_seed(options.seed)
        train_x, train_y = stripes(options.n_train, options.size, g)
        test_x, test_y = stripes(options.n_test, options.size, g)
        return Dataset("stripes", "image", train_x, train_y, test_x, test_y, num_classes=2,
                       meta={"source": "bench_example.data", "seed": options.seed})
