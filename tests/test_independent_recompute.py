"""Every number bench reports, recomputed by an independent implementation or a closed form.

An outside reviewer recomputes bench's numbers with other libraries; these tests do it first. Each
test names its reference (SciPy, scikit-learn, prdc, a closed form written out here from the paper)
and its tolerance. bench's own helpers appear on the reference side only where they pick *which data*
are scored (``measure.subset``), never to compute a value. Where bench departs from a paper on purpose
(docs/metrics.md), the test pins the convention explicitly.

Metrics checked elsewhere against an independent reference (not repeated here): FID/KID/precision/
recall against torch-fidelity and density/coverage against prdc on ``bench.metrics.fast``
(tests/test_fast_metrics.py), class KL against ``scipy.stats.entropy`` (tests/test_coverage.py), the
naive-Bayes likelihoods against hand and SciPy computations (tests/test_naive_bayes.py), the family
likelihoods against brute-force Jacobians / closed forms (tests/test_flow.py, test_diffusion.py,
test_flow_matching.py, test_autoregressive.py), the stability statistics by hand (tests/test_stability.py).
"""
from __future__ import annotations

import io
import math
from types import SimpleNamespace

import numpy as np
import prdc
import pytest
import torch
from PIL import Image
from scipy import linalg, stats
from scipy.special import logsumexp, softmax
from sklearn.metrics import accuracy_score, recall_score
from sklearn.naive_bayes import CategoricalNB
from torch import nn

from bench.analysis import measure
from bench.analysis.classify import bayes_accuracy, fit_naive_bayes
from bench.analysis.memorization import (closer_share, data_copying_ct, exact_copy_share, near_copy_share,
                                         nearest_neighbours)
from bench.analysis.ood import auroc
from bench.analysis.probes import has_encoder, reconstruct
from bench.data import Dataset, Mixture, load_dataset
from bench.families.autoencoder import Autoencoder, AutoencoderOptions
from bench.families.base import DataSpec
from bench.families.naive_bayes import NaiveBayes, NaiveBayesOptions
from bench.families.vae import VAE, VAEOptions
from bench.metrics import coverage
from bench.metrics.controllability import controllability
from bench.metrics.cost import CostEvaluator
from bench.metrics.likelihood import evaluate_likelihood
from bench.metrics.quality import QualityOptions, feature_metrics
from bench.metrics.speed import speed_metrics


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def nb_cat(digits):
    """bench's categorical naive Bayes (alpha = 1) fitted on the digits training split."""
    return fit_naive_bayes(digits.train_x, digits.train_y, digits, NaiveBayesOptions(pixel_model="categorical"))


def _sklearn_nb(nb: NaiveBayes, ds: Dataset) -> CategoricalNB:
    """scikit-learn's CategoricalNB on the same data, smoothing and (add-one smoothed) class prior as ``nb``."""
    prior = ((nb.count + 1) / (nb.count.sum() + ds.num_classes)).numpy()  # bench's documented prior, written out
    sk = CategoricalNB(alpha=nb.options.alpha, min_categories=256, class_prior=prior)
    return sk.fit(ds.train_x.flatten(1).numpy(), ds.train_y.numpy())


def _sk_log_px(sk: CategoricalNB, x: torch.Tensor) -> np.ndarray:
    """log p(x) = log sum_y p(x, y) in nats, (N,), from scikit-learn's joint log-likelihoods."""
    return logsumexp(sk.predict_joint_log_proba(x.flatten(1).numpy()), axis=1)


def _features(n: int, d: int, seed: int, shift: float = 0.0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, d, generator=g, dtype=torch.float64) + shift).relu() * 3


# ---------------------------------------------------------------------------------------------
# Sample quality through the evaluator's own entry point (feature_metrics), float64 features


def _quality(gen: torch.Tensor, real: torch.Tensor, **opts) -> dict[str, float]:
    ref = {"features": real, "split": "test"}  # an in-memory reference: nothing is written to the cache
    ms = feature_metrics(gen, ref, "domain", SimpleNamespace(key="test-features"), QualityOptions(**opts))
    return {m.name.replace("_domain", ""): m.value for m in ms}


def _fid_scipy(a: np.ndarray, b: np.ndarray) -> float:
    """Heusel et al. 2017 with SciPy's matrix square root: |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2)."""
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean = linalg.sqrtm(sa @ sb).real
    return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(sa + sb - 2 * covmean))


