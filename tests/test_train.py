"""The budgeted trainer: budgets stop where they should, NaN/explosions end the cell as diverged."""
from __future__ import annotations

import math

import pytest
import torch

from bench.config import Budget
from bench.data import load_dataset
from bench.families.base import DataSpec, FamilyOptions, GenerativeModel
from bench.runner import data_spec
from bench.train import TrainContext, steps_for, train


class Counter(GenerativeModel):
    """A family that only counts its steps (and can be told to misbehave)."""

    family = "counter"

    def __init__(self, spec: DataSpec, options: FamilyOptions, sleep: float = 0.0, explode_at: int | None = None):
        super().__init__(spec, options)
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.n, self.sleep, self.explode_at = 0, sleep, explode_at
        self.seen: list[torch.Tensor] = []

    def configure_optimizers(self):
        return {}  # it steps nothing

    def training_step(self, x, y, engine):
        import time

        self.n += 1
        self.seen.append(y.clone())
        if self.sleep:
            time.sleep(self.sleep)
        loss = 1.0 + 0.01 * self.n
        if self.explode_at is not None and self.n >= self.explode_at:
            loss = 1e9
        return {"loss": torch.tensor(loss), "other": torch.tensor(0.5)}


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _model(ds, **kw):
    return Counter(data_spec(ds), FamilyOptions(), **kw)


def test_steps_budget_stops_exactly(digits):
    m = _model(digits)
    r = train(m, digits, TrainContext(Budget(steps=37), batch_size=32, seed=0))
    assert r.status == "ok" and m.n == 37 and r.spent.steps == 37 and r.spent.examples == 37 * 32
    assert list(r.log["step"]) == list(range(1, 38)) and {"loss", "other", "seconds"} <= set(r.log.columns)


def test_epochs_and_examples_budgets_convert_to_steps(digits):
    n = len(digits.train_x)
    assert steps_for(Budget(epochs=2), n, 100) == 2 * (n // 100)
    assert steps_for(Budget(examples=1000), n, 64) == math.ceil(1000 / 64)
    m = _model(digits)
    r = train(m, digits, TrainContext(Budget(epochs=1), batch_size=100, seed=0))
    assert m.n == n // 100 and abs(r.spent.epochs - (n // 100) * 100 / n) < 1e-3
    # one epoch visits each example at most once (a permutation, last partial batch dropped)
    seen = torch.cat(m.seen)
    assert len(seen) == (n // 100) * 100


def test_seconds_budget_stops_within_one_step(digits):
    m = _model(digits, sleep=0.05)
    r = train(m, digits, TrainContext(Budget(seconds=0.5), batch_size=32, seed=0))
    assert 0.5 <= r.spent.seconds < 0.5 + 0.05 + 0.05  # the step in flight finishes, no more
    assert r.spent.steps == m.n


def test_nan_injected_at_step_k_is_diverged_at_k(digits):
    m = _model(digits)
    r = train(m, digits, TrainContext(Budget(steps=50), batch_size=32, seed=0, nan_at_step=7))
    assert r.status == "diverged" and r.diverged_at == 7 and m.n == 7 and "nan" in r.reason


def test_exploding_loss_is_diverged(digits):
    m = _model(digits, explode_at=30)
    r = train(m, digits, TrainContext(Budget(steps=100), batch_size=32, seed=0, explode_factor=100))
    assert r.status == "diverged" and r.diverged_at == 30 and "exploded" in r.reason
    m2 = _model(digits, explode_at=30)
    r2 = train(m2, digits, TrainContext(Budget(steps=100), batch_size=32, seed=0, explode_factor=None))
    assert r2.status == "ok"


def test_data_order_is_seeded(digits):
    a, b, c = _model(digits), _model(digits), _model(digits)
    for m, s in ((a, 0), (b, 0), (c, 1)):
        train(m, digits, TrainContext(Budget(steps=5), batch_size=16, seed=s))
    assert torch.equal(torch.cat(a.seen), torch.cat(b.seen)) and not torch.equal(torch.cat(a.seen), torch.cat(c.seen))


def test_snapshots_are_not_charged_to_the_budget(digits):
    import time

    def slow_snapshot(model, step):
        time.sleep(0.2)
        return {"q": float(step)}

    m = _model(digits)
    r = train(m, digits, TrainContext(Budget(steps=10), batch_size=16, seed=0,
              snapshot_every=5, snapshot_fn=slow_snapshot))
    assert [s["step"] for s in r.snapshots] == [5, 10] and [s["q"] for s in r.snapshots] == [5.0, 10.0]
    assert r.spent.snapshot_seconds >= 0.4 and r.spent.seconds < 0.2
