"""Training stability, for every family: divergence, oscillation, quality over training, spread over seeds.

Four views (issue 5):

* **Divergence**: the trainer ends a cell as ``diverged`` on a NaN/inf loss or a watched loss
  exploding past its early scale; here it becomes the metrics ``diverged`` (0/1) and ``diverged_at_step``.
* **Oscillation**: statistics of the logged losses over the *second half* of training (the
  last ``ceil(n/2)`` logged steps, so the warm-up transient does not count): the coefficient of
  variation ``std / |mean|`` (population std) of the watched loss and, for adversarial families,
  of G's loss, the mean D and G losses, and D's accuracy on real and on fake samples. The
  accuracy is the loss-agnostic D/G balance: 0.5 means D cannot tell real from fake, 1 means D
  wins outright (and a saturating G gets no gradient, Goodfellow 2014 Sec. 3).
* **Quality over training**: ``snapshot_fn_for`` gives the trainer a cheap probe (domain FID on
  a small sample and classes / modes covered, ``bench.metrics.quality.quick_quality``); the
  snapshots give the best-vs-final FID gap, final / minimum / lost coverage (mode collapse
  shows up as coverage that falls and stays down) and the snapshots' cost, which the trainer
  does not charge to the training budget.
* **Across seeds**: ``across_seeds`` turns per-cell records into the spread of final quality
  (mean, std, t-interval) and the share of seeds that diverged (exact binomial interval).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Callable

import numpy as np
import pandas as pd
import torch

from bench.metrics.base import EvalContext, Evaluator, SnapshotFn, register_evaluator
from bench.metrics.quality import quick_quality
from bench.results import METRICS, CellRecord, Metric, MetricSpec, metric

if TYPE_CHECKING:
    from bench.data import Dataset
    from bench.families.base import GenerativeModel
    from bench.train import TrainResult

QualityFn = Callable[[torch.Tensor, "Dataset", torch.device], dict[str, float]]

COVERAGE_KEYS = ("classes_covered", "modes_covered")  # what quick_quality reports for images / toy2d

def _spec(name: str, unit: str, higher_is_better: bool | None, description: str, **meta) -> MetricSpec:
    return MetricSpec(name, unit, higher_is_better, role="stability", description=description, **meta)


# Headline (the report's stability table): oscillation, the GAN balance and the quality lost late.
STABILITY_METRICS: tuple[MetricSpec, ...] = (
    _spec("diverged", "", False, "1 if training ended as diverged (NaN/inf or an exploding loss), else 0"),
    _spec("diverged_at_step", "steps", None, "the step at which training diverged (empty when it did not)"),
    _spec("loss_cv", "", False, "coefficient of variation std/|mean| of the watched loss over the second half of training",
          headline=True),
    _spec("loss_g_cv", "", False, "adversarial: coefficient of variation of G's loss over the second half of training"),
    _spec("loss_d_mean", "", None, "adversarial: mean D loss over the second half (scale depends on the loss)"),
    _spec("loss_g_mean", "", None, "adversarial: mean G loss over the second half (scale depends on the loss)"),
    _spec("d_acc_real", "", None, "adversarial: share of real samples D scores as real, mean over the second half"),
    _spec("d_acc_fake", "", None, "adversarial: share of generated samples D scores as fake, mean over the second half"),
    _spec("d_acc", "", None, "adversarial D/G balance: D's balanced accuracy; 0.5 = D is fooled, 1 = D wins", headline=True),
    _spec("snap_fid_domain_best", "", False, "lowest domain FID among the training snapshots (small sample, biased upward)"),
    _spec("snap_fid_domain_final", "", False, "domain FID of the last training snapshot (small sample, biased upward)"),
    _spec("snap_fid_domain_gap", "", False, "final minus best snapshot FID: quality lost by training on past the best point",
          headline=True),
    *(spec for key, unit in (("classes_covered", "classes"), ("modes_covered", "modes")) for spec in (
        _spec(f"snap_{key}_final", unit, True, f"{key} at the last training snapshot"),
        _spec(f"snap_{key}_min", unit, True, f"fewest {key} among the snapshots of the second half of training"),
        _spec(f"snap_{key}_drop", unit, False, f"peak minus final {key} over training: >0 means modes were found, then lost"),
    )),
    _spec("snapshot_cost_s", "s", None, "total time of the quality snapshots (not charged to the training budget)",
          machine_dependent=True),
)


# ----------------------------------------------------------------------------- snapshots


def snapshot_fn_for(
    dataset: Dataset,
    device: torch.device,
    n_samples: int = 500,
    seed: int = 0,
    quality_fn: QualityFn | None = None,
    warm_up: bool = True,
) -> SnapshotFn:
    """A cheap quality probe for the trainer: ``fn(model, step) -> {"fid_domain": ..., "classes_covered": ...}``.

    Every snapshot draws the same noise (a fresh generator seeded with ``seed``), so the
    curve moves only because the model does. ``quality_fn`` defaults to
    ``bench.metrics.quality.quick_quality``; tests pass a stand-in. ``warm_up`` calls it once
    here on a few test examples, so that building or loading the cached domain net and
    reference features is not counted as the first snapshot's cost.
    """
    from bench.evaluate import generate  # bench.evaluate imports this package: import at call time

    fn: QualityFn = quick_quality if quality_fn is None else quality_fn
    if warm_up:
        fn(dataset.test_x[:64], dataset, device)

    def snapshot(model: GenerativeModel, step: int) -> dict[str, float]:
        was_training = model.training
        try:
            samples, _ = generate(model, n_samples, device, seed, batch_size=n_samples, kind=dataset.kind)
        finally:
            model.train(was_training)
        return {k: float(v) for k, v in fn(samples, dataset, device).items()}

    return snapshot


# ----------------------------------------------------------------------------- per cell


def second_half(values: pd.Series) -> np.ndarray:
    """The last ceil(n/2) finite values of a logged curve (the divergence itself is not oscillation)."""
    v = values.to_numpy(dtype=float)
    v = v[len(v) // 2 :]
    return v[np.isfinite(v)]


def coefficient_of_variation(v: np.ndarray) -> float | None:
    """std / |mean| with the population std; None for an empty curve or a mean of exactly 0."""
    if v.size == 0:
        return None
    mean = float(np.mean(v))
    return None if mean == 0 else float(np.std(v) / abs(mean))


def _mean(v: np.ndarray) -> float | None:
    return float(np.mean(v)) if v.size else None


def oscillation_metrics(log: pd.DataFrame, watched: str, adversarial: bool) -> list[Metric]:
    """Second-half statistics of the loss curves (see the module docstring); ``watched`` is the family's
    ``watched_loss``, ``adversarial`` its class attribute."""
    if watched not in log or log.empty:
        return []
    n = len(log) - len(log) // 2
    out = [metric("loss_cv", coefficient_of_variation(second_half(log[watched])), loss=watched, steps=n)]
    if adversarial:
        for col, name in (("loss_g", "loss_g_cv"),):
            if col in log:
                out.append(metric(name, coefficient_of_variation(second_half(log[col])), steps=n))
        for col in ("loss_d", "loss_g", "d_acc_real", "d_acc_fake"):
            if col in log:
                name = f"{col}_mean" if col.startswith("loss") else col
                out.append(metric(name, _mean(second_half(log[col])), steps=n))
        if "d_acc_real" in log and "d_acc_fake" in log:
            both = (second_half(log["d_acc_real"]), second_half(log["d_acc_fake"]))
            if both[0].size and both[1].size:
                out.append(metric("d_acc", (float(np.mean(both[0])) + float(np.mean(both[1]))) / 2, steps=n))
    return out


def snapshot_metrics(snapshots: list[dict[str, float]]) -> list[Metric]:
    """Quality-over-training summaries from the trainer's snapshots."""
    if not snapshots:
        return []
    n = len(snapshots)
    out = [metric("snapshot_cost_s", sum(s.get("cost_s", 0.0) for s in snapshots), snapshots=n)]
    fid = [s.get("fid_domain", math.nan) for s in snapshots]
    finite = [f for f in fid if math.isfinite(f)]
    if finite:
        best, final = min(finite), fid[-1]
        best_step = snapshots[fid.index(best)]["step"]
        out += [metric("snap_fid_domain_best", best, snapshots=n, step=best_step),
                metric("snap_fid_domain_final", final, snapshots=n),
                metric("snap_fid_domain_gap", final - best if math.isfinite(final) else None, snapshots=n)]
    last_step = snapshots[-1]["step"]
    for key in COVERAGE_KEYS:
        curve = [s[key] for s in snapshots if key in s]
        if not curve:
            continue
        late = [s[key] for s in snapshots if key in s and s["step"] > last_step / 2] or curve[-1:]
        out += [metric(f"snap_{key}_final", curve[-1], snapshots=n),
                metric(f"snap_{key}_min", min(late), snapshots=len(late)),
                metric(f"snap_{key}_drop", max(curve) - curve[-1], snapshots=n)]
    return out


