"""Suite validation: every bad suite gives one line naming file, line and field; exit status 2."""
from __future__ import annotations

import pytest

from bench.config import load_suite, parse_suite
from bench.errors import BenchError
from conftest import ROOT, run_cli

HEAD = "name: a\ndataset: digits\nbudget: {steps: 5}\n"
MODEL = "models:\n  - {name: m, family: vae}\n"

BAD = [
    (HEAD + MODEL + "bogus: 1\n", "s.yaml:6: bogus: unknown key; accepted keys: name, description, dataset"),
    (HEAD + "models:\n  - name: m\n    family: vea\n",
     "s.yaml:6: models[0].family: unknown family 'vea'; choose one of: "),
    ("name: a\ndataset: mnistt\nbudget: {steps: 1}\n" + MODEL,
     "s.yaml:2: dataset.name: unknown dataset 'mnistt'; choose one of: digits, fashion_mnist, folder, mnist, npz, toy2d"),
    ("name: a\ndataset: digits\nbudget: {steps: -5}\n" + MODEL,
     "s.yaml:3: budget.steps: Input should be greater than 0 (got -5)"),
    ("name: a\ndataset: digits\nbudget: {seconds: 0}\n" + MODEL,
     "s.yaml:3: budget.seconds: Input should be greater than 0 (got 0)"),
    ("name: a\ndataset: digits\nbudget: {steps: 5, seconds: 3}\n" + MODEL,
     "s.yaml:3: budget: give exactly one of steps, seconds, epochs, examples (got ['steps', 'seconds'])"),
    (HEAD + "models:\n  - name: m\n    family: vae\n    options: {latent: 3}\n",
     "s.yaml:7: models[0].options.latent: unknown key; accepted keys: latent_dim, width, hidden, arch, decoder, lr, iwae_k, sample_mode"),
    (HEAD + "models:\n  - name: m\n    family: vae\n    options: {latent_dim: many}\n",
     "s.yaml:7: models[0].options.latent_dim: Input should be a valid integer"),
    ("name: a\ndataset: digits\nseeds: zero\nbudget: {steps: 5}\n" + MODEL, "s.yaml:3: seeds: Input should be a valid list"),
    (HEAD, "s.yaml:1: models: required field is missing"),
    ("name: a\ndataset: [digits\n", "s.yaml:3: not valid YAML: expected ',' or ']'"),
    (HEAD + "models:\n  - {name: m, family: vae}\n  - {name: m, family: naive_bayes}\n",
     "s.yaml:6: models[1].name: model name 'm' appears twice"),
    ("name: a\ndataset: {name: toy2d, pattern: ring9}\nbudget: {steps: 5}\n" + MODEL,
     "s.yaml:2: dataset.pattern: Input should be 'ring8' or 'grid25'"),
    (HEAD + "eval:\n  n_sample: 3\n" + MODEL, "s.yaml:5: eval.n_sample: unknown key; accepted keys: metrics, n_samples"),
    (HEAD + "eval:\n  metrics: [fid]\n" + MODEL,
     "s.yaml:5: eval.metrics[0]: unknown evaluator 'fid'; choose one of: classification, controllability, cost, "
     "likelihood, memorization, nfe, ood, quality, speed, stability"),
    (HEAD + "eval:\n  metrics: [quality]\n  qualty: {n_reference: 5}\n" + MODEL,
     "s.yaml:6: eval.qualty: unknown key; accepted keys: metrics, n_samples"),
    (HEAD + "eval:\n  quality:\n    n_reference: 5\n    featur_spaces: [domain]\n" + MODEL,
     "s.yaml:7: eval.quality.featur_spaces: unknown key; accepted keys: feature_spaces, metrics, n_reference"),
    (HEAD + "eval:\n  speed:\n    repeats: 0\n" + MODEL,
     "s.yaml:6: eval.speed.repeats: Input should be greater than 0 (got 0)"),
    (HEAD + "eval:\n  metrics: [quality, quality]\n" + MODEL, "s.yaml:5: eval.metrics: an evaluator appears twice"),
    ("- a\n- b\n", "s.yaml:1: a suite is a YAML mapping"),
    (HEAD + "device: tpu\n" + MODEL, "s.yaml:4: device: Input should be 'auto', 'cpu' or 'cuda' (got 'tpu')"),
    (HEAD + "budgets: [{steps: 10}]\n" + MODEL,
     "s.yaml:4: budgets: give budget (one for every model) or budgets (a sweep), not both"),
    ("name: a\ndataset: digits\n" + MODEL, "s.yaml:1: budget: required field is missing (or give budgets: for a sweep)"),
    ("name: a\ndataset: digits\nbudgets: [{steps: 10}, {steps: 10.0}]\n" + MODEL,
     "s.yaml:3: budgets: the same budget appears twice: 10steps, 10steps"),
    ("name: a\ndataset: digits\nbudgets: []\n" + MODEL, "s.yaml:3: budgets: List should have at least 1 item"),
]


@pytest.mark.parametrize("text,expected", BAD, ids=[b[1].split(": ")[1][:30] for b in BAD])
def test_bad_suite_message(text, expected):
    with pytest.raises(BenchError) as e:
        parse_suite(text, "s.yaml")
    msg = str(e.value)
    assert msg.startswith(expected), msg
    assert "\n" not in msg


def test_good_suite_resolves_defaults():
    cfg = parse_suite(HEAD + "seeds: [3, 4]\n" + MODEL, "s.yaml")
    assert cfg.dataset.name == "digits" and cfg.seeds == [3, 4] and cfg.batch_size == 128
    assert cfg.budget_for(cfg.models[0]).as_dict() == {"steps": 5}


def test_budget_sweep_expands_every_model_without_its_own_budget():
    cfg = parse_suite("name: a\ndataset: digits\nbudgets: [{seconds: 15}, {seconds: 45}, {epochs: 0.5}]\n"
                      "models:\n  - {name: m, family: vae}\n  - {name: nb, family: naive_bayes, budget: {epochs: 1}}\n",
                      "s.yaml")
    models = cfg.expanded_models()
    assert [m.name for m in models] == ["m@15s", "m@45s", "m@0.5epochs", "nb"]
    assert [cfg.budget_for(m).as_dict() for m in models] == [{"seconds": 15}, {"seconds": 45}, {"epochs": 0.5},
                                                             {"epochs": 1}]
    assert [m.name for m in cfg.models] == ["m", "nb"]  # the resolved config keeps the sweep, not its expansion


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(BenchError, match="no such suite file"):
        load_suite(tmp_path / "nope.yaml")


def test_cli_bad_suite_exits_2_without_traceback(write_suite):
    p = write_suite(HEAD + "models:\n  - name: m\n    family: vea\n")
    r = run_cli("validate", str(p))
    assert r.returncode == 2
    assert r.stderr.strip() == f"bench: error: {p}:6: models[0].family: unknown family 'vea'; choose one of: " + \
        r.stderr.split("choose one of: ")[1].strip()
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("suite", sorted(p.name for p in (ROOT / "suites").glob("*.yaml")))
def test_shipped_suites_validate(suite):
    cfg = load_suite(ROOT / "suites" / suite)
    assert cfg.models
