"""The quality evaluator: FID, KID, precision/recall, density/coverage, class and mode coverage.

``QualityEvaluator`` reads the cell's generated samples. Per requested feature space it
extracts the samples' features once (``bench.metrics.fidelity``), reads the real test-split
reference features from the disk cache (``bench.metrics.caches``), and computes every
requested metric from those two feature sets with ``bench.metrics.fast``: everything that
depends on the real set only (FID moments, k-NN radii, KID real-real kernel sums: ``RealStats``)
is computed once per reference and cached with its features; per model only what involves the
samples. The values are torch-fidelity's (FID to ~1e-9 relative, precision/recall exactly, KID to
float32 rounding) and density/coverage ``bench.metrics.coverage``'s (tests/test_fast_metrics.py);
class/mode coverage come from ``bench.metrics.coverage``. Metric names carry their feature space
(``fid_domain``, ``fid_inception``); every metric's ``params`` record the sample counts, and the
Inception space's the Inception precision (``inception_precision``: exact fp32, or bf16-approx).

On a dataset without labels there is no domain classifier: the domain-space and class-coverage
metrics are reported unavailable with the reason, and the Inception space (if requested) is the
quality space. ``quick_quality`` is the cheap snapshot for quality-over-training curves.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any, Literal

import torch
from pydantic import Field, field_validator
from threadpoolctl import threadpool_limits  # ships with scikit-learn

from bench.data import Dataset
from bench.errors import BenchError
from bench.metrics import coverage, fast
from bench.metrics.base import EvalContext, Evaluator, EvaluatorOptions, register_evaluator
from bench.metrics.caches import reference_features, update_reference
from bench.metrics.inception import UNAVAILABLE_IS
from bench.results import Metric, MetricSpec, metric, unavailable

# torch-fidelity (and bench.metrics.fidelity, which builds on it) imports torchvision: ~2.5 s. They are
# imported where metrics are computed, so `bench list`, `validate` and `compare` start in about 3 s.
if TYPE_CHECKING:
    from bench.metrics.fidelity import Extractor

# The Inception path: exact (fp32), or bfloat16 under a name that says it is an approximation
InceptionPrecision = Literal["fp32", "bf16-approx"]
FeatureSpace = Literal["domain", "inception"]
QualityMetric = Literal["fid", "kid", "precision_recall", "density_coverage", "class_coverage"]
ALL_METRICS: list[QualityMetric] = ["fid", "kid", "precision_recall", "density_coverage", "class_coverage"]


def _space_specs(space: str, headline: bool) -> tuple[MetricSpec, ...]:
    """The feature-based metrics of one space. Declaration order is the report's column order."""
    text = {"domain": "the domain classifier's feature space", "inception": "the standard FID Inception-v3 pool3 space"}[space]
    return (
        MetricSpec(f"fid_{space}", "", False, role="quality", headline=True, axis=True,
                   description=f"Fréchet distance (Heusel et al. 2017) between Gaussian fits in {text}"),
        MetricSpec(f"kid_{space}", "", False, role="quality", headline=headline,
                   description=f"Kernel Inception Distance (Bińkowski et al. 2018, cubic kernel, mean over subsets) in {text}"),
        MetricSpec(f"kid_{space}_std", "", None, role="info",
                   description=f"Standard deviation of KID over its subsets in {text}"),
        MetricSpec(f"precision_{space}", "", True, role="quality", headline=headline,
                   description=f"Improved precision (Kynkäänniemi et al. 2019, k=3): share of samples inside the real manifold, {text}"),
        MetricSpec(f"recall_{space}", "", True, role="coverage", headline=headline, axis=True,
                   description=f"Improved recall (Kynkäänniemi et al. 2019, k=3): share of real data inside the sample manifold, {text}"),
        MetricSpec(f"density_{space}", "", True, role="quality", headline=headline,
                   description=f"Density (Naeem et al. 2020, k=5) in {text}: mean count of real k-NN balls holding each "
                               f"sample, over k; 1 when samples match the data, >1 when clumped"),
        MetricSpec(f"coverage_{space}", "", True, role="coverage", headline=headline, axis=headline,
                   description=f"Coverage (Naeem et al. 2020, k=5) in {text}: share of real points whose k-NN ball holds "
                               f"at least one sample"),
    )


