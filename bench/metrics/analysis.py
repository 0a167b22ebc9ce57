"""Evaluators of what generative models are for (issue 9): classification, memorization, OOD detection.

The measurements are ``bench.analysis`` (known-answer tested there); these classes wire them to a
cell and declare the metric names:

* ``classification`` (needs the model and labels): Bayes-rule test accuracy ``bayes_accuracy_<estimator>``
  of a class-conditional likelihood, argmax_y [log p(x|y) + log p(y)]. Naive Bayes (and any family with
  ``class_log_likelihoods``) classifies as it is; an unconditional likelihood family classifies through
  one model per class when ``per_class_steps`` is set (each trained that many steps on its class), and
  is reported unavailable otherwise. With a bound (ELBO, IWAE, VLB) the kind says so: the argmax of
  bounds is not Bayes' rule. On a naive Bayes cell, ``curve`` adds the Ng & Jordan (2002) learning
  curve, naive Bayes of the cell's pixel model against discriminative classifiers, and its crossing
  point ``crossing_n_<generative>_<discriminative>`` (the curve is in the record's
  ``curves["classifier_curve"]``). The curve is a property of the dataset, not of the trained cell,
  so it is computed once per process and options and repeated in each naive Bayes cell's record;
* ``memorization`` (needs the samples): nearest-training-image distances of the samples against
  those of test images, per space: ``closer_share_<space>``, ``data_copying_ct_<space>`` (Meehan et
  al. 2020), ``near_copy_share_<space>``, ``exact_copy_share``, and for likelihood models the
  train-test gap ``nll_gap_bpd``; the closest sample-training pairs as a PNG in
  ``curves["closest_pairs"]``;
* ``ood`` (needs the model): AUROC ``ood_auroc_<set>_<score>`` of telling test images from another
  dataset's (``fashion_mnist``, ``mnist``) or a synthetic set (``noise``, ``hflip``, ``vflip``), for the
  raw NLL and its corrections (typicality, likelihood ratio against naive Bayes, input complexity), and
  reconstruction error for models with an encoder. A dataset that is not installed is reported
  unavailable with the message that says how to install it.

Generator streams (``EvalContext.generator``): 4 classification, 5 memorization, 6 ood.

``bench.analysis`` imports scikit-learn and SciPy (about a second, several under load); it is imported
inside ``evaluate`` so that ``bench list`` and ``validate``, which import every evaluator, stay fast.
"""
from __future__ import annotations

import base64
import json
from typing import Any, Literal, get_args

from pydantic import Field

from bench.errors import BenchError
from bench.metrics.base import EvalContext, Evaluator, EvaluatorOptions, register_evaluator
from bench.metrics.likelihood import ESTIMATORS
from bench.results import Metric, MetricSpec, metric, unavailable

STREAM_CLASSIFY, STREAM_MEMORIZATION, STREAM_OOD = 4, 7, 8  # 5, 6: counted NFE, controllability

# ---------------------------------------------------------------------------------------------
# classification

# bench.analysis.classify.CLASSIFIERS, split in two; *_tuned: smoothing chosen on the validation split
NbCurve = Literal["nb_gaussian", "nb_categorical", "nb_gaussian_tuned", "nb_categorical_tuned"]
Discriminative = Literal["logistic", "logistic_c1", "cnn"]

CLASSIFICATION_METRICS: tuple[MetricSpec, ...] = (
    *(MetricSpec(f"bayes_accuracy_{est}", "", True, kind, role="info",
                 description=f"test accuracy of argmax_y [log p(x|y) + log p(y)] with the {est} estimator ({kind})"
                             + ("" if kind == "exact" else "; an argmax of bounds, not Bayes' rule"))
      for est, kind in ESTIMATORS.items()),
    *(MetricSpec(f"crossing_n_{gen}_{disc}", "examples", None, role="info",
                 description=f"training-set size after which {disc} stays more accurate than {gen} "
                             f"(Ng & Jordan 2002; log-linear interpolation of mean curves)")
      for gen in get_args(NbCurve) for disc in get_args(Discriminative)),
)