def _kid_closed_form(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 (Bińkowski et al. 2018, eq. 3) with k(a, b) = (a.b / d + 1)^3 on the whole sets."""
    d, m, n = x.shape[1], len(x), len(y)
    kxx, kyy, kxy = (x @ x.T / d + 1) ** 3, (y @ y.T / d + 1) ** 3, (x @ y.T / d + 1) ** 3
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1)) + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def _precision_recall_bruteforce(gen: np.ndarray, real: np.ndarray, k: int) -> tuple[float, float]:
    """Kynkäänniemi et al. 2019: the manifold is the union of balls of radius "distance to the k-th nearest
    other point"; precision = share of samples in the real manifold, recall the other way round (<=)."""
    def radii(a):
        d = np.sqrt(((a[:, None] - a[None]) ** 2).sum(-1))
        return np.sort(d, axis=1)[:, k]  # column 0 is the point itself

    d = np.sqrt(((gen[:, None] - real[None]) ** 2).sum(-1))  # (N, M)
    precision = (d <= radii(real)[None, :]).any(1).mean()
    recall = (d <= radii(gen)[:, None]).any(0).mean()
    return float(precision), float(recall)


def test_feature_metrics_equal_scipy_fid_closed_form_kid_bruteforce_pr_and_prdc():
    gen, real = _features(120, 6, 0, shift=0.3), _features(150, 6, 1)
    # one KID subset the size of the smaller set: a subset of all 120 samples is every sample, so the
    # mean over subsets is the closed-form unbiased MMD^2 of the whole sets (the real side: 120 of 150)
    real = real[:120]
    got = _quality(gen, real, kid_subsets=1, kid_subset_size=120)
    g, r = gen.numpy(), real.numpy()
    assert got["fid"] == pytest.approx(_fid_scipy(g, r), rel=1e-8)
    assert got["kid"] == pytest.approx(_kid_closed_form(g, r), rel=1e-10)
    assert got["kid_std"] == 0.0  # one subset
    assert (got["precision"], got["recall"]) == pytest.approx(_precision_recall_bruteforce(g, r, 3), abs=1e-7)
    want = prdc.compute_prdc(r, g, nearest_k=5)  # Naeem et al.'s own code (float64 distances)
    assert got["density"] == pytest.approx(want["density"], abs=1e-12)
    assert got["coverage"] == pytest.approx(want["coverage"], abs=1e-12)


def test_kid_over_subsets_is_the_mean_of_closed_form_mmds_on_the_drawn_subsets():
    """KID = mean over subsets of the unbiased MMD^2; the subsets are torch-fidelity's draws from
    RandomState(seed): gen then real, per subset (the convention docs/metrics.md states)."""
    gen, real = _features(90, 5, 2, shift=0.2), _features(110, 5, 3)
    got = _quality(gen, real, kid_subsets=7, kid_subset_size=40, metrics=["kid"])
    rng = np.random.RandomState(2020)
    mmds = []
    for _ in range(7):
        gi, ri = rng.choice(90, 40, replace=False), rng.choice(110, 40, replace=False)
        mmds.append(_kid_closed_form(gen.numpy()[gi], real.numpy()[ri]))
    assert got["kid"] == pytest.approx(np.mean(mmds), rel=1e-10)
    assert got["kid_std"] == pytest.approx(np.std(mmds), rel=1e-8)  # population std, as torch-fidelity


def test_fid_of_two_gaussian_fits_has_the_closed_form_of_diagonal_gaussians():
    """Exact moments: features whose sample mean and covariance are exactly mu and diag(s^2)."""
    def exact_moments(mu, sd, n):
        z = np.random.RandomState(n).randn(n, len(mu))
        z -= z.mean(0)
        z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T  # sample covariance exactly I
        return torch.from_numpy(mu + z * sd)

    mu1, sd1, mu2, sd2 = np.array([0.0, 1.0, 2.0]), np.array([1.0, 2.0, 0.5]), np.array([1.0, 1.0, 0.0]), \
        np.array([3.0, 1.0, 0.5])
    gen, real = exact_moments(mu1, sd1, 200), exact_moments(mu2, sd2, 300)
    want = float(((mu1 - mu2) ** 2).sum() + ((sd1 - sd2) ** 2).sum())  # diagonal: sum (s1 - s2)^2
    assert _quality(gen, real, metrics=["fid"])["fid"] == pytest.approx(want, rel=1e-9)


def test_classifier_score_equals_the_inception_score_formula_written_with_scipy():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(103, 7, generator=g, dtype=torch.float64) * 3
    # splits = 1: exp(E_x KL(p(y|x) || p(y))) with p(y) the mean prediction (Salimans et al. 2016)
    p = softmax(logits.numpy(), axis=1)
    want1 = math.exp(np.mean([stats.entropy(pi, p.mean(0)) for pi in p]))
    assert coverage.classifier_score(logits, splits=1) == pytest.approx(want1, rel=1e-10)
    # 10 splits of the RandomState(seed) permutation, mean of the per-split scores (torch-fidelity's convention)
    perm = np.random.RandomState(2020).permutation(103)
    ps = p[perm]
    scores = [math.exp(np.mean([stats.entropy(pi, c.mean(0)) for pi in c]))
              for c in (ps[i * 103 // 10:(i + 1) * 103 // 10] for i in range(10))]
    assert coverage.classifier_score(logits, splits=10, seed=2020) == pytest.approx(np.mean(scores), rel=1e-10)


def test_class_and_mode_coverage_recomputed_by_hand_and_scipy():
    freq = torch.tensor([0.5, 0.25, 0.125, 0.125], dtype=torch.float64)
    labels = torch.tensor([0] * 50 + [1] * 45 + [2] * 4 + [3] * 1)
    cc = coverage.class_coverage(torch.nn.functional.one_hot(labels, 4).double(), freq, min_share=0.2)
    counts = np.bincount(labels.numpy(), minlength=4)
    assert cc["classes_covered"] == int((counts >= 0.2 * 100 * freq.numpy()).sum()) == 3  # class 3: 1 < 2.5
    assert cc["class_kl"] == pytest.approx(stats.entropy(counts / 100, freq.numpy()), rel=1e-12)
    # toy2d: 3 of 4 modes, one far point; mode_kl over the high-quality points vs uniform
    mix = Mixture(means=torch.tensor([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]]), std=0.5)
    pts = torch.tensor([[0.1, 0.0]] * 6 + [[10.0, 1.4]] * 3 + [[0.0, 10.2]] * 1 + [[5.0, 5.0]] * 2)
    mc = coverage.mode_coverage(pts, mix, n_std=3.0, min_share=0.2)
    hq = np.array([6, 3, 1, 0])  # |(0, 1.4)| = 1.4 <= 1.5; (5, 5) is 7.07 from every mode
    assert mc["high_quality_share"] == pytest.approx(10 / 12)
    assert mc["modes_covered"] == int((hq >= 0.2 * 12 / 4).sum()) == 3  # 0.6 of a sample needed
    assert mc["mode_kl"] == pytest.approx(stats.entropy(hq / 10, np.full(4, 0.25)), rel=1e-12)


def test_controllability_is_scikit_learns_accuracy_and_per_class_recall():
    g = torch.Generator().manual_seed(5)
    requested = torch.randint(0, 5, (300,), generator=g)
    predicted = torch.where(torch.rand(300, generator=g) < 0.7, requested, torch.randint(0, 5, (300,), generator=g))
    share, per_class = controllability(predicted, requested, 6)  # class 5 never requested
    assert share == pytest.approx(accuracy_score(requested.numpy(), predicted.numpy()), abs=1e-15)
    rec = recall_score(requested.numpy(), predicted.numpy(), labels=list(range(5)), average=None)
    assert per_class[:5] == pytest.approx(rec.tolist(), abs=1e-15) and per_class[5] is None


# ---------------------------------------------------------------------------------------------
# Likelihoods and bits/dim


def _image_dataset(train_x, train_y, test_x, test_y, k) -> Dataset:
    return Dataset("test-images", "image", train_x, train_y, test_x, test_y, k)


def test_a_uniform_model_of_8bit_data_is_exactly_8_bits_per_dim():
    """Categorical naive Bayes before any count: every pixel is uniform over 256 values, so
    log p(x) = -D ln 256 for every image: exactly 8 bits/dim and D ln 256 nats (Theis et al. 2016)."""
    g = torch.Generator().manual_seed(6)
    x = torch.randint(0, 256, (40, 1, 4, 5), generator=g, dtype=torch.uint8)
    ds = _image_dataset(x, torch.zeros(40, dtype=torch.long), x, torch.zeros(40, dtype=torch.long), 3)
    model = NaiveBayes(DataSpec("image", (1, 4, 5), 3, (1 / 3,) * 3), NaiveBayesOptions(pixel_model="categorical"))
    got = {m.name: m for m in evaluate_likelihood(model, ds, torch.device("cpu"), torch.Generator(), batch_size=16)}
    assert got["nll_bpd_exact"].value == pytest.approx(8.0, rel=1e-7)
    assert got["nll_nats_exact"].value == pytest.approx(20 * math.log(256), rel=1e-7)
    assert got["nll_bpd_exact"].kind == "exact" and got["nll_bpd_exact"].unit == "bits/dim"


def test_naive_bayes_nll_and_bits_per_dim_equal_scikit_learn(digits, nb_cat):
    sk = _sklearn_nb(nb_cat, digits)
    lp = _sk_log_px(sk, digits.test_x)  # (N,) nats
    cpu = torch.device("cpu")
    got = {m.name: m for m in evaluate_likelihood(nb_cat, digits, cpu, torch.Generator(), batch_size=100)}
    d = digits.dim
    assert got["nll_nats_exact"].value == pytest.approx(-lp.mean(), rel=1e-6)
    assert got["nll_bpd_exact"].value == pytest.approx(-lp.mean() / (d * math.log(2)), rel=1e-6)
    assert got["nll_nats_exact"].params["stderr"] == pytest.approx(stats.sem(lp), rel=1e-4)
    assert got["nll_bpd_exact"].params["stderr"] == pytest.approx(stats.sem(lp) / (d * math.log(2)), rel=1e-4)


def test_nll_gap_in_bits_per_dim_equals_scikit_learn_likelihoods(digits, nb_cat):
    gap = measure.train_test_gap(nb_cat, digits, 150, torch.Generator(), batch_size=64)
    sk = _sklearn_nb(nb_cat, digits)
    tr = _sk_log_px(sk, digits.train_x[measure.subset(len(digits.train_x), 150, 1)])
    te = _sk_log_px(sk, digits.test_x[measure.subset(len(digits.test_x), 150, 2)])
    bits = digits.dim * math.log(2)
    assert gap["nll_gap_nats"] == pytest.approx(tr.mean() - te.mean(), rel=1e-5)  # test NLL - train NLL
    assert gap["nll_gap_bpd"] == pytest.approx((tr.mean() - te.mean()) / bits, rel=1e-5)
    se = math.sqrt(tr.var(ddof=1) / 150 + te.var(ddof=1) / 150)  # independent means
    assert gap["nll_gap_bpd_se"] == pytest.approx(se / bits, rel=1e-4)


def _linear_gaussian_vae(w: np.ndarray, b: np.ndarray, sigma: float, enc_shift: np.ndarray,
                         enc_var_scale: float, iwae_k: int) -> VAE:
    """A VAE on 2-D points that *is* the linear-Gaussian model z ~ N(0, I), x | z ~ N(W z + b, sigma^2 I),
    W = diag(w); the encoder is the exact posterior, shifted by ``enc_shift`` and its variance scaled."""
    vae = VAE(DataSpec("points", (2,), 1, (1.0,)), VAEOptions(latent_dim=2, iwae_k=iwae_k))
    post_var = sigma**2 / (w**2 + sigma**2)  # posterior z_i | x: N(w_i (x_i - b_i) / (w_i^2 + sigma^2), post_var_i)
    a = w / (w**2 + sigma**2)
    enc, dec = nn.Linear(2, 4), nn.Linear(2, 4)
    with torch.no_grad():
        enc.weight.copy_(torch.tensor(np.r_[np.diag(a), np.zeros((2, 2))]))
        enc.bias.copy_(torch.tensor(np.r_[-a * b + enc_shift, np.log(post_var * enc_var_scale)]))
        dec.weight.copy_(torch.tensor(np.r_[np.diag(w), np.zeros((2, 2))]))
        dec.bias.copy_(torch.tensor(np.r_[b, np.full(2, math.log(sigma))]))
    vae.encoder, vae.decoder = enc, dec
    return vae.eval()


W, B, SIGMA = np.array([1.5, 0.7]), np.array([0.3, -0.2]), 0.6


def _exact_log_px(x: np.ndarray) -> np.ndarray:
    """log N(x; b, W W^T + sigma^2 I) (SciPy): the linear-Gaussian model's exact marginal likelihood."""
    return stats.multivariate_normal(B, np.diag(W**2 + SIGMA**2)).logpdf(x)


def test_elbo_and_iwae_are_the_exact_likelihood_when_the_encoder_is_the_true_posterior():
    """With q(z|x) = p(z|x) every importance weight equals p(x): ELBO = IWAE = log p(x) exactly."""
    x = torch.tensor([[0.0, 0.0], [2.0, -1.0], [-3.0, 1.5]])
    vae = _linear_gaussian_vae(W, B, SIGMA, np.zeros(2), 1.0, iwae_k=8)
    ds = Dataset("lg", "points", x, torch.zeros(3, dtype=torch.long), x, torch.zeros(3, dtype=torch.long), 1)
    got = {m.name: m.value for m in evaluate_likelihood(vae, ds, torch.device("cpu"), torch.Generator().manual_seed(0))}
    want = -_exact_log_px(x.double().numpy()).mean()
    assert got["nll_nats_elbo"] == pytest.approx(want, abs=1e-5)
    assert got["nll_nats_iwae"] == pytest.approx(want, abs=1e-5)
    assert "nll_bpd_elbo" not in got  # continuous points: nats only


def test_elbo_has_the_closed_form_gap_kl_and_iwae_closes_it():
    """With a misfit encoder q, E[ELBO] = log p(x) - KL(q(z|x) || p(z|x)) (a Gaussian KL in closed form)
    and the IWAE bound lies between it and log p(x), approaching log p(x) (Burda et al. 2016, thm. 1)."""
    shift, scale, n = np.array([0.4, -0.3]), 2.0, 4000
    x = torch.tensor([[1.0, -0.5]]).repeat(n, 1)
    lp = float(_exact_log_px(np.array([1.0, -0.5])))
    post_var = SIGMA**2 / (W**2 + SIGMA**2)
    kl = 0.5 * float(np.sum(scale - 1 - math.log(scale) + shift**2 / post_var))  # KL(N(m+s, c v) || N(m, v))
    vae = _linear_gaussian_vae(W, B, SIGMA, shift, scale, iwae_k=32)
    elbo, iwae = vae.log_likelihood(x, torch.Generator().manual_seed(1))
    e, i = elbo.log_prob.double(), iwae.log_prob.double()
    assert float(e.mean()) == pytest.approx(lp - kl, abs=4 * float(e.std()) / math.sqrt(n))
    assert lp - kl < float(i.mean()) < lp + 4 * float(i.std()) / math.sqrt(n)
    assert lp - float(i.mean()) < 0.1 * kl  # k = 32 closes most of the gap


# ---------------------------------------------------------------------------------------------
# Classification


def test_bayes_accuracy_and_its_standard_error_equal_scikit_learns(digits, nb_cat):
    sk = _sklearn_nb(nb_cat, digits)
    pred = sk.predict(digits.test_x.flatten(1).numpy())
    want = accuracy_score(digits.test_y.numpy(), pred)
    (acc,) = bayes_accuracy(nb_cat, digits.test_x, digits.test_y, torch.Generator(), batch_size=100)
    assert acc.accuracy == pytest.approx(want, abs=1e-15)
    assert acc.stderr == pytest.approx(math.sqrt(want * (1 - want) / len(pred)), rel=1e-12)  # binomial
    (row,) = measure.generative_classifier(nb_cat, digits, len(digits.test_x), torch.Generator())
    assert row["accuracy"] == pytest.approx(want, abs=1e-15)


# ---------------------------------------------------------------------------------------------
# Memorization


def test_closer_share_is_the_share_of_pairs_sample_nearer_with_ties_half():
    g = torch.Generator().manual_seed(7)
    ds_, dt = torch.randint(0, 6, (70,), generator=g).double(), torch.randint(0, 6, (50,), generator=g).double()
    a, b = ds_.numpy()[:, None], dt.numpy()[None, :]
    want = ((a < b).sum() + 0.5 * (a == b).sum()) / (70 * 50)  # P(d_sample < d_test) + P(tie) / 2
    assert closer_share(ds_, dt) == pytest.approx(want, abs=1e-15)
    # scipy: U of (test, sample) counts pairs test > sample
    assert closer_share(ds_, dt) == pytest.approx(stats.mannwhitneyu(b[0], a[:, 0]).statistic / 3500, abs=1e-15)


def test_near_and_exact_copy_shares_equal_numpy():
    g = torch.Generator().manual_seed(8)
    dt, ds_ = torch.rand(333, generator=g, dtype=torch.float64), torch.rand(200, generator=g, dtype=torch.float64) * 0.2
    ds_[:7] = 0.0
    t = np.quantile(dt.numpy(), 0.01)  # numpy's default (linear) quantile
    assert near_copy_share(ds_, dt) == pytest.approx(float((ds_.numpy() < t).mean()), abs=1e-15)
    assert exact_copy_share(ds_) == pytest.approx(7 / 200, abs=1e-15)


def _meehan_ct(cells_t, cells_s, d_t, d_s, k, min_count):
    """Meehan, Chaudhuri & Dasgupta 2020, eq. 3, written out: per cell pi with enough points,
    Z_U = (U - mn/2) / sqrt(mn(m+n+1)/12), U = #{(sample, test): d_sample > d_test} (+ ties / 2);
    C_T = sum_pi P_n(pi) Z_U(pi) / sum_pi P_n(pi), P_n the test share. Returns (C_T, cells used, slack):
    slack is how far C_T moves if every exactly tied pair were resolved one way (0 without ties)."""
    z, w, slack = [], [], []
    for c in range(k):
        s, t = d_s[cells_s == c], d_t[cells_t == c]
        if len(s) < min_count or len(t) < min_count:
            continue
        m, n = len(s), len(t)
        ties = (s[:, None] == t[None]).sum()
        u = (s[:, None] > t[None]).sum() + 0.5 * ties
        sd = math.sqrt(m * n * (m + n + 1) / 12)
        z.append((u - m * n / 2) / sd)
        slack.append(0.5 * ties / sd)
        w.append(len(t) / len(d_t))
    return float(np.dot(w, z) / np.sum(w)), len(z), float(np.dot(w, slack) / np.sum(w))


def test_data_copying_ct_equals_meehan_et_al_eq_3_on_known_cells():
    """Three far-apart clusters, so k-means' cells are known without k-means. Cell 0: the samples
    copy training points; cell 1: fresh draws; cell 2: 10 samples, under the 20 the cell needs."""
    rs = np.random.RandomState(9)
    centres = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 100.0]])

    def draw(counts):
        lab = np.repeat(np.arange(3), counts)
        return centres[lab] + rs.randn(len(lab), 2), lab

    train, _ = draw([300, 300, 300])
    test, lab_t = draw([60, 40, 30])
    fresh, lab_s = draw([0, 50, 10])
    samples = np.r_[train[rs.choice(300, 45, replace=False)], fresh]  # cell 0: 45 copies of training points
    lab_s = np.r_[np.zeros(45, int), lab_s]
    # distances to the nearest training point anywhere (bench's documented convention), by SciPy
    from scipy.spatial.distance import cdist
    d_t, d_s = cdist(test, train).min(1), cdist(samples, train).min(1)
    got = data_copying_ct(torch.from_numpy(train), torch.from_numpy(test), torch.from_numpy(samples),
                          torch.from_numpy(d_t), torch.from_numpy(d_s), cells=3, min_per_cell=20)
    want, used, _ = _meehan_ct(lab_t, lab_s, d_t, d_s, 3, 20)
    assert (got.cells_used, got.cells) == (used, 3) == (2, 3)
    assert got.c_t == pytest.approx(want, rel=1e-12)
    assert got.test_share_used == pytest.approx(100 / 130)
    # the fresh cell's Z_U is SciPy's asymptotic Mann-Whitney z (no ties there, no continuity correction)
    s, t = d_s[lab_s == 1], d_t[lab_t == 1]
    z_scipy = stats.norm.ppf(stats.mannwhitneyu(s, t, alternative="less", use_continuity=False,
                                                method="asymptotic").pvalue)
    u = (s[:, None] > t[None]).sum()
    assert (u - 50 * 40 / 2) / math.sqrt(50 * 40 * 91 / 12) == pytest.approx(z_scipy, rel=1e-9)