# Order matters (the report's columns and axis preferences): the domain space, then class and mode
# coverage, then the Inception space: its FID is a headline column, and the quality axis when the domain
# space is absent (unlabelled data); its recall is the coverage axis only when nothing above is present.
QUALITY_METRICS: tuple[MetricSpec, ...] = (
    *_space_specs("domain", headline=True),
    MetricSpec("classes_covered", "classes", True, role="coverage", headline=True, axis=True,
               description="Classes that get at least 20% of their expected share of samples (domain classifier)"),
    MetricSpec("class_kl", "nats", False, role="coverage",
               description="KL(predicted class histogram of samples || class frequencies of the data)"),
    MetricSpec("classifier_score", "", True, role="quality",
               description="Inception-Score formula on the domain classifier: exp E[KL(p(y|x) || p(y))], 10 splits"),
    MetricSpec("modes_covered", "modes", True, role="coverage", headline=True, axis=True,
               description="toy2d: mixture modes that get at least 20% of their expected share of high-quality samples"),
    MetricSpec("high_quality_share", "", True, role="quality", headline=True,
               description="toy2d: share of samples within 3 std of the nearest mode (real data: ~0.989 in 2-D)"),
    MetricSpec("mode_kl", "nats", False, role="coverage",
               description="toy2d: KL(histogram of high-quality samples over modes || uniform)"),
    *_space_specs("inception", headline=False),
    MetricSpec("inception_score", "", True, role="quality",
               description="Inception Score (Salimans et al. 2016); unavailable with the offline FID weights (no logits)"),
)
CLASS_METRICS = ("classes_covered", "class_kl", "classifier_score")
NO_LABELS = "no labels in the dataset"
NO_LABELS_DOMAIN = "no labels in the dataset, so no domain classifier (the inception space needs none)"


class QualityOptions(EvaluatorOptions):
    """Sample-quality evaluation options (the suite's ``eval.quality``)."""

    feature_spaces: list[FeatureSpace] = ["domain"]  # "inception" is ~7 img/s on a 2-core CPU: GPU suites
    metrics: list[QualityMetric] = list(ALL_METRICS)  # class_coverage means mode coverage on toy2d
    n_reference: int = Field(10_000, ge=2)  # real test-split images used as reference (capped at the split size)
    kid_subsets: int = Field(100, ge=1, le=100_000)  # KID: number of random subsets (Bińkowski et al.)
    kid_subset_size: int = Field(1000, ge=2)  # KID: subset size (capped at the smaller sample count; params say so)
    pr_k: int = Field(3, ge=1)  # precision/recall neighbourhood (Kynkäänniemi et al. 2019)
    dc_k: int = Field(5, ge=1)  # density/coverage neighbourhood (Naeem et al. 2020)
    batch_size: int = Field(500, ge=1)  # images per forward pass of the domain net
    inception_batch_size: int = Field(50, ge=1)  # Inception at 299x299 needs far more memory per image
    inception_max_samples: int | None = Field(None, ge=2)  # Inception space: first N samples and N references only
    inception_precision: InceptionPrecision = "fp32"  # fp32: exact (torch-fidelity's features to 1e-5); bf16-approx:
    #   bfloat16 Inception on CPUs with AMX / AVX-512-BF16, ~1.5x faster, FID within ~2 % of the exact one: never
    #   compare its numbers with exact or published FIDs (recorded in each inception metric's params)
    class_min_share: float = Field(coverage.MIN_SHARE, gt=0, le=1)  # covered = >= this share of the expected count
    classifier_score_splits: int = Field(10, ge=1, le=10_000)  # splits of the Inception-Score formula
    domain_min_accuracy: float | None = Field(None, gt=0, le=1)  # domain net test-accuracy floor (None: per dataset)
    seed: int = Field(2020, ge=0, le=2**32 - 1)  # numpy RandomState's range; KID subset draws and classifier-score splits (torch-fidelity's default rng_seed)

    @field_validator("feature_spaces", "metrics")
    @classmethod
    def _unique_nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must name at least one entry")
        if len(set(v)) != len(v):
            raise ValueError(f"duplicate entries in {v}")
        return v


# ---------------------------------------------------------------------------------------------
# Metrics from one pair of feature sets


def real_stats(ref: dict[str, Any], ks: tuple[int, ...] = (), kid: fast.KidPlan | None = None,
               n_gen: int | None = None) -> fast.RealStats:
    """The reference's real-only statistics (``fast.RealStats``: FID moments, k-NN radii for ``ks``, KID
    real-real sums for ``kid`` at ``n_gen`` samples), built on first use and kept in the reference cache
    (``update_reference``: the file and its sidecar are rewritten whenever something is added)."""
    real = ref["features"]  # (M, F)
    if "fast_stats" in ref:
        stats = fast.RealStats.from_state(ref["fast_stats"])
        added = stats.ensure(real, ks, kid, n_gen)
    else:
        stats, added = fast.RealStats.build(real, ks, kid, n_gen), True
    if added:
        update_reference(ref, fast_stats=stats.to_state())
    return stats


