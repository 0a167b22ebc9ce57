"""The issue-9 evaluators (classification, memorization, ood) end to end on a tiny suite, and their known answers."""
from __future__ import annotations

import math

import pytest
import torch
from conftest import ROOT, run_cli

from bench.analysis import measure
from bench.config import EvalConfig, load_suite, parse_suite
from bench.data import load_dataset
from bench.errors import BenchError
from bench.families.base import DataSpec
from bench.families.naive_bayes import NaiveBayes, NaiveBayesOptions
from bench.metrics import EVALUATORS
from bench.metrics.analysis import MemorizationEvaluator, MemorizationOptions, OodEvaluator, OodOptions
from bench.metrics.base import EvalContext
from bench.report.html import render
from bench.runner import run_suite
from bench.store import RunStore

CPU = torch.device("cpu")

TINY = """
name: tiny-analysis
dataset: digits
seeds: [0]
budget: {steps: 20}
batch_size: 64
threads: 1
eval:
  metrics: [classification, memorization, ood]
  n_samples: 64
  save_samples: false
  classification:
    n_test: 100
    per_class_steps: 2
    per_class_batch_size: 32
    curve: {sizes: [2, full], seeds: [0], val_size: 200}
  memorization: {spaces: [pixel], n_test: 100, cells: 2, n_pairs: 4, nll_gap_examples: 64}
  ood: {sets: [noise, hflip], n: 64}
models:
  - {name: nb, family: naive_bayes}
  - {name: vae, family: vae, options: {width: 8, latent_dim: 4, iwae_k: 2}}
  - {name: gan, family: gan, options: {loss: nonsaturating}}
"""


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("analysis")
    suite = tmp / "tiny.yaml"
    suite.write_text(TINY.lstrip())
    flags = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    yield run_suite(load_suite(suite), suite, out=tmp / "run", quiet=True)
    # run_suite switches deterministic algorithms on and leaves them so; later tests in this process check the flag
    torch.use_deterministic_algorithms(flags[0], warn_only=flags[1])


def _by_model(run_dir) -> dict:
    return {r.model: r for r in RunStore(run_dir).records()}


def test_every_metric_is_declared_by_the_evaluator_that_made_it(tiny_run):
    names = ("classification", "memorization", "ood")
    groups = {name: {s.name for s in EVALUATORS.get(name).metrics} for name in names}
    declared = set().union(*groups.values(), (s.name for s in EVALUATORS.get("cost").metrics))  # cost: every cell
    recs = _by_model(tiny_run)
    assert set(recs) == {"nb", "vae", "gan"} and all(r.status == "ok" for r in recs.values())
    for r in recs.values():
        made = {m.name for m in r.metrics}
        assert made <= declared, made - declared
        for group in groups.values():  # each evaluator left at least one metric (a value or n/a and why)
            assert made & group, (r.model, group)


def test_the_tiny_suite_gives_the_expected_metrics(tiny_run):
    recs = _by_model(tiny_run)
    nb, vae, gan = recs["nb"], recs["vae"], recs["gan"]
    # naive Bayes classifies as it is, exactly; the curve gives a crossing metric (a value or why there is none)
    assert 0.5 < nb.value("bayes_accuracy_exact") <= 1
    assert any(m.name == "crossing_n_nb_categorical_logistic" for m in nb.metrics)
    assert set(nb.curves["classifier_curve"]["classifier"]) == {"nb_gaussian", "nb_categorical", "logistic"}
    # the VAE classifies through one model per class, by bounds, and says so
    acc = next(m for m in vae.metrics if m.name == "bayes_accuracy_elbo")
    assert acc.kind == "lower_bound" and acc.params["per_class_models"] is True and 0 <= acc.value <= 1
    # no likelihood: unavailable with the reason, not a number
    bayes = next(m for m in gan.metrics if m.name == "bayes_accuracy_exact")
    assert bayes.value is None and "no likelihood" in bayes.note
    assert all(m.value is None for m in gan.metrics if m.name.startswith("ood_auroc_"))
    # memorization for every family; the NLL gap only with a likelihood
    for r in (nb, vae, gan):
        assert 0 <= r.value("closer_share_pixel") <= 1 and r.curves["closest_pairs"]["png"]
    assert nb.value("nll_gap_bpd") is not None and gan.value("nll_gap_bpd") is None
    # uniform noise is far less likely than digits; the VAE's encoder adds reconstruction (after 20 steps its
    # decoder is near grey, which noise is closer to than dark digits are: no direction to assert)
    assert nb.value("ood_auroc_noise_nll") > 0.95 and 0 <= vae.value("ood_auroc_noise_reconstruction") <= 1
    assert {"ood_auroc_hflip_typicality", "ood_auroc_hflip_ratio", "ood_auroc_hflip_complexity"} <= {
        m.name for m in nb.metrics}