def test_memorization_row_of_the_evaluator_equals_scipy_and_meehan_recomputed(digits):
    """``measure.memorization`` (what the memorization evaluator records), pixel space, recomputed: SciPy
    distances, pair counts, numpy's quantile and eq. 3 on the same k-means cells (the partition is
    bench's documented choice: scikit-learn k-means, seeded, on the training points)."""
    from scipy.spatial.distance import cdist
    from sklearn.cluster import KMeans

    n_test, cells = 120, 4
    samples = torch.cat([digits.train_x[:40], digits.test_x[-80:]])  # 40 copies, 80 unseen images
    mem = measure.memorization(samples, digits, "pixel", torch.device("cpu"), n_test=n_test, n_pairs=3, cells=cells)
    flat = lambda x: x.flatten(1).double().numpy()  # noqa: E731  (8-bit values: integer squared distances)
    train, test = flat(digits.train_x), flat(digits.test_x[measure.subset(len(digits.test_x), n_test, 0)])
    s = flat(samples)
    # exact distances in [0, 1] pixel units: sqrt of an integer, over 255, so equal distances are exactly equal
    d_t = np.sqrt(cdist(test, train, "sqeuclidean").min(1)) / 255
    d_s = np.sqrt(cdist(s, train, "sqeuclidean").min(1)) / 255
    a, b = d_s[:, None], d_t[None, :]
    m, n = len(s), n_test
    # bench measures in float32 pixels (x / 255 rounded), which may resolve an exact tie (8-bit images have
    # many) either way: each such pair moves the share by at most 1 / (2 m n)
    ties = (a == b).sum()
    assert abs(mem.closer_share - ((a < b).sum() + 0.5 * ties) / (m * n)) <= 0.5 * ties / (m * n) + 1e-12
    assert mem.closer_share_se == pytest.approx(math.sqrt((m + n + 1) / (12 * m * n)), rel=1e-12)  # Mann-Whitney null
    assert mem.near_copy_share == pytest.approx(float((d_s < np.quantile(d_t, 0.01)).mean()), abs=1e-12)
    assert mem.exact_copy_share == pytest.approx(40 / 120, abs=1e-12)
    assert mem.median_distance_test == pytest.approx(float(np.median(d_t)), rel=1e-6)  # even n: mean of the middle two
    assert mem.median_distance_samples == pytest.approx(float(np.median(d_s)), rel=1e-6)
    km = KMeans(cells, n_init=1, random_state=0).fit(train / 255)
    want, used, slack = _meehan_ct(km.predict(test / 255), km.predict(s / 255), d_t, d_s, cells, 20)
    assert mem.c_t_cells_used == used >= 2
    assert abs(mem.c_t - want) <= slack + 1e-9
    assert mem.pairs[0][2] == 0.0 and mem.pairs[0][0] < 40  # a copy is the closest pair


