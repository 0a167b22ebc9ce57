"""``eval.split: validation``: a run scored on the dataset's validation part of the training split, for
confirming a tuning choice without letting the test split decide it (the models train on the rest; the test
split is not read)."""
from __future__ import annotations

from pathlib import Path

import pytest

from bench.compare import compare_runs
from bench.config import load_suite, parse_suite
from bench.data import load_dataset
from bench.errors import BenchError
from bench.runner import run_suite
from bench.store import RunStore

SUITE = """
name: split
dataset: {name: digits, validation: {size: 200, seed: 3}}
seeds: [0]
budget: {steps: 5}
batch_size: 64
eval: {metrics: [likelihood], n_samples: 32, likelihood_examples: 100{split}}
models:
  - {name: nb, family: naive_bayes}
"""


def _suite(tmp_path: Path, split: str | None) -> Path:
    p = tmp_path / f"{split or 'default'}.yaml"
    p.write_text(SUITE.replace("{split}", f", split: {split}" if split else ""))
    return p


def test_the_option_is_checked():
    assert parse_suite(SUITE.replace("{split}", ""), "s.yaml").eval.split == "test"
    with pytest.raises(BenchError, match=r"s.yaml:7: eval.split: Input should be 'test' or 'validation'"):
        parse_suite(SUITE.replace("{split}", ", split: train"), "s.yaml")


def test_a_validation_run_trains_on_the_rest_and_scores_on_the_held_out_part(tmp_path, monkeypatch):
    import bench.runner

    seen = []
    real = bench.runner.run_cell

    def spy(cell, cfg, train_ds, ds, store, *a, **k):
        seen.append((train_ds, ds))
        return real(cell, cfg, train_ds, ds, store, *a, **k)

    monkeypatch.setattr(bench.runner, "run_cell", spy)
    p = _suite(tmp_path, "validation")
    out = run_suite(load_suite(p), p, out=tmp_path / "run", quiet=True)
    (train_ds, ds), = seen
    expected = load_dataset("digits", {"validation": {"size": 200, "seed": 3}}, split="validation")
    full = load_dataset("digits")
    assert ds.split == "validation" and len(ds.test_x) == 200 and len(train_ds.train_x) == len(full.train_x) - 200
    assert (ds.test_x == expected.test_x).all() and (ds.indices["test"] == expected.indices["test"]).all()
    # the held-out images come from the training split, none from the test split's positions
    assert (full.train_x[ds.indices["test"]] == ds.test_x).all()
    # and the numbers differ from a test-split run of the same cells
    t = _suite(tmp_path, None)
    out_t = run_suite(load_suite(t), t, out=tmp_path / "run-test", quiet=True)
    (rv,), (rt,) = RunStore(out).records(), RunStore(out_t).records()
    assert rv.value("nll_bpd_exact") != rt.value("nll_bpd_exact")
    html = (out / "index.html").read_text()
    assert "scored on the validation split" in html and "scored on the validation split" not in (
        out_t / "index.html").read_text()
    # compare refuses to judge one against the other: the same metric names, measured on other images
    with pytest.raises(BenchError, match=r"was scored on the test split and .* on the validation split"):
        compare_runs(out_t, out)
    assert compare_runs(out, out).exit_code == 0
