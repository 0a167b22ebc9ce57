"""Classification through Bayes' rule, and generative vs discriminative learning curves.

A class-conditional likelihood model classifies by ``argmax_y [log p(x | y) + log p(y)]``. Naive
Bayes is the textbook case; Ng & Jordan (2002, "On discriminative vs. generative classifiers: a
comparison of logistic regression and naive Bayes") showed that it approaches its (higher)
asymptotic error much faster than logistic regression, so with few examples per class the
generative classifier wins and the discriminative one overtakes it later: the *crossing point*.

How a model exposes ``log p(x | y)`` (``class_conditional``):

* a family may define ``class_log_likelihoods(x_uint8, generator) -> list[Likelihood]`` whose
  ``log_prob`` is (N, K) nats, and ``log_class_prior() -> (K,)`` (the extension point; no family
  in bench has it yet);
* ``NaiveBayes`` is adapted here without touching its file: the model restricted to one class is a
  one-class naive Bayes whose exact ``log_likelihood`` is ``log p(x | y)`` (its prior is then 1);
* any unconditional family with a likelihood classifies as ``PerClassModels``: K models, model k
  trained on class k only. Flows and PixelCNNs give exact ``log p(x | y)``; a VAE or a diffusion
  model gives a lower bound per class, and the argmax of bounds is *not* Bayes' rule (the bounds'
  gaps differ between classes), so its accuracy is reported with the estimator's kind beside it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Literal, Protocol

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression

from bench.config import Budget
from bench.data import Dataset
from bench.errors import BenchError
from bench.families.base import DataSpec, GenerativeModel, Likelihood
from bench.families.naive_bayes import NaiveBayes, NaiveBayesOptions
from bench.metrics.domain import DomainRecipe, train_domain_net
from bench.train import TrainContext, train


class ClassConditional(Protocol):
    """What a model needs for Bayes-rule classification (the optional family extension point)."""

    def class_log_likelihoods(self, x: torch.Tensor, generator: torch.Generator) -> list[Likelihood]: ...

    def log_class_prior(self) -> torch.Tensor: ...


# ---------------------------------------------------------------------------------------------
# Adapters: naive Bayes, and K unconditional models


class NaiveBayesClasses:
    """``log p(x | y)`` of bench's naive Bayes, one class at a time, through its own exact likelihood."""

    def __init__(self, model: NaiveBayes):
        self.model = model
        spec = model.spec
        one = DataSpec(spec.kind, spec.shape, 1, (1.0,))
        state = model.state_dict()  # every buffer is indexed by class first: count (K,), hist (K, D, 256), s1/s2 (K, D)
        self.per_class: list[NaiveBayes] = []
        for c in range(spec.num_classes):
            m = NaiveBayes(one, model.options).to(model.device)
            m.load_state_dict({k: v[c : c + 1] for k, v in state.items()})
            self.per_class.append(m.eval())

    def class_log_likelihoods(self, x: torch.Tensor, generator: torch.Generator) -> list[Likelihood]:
        # a one-class model's smoothed prior is (n + 1) / (n + 1) = 1, so its log p(x) is log p(x | c)
        lp = torch.stack([m.log_likelihood(x, generator)[0].log_prob for m in self.per_class], dim=1)  # (B, K)
        return [Likelihood("exact", "exact", lp)]

    def log_class_prior(self) -> torch.Tensor:
        return self.model._log_prior()  # (K,), the add-one smoothed class frequencies the model samples from


@dataclass
class PerClassModels:
    """K unconditional models, model k trained on class k only: ``p(x | y = k) = p_k(x)``."""

    models: list[GenerativeModel]
    log_prior: torch.Tensor  # (K,) log class frequencies of the training data

    def class_log_likelihoods(self, x: torch.Tensor, generator: torch.Generator) -> list[Likelihood]:
        per = [m.log_likelihood(x, generator) for m in self.models]  # K lists of estimators
        out = []
        for j, lk in enumerate(per[0]):
            lp = torch.stack([p[j].log_prob for p in per], dim=1)  # (B, K)
            out.append(Likelihood(lk.estimator, lk.kind, lp, lk.params))
        return out

    def log_class_prior(self) -> torch.Tensor:
        return self.log_prior


def class_conditional(model: object) -> ClassConditional:
    """The model's ``log p(x | y)`` interface: its own methods, or an adapter; a BenchError if it has none."""
    if hasattr(model, "class_log_likelihoods") and hasattr(model, "log_class_prior"):
        return model  # type: ignore[return-value]
    if isinstance(model, NaiveBayes):
        return NaiveBayesClasses(model)
    family = getattr(model, "family", type(model).__name__)
    raise BenchError(f"family {family!r} has no class-conditional likelihood; train one model per class "
                     f"(bench.analysis.classify.PerClassModels) or add class_log_likelihoods/log_class_prior")