def test_nearest_neighbour_distances_equal_scipy():
    from scipy.spatial.distance import cdist

    g = torch.Generator().manual_seed(10)
    ref, q = torch.rand(200, 30, generator=g), torch.rand(40, 30, generator=g)
    nn_ = nearest_neighbours(q, ref, batch_size=7)
    d = cdist(q.double().numpy(), ref.double().numpy())
    np.testing.assert_allclose(nn_.distance.numpy(), d.min(1), rtol=1e-12)
    assert nn_.index.tolist() == d.argmin(1).tolist()


# ---------------------------------------------------------------------------------------------
# Out-of-distribution detection


def test_auroc_equals_the_mann_whitney_count_with_ties_and_its_direction():
    g = torch.Generator().manual_seed(11)
    s_in, s_out = torch.randint(0, 8, (120,), generator=g).double(), torch.randint(2, 10, (90,), generator=g).double()
    a, se = auroc(s_in, s_out)
    x, y = s_out.numpy()[:, None], s_in.numpy()[None, :]
    want = ((x > y).sum() + 0.5 * (x == y).sum()) / (90 * 120)  # P(out scores higher) + P(tie) / 2
    assert a == pytest.approx(want, abs=1e-15) and a > 0.5  # higher score = more out-of-distribution
    assert a == pytest.approx(stats.mannwhitneyu(s_out.numpy(), s_in.numpy()).statistic / (90 * 120), abs=1e-15)
    assert auroc(s_out, s_in)[0] == pytest.approx(1 - want, abs=1e-15)  # swapping the sets mirrors it
    # Hanley & McNeil 1982, eq. 2: n_A abnormal (out), n_N normal (in); Q1 = A/(2-A), Q2 = 2A^2/(1+A)
    q1, q2 = want / (2 - want), 2 * want**2 / (1 + want)
    var = (want * (1 - want) + (90 - 1) * (q1 - want**2) + (120 - 1) * (q2 - want**2)) / (90 * 120)
    assert se == pytest.approx(math.sqrt(var), rel=1e-12)