class CurveOptions(EvaluatorOptions):
    """The generative-vs-discriminative learning curve (``bench.analysis.classify.learning_curve``)."""

    # examples per class of each point; full = the whole training pool
    sizes: list[int | Literal["full"]] = Field([1, 2, 5, 10, 20, 50, 100, 200, 500, "full"], min_length=1)
    seeds: list[int] = Field([0, 1, 2], min_length=1)  # subsets drawn per size
    val_size: int = Field(5000, gt=0)  # training images held out to choose C (and the smoothing, when tuned)
    generative: list[NbCurve] = Field(["nb_gaussian", "nb_categorical"], min_length=1)  # naive Bayes variants
    against: list[Discriminative] = Field(["logistic"], min_length=1)  # discriminative classifiers


class ClassificationOptions(EvaluatorOptions):
    n_test: int | None = Field(None, gt=0)  # test images classified; None = the whole test split
    batch_size: int = Field(500, gt=0)  # images per log-likelihood call
    per_class_steps: int | None = Field(None, gt=0)  # unconditional families: one model per class, this many steps each
    per_class_batch_size: int = Field(64, gt=0)  # batch of those per-class models
    curve: CurveOptions | None = None  # naive Bayes cells: the NB-vs-discriminative curve and its crossing point


_CURVES: dict[str, Any] = {}  # (dataset, options) key -> learning-curve DataFrame, per process


class ClassificationEvaluator(Evaluator):
    """Generative classifiers by Bayes' rule, and naive Bayes against logistic regression over data sizes."""

    name = "classification"
    Options = ClassificationOptions
    needs = frozenset({"model", "test_data", "labels"})
    metrics = CLASSIFICATION_METRICS

    def evaluate(self, ctx: EvalContext) -> list[Metric]:
        from bench.analysis import classify, measure, probes  # scikit-learn: see the module docstring
        from bench.config import Budget  # the suite schema imports this registry: a top-level import would be a cycle

        opts: ClassificationOptions = self.options  # type: ignore[assignment]
        ds, model, g = ctx.dataset, ctx.model, ctx.generator(STREAM_CLASSIFY)
        per_class = False
        try:
            classifier: Any = classify.class_conditional(model)
        except BenchError:
            if model.likelihood_kind == "none":
                return [unavailable("bayes_accuracy_exact", f"family {model.family!r} has no likelihood")]
            if opts.per_class_steps is None:  # n/a under the names the family's estimators would report
                reason = (f"family {model.family!r} has no class-conditional likelihood; set "
                          f"eval.classification.per_class_steps to classify with one model per class")
                estimators = probes.log_likelihoods(model, ds.test_x[:1], g)
                return [unavailable(f"bayes_accuracy_{est}", reason) for est in estimators]
            budget = Budget(steps=opts.per_class_steps)
            classifier = measure.train_per_class(model.family, model.options.model_dump(), ds, budget,
                                                 opts.per_class_batch_size, ctx.seed, ctx.device)
            per_class = True
        n = opts.n_test or len(ds.test_x)
        how = {"per_class_steps": opts.per_class_steps} if per_class else {}
        out = [metric(f"bayes_accuracy_{r['estimator']}", r["accuracy"], stderr=r["stderr"], n_test=r["n"],
                      per_class_models=per_class, **how)
               for r in measure.generative_classifier(classifier, ds, n, g, opts.batch_size)]
        if opts.curve is not None and isinstance(classifier, classify.NaiveBayesClasses):
            out += self._curve(ctx, opts.curve)
        return out

    def _curve(self, ctx: EvalContext, c: CurveOptions) -> list[Metric]:
        from bench.analysis import classify

        ds = ctx.dataset
        key = json.dumps([ds.name, len(ds.train_x), c.model_dump()])
        if key not in _CURVES:  # the same for every naive Bayes cell of the run: fitted once per process
            sizes = [None if s == "full" else s for s in c.sizes]
            _CURVES[key] = classify.learning_curve(ds, sizes, c.seeds, [*c.generative, *c.against], val_size=c.val_size)
        curve = _CURVES[key]
        # JSON has no NaN: the columns a classifier does not fill (chosen, per_class of the whole pool) become null
        ctx.curves["classifier_curve"] = curve.astype(object).where(curve.notna(), None).to_dict(orient="list")
        out = []
        for gen in c.generative:
            for disc in c.against:
                cross = classify.crossing_point(curve, gen, disc)
                per_class = None if cross.n_train is None else cross.n_train / ds.num_classes  # examples per class
                out.append(metric(f"crossing_n_{gen}_{disc}", cross.n_train, note=cross.note if cross.n_train is None
                                  else "", per_class=per_class, how=cross.note, seeds=len(c.seeds)))
        return out