def test_the_report_shows_the_analysis_sections(tiny_run):
    recs = list(RunStore(tiny_run).records())
    page = render(tiny_run, {"run_id": "x"}, recs)
    titles = ("Generative vs discriminative classifiers", "Memorization and novelty", "Out-of-distribution detection")
    for title in titles:
        assert f"<h2>{title}</h2>" in page
    assert page.count("data:image/png") >= 4  # the learning curve and three closest-pair grids


def _ctx(samples: torch.Tensor, ds) -> EvalContext:
    spec = DataSpec(ds.kind, ds.shape, ds.num_classes, tuple(ds.class_frequencies().tolist()))
    ctx = EvalContext(NaiveBayes(spec, NaiveBayesOptions()), ds, EvalConfig(), CPU, seed=0)
    ctx.samples = samples
    return ctx


def test_memorization_flags_a_model_that_returns_training_images_and_not_one_that_returns_test_images():
    ds = load_dataset("digits")
    ev = MemorizationEvaluator(MemorizationOptions(spaces=["pixel"], n_test=150, cells=2, nll_gap_examples=None))
    copies = {m.name: m.value for m in ev.evaluate(_ctx(ds.train_x[:300], ds))}
    assert copies["exact_copy_share"] == 1 and copies["near_copy_share_pixel"] == 1
    assert copies["closer_share_pixel"] > 0.99
    held_out = torch.ones(len(ds.test_x), dtype=torch.bool)
    held_out[measure.subset(len(ds.test_x), 150, 0)] = False  # the test images the evaluator compares with
    fresh = {m.name: m for m in ev.evaluate(_ctx(ds.test_x[held_out], ds))}
    share = fresh["closer_share_pixel"]
    assert abs(share.value - 0.5) < 3 * share.params["stderr"] and fresh["exact_copy_share"].value == 0


def test_an_ood_dataset_that_is_not_installed_is_unavailable_with_the_reason(monkeypatch):
    ds = load_dataset("digits")

    def missing(name, options=None):
        raise BenchError("Fashion-MNIST not found in /nowhere; run `apt-get install dataset-fashion-mnist`")

    monkeypatch.setattr(measure, "load_dataset", missing)
    ctx = _ctx(ds.test_x[:8], ds)
    out = OodEvaluator(OodOptions(sets=["fashion_mnist"], n=32)).evaluate(ctx)
    assert [(m.name, m.value) for m in out] == [("ood_auroc_fashion_mnist_nll", None)]
    assert "apt-get install dataset-fashion-mnist" in out[0].note
    with pytest.raises(BenchError, match="'mnist' is the evaluated dataset itself"):
        monkeypatch.setattr(ds, "name", "mnist")
        OodEvaluator(OodOptions(sets=["mnist"], n=32)).evaluate(ctx)


def test_the_option_blocks_are_validated():
    bad = TINY.replace("curve: {", "curve: {against: [svm], ")
    with pytest.raises(BenchError, match=r"eval.classification.curve.against"):
        parse_suite(bad.lstrip(), "s.yaml")
    with pytest.raises(BenchError, match=r"eval.ood.sets"):
        parse_suite(TINY.replace("[noise, hflip]", "[cifar10]").lstrip(), "s.yaml")


@pytest.mark.slow
def test_the_smoke_analysis_suite_runs(tmp_path):
    """suites/smoke-analysis.yaml (about 2 minutes): every evaluator at tiny sizes on the smoke families."""
    done = run_cli("run", str(ROOT / "suites" / "smoke-analysis.yaml"), "--quiet", "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    recs = {r.model: r for r in RunStore(tmp_path / "run").records()}
    assert all(r.status == "ok" for r in recs.values())
    assert math.isfinite(recs["naive-bayes"].value("crossing_n_nb_gaussian_logistic"))
    assert all(r.value("data_copying_ct_domain") is not None for r in recs.values())
