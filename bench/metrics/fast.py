"""The feature-level quality metrics at the hardware limit: what depends only on the real set, once.

FID, KID and precision/recall are torch-fidelity 0.4.0's definitions, density/coverage the prdc
package's (Naeem et al. 2020), with the same numbers (tests/test_fast_metrics.py). torch-fidelity's
feature-level functions recompute every real-only quantity on every call (precision/recall
rebuilds the real set's k-NN radii from a 10k x 10k distance matrix with ``kthvalue``; KID
re-evaluates the real-real kernel of each subset), and prdc computes the real radii again.

Here the real set's statistics are built once per reference (``RealStats``: FID mean,
covariance and its square root, k-NN radii for each k, KID real-real kernel sums for each
subset plan) and cached with the reference features. Per model, only what involves the samples:
``fid`` (moments of the samples and one symmetric eigendecomposition), ``kid`` (the
sample-sample and sample-real kernels of the subsets) and ``neighbourhood_metrics``
(precision, recall, density and coverage from one blocked pass over the (N, N) sample
distances and one over the (M, N) real-sample distances).

Exactness, and why it holds:

* **Distances** are computed exactly as ``torch.cdist``'s matrix-multiply path does (the same
  augmented product, ``_Geometry``), so every distance is bit-identical to the one torch-fidelity
  compares, whatever the blocking (tested). Precision/recall are then *exactly*
  torch-fidelity's, ties included, in its ``save_cpu_ram=False`` orientation (real points as
  rows), the one bench called; density/coverage equal prdc's wherever prdc's float64
  distances and these agree on which side of a radius a pair lies (always in float64), and
  equal ``bench.metrics.coverage``'s bit for bit, including its one departure from prdc: a real
  point with k or more exact duplicates (radius 0) holds a sample that coincides with it.
* **FID** takes the trace term from the symmetric matrix ``S_r^(1/2) S_g S_r^(1/2)``
  (``eigvalsh``) with ``S_r^(1/2)`` cached: it has the same eigenvalues as torch-fidelity's
  ``S_r S_g`` (AB and BA share their non-zero eigenvalues), so FID agrees to ~1e-9 relative
  while avoiding a general eigensolver (2048-d: seconds instead of tens of seconds).
* **KID** draws its subsets with torch-fidelity's own ``numpy.random.RandomState(seed)``
  calls in its order (gen, real, gen, real, ...), so the subsets are the same; kernel sums
  of a subset are accumulated in float64. On float64 features KID equals torch-fidelity's to
  ~1e-12; on float32 features both carry float32 rounding of the kernel values, and the two
  differ by that rounding (bounds in the tests), not by definition.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

# torch.cdist switches from the matrix-multiply formula to explicit differences when both sets
# have at most this many rows (aten/src/ATen/native/Distance.cpp, "use_mm_for_euclid_dist_if_necessary").
_CDIST_MM_ABOVE = 25
# Elements of one distance block: ~32 MB of float32, large enough for an efficient GEMM and
# small enough that the block and its masks stay far below the memory of the machine.
BLOCK_ELEMENTS = 1 << 23
_MIN_BLOCK_ROWS = 64
_GROUPS = 16  # members of a column group in the k-smallest search (_smallest)


# ---------------------------------------------------------------------------------------------
# Distances exactly as torch.cdist computes them


@dataclass(frozen=True)
class _Geometry:
    """How the distances between two sets are computed, bit for bit as ``torch.cdist`` does.

    For sets with more than 25 rows on either side (``mm``), cdist evaluates the squared distance
    as one matrix product of augmented rows, ``[-2a, |a|^2, 1] . [b, 1, |b|^2]``, then clamps at
    0 and takes the square root (aten/src/ATen/native/Distance.cpp, _euclidean_dist). The same
    product is computed here, so every value equals cdist's whatever the blocking (tested), and
    comparisons are made on the squared values against exact thresholds (``_sq_threshold``),
    which skips a clamp and a square root per element. Smaller sets use cdist's direct formula.
    """

    mm: bool

    @staticmethod
    def of(rows: int, cols: int) -> _Geometry:
        # decided on the whole sets torch-fidelity hands to cdist (one call per 10,000 x 10,000
        # block), never on bench's row blocks
        return _Geometry(rows > _CDIST_MM_ABOVE or cols > _CDIST_MM_ABOVE)

    def rows(self, a: torch.Tensor, left: bool) -> torch.Tensor:
        """Augmented rows (N, F + 2): left operand ``[-2a, |a|^2, 1]``, right ``[b, 1, |b|^2]``."""
        if not self.mm:
            return a
        sq, one = a.pow(2).sum(-1, keepdim=True), torch.ones(len(a), 1, dtype=a.dtype)  # cdist's own reduction
        return torch.cat([-2 * a, sq, one] if left else [a, one, sq], dim=1)

    def values(self, a_aug: torch.Tensor, b_aug: torch.Tensor) -> torch.Tensor:
        """(A, B) squared distances before the clamp (``mm``), or distances: monotone in cdist's values."""
        return a_aug @ b_aug.T if self.mm else torch.cdist(a_aug, b_aug)

    def distance(self, v: torch.Tensor) -> torch.Tensor:
        return v.clamp_min(0).sqrt() if self.mm else v

    def threshold(self, r: torch.Tensor, strict: bool) -> torch.Tensor:
        """t with ``value <= t``  <=>  ``distance <= r`` (strict: ``distance < r``), elementwise."""
        if strict:  # d < r  <=>  d <= the float just below r
            r = torch.nextafter(r, torch.tensor(-math.inf, dtype=r.dtype))
        return _sq_threshold(r) if self.mm else r


