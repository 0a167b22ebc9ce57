"""Numerical traps (issue 11 part 7): FID's square root with complex parts or slightly negative results,
fewer samples than feature dimensions, and duplicate points in precision/recall and density/coverage.
Each is handled (a defined value, or None) and recorded (the metric's note), with known answers."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric

from bench.metrics import coverage, fast
from bench.metrics.quality import QualityOptions, feature_metrics, fid_checked


def _features(seed: int, n: int, dims: int) -> torch.Tensor:
    return torch.randn(n, dims, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


class _Ext:  # what feature_metrics reads of an extractor
    key = "test-extractor"


def _stats_ref(mu: list[float], sigma: torch.Tensor, n_real: int = 10) -> dict:
    """An in-memory reference whose cached real statistics are given (as a cache file would hold them)."""
    mu_t = torch.tensor(mu, dtype=torch.float64)
    stats = fast.RealStats(n=n_real, mu=mu_t, sigma=sigma, sigma_sqrt=fast._psd_sqrt(sigma))
    return {"features": torch.zeros(n_real, len(mu), dtype=torch.float64), "split": "test", "fast_stats": stats.to_state()}


def test_fid_known_answer_diagonal_gaussians():
    """Diagonal covariances: FID = |mu1 - mu2|^2 + sum_i (s1_i - s2_i)^2 with s the standard deviations.
    Four samples with mean (3, 1) and unbiased variances (4, 9), no covariance, vs N((0, 1), diag(1, 4))."""
    a, b = 6.0 ** 0.5, 13.5 ** 0.5  # var = 2 a^2 / 3 = 4, 2 b^2 / 3 = 9
    gen = torch.tensor([[3 + a, 1.0], [3 - a, 1.0], [3.0, 1 + b], [3.0, 1 - b]], dtype=torch.float64)
    fid, note = fid_checked(gen, _stats_ref([0.0, 1.0], torch.diag(torch.tensor([1.0, 4.0], dtype=torch.float64))))
    assert fid == pytest.approx(9 + (1 - 2) ** 2 + (2 - 3) ** 2, abs=1e-12) and note == ""


def test_fid_that_rounds_below_zero_is_zero_and_says_so():
    """Identical sets: the exact FID is 0; the formula gives -7.1e-15 for this seed."""
    x = _features(0, 40, 8)
    assert fast.fid(x, fast.RealStats.build(x)) < 0  # the trap is real
    fid, note = fid_checked(x, {"features": x})
    assert fid == 0.0 and "rounding below 0) reported as 0" in note


def test_fid_far_below_zero_is_not_reported():
    """A covariance that is not PSD (a damaged cache, say) cannot give a distance: None, with the reason.
    Real N(0, diag(1, -4)) (square root diag(1, 0)) vs samples with covariance diag(4, 1): the formula
    gives 0 + 5 - 3 - 2 * 2 = -2."""
    gen = torch.tensor([[2.0, 0.0], [-2.0, 0.0], [0.0, 1.0], [0.0, -1.0]], dtype=torch.float64) * 1.5 ** 0.5
    fid, note = fid_checked(gen, _stats_ref([0.0, 0.0], torch.diag(torch.tensor([1.0, -4.0], dtype=torch.float64))))
    assert fid is None and note == "FID came out at -2, below 0 beyond rounding: not reported"


def test_fid_with_fewer_samples_than_feature_dimensions():
    """20 samples in 64 dimensions: the covariance is singular; FID is defined (equal to the sqrtm route's
    value on the same statistics), biased, and the note says so."""
    gen, real = _features(0, 20, 64), _features(1, 300, 64)
    fid, note = fid_checked(gen, {"features": real})
    s1, s2 = fid_features_to_statistics(gen), fid_features_to_statistics(real)
    covmean = linalg.sqrtm(s1["sigma"] @ s2["sigma"]).real
    by_sqrtm = float(((s1["mu"] - s2["mu"]) ** 2).sum() + np.trace(s1["sigma"] + s2["sigma"] - 2 * covmean))
    assert fid == pytest.approx(by_sqrtm, rel=1e-6)
    assert note.startswith("20 samples in 64 feature dimensions: the sample covariance is singular")
    assert fid_checked(gen[:1], {"features": real}) == (None, "FID needs at least 2 samples for a covariance, got 1")


def test_fid_of_a_healthy_sample_has_no_note():
    fid, note = fid_checked(_features(0, 500, 16), {"features": _features(1, 500, 16)})
    assert fid > 0 and note == ""


def _brute_density_coverage(real, fake, k):
    """Naeem et al. eqs. 5-6 by loops, with the zero-radius rule: a sample on a real point is inside its ball."""
    d_rr = torch.cdist(real, real)
    radii = d_rr.sort(dim=1).values[:, k]
    d = torch.cdist(real, fake)
    inside = [[(d[i, j] < radii[i]) or (d[i, j] == 0) for j in range(len(fake))] for i in range(len(real))]
    density = sum(sum(row) for row in inside) / (k * len(fake))
    cov = sum(any(row) for row in inside) / len(real)
    return float(density), float(cov)


def test_duplicates_in_density_coverage_known_answer():
    """20 copies of one real point (radius 0 for k = 5) and a generator that outputs exactly that point:
    strictly, no sample is ever inside a radius-0 ball and density/coverage would be 0; here the 20 balls
    hold it, and the count of radius-0 points is in the note."""
    real = _features(0, 300, 16).float()
    real[:20] = real[0]
    fake = real[0].repeat(50, 1)
    density, cov = coverage.density_coverage(real, fake, k=5)
    assert (density, cov) == pytest.approx(_brute_density_coverage(real, fake, 5))
    assert cov >= 20 / 300 and density >= 20 / 5
    assert coverage.zero_radius_count(real, 5) == 20
    assert coverage.duplicates_note(real, 5, "reference points") == \
        "20 of 300 reference points have k-NN radius 0 (5 or more exact duplicates each)"
    assert coverage.duplicates_note(real, 20, "reference points") == ""  # 20 copies: 19 neighbours each, k = 20
    # the evaluator's fast pass (bench.metrics.fast) keeps the same zero-radius rule: the same numbers
    by = {m.name: m.value for m in feature_metrics(fake, {"features": real, "split": "test"}, "domain", _Ext(),
                                                   QualityOptions(metrics=["density_coverage"]))}
    assert (by["density_domain"], by["coverage_domain"]) == (density, cov)


def test_duplicates_in_precision_recall_are_recorded():
    """A mode-collapsed generator (every sample the same point): recall is the share of real points the
    single point reaches (0 here: its balls have radius 0), precision is defined, and the notes say why."""
    real = _features(1, 200, 8).float()
    gen = _features(2, 1, 8).float().repeat(60, 1)
    metrics = {m.name: m for m in feature_metrics(gen, {"features": real, "split": "test"}, "domain", _Ext(),
                                                  QualityOptions(metrics=["precision_recall", "fid"]))}
    assert metrics["recall_domain"].value == 0.0
    assert metrics["recall_domain"].note == "60 of 60 samples have k-NN radius 0 (3 or more exact duplicates each)"
    assert 0.0 <= metrics["precision_domain"].value <= 1.0 and metrics["precision_domain"].note == ""
    assert metrics["fid_domain"].value is not None and metrics["fid_domain"].value > 0


def test_fid_is_torch_fidelitys():
    """The checks add notes, never change a healthy value: float32 features (as the extractors give) yield
    torch-fidelity's FID to 1e-9 relative (``fast.fid``'s symmetric eigensolver sums in another order)."""
    g = torch.Generator().manual_seed(0)
    gen, real = torch.randn(500, 32, generator=g) * 3 + 1, torch.randn(300, 32, generator=g) * 2
    s1, s2 = fid_features_to_statistics(gen), fid_features_to_statistics(real)
    assert s1["mu"].dtype == np.float32
    want = fid_statistics_to_metric(s1, s2, verbose=False)[KEY_METRIC_FID]
    assert fid_checked(gen, {"features": real})[0] == pytest.approx(want, rel=1e-9)