def class_subset(ds: Dataset, c: int) -> Dataset:
    """``ds`` with only class ``c`` in its train split (its test split unchanged)."""
    keep = ds.train_y == c
    return Dataset(ds.name, ds.kind, ds.train_x[keep], ds.train_y[keep], ds.test_x, ds.test_y, ds.num_classes,
                   meta={**ds.meta, "class": c})


def log_class_frequencies(y: torch.Tensor, num_classes: int) -> torch.Tensor:
    """log of each class's share of ``y``, (K,)."""
    counts = torch.bincount(y, minlength=num_classes).double()
    return (counts / counts.sum()).log()


# ---------------------------------------------------------------------------------------------
# Bayes' rule


@dataclass(frozen=True)
class BayesAccuracy:
    """Accuracy of argmax_y [log p(x|y) + log p(y)] for one estimator of log p(x|y)."""

    estimator: str  # "exact", "elbo", "iwae", "vlb", ...
    kind: str  # exact | lower_bound | estimate: with a bound this is argmax of bounds, not Bayes' rule
    accuracy: float
    stderr: float
    n: int


@torch.no_grad()
def joint_log_probs(model: object, x: torch.Tensor, generator: torch.Generator,
                    batch_size: int = 500) -> dict[str, tuple[str, torch.Tensor]]:
    """log p(x, y) = log p(x | y) + log p(y) for every estimator: {estimator: (kind, (N, K) nats)}."""
    cc = class_conditional(model)
    prior = cc.log_class_prior().double().cpu()  # (K,)
    parts: dict[str, list[torch.Tensor]] = {}
    kinds: dict[str, str] = {}
    for b in x.split(batch_size):
        for lk in cc.class_log_likelihoods(b, generator):
            parts.setdefault(lk.estimator, []).append(lk.log_prob.double().cpu())
            kinds[lk.estimator] = lk.kind
    return {est: (kinds[est], torch.cat(p) + prior) for est, p in parts.items()}


def bayes_accuracy(model: object, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator,
                   batch_size: int = 500) -> list[BayesAccuracy]:
    """Test accuracy of Bayes-rule classification, one entry per likelihood estimator the model gives."""
    out = []
    for est, (kind, joint) in joint_log_probs(model, x, generator, batch_size).items():
        correct = (joint.argmax(1) == y.cpu()).double()
        n = len(correct)
        acc = float(correct.mean())
        out.append(BayesAccuracy(est, kind, acc, math.sqrt(acc * (1 - acc) / n), n))
    return out


# ---------------------------------------------------------------------------------------------
# The three classifiers of the learning curve


def fit_naive_bayes(x: torch.Tensor, y: torch.Tensor, ds: Dataset, options: NaiveBayesOptions) -> NaiveBayes:
    """bench's naive Bayes fitted on (x, y) by bench's own training loop (one epoch: counting is complete)."""
    sub = Dataset(ds.name, ds.kind, x, y, ds.test_x[:0], ds.test_y[:0], ds.num_classes)
    spec = DataSpec(ds.kind, ds.shape, ds.num_classes, tuple(sub.class_frequencies().tolist()))
    model = NaiveBayes(spec, options)
    # the training loop drops a last partial batch, so the batch divides the set: every example is counted
    # (at most 5,000 a batch: a step also scores its batch, (B, K, D) doubles)
    bs = next(b for b in range(min(len(x), 5000), 0, -1) if len(x) % b == 0)
    train(model, sub, TrainContext(Budget(epochs=1), batch_size=bs))
    return model


