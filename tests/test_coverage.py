"""Known-answer tests for density/coverage, class coverage and toy2d mode coverage."""
from __future__ import annotations

import math

import pytest
import torch

from bench.data import Mixture
from bench.metrics import coverage
from bench.results import METRICS


def _gauss(n: int, d: int, seed: int, shift: float = 0.0, dtype=torch.float64) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g, dtype=dtype) + shift


def _dc_bruteforce(real: torch.Tensor, fake: torch.Tensor, k: int) -> tuple[float, float]:
    """Naeem et al. 2020, eqs. 5-6, written as plain loops over pairs."""
    m, n = len(real), len(fake)
    radii = []
    for i in range(m):
        d = sorted(float(torch.linalg.vector_norm(real[i] - real[j])) for j in range(m) if j != i)
        radii.append(d[k - 1])  # k-th nearest other point
    inside_total, covered = 0, 0
    for i in range(m):
        hit = False
        for j in range(n):
            if float(torch.linalg.vector_norm(fake[j] - real[i])) < radii[i]:
                inside_total += 1
                hit = True
        covered += hit
    return inside_total / (k * n), covered / m


@pytest.mark.parametrize("k", [1, 3, 5])
def test_density_coverage_vectorised_equals_bruteforce(k):
    real, fake = _gauss(60, 3, 0), _gauss(45, 3, 1, shift=0.3)
    want = _dc_bruteforce(real, fake, k)
    got = coverage.density_coverage(real, fake, k=k, batch_size=7)  # odd block size exercises the blocking
    assert got[0] == pytest.approx(want[0], abs=1e-12)
    assert got[1] == pytest.approx(want[1], abs=1e-12)


def test_density_coverage_float32_matches_float64():
    real, fake = _gauss(400, 8, 2), _gauss(300, 8, 3, shift=0.2)
    d64, c64 = coverage.density_coverage(real, fake)
    d32, c32 = coverage.density_coverage(real.float(), fake.float())
    assert d32 == pytest.approx(d64, abs=2 / (5 * 300))  # at most a couple of boundary pairs flip
    assert c32 == pytest.approx(c64, abs=2 / 400)


def test_knn_radii_excludes_self_and_uses_cached_radii():
    real = _gauss(50, 2, 4)
    r = coverage.knn_radii(real, 2, batch_size=9)
    d = torch.cdist(real, real)
    assert torch.allclose(r, d.sort(dim=1).values[:, 2])  # index 0 is the point itself
    fake = _gauss(30, 2, 5)
    assert coverage.density_coverage(real, fake, k=2, radii=r) == coverage.density_coverage(real, fake, k=2)
    with pytest.raises(ValueError):
        coverage.knn_radii(real, 50)


def test_density_coverage_extremes():
    real = _gauss(300, 4, 6)
    d, c = coverage.density_coverage(real, real.clone())
    assert c == 1.0  # every real point holds itself (distance 0 < radius)
    d, c = coverage.density_coverage(real, _gauss(300, 4, 7, shift=50.0))
    assert (d, c) == (0.0, 0.0)


def test_density_coverage_expectations_for_identical_distributions():
    """Naeem et al. 2020, sec. 4: E[density] = 1 and E[coverage] = 1 - prod_i (N-i)/(N+M-i), i = 1..k.

    (A real point is uncovered iff its k nearest neighbours among the other N-1 real and M fake
    points are all real; by exchangeability that has probability C(N-1, k) / C(N+M-1, k).)
    """
    n = m = 2000
    k = 5
    want_cov = 1 - math.prod((n - i) / (n + m - i) for i in range(1, k + 1))  # 0.9689
    d, c = coverage.density_coverage(_gauss(n, 4, 8), _gauss(m, 4, 9), k=k)
    assert d == pytest.approx(1.0, abs=0.05)  # spread over seeds ~0.005
    assert c == pytest.approx(want_cov, abs=0.01)  # spread over seeds ~0.002