register_evaluator("classification", ClassificationEvaluator)


# ---------------------------------------------------------------------------------------------
# memorization

Space = Literal["pixel", "domain"]
SPACES: tuple[Space, ...] = ("pixel", "domain")

MEMORIZATION_METRICS: tuple[MetricSpec, ...] = (
    *(spec for space in SPACES for spec in (
        MetricSpec(f"closer_share_{space}", "", None, role="info",
                   description=f"P(a sample is nearer the training set than a test image is), {space} space: "
                               f"0.5 as novel as data, 1 copies (Mann-Whitney U / mn)"),
        MetricSpec(f"data_copying_ct_{space}", "", None, role="info",
                   description=f"C_T of Meehan et al. 2020 (eq. 3), {space} space: < -3 data copying, "
                               f"> 0 underfitting"),
        MetricSpec(f"near_copy_share_{space}", "", False, role="info",
                   description=f"share of samples nearer the training set than the closest 1% of test images, "
                               f"{space} space (fresh data: about 0.01)"),
    )),
    MetricSpec("exact_copy_share", "", False, role="info",
               description="share of samples identical to a training image"),
    MetricSpec("nll_gap_bpd", "bits/dim", None, role="info",
               description="mean test NLL minus mean train NLL (> 0: the model prefers its training images)"),
)


class MemorizationOptions(EvaluatorOptions):
    spaces: list[Space] = Field(["pixel", "domain"], min_length=1)  # where distances are measured
    n_test: int = Field(2000, gt=0)  # test images whose nearest-training distances are the reference
    n_pairs: int = Field(16, ge=0)  # closest sample-training pairs drawn for the report (first space)
    cells: int = Field(20, gt=1)  # k-means cells of C_T
    nll_gap_examples: int | None = Field(1000, gt=0)  # train and test images of the NLL gap; None = no gap
    batch_size: int = Field(500, gt=0)  # images per log-likelihood call


class MemorizationEvaluator(Evaluator):
    """Are samples nearer the training set than new data is? Copy statistics and the train-test NLL gap."""

    name = "memorization"
    Options = MemorizationOptions
    needs = frozenset({"samples", "model", "test_data"})
    metrics = MEMORIZATION_METRICS

    def evaluate(self, ctx: EvalContext) -> list[Metric]:
        from bench.analysis import measure  # scikit-learn, SciPy: see the module docstring
        from bench.analysis.plots import closest_pairs_grid

        opts: MemorizationOptions = self.options  # type: ignore[assignment]
        ds, samples = ctx.dataset, ctx.samples
        assert samples is not None
        if ds.kind != "image":
            return [unavailable(s.name, f"dataset {ds.name!r} has points, not images") for s in self.metrics]
        out = []
        for space in opts.spaces:
            if space == "domain" and not ds.has_labels:
                reason = f"no labels: dataset {ds.name!r} has no domain classifier"
                out += [unavailable(f"{m}_domain", reason)
                        for m in ("closer_share", "data_copying_ct", "near_copy_share")]
                continue
            mem = measure.memorization(samples, ds, space, ctx.device, opts.n_test, opts.n_pairs, opts.cells, ctx.seed)
            p = {"n_samples": mem.n_samples, "n_test": mem.n_test, "n_train": mem.n_train}
            out += [metric(f"closer_share_{space}", mem.closer_share, stderr=mem.closer_share_se, **p),
                    metric(f"data_copying_ct_{space}", mem.c_t, cells=opts.cells, cells_used=mem.c_t_cells_used, **p),
                    metric(f"near_copy_share_{space}", mem.near_copy_share, quantile=0.01,
                           median_distance_samples=mem.median_distance_samples,
                           median_distance_test=mem.median_distance_test, **p)]
            if space == "pixel":
                out.append(metric("exact_copy_share", mem.exact_copy_share, **p))
            if "closest_pairs" not in ctx.curves and mem.pairs:
                png = closest_pairs_grid(samples.numpy(), ds.train_x.numpy(), mem.pairs)
                ctx.curves["closest_pairs"] = {"space": space, "pairs": [list(t) for t in mem.pairs],
                                               "png": base64.b64encode(png).decode()}
        if opts.nll_gap_examples is not None and ctx.model.likelihood_kind != "none":
            gap = measure.train_test_gap(ctx.model, ds, opts.nll_gap_examples, ctx.generator(STREAM_MEMORIZATION),
                                         opts.batch_size)
            if gap is not None:
                out.append(metric("nll_gap_bpd", gap["nll_gap_bpd"], stderr=gap["nll_gap_bpd_se"],
                                  nats=gap["nll_gap_nats"], estimator=gap["estimator"], kind=gap["kind"], n=gap["n"]))
        return out