def _sq_threshold(r: torch.Tensor) -> torch.Tensor:
    """Largest float s with ``sqrt(max(s, 0)) <= r`` in r's precision (-inf for r < 0), elementwise.

    sqrt is correctly rounded and monotone, so ``{s : sqrt(max(s, 0)) <= r}`` is every float up to
    one boundary, within a few ulps of ``r * r``: walk there with ``nextafter``.
    """
    inf = torch.tensor(math.inf, dtype=r.dtype)
    t = (r * r).where(r >= 0, -inf)  # an infinite radius stays inf: every distance passes
    live = (r >= 0) & torch.isfinite(r)  # nextafter(inf, inf) is inf: an infinite radius would never stop the walk

    def ok(s: torch.Tensor) -> torch.Tensor:
        return s.clamp_min(0).sqrt() <= r

    while True:  # up while the next float still passes
        up = torch.nextafter(t, inf)
        step = live & ok(up)
        if not step.any():
            break
        t = up.where(step, t)
    while True:  # down while this one fails
        step = live & ~ok(t)
        if not step.any():
            return t
        t = torch.nextafter(t, -inf).where(step, t)


def _row_blocks(n_rows: int, n_cols: int, block_elements: int) -> list[slice]:
    """Row blocks of about ``block_elements`` values and at least ``_MIN_BLOCK_ROWS`` rows (a short
    last block joins the one before). A one-row product is a matrix-vector product in the BLAS,
    which sums in another order: its values would no longer be cdist's bit for bit."""
    rows = max(_MIN_BLOCK_ROWS, block_elements // max(1, n_cols))
    starts = list(range(0, n_rows, rows))
    if len(starts) > 1 and n_rows - starts[-1] < _MIN_BLOCK_ROWS:
        starts.pop()
    return [slice(a, b) for a, b in zip(starts, starts[1:] + [n_rows])]


def knn_radii(x: torch.Tensor, ks: Iterable[int], block_elements: int = BLOCK_ELEMENTS) -> dict[int, torch.Tensor]:
    """Distance of each point to its k-th nearest *other* point, {k: (N,)}, for several k in one pass.

    The (k+1)-th smallest distance of a row (the point itself is at distance 0): torch-fidelity's
    ``kthvalue(k + 1)`` of ``cdist(x, x)`` and prdc's radii, taken on the squared values (the
    square root is monotone, so it is the same element).
    """
    ks = sorted(set(ks))
    n = len(x)
    if not ks:
        return {}
    if not all(1 <= k < n for k in ks):
        raise ValueError(f"k in {ks} needs 1 <= k < number of points ({n})")
    geo = _Geometry.of(n, n)
    left, right = geo.rows(x, left=True), geo.rows(x, left=False)
    if geo.mm and n % _GROUPS:  # pad to whole groups with points at infinite distance: [0, 1, inf]
        pad = torch.zeros(_GROUPS - n % _GROUPS, right.shape[1], dtype=x.dtype)
        pad[:, -2:] = torch.tensor([1.0, math.inf])
        right = torch.cat([right, pad])
    nearest = torch.cat([_smallest(geo.values(left[rows], right), ks[-1] + 1)
                         for rows in _row_blocks(n, len(right), block_elements)])
    return {k: geo.distance(nearest[:, k]) for k in ks}


def _smallest(v: torch.Tensor, count: int) -> torch.Tensor:
    """The ``count`` smallest values of each row, ascending, (B, count): ``topk`` on a shortlist.

    The columns are split into n/_GROUPS groups of ``_GROUPS`` (column j in group j mod n/_GROUPS); the
    ``count`` smallest values of a row lie in the ``count`` groups with the smallest minima (a
    group without one of them has its minimum at or above the count-th smallest value), so
    ``topk`` runs on those groups only: ~2.5x faster than on the whole row, same values.
    """
    b, n = v.shape
    if n % _GROUPS or n // _GROUPS < 4 * count:
        return v.topk(count, dim=1, largest=False).values
    grouped = v.view(b, _GROUPS, n // _GROUPS)
    best = grouped.amin(1).topk(count, dim=1, largest=False).indices  # (B, count) groups
    shortlist = grouped.gather(2, best[:, None, :].expand(-1, _GROUPS, -1)).view(b, -1)
    return shortlist.topk(count, dim=1, largest=False).values


# ---------------------------------------------------------------------------------------------
# KID: torch-fidelity's subset draws and the polynomial kernel


@dataclass(frozen=True)
class KidPlan:
    """KID's subsets (Bińkowski et al. 2018) as torch-fidelity draws them: ``subsets`` pairs of
    ``subset_size`` indices without replacement, from ``numpy.random.RandomState(seed)``."""

    subsets: int = 100
    subset_size: int = 1000
    seed: int = 2020

    def key(self, n_gen: int, n_real: int) -> str:
        # the real draws depend on n_gen too: torch-fidelity alternates gen and real draws on one RNG
        return f"s{self.subsets}-m{self.subset_size}-seed{self.seed}-n{n_gen}x{n_real}"

    def draws(self, n_gen: int, n_real: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Generated and real subset indices, each (subsets, subset_size), in torch-fidelity's order."""
        if not 2 <= self.subset_size <= min(n_gen, n_real):
            raise ValueError(f"KID subset_size={self.subset_size} needs 2 <= size <= min(n_gen={n_gen}, n_real={n_real})")
        rng = np.random.RandomState(self.seed)
        gen, real = [], []
        for _ in range(self.subsets):  # metric_kid.kid_features_to_metric: f1 then f2, per subset
            gen.append(rng.choice(n_gen, self.subset_size, replace=False))
            real.append(rng.choice(n_real, self.subset_size, replace=False))
        return torch.from_numpy(np.stack(gen)), torch.from_numpy(np.stack(real))


def _kernel_sums(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-subset sums of torch-fidelity's ``kernel_poly`` k(x, y) = (x.y / F + 1)^3, (S,) float64.

    a: (S, m, F), b: (S, m', F). The matrix product of ``[x / F, 1]`` and ``[y, 1]`` gives
    ``x.y / F + 1`` directly; cubes are summed row by row in the features' precision (m' terms)
    and the rows in float64, so the sums carry no more rounding than the kernel values do.
    """
    s, _, f = a.shape
    t = torch.cat([a / f, a.new_ones(s, a.shape[1], 1)], 2) @ torch.cat([b, b.new_ones(s, b.shape[1], 1)], 2).transpose(1, 2)
    return t.pow_(3).sum(2).double().sum(1)


def _off_diagonal_kernel_sums(a: torch.Tensor) -> torch.Tensor:
    """sum_{i != j} k(a_i, a_j) per subset (``mmd2``'s ``Kt_XX`` sum), (S,) float64, from 3/4 of the
    products: with a = [h1; h2], the sum is K(h1, h1) + K(h2, h2) + 2 K(h1, h2), less the diagonal."""
    h = a.shape[1] // 2
    h1, h2 = a[:, :h], a[:, h:]
    diagonal = (a.pow(2).sum(2) / a.shape[2] + 1).double().pow(3).sum(1)  # k(x, x) = (|x|^2 / F + 1)^3
    return _kernel_sums(h1, h1) + _kernel_sums(h2, h2) + 2 * _kernel_sums(h1, h2) - diagonal


def _subset_sums(x: torch.Tensor, idx_x: torch.Tensor, y: torch.Tensor | None, idx_y: torch.Tensor | None,
                 chunk_elements: int) -> torch.Tensor:
    """Kernel sums of subsets ``x[idx_x[s]]`` with ``y[idx_y[s]]`` (or, ``y`` None, off-diagonal within
    ``x[idx_x[s]]``), (S,) float64; a few subsets per batched matrix product."""
    s, m = idx_x.shape
    per = max(1, chunk_elements // (m * m))
    if y is None:
        return torch.cat([_off_diagonal_kernel_sums(x[idx_x[i : i + per]]) for i in range(0, s, per)])
    return torch.cat([_kernel_sums(x[idx_x[i : i + per]], y[idx_y[i : i + per]]) for i in range(0, s, per)])


def _kid_from_sums(xx: torch.Tensor, yy: torch.Tensor, xy: torch.Tensor, m: int) -> tuple[float, float]:
    """torch-fidelity's unbiased MMD^2 per subset (``mmd2``, mmd_est="unbiased"), then mean and std."""
    mmd2 = (xx + yy) / (m * (m - 1)) - 2 * xy / (m * m)  # (S,)
    values = mmd2.numpy()
    return float(np.mean(values)), float(np.std(values))


# ---------------------------------------------------------------------------------------------
# The real set's statistics, built once per reference


@dataclass
class RealStats:
    """Everything the metrics need that depends on the real set only.

    ``mu``, ``sigma``: FID's Gaussian fit (``gaussian_fit``); ``sigma_sqrt``: the symmetric PSD
    square root of ``sigma``; ``radii``: {k: (M,)} k-NN radii; ``kid_sums``: {``KidPlan.key``:
    (S,) float64} off-diagonal real-real kernel sums of each KID subset. Plain tensors and
    values only (``to_state``), so a reference cache holding them loads with
    ``torch.load(weights_only=True)``.
    """

    n: int
    mu: torch.Tensor
    sigma: torch.Tensor
    sigma_sqrt: torch.Tensor
    radii: dict[int, torch.Tensor] = field(default_factory=dict)
    kid_sums: dict[str, torch.Tensor] = field(default_factory=dict)

    @classmethod
    def build(cls, real: torch.Tensor, ks: Iterable[int] = (), kid: KidPlan | None = None,
              n_gen: int | None = None) -> RealStats:
        """Statistics of ``real`` (M, F): FID moments always, radii for ``ks``, KID sums for ``kid`` and ``n_gen``."""
        mu, sigma = gaussian_fit(real)
        stats = cls(n=len(real), mu=mu, sigma=sigma, sigma_sqrt=_psd_sqrt(sigma))
        stats.ensure(real, ks, kid, n_gen)
        return stats

    def ensure(self, real: torch.Tensor, ks: Iterable[int] = (), kid: KidPlan | None = None,
               n_gen: int | None = None) -> bool:
        """Add the radii of new ``ks`` and the KID sums of a new plan; True when something was added."""
        if len(real) != self.n:
            raise ValueError(f"these statistics are of {self.n} real points, got {len(real)}")
        missing = sorted(set(ks) - set(self.radii))
        self.radii.update(knn_radii(real, missing))
        added = bool(missing)
        if kid is not None:
            if n_gen is None:
                raise ValueError("KID's real-real sums depend on the number of samples: pass n_gen")
            key = kid.key(n_gen, self.n)
            if key not in self.kid_sums:
                _, idx = kid.draws(n_gen, self.n)
                self.kid_sums[key] = _subset_sums(real, idx, None, None, BLOCK_ELEMENTS)
                added = True
        return added

    def to_state(self) -> dict[str, Any]:
        """Plain tensors and values (for ``torch.save`` and ``torch.load(weights_only=True)``)."""
        return {"n": self.n, "mu": self.mu, "sigma": self.sigma, "sigma_sqrt": self.sigma_sqrt,
                "radii": {str(k): v for k, v in self.radii.items()}, "kid_sums": dict(self.kid_sums)}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RealStats:
        return cls(n=state["n"], mu=state["mu"], sigma=state["sigma"], sigma_sqrt=state["sigma_sqrt"],
                   radii={int(k): v for k, v in state["radii"].items()}, kid_sums=dict(state["kid_sums"]))


def gaussian_fit(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean (F,) and unbiased covariance (F, F), as torch-fidelity's ``fid_features_to_statistics``.

    The mean is ``numpy.mean`` in the features' own dtype, as there (so FID's mean term rounds
    the same way); the covariance is float64, as ``numpy.cov`` computes it.
    """
    mu = torch.from_numpy(np.mean(x.numpy(), axis=0))
    x64 = x.double()
    xc = x64 - x64.mean(0)
    return mu, xc.T @ xc / (len(x) - 1)


def _psd_sqrt(sigma: torch.Tensor) -> torch.Tensor:
    """Symmetric square root of a covariance (negative eigenvalues are rounding: clamped to 0)."""
    w, v = torch.linalg.eigh(sigma)
    return (v * w.clamp_min(0).sqrt()) @ v.T


# ---------------------------------------------------------------------------------------------
# Per model: only what involves the samples


def fid(gen: torch.Tensor, stats: RealStats) -> float:
    """Fréchet distance (Heusel et al. 2017): |mu_g - mu_r|^2 + Tr(S_g) + Tr(S_r) - 2 Tr((S_r S_g)^(1/2)).

    Tr((S_r S_g)^(1/2)) is the sum of the square roots of the eigenvalues of S_r S_g, which are
    those of the symmetric PSD matrix S_r^(1/2) S_g S_r^(1/2) (AB and BA share their non-zero
    eigenvalues): one ``eigvalsh`` instead of torch-fidelity's general ``eigvals`` of S_r S_g,
    whose negative rounding eigenvalues also count 0 there.
    """
    mu, sigma = gaussian_fit(gen)
    diff = (mu - stats.mu).numpy()  # in the features' dtype, as torch-fidelity's diff.dot(diff)
    inner = stats.sigma_sqrt @ sigma @ stats.sigma_sqrt
    tr_covmean = torch.linalg.eigvalsh((inner + inner.T) / 2).clamp_min(0).sqrt().sum()
    return float(diff.dot(diff)) + float(sigma.trace()) + float(stats.sigma.trace()) - 2 * float(tr_covmean)


def kid(gen: torch.Tensor, real: torch.Tensor, stats: RealStats, plan: KidPlan,
        chunk_elements: int = BLOCK_ELEMENTS) -> tuple[float, float]:
    """KID mean and std over ``plan``'s subsets: torch-fidelity's ``kid_features_to_metric``, with the
    real-real kernel sums from ``stats`` (computed there on first use of the plan)."""
    stats.ensure(real, kid=plan, n_gen=len(gen))
    gen_idx, real_idx = plan.draws(len(gen), len(real))
    xx = _subset_sums(gen, gen_idx, None, None, chunk_elements)
    xy = _subset_sums(gen, gen_idx, real, real_idx, chunk_elements)
    return _kid_from_sums(xx, stats.kid_sums[plan.key(len(gen), len(real))], xy, plan.subset_size)


def neighbourhood_metrics(gen: torch.Tensor, real: torch.Tensor, stats: RealStats, pr_k: int | None = 3,
                          dc_k: int | None = 5, block_elements: int = BLOCK_ELEMENTS) -> dict[str, float]:
    """Precision/recall (Kynkäänniemi et al. 2019, k = ``pr_k``) and density/coverage (Naeem et al.
    2020, k = ``dc_k``) from one blocked pass over the (M, N) real-to-sample distances.

    precision = share of samples within the k-NN radius of some real point (``<=``, torch-fidelity);
    recall    = share of real points within the k-NN radius of some sample (``<=``);
    density   = 1/(kN) sum_j sum_i 1[d(X_i, Y_j) < NND_k(X_i)]  (Naeem et al. eq. 5, strict, as prdc;
                a radius of 0, from exact duplicates, holds a sample at distance 0, as bench.metrics.coverage);
    coverage  = 1/M sum_i 1[exists j: d(X_i, Y_j) < NND_k(X_i)]   (eq. 6).
    ``None`` skips a pair. The real radii come from ``stats`` (added there on first use of a k).
    """
    stats.ensure(real, [k for k in (pr_k, dc_k) if k is not None])
    n, m = len(gen), len(real)
    geo = _Geometry.of(m, n)  # real rows, sample columns: torch-fidelity's cdist(real, gen) (save_cpu_ram=False)
    left, right = geo.rows(real, left=True), geo.rows(gen, left=False)
    if pr_k is not None:
        gen_t = geo.threshold(knn_radii(gen, [pr_k], block_elements)[pr_k], strict=False)  # (N,)
        real_t = geo.threshold(stats.radii[pr_k], strict=False)  # (M,)
        # value - threshold <= 0  <=>  value <= threshold: an IEEE difference is 0 only for equal floats
        margin_gen = torch.full((n,), math.inf, dtype=gen.dtype)  # per sample: min over real balls
        real_in_gen = torch.zeros(m, dtype=torch.bool)
    if dc_k is not None:
        radii = stats.radii[dc_k]
        # a real point with dc_k or more exact duplicates has radius 0: its ball holds a sample that
        # coincides with it (d <= 0), as bench.metrics.coverage.density_coverage counts it (strictly,
        # prdc's rule, nothing could ever be inside); a radius above 0 keeps Naeem et al.'s strict <
        dc_t = torch.where(radii > 0, geo.threshold(radii, strict=True), geo.threshold(radii, strict=False))
        covered = torch.zeros(m, dtype=torch.bool)
        inside = 0
    blocks = _row_blocks(m, n, block_elements)
    work = torch.empty(max(b.stop - b.start for b in blocks), n, dtype=gen.dtype)  # reused: no page faults from a fresh 32 MB per block
    for rows in blocks:
        v = geo.values(left[rows], right)  # (b, N)
        w = work[: len(v)]
        if pr_k is not None:
            margin_gen = torch.minimum(margin_gen, torch.sub(v, real_t[rows, None], out=w).amin(0))
            real_in_gen[rows] = torch.sub(v, gen_t, out=w).amin(1) <= 0
        if dc_k is not None:
            torch.sub(v, dc_t[rows, None], out=w)  # <= 0: sample j inside real ball i
            covered[rows] = w.amin(1) <= 0
            inside += int(torch.count_nonzero(w <= 0))
    out: dict[str, float] = {}
    if pr_k is not None:  # float32 means, as torch-fidelity's .float().mean().item()
        out["precision"] = (margin_gen <= 0).float().mean().item()
        out["recall"] = real_in_gen.float().mean().item()
    if dc_k is not None:
        out["density"] = inside / (dc_k * n)
        out["coverage"] = covered.double().mean().item()
    return out