def fid_from_features(gen: torch.Tensor, ref: dict[str, Any]) -> float:
    """FID of generated features ``gen`` (N, F) against the cached reference (NaN where it is undefined)."""
    value, _ = fid_checked(gen, ref)
    return math.nan if value is None else value


FID_TOL = 1e-6  # relative to tr(S_r) + tr(S_g): what float64 rounding can explain


def fid_checked(gen: torch.Tensor, ref: dict[str, Any]) -> tuple[float | None, str]:
    """FID of generated features ``gen`` (N, F) against the cached reference (``fast.fid``: torch-fidelity's
    value to ~1e-9 relative), and a note on its numerical traps.

    ``fast.fid`` takes the trace term from the eigenvalues of the symmetric PSD matrix
    S_r^(1/2) S_g S_r^(1/2), so torch-fidelity's traps of a general eigensolver on S_r S_g (complex
    or negative eigenvalues) cannot occur. What remains: fewer samples than dimensions (a singular
    covariance: FID is biased up, the note says so), and a distance that rounds below 0 (reported
    as 0, the note says from what); one below 0 beyond rounding (a damaged cache) is None.
    """
    n, dims = gen.shape
    if n < 2:
        return None, f"FID needs at least 2 samples for a covariance, got {n}"
    stats = real_stats(ref)
    fid = fast.fid(gen, stats)
    notes = [f"{n} samples in {dims} feature dimensions: the sample covariance is singular, FID is biased up"] \
        if n <= dims else []
    if fid < 0:
        traces = float(stats.sigma.trace()) + float(gen.double().var(0).sum())  # tr(S_r) + tr(S_g)
        if fid < -FID_TOL * max(traces, 1.0):
            return None, "; ".join([*notes, f"FID came out at {fid:.3g}, below 0 beyond rounding: not reported"])
        notes.append(f"FID {fid:.2g} (rounding below 0) reported as 0")
        fid = 0.0
    return fid, "; ".join(notes)


def one_blas_thread():
    """numpy's BLAS limited to one thread around the metrics: multi-threaded OpenBLAS spins on small
    matrices on a busy 2-core machine (torch-fidelity's eigvals of a 128x128 matrix: 1.6 s vs 3 ms), and
    one thread keeps numpy's share of the numbers (``fast``'s float32 means) independent of the core count."""
    return threadpool_limits(limits=1, user_api="blas")


def feature_metrics(gen: torch.Tensor, ref: dict[str, Any], space: str, ext: Extractor, opts: QualityOptions,
                    **params: Any) -> list[Metric]:
    """Every requested feature-based metric of generated features ``gen`` (N, F) vs the cached reference.

    ``bench.metrics.fast`` with the reference's ``RealStats`` (``real_stats``): FID and precision/recall
    are torch-fidelity's (to ~1e-9 relative; exactly), KID is torch-fidelity's to float32 rounding of the
    kernel values, density/coverage is ``bench.metrics.coverage``'s bit for bit (tests/test_fast_metrics.py).
    ``params`` are added to every metric's params.
    """
    with one_blas_thread():
        return _feature_metrics(gen, ref, space, ext, opts, params)


def _feature_metrics(gen: torch.Tensor, ref: dict[str, Any], space: str, ext: Extractor, opts: QualityOptions,
                     params: dict[str, Any]) -> list[Metric]:
    real = ref["features"]  # (M, F)
    n, m = len(gen), len(real)
    base = {"space": space, "extractor": ext.key, "n_samples": n, "n_reference": m, "reference_split": ref["split"],
            **params}
    size = min(opts.kid_subset_size, n, m)
    plan = fast.KidPlan(opts.kid_subsets, size, opts.seed) if "kid" in opts.metrics else None
    pr_k = opts.pr_k if "precision_recall" in opts.metrics else None
    dc_k = opts.dc_k if "density_coverage" in opts.metrics else None
    # every real-only quantity this call needs, computed (and cached) at most once per reference
    stats = real_stats(ref, tuple(k for k in (pr_k, dc_k) if k is not None), plan, n)
    out: list[Metric] = []
    if "fid" in opts.metrics:
        fid, note = fid_checked(gen, ref)
        out.append(metric(f"fid_{space}", fid, note=note, **base))
    if plan is not None:
        note = f"kid_subset_size capped at {size} (samples: {n}, reference: {m})" if size < opts.kid_subset_size else ""
        kid_mean, kid_std = fast.kid(gen, real, stats, plan)
        p = {**base, "kid_subsets": opts.kid_subsets, "kid_subset_size": size, "seed": opts.seed}
        out.append(metric(f"kid_{space}", kid_mean, note=note, **p))
        out.append(metric(f"kid_{space}_std", kid_std, note=note, **p))
    if pr_k is None and dc_k is None:
        return out
    hood = fast.neighbourhood_metrics(gen, real, stats, pr_k=pr_k, dc_k=dc_k)
    if pr_k is not None:
        # precision reads the real points' k-NN balls, recall the samples': duplicates make balls of radius 0
        p_note, r_note = coverage.duplicates_note(real, pr_k, "reference points"), \
            coverage.duplicates_note(gen, pr_k, "samples")
        out.append(metric(f"precision_{space}", hood["precision"], note=p_note, k=pr_k, **base))
        out.append(metric(f"recall_{space}", hood["recall"], note=r_note, k=pr_k, **base))
    if dc_k is not None:
        note = coverage.duplicates_note(real, dc_k, "reference points")
        out.append(metric(f"density_{space}", hood["density"], note=note, k=dc_k, **base))
        out.append(metric(f"coverage_{space}", hood["coverage"], note=note, k=dc_k, **base))
    return out