def test_class_coverage_one_class_and_boundary():
    freq = torch.full((10,), 0.1, dtype=torch.float64)
    logits = torch.zeros(200, 10)
    logits[:, 3] = 5.0  # a generator that only emits "3"
    cc = coverage.class_coverage(logits, freq)
    assert cc["classes_covered"] == 1
    assert cc["class_kl"] == pytest.approx(math.log(10))  # KL(delta_3 || uniform)
    # boundary: 1000 samples, expected 100 per class, 20% = 20 samples needed
    labels = torch.cat([torch.full((20,), 0), torch.full((19,), 1), torch.full((961,), 2)])
    cc = coverage.class_coverage(torch.nn.functional.one_hot(labels, 10).float(), freq, min_share=0.2)
    assert cc["classes_covered"] == 2  # class 0 (20) counts, class 1 (19) does not, class 2 does


def test_class_kl_matches_scipy():
    from scipy.stats import entropy

    freq = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    labels = torch.tensor([0] * 10 + [1] * 30 + [2] * 60)
    cc = coverage.class_coverage(torch.nn.functional.one_hot(labels, 3).float(), freq)
    assert cc["class_kl"] == pytest.approx(entropy([0.1, 0.3, 0.6], freq.numpy()), rel=1e-12)


def test_classifier_score_known_answers():
    # confident and balanced over K classes -> K; uninformative -> 1 (Salimans et al. 2016)
    labels = torch.arange(10).repeat(50)
    confident = 100.0 * torch.nn.functional.one_hot(labels, 10).double()
    assert coverage.classifier_score(confident, splits=1) == pytest.approx(10.0, rel=1e-6)
    # shuffled splits of 50 are not exactly balanced, so their marginals are not uniform: a bit below 10
    assert 8.5 < coverage.classifier_score(confident, splits=10) < 10.0
    assert coverage.classifier_score(torch.zeros(500, 10), splits=10) == pytest.approx(1.0, abs=1e-12)
    one_class = 100.0 * torch.nn.functional.one_hot(torch.zeros(500, dtype=torch.long), 10).double()
    assert coverage.classifier_score(one_class) == pytest.approx(1.0, abs=1e-9)


def _ring8(std: float = 0.02) -> Mixture:
    a = torch.arange(8, dtype=torch.float64) * (2 * math.pi / 8)
    return Mixture(means=(2.0 * torch.stack([a.cos(), a.sin()], 1)).float(), std=std)


def _sample_modes(mix: Mixture, modes: list[int], n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    which = torch.tensor(modes)[torch.randint(len(modes), (n,), generator=g)]
    return mix.means[which] + mix.std * torch.randn(n, 2, generator=g)


def test_mode_coverage_two_of_eight():
    mix = _ring8()
    mc = coverage.mode_coverage(_sample_modes(mix, [0, 5], 2500, 0), mix)
    assert mc["modes_covered"] == 2
    assert mc["high_quality_share"] > 0.97
    assert mc["mode_kl"] == pytest.approx(math.log(4), abs=0.01)  # uniform over 2 of 8: log(8/2)


def test_mode_coverage_perfect_and_junk():
    mix = _ring8()
    mc = coverage.mode_coverage(_sample_modes(mix, list(range(8)), 20000, 1), mix)
    assert mc["modes_covered"] == 8
    # chi distribution with 2 dof: P(r <= 3 std) = 1 - exp(-4.5); binomial sd ~ 0.0007
    assert mc["high_quality_share"] == pytest.approx(coverage.chi_within(3.0, 2), abs=0.003)
    assert mc["mode_kl"] < 0.002
    junk = coverage.mode_coverage(torch.zeros(100, 2), mix)  # all at the centre of the ring
    assert junk == {"modes_covered": 0.0, "high_quality_share": 0.0, "mode_kl": None}


def test_metric_names_registered_with_direction():
    for name, better in [("density_domain", True), ("coverage_inception", True), ("classes_covered", True),
                         ("class_kl", False), ("classifier_score", True), ("modes_covered", True),
                         ("high_quality_share", True), ("mode_kl", False)]:
        spec = METRICS.get(name)
        assert spec.higher_is_better is better and spec.group == "quality" and spec.description
