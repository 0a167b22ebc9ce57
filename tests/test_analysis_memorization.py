"""Known answers for the memorization statistics (bench.analysis.memorization).

A "model" that returns training images must be flagged; one that returns held-out images (other
test images than the reference ones) must not.
"""
from __future__ import annotations

import math

import pytest
import torch

from bench.analysis.memorization import (closer_share, closest_pairs, data_copying_ct, exact_copy_share, flat_pixels,
                                         near_copy_share, nearest_neighbours, nll_gap)
from bench.data import load_dataset


def test_nearest_neighbours_match_brute_force_and_read_zero_for_copies():
    g = torch.Generator().manual_seed(0)
    ref, q = torch.rand(300, 784, generator=g), torch.rand(50, 784, generator=g)
    q[:5] = ref[[7, 8, 9, 10, 11]]  # exact copies
    nn = nearest_neighbours(q, ref, batch_size=16)
    d = (q.double()[:, None] - ref.double()[None]).norm(dim=2)  # (50, 300); torch.cdist reads ~1e-6 for copies
    assert torch.equal(nn.index, d.argmin(1))
    assert torch.allclose(nn.distance, d.min(1).values, atol=1e-9)
    assert nn.distance[:5].tolist() == [0.0] * 5
    assert nn.index[:5].tolist() == [7, 8, 9, 10, 11]


@pytest.fixture(scope="module")
def mnist_split():
    """10,000 MNIST training images as the training set; two disjoint sets of 1,000 test images.

    MNIST rather than the 8x8 digits: with 1,000 images a side the null standard error of the
    closer share is 0.013, so the "not flagged" check has power (on digits' 148 a side it is 0.034).
    """
    ds = load_dataset("mnist")
    train = flat_pixels(ds.train_x[:10_000])
    test = flat_pixels(ds.test_x[:2000])
    return train, test[:1000], test[1000:]  # training set, reference test images, "held-out model" images


def _statistics(train, test, samples):
    d_test = nearest_neighbours(test, train).distance
    nn = nearest_neighbours(samples, train)
    ct = data_copying_ct(train, test, samples, d_test, nn.distance, cells=10, min_per_cell=20)
    return nn, d_test, ct


def test_a_model_that_returns_training_images_is_flagged(mnist_split):
    train, test, held = mnist_split
    copies = train[torch.randperm(len(train), generator=torch.Generator().manual_seed(1))[: len(held)]]
    nn, d_test, ct = _statistics(train, test, copies)
    assert closer_share(nn.distance, d_test) > 0.95
    assert near_copy_share(nn.distance, d_test) == 1.0
    assert exact_copy_share(nn.distance) == 1.0
    assert ct.c_t < -3 and ct.cells_used == 10


def test_a_model_that_returns_held_out_images_is_not_flagged(mnist_split):
    train, test, held = mnist_split
    nn, d_test, ct = _statistics(train, test, held)
    m, n = len(held), len(test)
    se = math.sqrt((m + n + 1) / (12 * m * n))  # null standard error of U / (m n)
    assert abs(closer_share(nn.distance, d_test) - 0.5) < 3 * se
    assert near_copy_share(nn.distance, d_test) < 0.03  # 0.01 expected
    assert exact_copy_share(nn.distance) == 0.0
    assert abs(ct.c_t) < 3


def test_closest_pairs_are_sorted_and_point_at_the_neighbour():
    ref = torch.tensor([[0.0], [10.0], [20.0]])
    q = torch.tensor([[19.0], [0.5], [12.0]])
    pairs = closest_pairs(nearest_neighbours(q, ref), k=2)
    assert pairs == [(1, 0, 0.5), (0, 2, 1.0)]


def test_nll_gap_is_test_minus_train_nll_with_independent_standard_errors():
    tr = torch.tensor([-1.0, -3.0])  # mean log p -2, var 2
    te = torch.tensor([-4.0, -6.0, -5.0])  # mean -5, var 1
    gap, se = nll_gap(tr, te)
    assert gap == pytest.approx(3.0)
    assert se == pytest.approx(math.sqrt(2 / 2 + 1 / 3))
