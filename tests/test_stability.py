"""Stability metrics: known answers on synthetic loss curves, snapshots and seed spreads."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch

from bench.metrics.stability import (
    across_seeds,
    coefficient_of_variation,
    loss_curves,
    snapshot_fn_for,
    snapshot_metrics,
    training_stability,
)
from bench.results import CellRecord, metric
from bench.train import Spent, TrainResult


def _result(log: dict[str, list[float]], snapshots=None, status="ok", diverged_at=None, reason="",
            watched: str | None = None) -> TrainResult:
    """A training result; the watched loss is the first column unless named."""
    n = len(next(iter(log.values())))
    df = pd.DataFrame({"step": range(1, n + 1), "seconds": [0.01 * i for i in range(1, n + 1)], **log})
    spent = Spent(seconds=0.01 * n, steps=n, examples=n, epochs=1.0, params=1, peak_memory_mb=0.0)
    return TrainResult(status, spent, df, snapshots or [], diverged_at, reason, watched or next(iter(log)))


def _values(metrics) -> dict[str, float | None]:
    return {m.name: m.value for m in metrics}


def test_loss_cv_is_computed_on_the_second_half_by_hand():
    # 8 steps: the first half (100s, a transient) must not count; second half = [1, 3, 1, 3]:
    # mean 2, population std 1 -> CV 0.5.
    r = _result({"loss": [100, 90, 80, 70, 1, 3, 1, 3]})
    v = _values(training_stability(r, adversarial=False))
    assert v["loss_cv"] == pytest.approx(0.5, abs=1e-12)
    assert v["diverged"] == 0.0 and v["diverged_at_step"] is None
    assert "d_acc" not in v and "loss_g_cv" not in v  # not adversarial


def test_loss_cv_reads_the_watched_loss_not_the_first_column():
    # second half of neg_elbo = [1, 3]: CV 0.5; the first column (kl) is constant and would give 0
    r = _result({"kl": [2.0, 2.0, 2.0, 2.0], "neg_elbo": [9.0, 9.0, 1.0, 3.0]}, watched="neg_elbo")
    m = {x.name: x for x in training_stability(r, adversarial=False)}
    assert m["loss_cv"].value == pytest.approx(0.5) and m["loss_cv"].params["loss"] == "neg_elbo"


def test_odd_length_second_half_is_the_longer_half():
    # 5 steps: the last ceil(5/2) = 3 values [2, 4, 6]: mean 4, std sqrt(8/3) -> CV sqrt(8/3)/4.
    r = _result({"nll": [9.0, 9.0, 2.0, 4.0, 6.0]})
    assert _values(training_stability(r, adversarial=False))["loss_cv"] == pytest.approx(math.sqrt(8 / 3) / 4)


def test_constant_loss_has_zero_cv_and_zero_mean_gives_none():
    assert coefficient_of_variation(np.array([2.0, 2.0, 2.0])) == 0.0
    assert coefficient_of_variation(np.array([-1.0, 1.0])) is None
    assert coefficient_of_variation(np.array([])) is None


def test_gan_balance_metrics_by_hand():
    # second half (last 2 of 4 steps): loss_d [1.0, 1.4] -> mean 1.2; loss_g [0.5, 1.5] -> mean 1, CV 0.5;
    # d_acc_real [1, 0.8] -> 0.9; d_acc_fake [0.6, 0.2] -> 0.4; balanced accuracy (0.9 + 0.4) / 2 = 0.65.
    r = _result({
        "loss_d": [5.0, 5.0, 1.0, 1.4],
        "loss_g": [9.0, 9.0, 0.5, 1.5],
        "d_acc_real": [0.0, 0.0, 1.0, 0.8],
        "d_acc_fake": [0.0, 0.0, 0.6, 0.2],
    })
    v = _values(training_stability(r, adversarial=True))
    assert v["loss_cv"] == pytest.approx(0.2 / 1.2)  # watched = loss_d: std 0.2, mean 1.2
    assert v["loss_g_cv"] == pytest.approx(0.5)
    assert v["loss_d_mean"] == pytest.approx(1.2)
    assert v["loss_g_mean"] == pytest.approx(1.0)
    assert v["d_acc_real"] == pytest.approx(0.9)
    assert v["d_acc_fake"] == pytest.approx(0.4)
    assert v["d_acc"] == pytest.approx(0.65)


def test_diverged_run_reports_step_and_ignores_the_nan():
    # NaN injected at step 4: the trainer logged it and stopped. Second half = [2, nan] -> finite [2] -> CV 0.
    r = _result({"loss": [1.0, 1.0, 2.0, math.nan]}, status="diverged", diverged_at=4, reason="loss is nan")
    v = _values(training_stability(r, adversarial=False))
    assert v["diverged"] == 1.0 and v["diverged_at_step"] == 4
    assert v["loss_cv"] == 0.0


def test_snapshot_summaries_by_hand():
    snaps = [
        {"step": 100, "seconds": 1.0, "cost_s": 0.5, "fid_domain": 50.0, "classes_covered": 4.0},
        {"step": 200, "seconds": 2.0, "cost_s": 0.25, "fid_domain": 20.0, "classes_covered": 10.0},
        {"step": 300, "seconds": 3.0, "cost_s": 0.25, "fid_domain": 35.0, "classes_covered": 7.0},
        {"step": 400, "seconds": 4.0, "cost_s": 0.5, "fid_domain": 30.0, "classes_covered": 8.0},
    ]
    v = _values(snapshot_metrics(snaps))
    assert v["snapshot_cost_s"] == pytest.approx(1.5)
    assert v["snap_fid_domain_best"] == 20.0 and v["snap_fid_domain_final"] == 30.0
    assert v["snap_fid_domain_gap"] == 10.0
    assert v["snap_classes_covered_final"] == 8.0
    assert v["snap_classes_covered_min"] == 7.0  # snapshots after step 200 (half of 400): 7, 8
    assert v["snap_classes_covered_drop"] == 2.0  # peak 10 - final 8
    assert "snap_modes_covered_final" not in v


def test_collapse_shows_in_the_over_time_curve():
    # Modes found, then lost: a final-only view says 1 mode; the curve also says 8 were there.
    snaps = [{"step": s, "seconds": s / 100, "cost_s": 0.1, "modes_covered": m}
             for s, m in [(100, 3), (200, 8), (300, 8), (400, 2), (500, 1), (600, 1)]]
    v = _values(snapshot_metrics(snaps))
    assert v["snap_modes_covered_final"] == 1 and v["snap_modes_covered_min"] == 1
    assert v["snap_modes_covered_drop"] == 7


def _record(model: str, seed: int, status: str, fid: float | None, name: str = "snap_fid_domain_final") -> CellRecord:
    metrics = [] if fid is None else [metric(name, fid)]
    return CellRecord("s", "r", model, "gan", seed, status, {"steps": 1}, {}, metrics)


def test_across_seeds_mean_std_t_interval_and_diverged_share():
    recs = [_record("a", 0, "ok", 10.0), _record("a", 1, "ok", 12.0), _record("a", 2, "ok", 14.0),
            _record("a", 3, "diverged", None), _record("b", 0, "ok", 5.0)]
    df = across_seeds(recs, ["snap_fid_domain_final"]).set_index(["model", "metric"])
    a = df.loc[("a", "snap_fid_domain_final")]
    # values 10, 12, 14: mean 12, sample std 2, half-width t(0.975, 2) * 2 / sqrt(3) = 4.303 * 1.1547 = 4.968
    half = scipy.stats.t.ppf(0.975, 2) * 2 / math.sqrt(3)
    assert half == pytest.approx(4.9683, abs=1e-3)
    assert (a["n_seeds"], a["n"], a["mean"], a["std"]) == (4, 3, 12.0, 2.0)
    assert a["ci95_low"] == pytest.approx(12 - half) and a["ci95_high"] == pytest.approx(12 + half)
    d = df.loc[("a", "diverged")]
    assert d["mean"] == 0.25 and d["ci_method"] == "clopper_pearson"
    assert d["ci95_low"] == pytest.approx(0.0063, abs=1e-4) and d["ci95_high"] == pytest.approx(0.8059, abs=1e-4)
    b = df.loc[("b", "snap_fid_domain_final")]
    assert b["n"] == 1 and b["mean"] == 5.0 and math.isnan(b["std"]) and math.isnan(b["ci95_low"])
    assert df.loc[("b", "diverged")]["mean"] == 0.0


def test_across_seeds_defaults_to_quality_metrics():
    pytest.importorskip("bench.metrics.quality")  # registers fid_domain (group "quality")
    recs = [_record("a", s, "ok", 10.0 + s, "fid_domain") for s in range(2)]
    recs[0].metrics.append(metric("loss_cv", 0.1))  # a stability metric: not a default
    df = across_seeds(recs)
    assert set(df.metric) == {"diverged", "fid_domain"}


def test_loss_curves_thins_and_drops_non_finite():
    log = pd.DataFrame({"step": range(1, 11), "loss": [1.0] * 9 + [math.nan]})
    c = loss_curves(log, max_points=5)
    assert c["step"] == [1, 3, 5, 7, 9]
    assert loss_curves(log, max_points=20)["loss"][-1] is None


class _Constant(torch.nn.Module):
    """A 'model' that samples its buffer plus noise: checks the probe's seeding and mode handling."""

    def __init__(self):
        super().__init__()
        self.register_buffer("c", torch.zeros(2))

    def sample(self, n, generator, y=None):
        return self.c + torch.randn(n, 2, generator=generator, device=generator.device)


def test_snapshot_fn_samples_fixed_noise_and_restores_train_mode():
    from bench.data import Dataset

    ds = Dataset("toy", "points", torch.zeros(4, 2), torch.zeros(4, dtype=torch.long), torch.zeros(4, 2),
                 torch.zeros(4, dtype=torch.long), 1)
    seen = []

    def quality(samples, dataset, device):
        seen.append(samples.clone())
        return {"modes_covered": torch.tensor(1.0), "mean_x": samples[:, 0].mean()}

    fn = snapshot_fn_for(ds, torch.device("cpu"), n_samples=64, seed=3, quality_fn=quality)
    assert len(seen) == 1 and seen[0].shape == (4, 2)  # warm-up on test data: caches are built before training
    model = _Constant().train()
    out1 = fn(model, 10)
    assert model.training  # restored
    out2 = fn(model, 20)
    assert torch.equal(seen[1], seen[2])  # same noise at every snapshot
    assert seen[1].shape == (64, 2) and out1 == out2 and isinstance(out1["mean_x"], float)