register_evaluator("memorization", MemorizationEvaluator)


# ---------------------------------------------------------------------------------------------
# out-of-distribution detection

OodSet = Literal["fashion_mnist", "mnist", "noise", "hflip", "vflip"]
OOD_SETS: tuple[str, ...] = ("fashion_mnist", "mnist", "noise", "hflip", "vflip")
OOD_SCORES: dict[str, str] = {  # score -> what it is (bench.analysis.ood)
    "nll": "raw NLL in bits/dim",
    "typicality": "|NLL - mean training NLL| (Nalisnick et al. 2019, typicality test, M = 1)",
    "ratio": "NLL minus a naive Bayes background's NLL (likelihood ratio, after Ren et al. 2019)",
    "complexity": "NLL minus PNG length in bits/dim (Serrà et al. 2020)",
    "reconstruction": "reconstruction error of a model with an encoder",
}
OOD_METRICS: tuple[MetricSpec, ...] = tuple(
    MetricSpec(f"ood_auroc_{s}_{score}", "", True, role="info",
               description=f"AUROC of telling the test split from {s} by {text}; 0.5 chance, < 0.5 ranks the wrong way")
    for s in OOD_SETS for score, text in OOD_SCORES.items()
)


class OodOptions(EvaluatorOptions):
    sets: list[OodSet] = Field(["noise", "hflip", "vflip"], min_length=1)  # another dataset, or a synthetic set
    n: int = Field(1000, gt=1)  # images per set, and test images they are told from
    background: Literal["categorical", "gaussian"] = "categorical"  # naive Bayes pixel model of the ratio score
    batch_size: int = Field(500, gt=0)  # images per log-likelihood call


# (dataset, training images, pixel model) -> the naive Bayes background, fitted once per process
_BACKGROUNDS: dict[tuple[str, int, str], Any] = {}


class OodEvaluator(Evaluator):
    """AUROC of out-of-distribution detection by likelihood, its corrections and reconstruction error."""

    name = "ood"
    Options = OodOptions
    needs = frozenset({"model", "test_data"})
    metrics = OOD_METRICS

    def evaluate(self, ctx: EvalContext) -> list[Metric]:
        from bench.analysis import measure, probes  # scikit-learn: see the module docstring

        opts: OodOptions = self.options  # type: ignore[assignment]
        ds, model = ctx.dataset, ctx.model
        if ds.name in opts.sets:
            raise BenchError(f"eval.ood.sets: {ds.name!r} is the evaluated dataset itself; choose from "
                             f"{', '.join(s for s in OOD_SETS if s != ds.name)}")
        if model.likelihood_kind == "none" and not probes.has_encoder(model):
            reason = f"family {model.family!r} has neither a likelihood nor an encoder"
            return [unavailable(f"ood_auroc_{s}_nll", reason) for s in opts.sets]
        key = (ds.name, len(ds.train_x), opts.background)
        if model.likelihood_kind != "none" and key not in _BACKGROUNDS:
            _BACKGROUNDS[key] = measure.background_model(ds, opts.background)
        out, sets = [], {}
        for name in opts.sets:
            try:  # seed 0, as ood_table's in-distribution images: hflip/vflip are those very images mirrored
                sets.update(measure.ood_sets(ds, [name], opts.n, seed=0))
            except BenchError as e:  # another dataset not installed, or of another shape
                out.append(unavailable(f"ood_auroc_{name}_nll", str(e)))
        if not sets:
            return out
        for r in measure.ood_table(model, ds, sets, opts.n, ctx.generator(STREAM_OOD), _BACKGROUNDS.get(key),
                                   opts.batch_size):
            out.append(metric(f"ood_auroc_{r['ood_set']}_{r['score']}", r["auroc"], stderr=r["auroc_se"], n=r["n"],
                              estimator=r["estimator"], kind=r["kind"], mean_in=r["mean_in"], mean_out=r["mean_out"],
                              background=opts.background))
        return out


register_evaluator("ood", OodEvaluator)