def class_metrics(logits: torch.Tensor, ds: Dataset, opts: QualityOptions, ext_key: str) -> list[Metric]:
    """Class coverage, class KL and classifier score from the domain classifier's logits (N, K)."""
    freq = ds.class_frequencies()
    cc = coverage.class_coverage(logits, freq, opts.class_min_share)
    p = {"n_samples": len(logits), "extractor": ext_key, "num_classes": ds.num_classes}
    splits = min(opts.classifier_score_splits, len(logits))
    return [
        metric("classes_covered", cc["classes_covered"], min_share=opts.class_min_share, **p),
        metric("class_kl", cc["class_kl"], reference="train class frequencies", **p),
        metric("classifier_score", coverage.classifier_score(logits, splits, opts.seed), splits=splits, **p),
    ]


def mode_metrics(points: torch.Tensor, ds: Dataset, opts: QualityOptions) -> list[Metric]:
    """toy2d mode coverage from the known mixture."""
    if ds.mixture is None:
        raise BenchError(f"dataset {ds.name!r} has points but no known mixture: drop class_coverage from eval.quality.metrics")
    mc = coverage.mode_coverage(points, ds.mixture, coverage.N_STD, opts.class_min_share)
    p = {"n_samples": len(points), "num_modes": len(ds.mixture.means), "n_std": coverage.N_STD}
    note = "no sample within 3 std of any mode" if mc["mode_kl"] is None else ""
    return [
        metric("modes_covered", mc["modes_covered"], min_share=opts.class_min_share, **p),
        metric("high_quality_share", mc["high_quality_share"], **p),
        metric("mode_kl", mc["mode_kl"], note=note, **p),
    ]


# ---------------------------------------------------------------------------------------------
# Entry points


def _check_samples(samples: torch.Tensor, ds: Dataset, opts: QualityOptions) -> None:
    want = "float (N, D) points" if ds.kind == "points" else "uint8 (N, C, H, W) images"
    ok = samples.dtype.is_floating_point if ds.kind == "points" else samples.dtype == torch.uint8
    if not ok or tuple(samples.shape[1:]) != ds.shape:
        raise BenchError(f"samples for {ds.name!r} must be {want} of shape (N, {', '.join(map(str, ds.shape))}); "
                         f"got {samples.dtype} {tuple(samples.shape)}")
    need = max(opts.pr_k, opts.dc_k) + 1
    if len(samples) < need:
        raise BenchError(f"quality metrics need at least {need} samples (pr_k/dc_k + 1), got {len(samples)}; "
                         f"raise the number of evaluation samples")
    if ds.kind == "points" and "inception" in opts.feature_spaces:
        raise BenchError(f"dataset {ds.name!r} has points, not images: remove 'inception' from eval.quality.feature_spaces")


def _space_metric_names(space: str, opts: QualityOptions) -> list[str]:
    """The names ``feature_metrics`` gives for ``space`` under ``opts`` (for reporting them unavailable)."""
    per = {"fid": ["fid_{}"], "kid": ["kid_{}", "kid_{}_std"], "precision_recall": ["precision_{}", "recall_{}"],
           "density_coverage": ["density_{}", "coverage_{}"]}
    return [n.format(space) for m in opts.metrics for n in per.get(m, [])]


