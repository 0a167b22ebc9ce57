"""From a trained model (or its samples) and a dataset to plain rows: the three analyses of issue 9.

These are what an evaluator or ``scripts/analysis.py`` calls; the maths is in ``classify``,
``memorization`` and ``ood``. Every random draw goes through a seeded generator; test data are
only ever scored, never fitted (the typicality reference and the background model use training
images).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Literal

import torch

from bench.analysis.classify import (PerClassModels, bayes_accuracy, class_subset, fit_naive_bayes,
                                     log_class_frequencies)
from bench.analysis.memorization import (closer_share, closest_pairs, data_copying_ct, exact_copy_share, flat_pixels,
                                         near_copy_share, nearest_neighbours, nll_gap)
from bench.analysis.ood import (SYNTHETIC, auroc, complexity_score, likelihood_ratio_score, nll_bits_per_dim,
                                reconstruction_error, synthetic_ood, typicality_score)
from bench.analysis.probes import has_encoder, log_likelihoods, preferred, reconstruct
from bench.config import Budget
from bench.data import Dataset, load_dataset
from bench.errors import BenchError
from bench.families import FAMILIES, DataSpec, GenerativeModel
from bench.families.naive_bayes import NaiveBayesOptions
from bench.metrics.fidelity import domain_extractor
from bench.train import TrainContext, train

Space = Literal["pixel", "domain"]


def subset(n_total: int, n: int | None, seed: int) -> torch.Tensor:
    """A seeded subset of ``n`` indices (all, in order, when ``n`` is None or covers the split)."""
    if n is None or n >= n_total:
        return torch.arange(n_total)
    return torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].sort().values


# ---------------------------------------------------------------------------------------------
# Memorization


@dataclass
class Memorization:
    space: Space
    closer_share: float  # P(sample nearer the training set than a test image); 0.5 = as novel as data
    closer_share_se: float  # its standard error under "samples are fresh data" (Mann-Whitney null)
    c_t: float  # Meehan et al. 2020; < -3: data copying
    c_t_cells_used: int
    near_copy_share: float  # samples nearer than the closest 1 % of test images
    exact_copy_share: float
    median_distance_samples: float
    median_distance_test: float
    n_samples: int
    n_test: int
    n_train: int
    pairs: list[tuple[int, int, float]]  # closest (sample, training image, distance)

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("pairs")
        return d


_TRAIN_FEATURES: dict[tuple[str, str, int], torch.Tensor] = {}  # (dataset, space, n_train) -> (N, F), per process


def embed(x: torch.Tensor, ds: Dataset, space: Space, device: torch.device) -> torch.Tensor:
    """Points of ``x`` (uint8 images) in the space distances are measured in: pixels in [0, 1], or domain features."""
    if space == "pixel":
        return flat_pixels(x)
    return domain_extractor(ds, device).extract(x, 1000, device)["features"]


def _median(d: torch.Tensor) -> float:
    """The median, the mean of the two middle values for an even count (numpy's; ``Tensor.median`` takes the lower)."""
    return float(torch.quantile(d.double(), 0.5))


def memorization(samples: torch.Tensor, ds: Dataset, space: Space, device: torch.device, n_test: int = 2000,
                 n_pairs: int = 16, cells: int = 20, seed: int = 0) -> Memorization:
    """Nearest-training distances of samples against those of ``n_test`` test images, in one space.

    The reference is the whole training split (what the model saw); the test images are a seeded subset
    of the test split (never trained on).
    """
    if ds.kind != "image":
        raise BenchError(f"memorization: dataset {ds.name!r} has points, not images")
    key = (ds.name, space, len(ds.train_x))
    if key not in _TRAIN_FEATURES:
        _TRAIN_FEATURES[key] = embed(ds.train_x, ds, space, device)
    train_f = _TRAIN_FEATURES[key]
    test_f = embed(ds.test_x[subset(len(ds.test_x), n_test, seed)], ds, space, device)
    sample_f = embed(samples, ds, space, device)
    d_test = nearest_neighbours(test_f, train_f).distance
    nn = nearest_neighbours(sample_f, train_f)
    ct = data_copying_ct(train_f, test_f, sample_f, d_test, nn.distance, cells=cells, seed=seed)
    m, n = len(sample_f), len(test_f)
    return Memorization(
        space, closer_share(nn.distance, d_test), math.sqrt((m + n + 1) / (12 * m * n)), ct.c_t, ct.cells_used,
        near_copy_share(nn.distance, d_test), exact_copy_share(nn.distance), _median(nn.distance),
        _median(d_test), m, n, len(train_f), closest_pairs(nn, n_pairs),
    )


def train_test_gap(model: GenerativeModel, ds: Dataset, n: int, generator: torch.Generator,
                   batch_size: int = 500) -> dict[str, Any] | None:
    """Test NLL minus train NLL (nats and bits/dim) on ``n`` images of each split; None without a likelihood."""
    tr = preferred(log_likelihoods(model, ds.train_x[subset(len(ds.train_x), n, 1)], generator, batch_size))
    te = preferred(log_likelihoods(model, ds.test_x[subset(len(ds.test_x), n, 2)], generator, batch_size))
    if tr is None or te is None:
        return None
    gap, se = nll_gap(tr.log_prob, te.log_prob)
    bpd = ds.dim * math.log(2)
    return {"estimator": tr.estimator, "kind": tr.kind, "nll_gap_nats": gap, "nll_gap_nats_se": se,
            "nll_gap_bpd": gap / bpd, "nll_gap_bpd_se": se / bpd, "n": n}


# ---------------------------------------------------------------------------------------------
# Out-of-distribution detection


def ood_sets(ds: Dataset, names: list[str], n: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """``n`` images of each out-of-distribution set: another dataset's test split, or a synthetic set."""
    inside = ds.test_x[subset(len(ds.test_x), n, seed)]
    g = torch.Generator().manual_seed(seed)
    out = {}
    for name in names:
        if name in SYNTHETIC:
            out[name] = synthetic_ood(name, inside, g)
            continue
        other = load_dataset(name)
        if other.shape != ds.shape:
            raise BenchError(f"ood set {name!r}: images of shape {other.shape}, {ds.name} has {ds.shape}")
        out[name] = other.test_x[subset(len(other.test_x), n, seed)]
    return out


def background_model(ds: Dataset, pixel_model: Literal["gaussian", "categorical"] = "categorical") -> GenerativeModel:
    """The likelihood-ratio background: naive Bayes fitted on the training split (low-level pixel statistics)."""
    return fit_naive_bayes(ds.train_x, ds.train_y, ds, NaiveBayesOptions(pixel_model=pixel_model))


def ood_table(model: GenerativeModel, ds: Dataset, sets: dict[str, torch.Tensor], n: int,
              generator: torch.Generator, background: GenerativeModel | None = None,
              batch_size: int = 500) -> list[dict[str, Any]]:
    """AUROC of every score at separating ``n`` test images from each set: one row per (set, score).

    Scores: ``nll`` (raw), ``typicality`` (reference: ``n`` training images), ``ratio`` (against
    ``background``), ``complexity`` (against PNG), and ``reconstruction`` for models with an encoder.
    """
    inside = ds.test_x[subset(len(ds.test_x), n, 0)]
    scores_of: dict[str, Any] = {}
    lk_in = preferred(log_likelihoods(model, inside, generator, batch_size))
    if lk_in is not None:
        ref = preferred(log_likelihoods(model, ds.train_x[subset(len(ds.train_x), n, 1)], generator, batch_size))
        bg = background_model(ds) if background is None else background

        def likelihood_scores(x: torch.Tensor, lk=None) -> dict[str, torch.Tensor]:
            lk = lk or log_likelihoods(model, x, generator, batch_size)[lk_in.estimator]
            nll = nll_bits_per_dim(lk.log_prob, ds.dim)
            bg_nll = nll_bits_per_dim(preferred(log_likelihoods(bg, x, generator, batch_size)).log_prob, ds.dim)
            return {"nll": nll, "typicality": typicality_score(nll, nll_bits_per_dim(ref.log_prob, ds.dim)),
                    "ratio": likelihood_ratio_score(nll, bg_nll), "complexity": complexity_score(nll, x)}

        scores_of["in"] = likelihood_scores(inside, lk_in)
        scores_of.update({name: likelihood_scores(x) for name, x in sets.items()})
    if has_encoder(model):
        for name, x in [("in", inside), *sets.items()]:
            scores_of.setdefault(name, {})["reconstruction"] = reconstruction_error(x, reconstruct(model, x, batch_size))
    rows = []
    for name in sets:
        for score, s_out in scores_of.get(name, {}).items():
            s_in = scores_of["in"][score]
            a, se = auroc(s_in, s_out)
            rows.append({"ood_set": name, "score": score, "auroc": a, "auroc_se": se,
                         "estimator": lk_in.estimator if lk_in is not None and score != "reconstruction" else "",
                         "kind": lk_in.kind if lk_in is not None and score != "reconstruction" else "",
                         "mean_in": float(s_in.mean()), "mean_out": float(s_out.mean()), "n": n})
    return rows


# ---------------------------------------------------------------------------------------------
# Generative classifiers


def train_per_class(family: str, options: dict[str, Any], ds: Dataset, budget: Budget, batch_size: int,
                    seed: int, device: torch.device) -> PerClassModels:
    """One unconditional model of ``family`` per class, each trained on its class alone under ``budget``."""
    cls = FAMILIES.get(family).cls
    models = []
    for c in range(ds.num_classes):
        part = class_subset(ds, c)
        spec = DataSpec(ds.kind, ds.shape, ds.num_classes, tuple(part.class_frequencies().tolist()))
        torch.manual_seed(seed)
        model = cls(spec, cls.Options(**options)).to(device)
        result = train(model, part, TrainContext(budget, batch_size, seed=seed + c, device=device))
        if result.status != "ok":
            raise BenchError(f"per-class {family} model of class {c} diverged ({result.reason}); "
                             f"change its options or budget")
        models.append(model.eval())
    return PerClassModels(models, log_class_frequencies(ds.train_y, ds.num_classes))


def generative_classifier(model: Any, ds: Dataset, n: int, generator: torch.Generator,
                          batch_size: int = 500) -> list[dict[str, Any]]:
    """Bayes-rule test accuracy on ``n`` test images, one row per likelihood estimator."""
    idx = subset(len(ds.test_x), n, 0)
    return [asdict(a) for a in bayes_accuracy(model, ds.test_x[idx], ds.test_y[idx], generator, batch_size)]