def _png_bits(x: torch.Tensor) -> np.ndarray:
    out = []
    for img in x.numpy():
        buf = io.BytesIO()
        Image.fromarray(img[0]).save(buf, format="PNG", compress_level=9)
        out.append(8 * len(buf.getvalue()) / img.size)
    return np.array(out)


def test_ood_table_of_naive_bayes_equals_scores_and_aurocs_recomputed_with_scikit_learn(digits, nb_cat):
    """Every likelihood score of the OOD table, rebuilt from scikit-learn's likelihoods of the same images
    and scored by the Mann-Whitney count. The ratio score against a background identical to the model
    (categorical naive Bayes, alpha 1, fitted on the same split) is 0 everywhere: AUROC exactly 0.5."""
    n = 80
    sets = measure.ood_sets(digits, ["noise", "vflip"], n, seed=0)
    rows = measure.ood_table(nb_cat, digits, sets, n, torch.Generator(), background=nb_cat, batch_size=64)
    sk = _sklearn_nb(nb_cat, digits)
    bits = digits.dim * math.log(2)
    inside = digits.test_x[measure.subset(len(digits.test_x), n, 0)]
    typical = -_sk_log_px(sk, digits.train_x[measure.subset(len(digits.train_x), n, 1)]).mean() / bits

    def scores(x):
        nll = -_sk_log_px(sk, x) / bits
        return {"nll": nll, "typicality": np.abs(nll - typical), "ratio": np.zeros(len(x)),
                "complexity": nll - _png_bits(x)}

    s_in = scores(inside)
    got = {(r["ood_set"], r["score"]): r for r in rows}
    assert set(got) == {(s, k) for s in ("noise", "vflip") for k in ("nll", "typicality", "ratio", "complexity")}
    for name, x in sets.items():
        s_out = scores(x)
        for score in s_in:
            want = stats.mannwhitneyu(s_out[score], s_in[score]).statistic / (n * n)
            r = got[(name, score)]
            assert r["auroc"] == pytest.approx(want, abs=1 / (n * n)), (name, score)  # float32 log-probs: <= 1 pair
            assert r["mean_out"] == pytest.approx(s_out[score].mean(), rel=1e-5, abs=1e-9)
    assert got[("noise", "ratio")]["auroc"] == 0.5 and got[("noise", "nll")]["auroc"] == 1.0


