"""Memorization and novelty: are samples closer to the training set than new data is?

For every sample, the distance to its nearest training image; for held-out test images the same
statistic. A model that generalises makes samples that sit as far from the training set as fresh
data does; one that copies makes samples that sit closer. The distances are computed in pixel
space and in the domain feature space (the caller chooses), and summarised four ways:

* ``closer_share``: P(d_sample < d_test) over all (sample, test) pairs (ties count half), the
  Mann-Whitney U statistic over m n. 0.5: as novel as test data; 1: every sample closer to the
  training set than every test image (copies); below 0.5: farther than data (usually: worse samples);
* ``C_T`` of Meehan, Chaudhuri & Dasgupta (2020, "A non-parametric test to detect data-copying in
  generative models", eq. 3): the training set is cut into cells by k-means; in each cell a
  z-scored Mann-Whitney U compares sample and test distances; the cells' z-scores are averaged
  with the test data's cell shares as weights. Near 0: no copying; strongly negative (< -3 in
  the paper's use): data copying; positive: underfitting. Cells with too few samples are skipped
  (a model that drops a mode is not judged on it);
* ``near_copy_share``: share of samples closer to the training set than the closest 1 % of
  test images are (a fresh draw from the data scores about 1 % by construction);
* the closest sample-training pairs, for a picture in the report.

For likelihood models, ``nll_gap`` is the train-test NLL difference (overfitting in density).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from scipy.stats import mannwhitneyu
from sklearn.cluster import KMeans


@dataclass(frozen=True)
class Neighbours:
    """Nearest reference point of each query: distance (N,) and index into the reference (N,)."""

    distance: torch.Tensor
    index: torch.Tensor


def flat_pixels(x: torch.Tensor) -> torch.Tensor:
    """uint8 images (N, C, H, W) -> float32 (N, D) in [0, 1]: the pixel space distances are measured in."""
    return x.flatten(1).float() / 255


def nearest_neighbours(queries: torch.Tensor, reference: torch.Tensor, batch_size: int = 1024) -> Neighbours:
    """Euclidean nearest neighbour in ``reference`` (M, D) of every row of ``queries`` (N, D).

    The search uses the fast ||a||^2 - 2ab + ||b||^2 expansion; the reported distance is then
    recomputed directly from the difference, so an exact copy reads 0 (the expansion alone
    leaves float32 cancellation error of ~1e-3 on 784 pixels).
    """
    ref = reference.float()
    ref_sq = ref.square().sum(1)  # (M,)
    idx = []
    for q in queries.float().split(batch_size):
        d2 = q.square().sum(1, keepdim=True) - 2 * q @ ref.T + ref_sq  # (b, M)
        idx.append(d2.argmin(1))
    index = torch.cat(idx)
    distance = (queries.double() - reference[index].double()).norm(dim=1)  # (N,)
    return Neighbours(distance, index)


def closer_share(d_samples: torch.Tensor, d_test: torch.Tensor) -> float:
    """P(d_sample < d_test) + P(tie) / 2 over all pairs: 0.5 for samples as novel as test data."""
    u = mannwhitneyu(d_test.numpy(), d_samples.numpy(), alternative="two-sided").statistic  # pairs test > sample
    return float(u) / (len(d_samples) * len(d_test))


def near_copy_share(d_samples: torch.Tensor, d_test: torch.Tensor, quantile: float = 0.01) -> float:
    """Share of samples nearer the training set than the ``quantile`` of test images' distances."""
    threshold = torch.quantile(d_test.double(), quantile)
    return float((d_samples.double() < threshold).double().mean())


def exact_copy_share(d_samples: torch.Tensor) -> float:
    """Share of samples identical to a training image (distance 0)."""
    return float((d_samples == 0).double().mean())


@dataclass(frozen=True)
class DataCopying:
    """Meehan et al.'s C_T and what it rests on."""

    c_t: float  # weighted mean of per-cell z-scores; < -3 flags data copying
    cells_used: int  # cells with enough samples and test points
    cells: int  # k of k-means
    test_share_used: float  # share of test points in the cells used


def _z_u(d_samples: np.ndarray, d_test: np.ndarray) -> float:
    """Mann-Whitney U of "sample farther than test" over pairs, z-scored under the null (no ties correction)."""
    m, n = len(d_samples), len(d_test)
    u = mannwhitneyu(d_samples, d_test, alternative="two-sided").statistic  # pairs sample > test
    return float((u - m * n / 2) / math.sqrt(m * n * (m + n + 1) / 12))


def data_copying_ct(
    train: torch.Tensor,
    test: torch.Tensor,
    samples: torch.Tensor,
    d_test: torch.Tensor,
    d_samples: torch.Tensor,
    cells: int = 20,
    min_per_cell: int = 20,
    fit_examples: int = 10_000,
    seed: int = 0,
) -> DataCopying:
    """C_T (Meehan et al. 2020, eq. 3) from nearest-training distances of test points and samples.

    ``train``, ``test``, ``samples`` are (N, D) points in the space the distances were measured in;
    k-means (scikit-learn, seeded, fitted on up to ``fit_examples`` training points) cuts it into
    ``cells``. A cell counts when it holds at least ``min_per_cell`` samples and test points (the
    paper's threshold tau on the generated share, which keeps z-scores from tiny cells out).
    Distances are to the nearest training point anywhere, not only within the cell.
    """
    g = torch.Generator().manual_seed(seed)
    fit = train if len(train) <= fit_examples else train[torch.randperm(len(train), generator=g)[:fit_examples]]
    km = KMeans(cells, n_init=1, random_state=seed).fit(fit.double().numpy())
    cell_test = km.predict(test.double().numpy())
    cell_samples = km.predict(samples.double().numpy())
    dt, ds = d_test.double().numpy(), d_samples.double().numpy()
    z, w = [], []
    for c in range(cells):
        in_t, in_s = cell_test == c, cell_samples == c
        if in_s.sum() >= min_per_cell and in_t.sum() >= min_per_cell:
            z.append(_z_u(ds[in_s], dt[in_t]))
            w.append(in_t.mean())  # P_n(cell): the test data's share
    if not z:
        return DataCopying(float("nan"), 0, cells, 0.0)
    wa = np.asarray(w)
    return DataCopying(float(np.dot(wa, z) / wa.sum()), len(z), cells, float(wa.sum()))


def closest_pairs(nn: Neighbours, k: int) -> list[tuple[int, int, float]]:
    """The ``k`` samples nearest the training set: (sample index, training index, distance), closest first."""
    order = nn.distance.argsort()[:k]
    return [(int(i), int(nn.index[i]), float(nn.distance[i])) for i in order]


def nll_gap(log_prob_train: torch.Tensor, log_prob_test: torch.Tensor) -> tuple[float, float]:
    """Mean test NLL minus mean train NLL (nats, > 0: the model prefers its training data) and its standard error.

    The two means come from independent examples, so their variances add.
    """
    tr, te = log_prob_train.double(), log_prob_test.double()
    gap = float(tr.mean() - te.mean())
    se = math.sqrt(float(tr.var() / len(tr) + te.var() / len(te)))
    return gap, se