def training_stability(result: TrainResult, adversarial: bool) -> list[Metric]:
    """Per-cell stability metrics from a training run (log, snapshots, divergence); ``adversarial`` is the
    family's class attribute (it adds the D/G balance metrics)."""
    diverged = result.status == "diverged"
    out = [metric("diverged", float(diverged))]
    out.append(metric("diverged_at_step", result.diverged_at if diverged else None,
                      note=result.reason if diverged else "did not diverge"))
    out += oscillation_metrics(result.log, result.watched, adversarial)
    out += snapshot_metrics(result.snapshots)
    return out


def loss_curves(log: pd.DataFrame, max_points: int = 200) -> dict[str, list[float]]:
    """A thinned copy of the loss log (every k-th step, at most ``max_points``) for ``CellRecord.curves``."""
    if log.empty:
        return {}
    k = max(1, math.ceil(len(log) / max_points))
    thin = log.iloc[::k]
    return {c: [float(v) if math.isfinite(v) else None for v in thin[c]] for c in thin.columns}


# ----------------------------------------------------------------------------- across seeds


def t_interval(values: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """Two-sided Student-t interval for the mean; NaN with fewer than two values."""
    n = values.size
    if n < 2:
        return math.nan, math.nan
    import scipy.stats  # lazy, like every heavy import of the metric modules: `bench list/validate` stay fast

    half = scipy.stats.t.ppf(0.5 + level / 2, n - 1) * np.std(values, ddof=1) / math.sqrt(n)
    m = float(np.mean(values))
    return m - half, m + half


def _default_metrics(records: list[CellRecord]) -> list[str]:
    """Every quality-group metric present in the records, in first-seen order."""
    names: list[str] = []
    for r in records:
        for m in r.metrics:
            if m.name not in names and m.name in METRICS and METRICS.get(m.name).group == "quality":
                names.append(m.name)
    return names


def across_seeds(records: list[CellRecord], metric_names: list[str] | None = None) -> pd.DataFrame:
    """Per model and metric, the spread of final values over seeds; plus the share of seeds diverged.

    Columns: model, family, metric, n_seeds (cells of the model), n (cells with a value), mean,
    std (ddof=1), ci95_low, ci95_high, ci_method. Quality metrics use a Student-t interval over
    the seeds that finished; the row ``metric == "diverged"`` is the share of seeds that diverged
    with an exact (Clopper-Pearson) binomial interval.
    """
    import scipy.stats  # lazy (see t_interval)

    names = _default_metrics(records) if metric_names is None else list(metric_names)
    by_model: dict[str, list[CellRecord]] = {}
    for r in records:
        by_model.setdefault(r.model, []).append(r)
    rows = []
    for model, rs in by_model.items():
        base = {"model": model, "family": rs[0].family, "n_seeds": len(rs)}
        k = sum(r.status == "diverged" for r in rs)
        ci = scipy.stats.binomtest(k, len(rs)).proportion_ci(0.95, method="exact")
        rows.append({**base, "metric": "diverged", "n": len(rs), "mean": k / len(rs),
                     "std": float(np.std([r.status == "diverged" for r in rs], ddof=1)) if len(rs) > 1 else math.nan,
                     "ci95_low": ci.low, "ci95_high": ci.high, "ci_method": "clopper_pearson"})
        for name in names:
            vals = [r.value(name) for r in rs if r.status == "ok"]
            v = np.array([x for x in vals if x is not None and math.isfinite(x)], dtype=float)
            lo, hi = t_interval(v)
            rows.append({**base, "metric": name, "n": int(v.size),
                         "mean": float(np.mean(v)) if v.size else math.nan,
                         "std": float(np.std(v, ddof=1)) if v.size > 1 else math.nan,
                         "ci95_low": lo, "ci95_high": hi, "ci_method": "student_t"})
    cols = ["model", "family", "metric", "n_seeds", "n", "mean", "std", "ci95_low", "ci95_high", "ci_method"]
    return pd.DataFrame(rows, columns=cols)


class StabilityEvaluator(Evaluator):
    """Training stability: divergence, loss oscillation, GAN balance, quality over training (snapshots)."""

    name = "stability"
    needs = frozenset({"training"})
    metrics = STABILITY_METRICS

    def snapshot_fn(self, ctx: EvalContext) -> SnapshotFn | None:
        """The quality probe, every ``eval.snapshot_every`` steps; none without a domain space (unlabelled images)."""
        ds = ctx.dataset
        if not ctx.eval.snapshot_every or (ds.kind == "image" and not ds.has_labels):
            return None
        return snapshot_fn_for(ds, ctx.device, ctx.eval.snapshot_samples, ctx.seed)

    def evaluate(self, ctx: EvalContext) -> list[Metric]:
        assert ctx.train is not None  # the harness skips evaluators that need training for a loaded model
        # a family says it is adversarial with the class attribute `adversarial`; a family without it: "gan" is
        adversarial = getattr(ctx.model, "adversarial", ctx.model.family == "gan")
        ctx.curves["snapshots"] = ctx.train.snapshots
        ctx.curves["losses"] = loss_curves(ctx.train.log)
        return training_stability(ctx.train, adversarial=adversarial)


register_evaluator("stability", StabilityEvaluator)