def naive_bayes_predict(model: NaiveBayes, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Bayes-rule predictions of a fitted naive Bayes, (N,)."""
    (_, joint), = joint_log_probs(model, x, torch.Generator(), batch_size).values()
    return joint.argmax(1)


def _pixels(x: torch.Tensor) -> np.ndarray:
    return (x.flatten(1).float() / 255).numpy()  # (N, D) in [0, 1], float32


def fit_logistic_regression(x: torch.Tensor, y: torch.Tensor, x_val: torch.Tensor, y_val: torch.Tensor,
                            cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0),
                            max_iter: int = 200) -> tuple[LogisticRegression, float]:
    """Multinomial logistic regression on pixels in [0, 1], its L2 strength chosen on a validation split.

    ``cs`` (scikit-learn's inverse regularisation) are fitted from strongest to weakest, each warm-started
    from the last (a regularisation path: the later fits need few iterations). Ties go to the stronger
    regularisation. Returns the chosen model and its C. Convergence warnings at ``max_iter`` are expected
    for the weakly regularised end of the path and do not change which C wins.
    """
    import warnings

    from sklearn.exceptions import ConvergenceWarning

    xt, xv, yv = _pixels(x), _pixels(x_val), y_val.numpy()
    lr = LogisticRegression(max_iter=max_iter, warm_start=True)
    best: tuple[float, float, np.ndarray, np.ndarray] | None = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for c in sorted(cs):
            lr.set_params(C=c).fit(xt, y.numpy())
            acc = float((lr.predict(xv) == yv).mean())
            if best is None or acc > best[0]:
                best = (acc, c, lr.coef_.copy(), lr.intercept_.copy())
    assert best is not None
    _, c, lr.coef_, lr.intercept_ = best
    lr.set_params(C=c)
    return lr, c


def logistic_regression_predict(model: LogisticRegression, x: torch.Tensor) -> torch.Tensor:
    return torch.from_numpy(model.predict(_pixels(x)))


# The CNN of the curve: bench's domain classifier architecture with a shorter recipe: 3 epochs, and at least
# 5,000 examples seen (500 epochs of a 10-image set, ample to fit it; the domain net's 60,000 would spend
# minutes of tiny steps on it).
CURVE_CNN = DomainRecipe(epochs=3, min_examples=5_000)


def cnn_accuracy(x: torch.Tensor, y: torch.Tensor, ds: Dataset, seed: int, recipe: DomainRecipe = CURVE_CNN) -> float:
    """Test accuracy of the small CNN classifier (``DomainNet``) trained on (x, y) with a fixed recipe."""
    sub = Dataset(ds.name, ds.kind, x, y, ds.test_x, ds.test_y, ds.num_classes)
    _, info = train_domain_net(sub, recipe, seed=seed)
    return float(info["test_accuracy"])


# ---------------------------------------------------------------------------------------------
# Learning curves

# nb_*: bench's naive Bayes with its default smoothing; nb_*_tuned: its smoothing (Gaussian: the std floor,
# categorical: the additive alpha) chosen on the validation split, as logistic regression's C is.
# logistic: C chosen on the validation split; logistic_c1: scikit-learn's default C = 1, untuned (with scarce
# data there is no large validation split either, so this is the other fair reading of "scarce").
Classifier = Literal["nb_gaussian", "nb_categorical", "nb_gaussian_tuned", "nb_categorical_tuned", "logistic",
                     "logistic_c1", "cnn"]
CLASSIFIERS: tuple[str, ...] = ("nb_gaussian", "nb_categorical", "nb_gaussian_tuned", "nb_categorical_tuned",
                                "logistic", "logistic_c1", "cnn")
GENERATIVE: tuple[str, ...] = CLASSIFIERS[:4]
NB_GRID: dict[str, tuple[str, tuple[float, ...]]] = {  # pixel model -> (option, values tried on validation)
    "gaussian": ("min_std", (1.0, 4.0, 16.0, 32.0, 64.0, 128.0)),
    "categorical": ("alpha", (0.01, 0.03, 0.1, 0.3, 1.0)),
}


def fit_naive_bayes_tuned(x: torch.Tensor, y: torch.Tensor, ds: Dataset, pixel_model: Literal["gaussian", "categorical"],
                          x_val: torch.Tensor, y_val: torch.Tensor) -> tuple[NaiveBayes, float]:
    """Naive Bayes with its smoothing chosen on a validation split (ties: the first, i.e. the least smoothing)."""
    option, grid = NB_GRID[pixel_model]
    best: tuple[float, float, NaiveBayes] | None = None
    for v in grid:
        nb = fit_naive_bayes(x, y, ds, NaiveBayesOptions(pixel_model=pixel_model, **{option: v}))
        acc = float((naive_bayes_predict(nb, x_val) == y_val).double().mean())
        if best is None or acc > best[0]:
            best = (acc, v, nb)
    assert best is not None
    return best[2], best[1]


def validation_split(n: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed split of the training indices: (validation (size,), pool (n - size,)); the same for every seed."""
    if not 0 < size < n:
        raise BenchError(f"validation size {size}: must be between 1 and the training split size - 1 ({n - 1})")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[:size], perm[size:]


def balanced_subset(y: torch.Tensor, per_class: int, num_classes: int, seed: int) -> torch.Tensor:
    """Indices of the first ``per_class`` examples of each class in a seeded order.

    The order is fixed per seed, so a seed's subsets are nested: the curve's steps differ by added
    data only, not by a fresh draw.
    """
    order = torch.randperm(len(y), generator=torch.Generator().manual_seed(1000 + seed))
    picks = []
    for c in range(num_classes):
        of_c = order[y[order] == c]
        if len(of_c) < per_class:
            raise BenchError(f"{per_class} examples per class: class {c} has only {len(of_c)} in the training pool")
        picks.append(of_c[:per_class])
    return torch.cat(picks).sort().values


def learning_curve(ds: Dataset, sizes: list[int | None], seeds: list[int], classifiers: list[str],
                   val_size: int = 5000, cs: tuple[float, ...] = (0.01, 0.1, 1.0, 10.0),
                   log: Callable[[str], None] | None = None) -> pd.DataFrame:
    """Test accuracy of each classifier over training-set sizes: one row per (classifier, size, seed).

    ``sizes`` are examples per class (balanced subsets of the training pool); ``None`` is the whole pool
    (every seed would draw the same set, so it is fitted once, as seed ``seeds[0]``). The validation split
    (``val_size`` training images, never trained on) chooses the tuned classifiers' hyperparameter; the test split is
    only ever scored. ``chosen`` is the value the validation split picked (C, min_std or alpha); the CNN
    runs with a fixed recipe.
    ``log`` receives one line per fit (progress).
    """
    unknown = sorted(set(classifiers) - set(CLASSIFIERS))
    if unknown:
        raise BenchError(f"classifiers: unknown {', '.join(unknown)}; choose from {', '.join(CLASSIFIERS)}")
    val_idx, pool = validation_split(len(ds.train_x), val_size)
    x_val, y_val = ds.train_x[val_idx], ds.train_y[val_idx]
    rows = []
    for size in sizes:
        for seed in (seeds if size is not None else seeds[:1]):
            idx = pool if size is None else pool[balanced_subset(ds.train_y[pool], size, ds.num_classes, seed)]
            x, y = ds.train_x[idx], ds.train_y[idx]
            for name in classifiers:
                row = {"dataset": ds.name, "classifier": name, "per_class": size, "n_train": len(idx), "seed": seed}
                if name.startswith("nb_"):
                    pixel_model = name.split("_")[1]
                    if name.endswith("_tuned"):
                        nb, row["chosen"] = fit_naive_bayes_tuned(x, y, ds, pixel_model, x_val, y_val)  # type: ignore[arg-type]
                    else:
                        nb = fit_naive_bayes(x, y, ds, NaiveBayesOptions(pixel_model=pixel_model))
                    row["accuracy"] = float((naive_bayes_predict(nb, ds.test_x) == ds.test_y).double().mean())
                elif name.startswith("logistic"):
                    lr, row["chosen"] = fit_logistic_regression(x, y, x_val, y_val, (1.0,) if name == "logistic_c1" else cs)
                    row["accuracy"] = float((logistic_regression_predict(lr, ds.test_x) == ds.test_y).double().mean())
                else:
                    row["accuracy"] = cnn_accuracy(x, y, ds, seed)
                rows.append(row)
                if log is not None:
                    log(f"{name} n={len(idx)} seed={seed}: {row['accuracy']:.4f}")
    return pd.DataFrame(rows)


@dataclass(frozen=True)
class Crossing:
    """Where the discriminative curve overtakes the generative one for good."""

    n_train: float | None  # interpolated training-set size (log-linear between measured sizes); None: no crossing
    note: str  # how it was found, or why there is none


def crossing_point(curve: pd.DataFrame, generative: str, discriminative: str) -> Crossing:
    """The training-set size after which ``discriminative``'s mean accuracy stays above ``generative``'s.

    Means over seeds per size; the crossing is interpolated in log(n) between the last size where the
    generative classifier is at least as accurate and the next one (Ng & Jordan plot against log n too).
    """
    means = curve.groupby(["classifier", "n_train"])["accuracy"].mean().unstack(0).sort_index()
    if generative not in means or discriminative not in means:
        raise BenchError(f"crossing_point: the curve has no {generative!r} or {discriminative!r} rows")
    diff = (means[discriminative] - means[generative]).dropna()
    n, d = diff.index.to_numpy(dtype=float), diff.to_numpy()
    not_ahead = np.flatnonzero(d <= 0)
    if len(not_ahead) == 0:
        return Crossing(None, f"{discriminative} is ahead at every size from n={n[0]:g}")
    i = not_ahead[-1]
    if i == len(d) - 1:
        return Crossing(None, f"{generative} is at least as accurate at every size up to n={n[-1]:g}")
    t = -d[i] / (d[i + 1] - d[i])
    at = math.exp(math.log(n[i]) + t * (math.log(n[i + 1]) - math.log(n[i])))
    return Crossing(at, f"between n={n[i]:g} and n={n[i + 1]:g} (log-linear interpolation of the mean curves)")