def test_vae_reconstruction_is_the_decoder_mean_at_the_posterior_mean():
    """reconstruction score: the decoder's mean at the posterior mean, the distribution's own mean:
    sigmoid of the Bernoulli decoder's logits; the logistic decoder's location mapped from [-1, 1]."""
    g = torch.Generator().manual_seed(12)
    x = torch.randint(0, 256, (6, 1, 8, 8), generator=g, dtype=torch.uint8)
    spec = DataSpec("image", (1, 8, 8), 10, (0.1,) * 10)
    for decoder in ("bernoulli", "logistic"):
        torch.manual_seed(0)
        vae = VAE(spec, VAEOptions(decoder=decoder, arch="mlp", hidden=16, latent_dim=3)).eval()
        with torch.no_grad():
            h = vae.encoder(x.float() / 255 * 2 - 1)
            out = vae.decoder(h[:, :3])  # the posterior mean
        want = torch.sigmoid(out) if decoder == "bernoulli" else ((out + 1) / 2).clamp(0, 1)
        torch.testing.assert_close(reconstruct(vae, x), want, rtol=0, atol=1e-6)
    torch.manual_seed(0)
    ae = Autoencoder(spec, AutoencoderOptions(width=8, latent_dim=3)).eval()
    with torch.no_grad():
        want = torch.sigmoid(ae.decoder(ae.encoder(x.float() / 255)))
    torch.testing.assert_close(reconstruct(ae, x), want, rtol=0, atol=1e-6)


