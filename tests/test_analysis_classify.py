"""Known answers for Bayes-rule classification and learning curves (bench.analysis.classify)."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.naive_bayes import CategoricalNB, GaussianNB

from bench.analysis.classify import (Crossing, PerClassModels, balanced_subset, bayes_accuracy, class_conditional,
                                     crossing_point, fit_logistic_regression, fit_naive_bayes, joint_log_probs,
                                     learning_curve, logistic_regression_predict, naive_bayes_predict,
                                     validation_split)
from bench.data import load_dataset
from bench.errors import BenchError
from bench.families.base import DataSpec, GenerativeModel, Likelihood
from bench.families.naive_bayes import NaiveBayesOptions
from bench.families.vae import VAE, VAEOptions
from bench.metrics.domain import DomainRecipe


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_logistic_regression_is_perfect_on_a_linearly_separable_toy():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (400,), generator=g)
    x = torch.randint(0, 96, (400, 1, 2, 2), generator=g)
    x[:, 0, 0, 0] = torch.where(y == 1, 160 + x[:, 0, 0, 0], x[:, 0, 0, 0])  # pixel 0: < 96 or in 160..255
    x = x.to(torch.uint8)
    lr, c = fit_logistic_regression(x[:200], y[:200], x[200:300], y[200:300], cs=(1.0, 100.0))
    assert (logistic_regression_predict(lr, x[300:]) == y[300:]).all()


def test_categorical_naive_bayes_classifies_like_scikit_learn(digits):
    nb = fit_naive_bayes(digits.train_x, digits.train_y, digits, NaiveBayesOptions(pixel_model="categorical"))
    prior = nb._log_prior().exp().numpy()
    # the same statistics: Laplace smoothing alpha = 1 over 256 bins, and bench's (add-one smoothed) class prior
    sk = CategoricalNB(alpha=1.0, min_categories=256, class_prior=prior)
    sk.fit(digits.train_x.flatten(1).numpy(), digits.train_y.numpy())
    xt = digits.test_x.flatten(1).numpy()
    (_, joint), = joint_log_probs(nb, digits.test_x, torch.Generator()).values()
    assert np.array_equal(naive_bayes_predict(nb, digits.test_x).numpy(), sk.predict(xt))
    # float32 log-likelihoods of ~-200 nats: agreement to ~1e-4 relative
    np.testing.assert_allclose(joint.numpy(), sk.predict_joint_log_proba(xt), rtol=1e-5, atol=1e-3)


def test_gaussian_naive_bayes_classifies_like_scikit_learn_on_the_same_statistics():
    ds = load_dataset("toy2d", {"n_train": 2000, "n_test": 500})
    ds.train_y = (ds.train_x[:, 0] > 0).long() + 2 * (ds.train_x[:, 1] > 0).long()  # 4 quadrant classes
    ds.test_y = (ds.test_x[:, 0] > 0).long() + 2 * (ds.test_x[:, 1] > 0).long()
    ds.num_classes = 4
    nb = fit_naive_bayes(ds.train_x, ds.train_y, ds, NaiveBayesOptions(min_std=1e-3))
    mu, std = nb._gaussian_params()
    sk = GaussianNB().fit(ds.train_x.numpy(), ds.train_y.numpy())
    sk.theta_, sk.var_, sk.class_prior_ = mu.numpy(), std.square().numpy(), nb._log_prior().exp().numpy()
    (_, joint), = joint_log_probs(nb, ds.test_x, torch.Generator()).values()
    assert np.array_equal(joint.argmax(1).numpy(), sk.predict(ds.test_x.numpy()))
    np.testing.assert_allclose(joint.numpy(), sk.predict_joint_log_proba(ds.test_x.numpy()), rtol=1e-5, atol=1e-4)


def test_class_conditionals_of_naive_bayes_marginalise_to_its_likelihood(digits):
    nb = fit_naive_bayes(digits.train_x, digits.train_y, digits, NaiveBayesOptions())
    (kind, joint), = joint_log_probs(nb, digits.test_x, torch.Generator(), batch_size=100).values()
    assert kind == "exact"
    marginal = nb.log_likelihood(digits.test_x, torch.Generator())[0].log_prob.double()
    torch.testing.assert_close(torch.logsumexp(joint, 1), marginal, rtol=1e-5, atol=1e-3)
    (acc,) = bayes_accuracy(nb, digits.test_x, digits.test_y, torch.Generator())
    assert acc.estimator == "exact" and 0.7 < acc.accuracy <= 1.0 and acc.n == len(digits.test_y)


class _Gaussian(GenerativeModel):
    """A fixed isotropic Gaussian around ``mean`` with a lower bound a fixed gap below (stand-in for a VAE)."""

    family = "_gaussian"

    def __init__(self, mean: float):
        super().__init__(DataSpec("points", (2,), 1, (1.0,)), None)  # type: ignore[arg-type]
        self.mean = mean

    def log_likelihood(self, x, generator):
        lp = -0.5 * (x - self.mean).square().sum(1) - math.log(2 * math.pi)
        return [Likelihood("exact", "exact", lp), Likelihood("elbo", "lower_bound", lp - 1.0)]


def test_per_class_models_classify_by_the_nearest_class_mean_for_every_estimator():
    models = PerClassModels([_Gaussian(-2.0), _Gaussian(0.0), _Gaussian(3.0)], torch.full((3,), -math.log(3)))
    x = torch.tensor([[-2.5, -1.5], [0.2, -0.1], [2.5, 3.5], [1.6, 1.6]])
    out = bayes_accuracy(models, x, torch.tensor([0, 1, 2, 2]), torch.Generator(), batch_size=3)
    assert [(a.estimator, a.kind, a.accuracy) for a in out] == [("exact", "exact", 1.0), ("elbo", "lower_bound", 1.0)]


def test_a_family_without_class_conditionals_is_a_user_error():
    vae = VAE(DataSpec("points", (2,), 3, (0.3, 0.3, 0.4)), VAEOptions())
    with pytest.raises(BenchError, match="PerClassModels"):
        class_conditional(vae)


def test_crossing_point_interpolates_in_log_n():
    rows = [("nb", n, a) for n, a in zip([10, 100, 1000, 10000], [0.6, 0.7, 0.75, 0.76])]
    rows += [("lr", n, a) for n, a in zip([10, 100, 1000, 10000], [0.4, 0.6, 0.8, 0.9])]
    curve = pd.DataFrame(rows, columns=["classifier", "n_train", "accuracy"])
    c = crossing_point(curve, "nb", "lr")
    assert c.n_train == pytest.approx(10 ** (2 + 2 / 3))  # diff -0.1 at 100, +0.05 at 1000
    assert crossing_point(curve, "lr", "lr").n_train is None
    ahead = curve.assign(accuracy=np.where(curve.classifier == "lr", 0.99, 0.5))
    assert crossing_point(ahead, "nb", "lr") == Crossing(None, "lr is ahead at every size from n=10")


def test_subsets_are_balanced_nested_and_disjoint_from_validation(digits):
    val, pool = validation_split(len(digits.train_y), 300)
    assert len(set(val.tolist()) & set(pool.tolist())) == 0 and len(val) + len(pool) == len(digits.train_y)
    y = digits.train_y[pool]
    small, big = balanced_subset(y, 2, 10, seed=0), balanced_subset(y, 5, 10, seed=0)
    assert torch.bincount(y[small], minlength=10).tolist() == [2] * 10
    assert set(small.tolist()) <= set(big.tolist())
    assert not torch.equal(small, balanced_subset(y, 2, 10, seed=1))
    with pytest.raises(BenchError, match="class"):
        balanced_subset(y, 10_000, 10, seed=0)


def test_learning_curve_rows(digits, monkeypatch):
    import bench.analysis.classify as classify

    monkeypatch.setattr(classify, "CURVE_CNN", DomainRecipe(width=8, feat_dim=16, epochs=1, min_examples=500))
    names = ["nb_gaussian", "nb_categorical_tuned", "logistic", "logistic_c1", "cnn"]
    curve = learning_curve(digits, [1, 5, None], [0, 1], names, val_size=300, cs=(0.1, 1.0))
    # two seeds at each size, one fit of the whole pool (every seed would draw the same set)
    assert len(curve) == 5 * (2 + 2 + 1)
    assert set(curve[curve.per_class.isna()].n_train) == {1200}
    assert curve.accuracy.between(0, 1).all()
    assert curve[curve.classifier == "logistic"].chosen.isin([0.1, 1.0]).all()
    assert (curve[curve.classifier == "logistic_c1"].chosen == 1.0).all()
    assert curve[curve.classifier == "nb_categorical_tuned"].chosen.isin([0.01, 0.03, 0.1, 0.3, 1.0]).all()
    assert curve[curve.classifier == "nb_gaussian"].chosen.isna().all()
    full = curve[curve.per_class.isna()].set_index("classifier").accuracy
    assert full["nb_gaussian"] > 0.7 and full["logistic"] > 0.9
    with pytest.raises(BenchError, match="choose from"):
        learning_curve(digits, [1], [0], ["svm"])