def evaluate_quality(samples: torch.Tensor, dataset: Dataset, options: QualityOptions, device: torch.device) -> list[Metric]:
    """Every requested quality metric of ``samples`` against ``dataset``'s test split.

    samples: uint8 (N, C, H, W) images, or float (N, D) points for toy2d. Features are
    extracted once per feature space; reference features come from the disk cache. Without
    labels the domain space and class coverage are reported unavailable, with the reason.
    """
    from bench.metrics.fidelity import domain_extractor, inception_extractor

    _check_samples(samples, dataset, options)
    opts = options
    no_classifier = dataset.kind == "image" and not dataset.has_labels
    feature_based = [m for m in opts.metrics if m != "class_coverage"]
    out: list[Metric] = []
    domain_logits: torch.Tensor | None = None
    domain_key = ""
    for space in opts.feature_spaces:
        wants_logits = space == "domain" and dataset.kind == "image" and "class_coverage" in opts.metrics
        if not feature_based and not wants_logits:
            continue  # e.g. only class_coverage with the inception space: no Inception pass at all
        if space == "domain" and no_classifier:
            out += [unavailable(n, NO_LABELS_DOMAIN) for n in _space_metric_names(space, opts)]
            continue
        if space == "domain":
            ext = domain_extractor(dataset, device, opts.domain_min_accuracy)
            x, bs, n_ref = samples, opts.batch_size, opts.n_reference
        else:
            ext = inception_extractor(device, opts.inception_precision)
            cap = opts.inception_max_samples or len(samples)
            x, bs, n_ref = samples[:cap], opts.inception_batch_size, min(opts.n_reference, cap)
        gen = ext.extract(x, bs, device)  # the one feature pass over this sample set
        if "logits" in gen:
            domain_logits, domain_key = gen["logits"], ext.key
        if feature_based:
            ref = reference_features(dataset, ext, n_ref, bs, device)
            params = {"inception_precision": opts.inception_precision} if space == "inception" else {}
            out += feature_metrics(gen["features"], ref, space, ext, opts, **params)
    if "class_coverage" in opts.metrics:
        if dataset.kind == "points":
            out += mode_metrics(samples.float(), dataset, opts)
        elif no_classifier:
            out += [unavailable(n, NO_LABELS) for n in CLASS_METRICS]
        else:
            if domain_logits is None:  # only the inception space was asked for: the classifier is still the domain net
                ext = domain_extractor(dataset, device, opts.domain_min_accuracy)
                domain_logits, domain_key = ext.extract(samples, opts.batch_size, device)["logits"], ext.key
            out += class_metrics(domain_logits, dataset, opts, domain_key)
    if "inception" in opts.feature_spaces:
        n_is = min(len(samples), opts.inception_max_samples or len(samples))
        out.append(metric("inception_score", None, note=UNAVAILABLE_IS, n_samples=n_is))
    return out


def quick_quality(samples: torch.Tensor, dataset: Dataset, device: torch.device) -> dict[str, float]:
    """Cheap snapshot for quality-over-training curves: domain FID and classes (toy2d: modes) covered.

    Uses the cached domain net and the cached default reference (10,000 test images and their
    FID statistics), so a call costs one forward pass over ``samples`` plus a 128-d FID.
    FID of a small sample is biased upwards (see docs/metrics.md): compare curves at equal N.
    """
    from bench.metrics.fidelity import domain_extractor

    opts = QualityOptions()
    _check_samples(samples, dataset, QualityOptions(pr_k=1, dc_k=1))
    ext = domain_extractor(dataset, device)
    gen = ext.extract(samples, opts.batch_size, device)
    ref = reference_features(dataset, ext, opts.n_reference, opts.batch_size, device)
    with one_blas_thread():
        out = {"fid_domain": fid_from_features(gen["features"], ref)}
    if dataset.kind == "points":
        if dataset.mixture is not None:
            out["modes_covered"] = coverage.mode_coverage(samples.float(), dataset.mixture)["modes_covered"]
    else:
        out["classes_covered"] = coverage.class_coverage(gen["logits"], dataset.class_frequencies())["classes_covered"]
    return out


class QualityEvaluator(Evaluator):
    """Sample quality and diversity: FID, KID, precision/recall, density/coverage, class/mode coverage."""

    name = "quality"
    Options = QualityOptions
    needs = frozenset({"samples"})
    metrics = QUALITY_METRICS

    def evaluate(self, ctx: EvalContext) -> list[Metric]:
        assert ctx.samples is not None  # the harness generates them for evaluators that need samples
        return evaluate_quality(ctx.samples, ctx.dataset, self.options, ctx.device)


register_evaluator("quality", QualityEvaluator)
