"""Naive Bayes: the exact likelihood equals a closed-form computation on a tiny dataset."""
from __future__ import annotations

import math

import torch
from scipy.stats import norm

from bench.families.base import DataSpec
from bench.families.naive_bayes import NaiveBayes, NaiveBayesOptions, log_diff_ndtr

# 2 classes, 3 "pixels" of a 1x1x3 image
X = torch.tensor([[0, 10, 255], [0, 12, 250], [3, 200, 0], [5, 210, 0], [4, 190, 1]], dtype=torch.uint8)
Y = torch.tensor([0, 0, 1, 1, 1])
SPEC = DataSpec("image", (1, 1, 3), 2, (0.4, 0.6))


def _fit(pixel_model: str, **kw) -> NaiveBayes:
    m = NaiveBayes(SPEC, NaiveBayesOptions(pixel_model=pixel_model, **kw))
    m.training_step(X.view(5, 1, 1, 3).float() / 255, Y)
    return m


def test_categorical_matches_hand_computation():
    m = _fit("categorical", alpha=0.5)
    x = X[0]
    total = 0.0
    terms = []
    for c, n_c in ((0, 2), (1, 3)):
        lp = math.log((n_c + 1) / (5 + 2))  # add-one smoothed prior
        for d in range(3):
            count = int(((X[:, d] == x[d]) & (Y == c)).sum())
            lp += math.log((count + 0.5) / (n_c + 256 * 0.5))
        terms.append(lp)
    total = math.log(sum(math.exp(t) for t in terms))
    got = m.log_likelihood(x.view(1, 1, 1, 3), torch.Generator())[0]
    assert got.kind == "exact" and got.estimator == "exact"
    assert abs(got.log_prob.item() - total) < 1e-4


def test_gaussian_matches_scipy_discretized_normal():
    m = _fit("gaussian", min_std=1.0)
    x = torch.tensor([[1, 11, 254]], dtype=torch.uint8)
    terms = []
    for c, n_c in ((0, 2), (1, 3)):
        xs = X[Y == c].double().numpy()
        mu, sd = xs.mean(0), xs.std(0)  # maximum-likelihood (biased) std
        sd = [max(s, 1.0) for s in sd]
        lp = math.log((n_c + 1) / 7)
        for d in range(3):
            v = float(x[0, d])
            lo = -math.inf if v == 0 else v - 0.5
            hi = math.inf if v == 255 else v + 0.5
            a, b = (lo - mu[d]) / sd[d], (hi - mu[d]) / sd[d]
            if a > 0:  # upper tail: difference of survival functions, in logs (no underflow)
                la, lb = norm.logsf(a), norm.logsf(b)
            else:
                la, lb = norm.logcdf(b), norm.logcdf(a)
            lp += la + math.log1p(-math.exp(lb - la))
        terms.append(lp)
    expected = math.log(sum(math.exp(t) for t in terms))
    got = m.log_likelihood(x.view(1, 1, 1, 3), torch.Generator())[0].log_prob.item()
    assert abs(got - expected) < 1e-3, (got, expected)


def test_discretized_probabilities_sum_to_one():
    m = _fit("gaussian")
    values = torch.arange(256, dtype=torch.uint8)
    # all 256 values of pixel 0 with the other two pixels fixed: the conditional mass of pixel 0 sums to one per class,
    # so summing p(x) over pixel 0 gives p(x1, x2) <= 1; with a single pixel image it is exactly one.
    spec1 = DataSpec("image", (1, 1, 1), 2, (0.5, 0.5))
    m1 = NaiveBayes(spec1, NaiveBayesOptions())
    m1.training_step(X[:, :1].view(5, 1, 1, 1).float() / 255, Y)
    lp = m1.log_likelihood(values.view(256, 1, 1, 1), torch.Generator())[0].log_prob.double()
    assert abs(lp.exp().sum().item() - 1.0) < 1e-6
    assert m.log_likelihood(X.view(5, 1, 1, 3), torch.Generator())[0].log_prob.isfinite().all()


def test_log_diff_ndtr_is_stable_in_both_tails():
    a = torch.tensor([-40.0, 30.0, -1.0, 8.0], dtype=torch.float64)
    b = torch.tensor([-39.0, 31.0, 1.0, 9.0], dtype=torch.float64)
    got = log_diff_ndtr(a, b)
    assert torch.isfinite(got).all()
    assert abs(got[2].item() - math.log(norm.cdf(1) - norm.cdf(-1))) < 1e-9
    assert abs(got[1].item() - math.log(norm.sf(30) - norm.sf(31))) < 1e-6


def test_samples_follow_class_and_range():
    m = _fit("categorical", alpha=0.001)  # little smoothing: samples follow the class histogram
    g = torch.Generator().manual_seed(0)
    s = m.sample(200, g, y=torch.ones(200, dtype=torch.long))
    assert s.shape == (200, 1, 1, 3) and s.min() >= 0 and s.max() <= 1
    # class 1's last pixel is 0, 0 or 1 in the data: (3 + 2 alpha) / (3 + 256 alpha) = 92% of draws
    share = ((s[:, 0, 0, 2] * 255).round() <= 1).float().mean().item()
    assert 0.85 < share < 0.98


def test_points_density_is_a_normal_mixture():
    spec = DataSpec("points", (2,), 2, (0.5, 0.5))
    pts = torch.tensor([[0.0, 0.0], [2.0, 0.0], [10.0, 10.0], [12.0, 10.0]])
    y = torch.tensor([0, 0, 1, 1])
    m = NaiveBayes(spec, NaiveBayesOptions(min_std=0.5))
    m.training_step(pts, y)
    q = torch.tensor([[1.0, 0.0]])
    lp = m.log_likelihood(q, torch.Generator())[0].log_prob.item()
    # class 0: mean (1, 0), std (1, floor 0.5); class 1 is far away; prior (2+1)/(4+2)
    expected = math.log(0.5) + norm.logpdf(1, 1, 1) + norm.logpdf(0, 0, 0.5)
    assert abs(lp - expected) < 1e-5