def test_a_conditional_vae_has_no_unconditional_reconstruction():
    """A cVAE's encoder needs the label, which an out-of-distribution image does not have: no
    reconstruction score (rather than a shape error in the middle of the OOD evaluator)."""
    spec = DataSpec("image", (1, 8, 8), 10, (0.1,) * 10)
    assert has_encoder(VAE(spec, VAEOptions(arch="mlp", hidden=16, latent_dim=2)))
    assert not has_encoder(VAE(spec, VAEOptions(arch="mlp", hidden=16, latent_dim=2, conditional=True)))


def test_the_ood_table_of_a_conditional_vae_scores_its_likelihood_bounds(digits, nb_cat):
    spec = DataSpec("image", digits.shape, 10, tuple(digits.class_frequencies().tolist()))
    torch.manual_seed(0)
    cvae = VAE(spec, VAEOptions(arch="mlp", hidden=16, latent_dim=2, conditional=True, iwae_k=2)).eval()
    sets = measure.ood_sets(digits, ["noise"], 24, seed=0)
    rows = measure.ood_table(cvae, digits, sets, 24, torch.Generator().manual_seed(0), background=nb_cat)
    assert {r["score"] for r in rows} == {"nll", "typicality", "ratio", "complexity"}  # before: a shape error
    assert {r["estimator"] for r in rows} == {"iwae"}


# ---------------------------------------------------------------------------------------------
# Speed and cost


def test_samples_per_second_is_the_batch_over_the_median_time():
    ms = {m.name: m for m in speed_metrics([0.5, 4.0, 1.0, 2.0, 0.25], 100, 12.0, torch.device("cpu"))}
    assert ms["samples_per_s"].value == pytest.approx(100 / 1.0)  # median of five timings
    assert ms["samples_per_s"].params["spread_s"] == [0.25, 4.0]
    ms = {m.name: m for m in speed_metrics([1.0, 3.0], 64, 1.0, torch.device("cpu"))}
    assert ms["samples_per_s"].value == pytest.approx(64 / 2.0)  # even count: mean of the middle two
    assert ms["nfe_per_sample"].value == 1.0


def test_training_steps_per_second_is_steps_over_seconds():
    ctx = SimpleNamespace(spent={"params": 1234, "seconds": 8.0, "steps": 200})
    got = {m.name: m.value for m in CostEvaluator().evaluate(ctx)}
    assert got == {"params": 1234.0, "train_seconds": 8.0, "train_steps_per_s": 25.0}
