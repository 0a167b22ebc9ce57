"""`bench tune`: the search finds known optima, resumes without repeating trials, scores on a validation
split carved from the training data (disjoint on indices), and cannot be pointed at the test split."""
from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch
import yaml

from bench.config import load_suite, parse_suite
from bench.data import load_dataset
from bench.errors import BenchError
from bench.families import FAMILIES
from bench.runner import run_suite
from bench.space import BATCH_SIZE, Categorical, Float, ModelTuning, TuningConfig, model_space, space_problem
from bench.store import RunStore
from bench.tune import (Study, Trial, TrialStore, best_trial, carve_validation, search, write_confirm_suite,
                        write_tuned_suite)
from conftest import run_cli

# ------------------------------------------------------------------------------ the search itself


def _toy(space, f, name="toy"):
    """A study whose trial is a plain function of the parameters (no training)."""
    calls: list[int] = []

    def run(k, params, source):
        calls.append(k)
        return Trial(name, "toy", k, source, params, "ok", "f", float(f(params)))

    return Study(name, space, {}, run), calls


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_toy_search_finds_the_known_optimum(tmp_path, seed):
    # minimum 0 at x = 1.3, c = "b"; measured: 20 of 20 seeds end within 0.4 of x = 1.3 on "b" in 25 TPE trials
    space = {"x": Float(-5.0, 5.0), "c": Categorical(["a", "b", "c"])}
    study, _ = _toy(space, lambda p: (p["x"] - 1.3) ** 2 + (p["c"] != "b") * 4)
    tuning = TuningConfig(trials=25, sampler="tpe", seed=seed, startup_trials=6, include_defaults=False)
    store = TrialStore(tmp_path)
    search([study], 25, tuning, "minimize", store)
    best = best_trial(store.load("toy"), "minimize")
    assert len(store.load("toy")) == 25
    assert best.params["c"] == "b" and abs(best.params["x"] - 1.3) < 0.4, best


def test_maximize_follows_the_direction(tmp_path):
    study, _ = _toy({"x": Float(0.0, 1.0)}, lambda p: -abs(p["x"] - 0.9))
    tuning = TuningConfig(trials=20, seed=3, startup_trials=5, include_defaults=False)
    store = TrialStore(tmp_path)
    search([study], 20, tuning, "maximize", store)
    assert abs(best_trial(store.load("toy"), "maximize").params["x"] - 0.9) < 0.1


def test_resumed_search_skips_finished_trials_and_proposes_the_same(tmp_path):
    space = {"lr": Float(1e-4, 1e-1, log=True), "w": Categorical([8, 16, 32])}
    f = lambda p: math.log(p["lr"]) ** 2 + p["w"] / 32  # noqa: E731
    tuning = TuningConfig(trials=8, seed=1, startup_trials=3, include_defaults=False)

    whole, _ = _toy(space, f)
    search([whole], 8, tuning, "minimize", TrialStore(tmp_path / "whole"))

    killed, calls = _toy(space, f)
    inner = killed.run

    def dies_at_5(k, params, source):
        if k == 5:
            raise KeyboardInterrupt
        return inner(k, params, source)

    store = TrialStore(tmp_path / "resumed")
    with pytest.raises(KeyboardInterrupt):
        search([Study("toy", space, {}, dies_at_5)], 8, tuning, "minimize", store)
    assert sorted(t.number for t in store.load("toy")) == [0, 1, 2, 3, 4]
    calls.clear()
    search([killed], 8, tuning, "minimize", store)
    assert calls == [5, 6, 7]  # finished trials are not repeated
    assert [t.params for t in store.load("toy")] == [t.params for t in TrialStore(tmp_path / "whole").load("toy")]


def test_trials_go_round_robin_and_defaults_come_first(tmp_path):
    order = []

    def study(name):
        def run(k, params, source):
            order.append((name, k, source))
            return Trial(name, "toy", k, source, params, "ok", "f", 1.0)
        return Study(name, {"x": Float(0.0, 1.0)}, {"x": 0.5}, run)

    search([study("a"), study("b")], 3, TuningConfig(trials=3), "minimize", TrialStore(tmp_path))
    assert [(n, k) for n, k, _ in order] == [("a", 0), ("b", 0), ("a", 1), ("b", 1), ("a", 2), ("b", 2)]
    assert order[0][2] == "defaults" and order[2][2] == "sampler"


def test_failed_trials_never_win():
    ok = Trial("m", "f", 1, "sampler", {}, "ok", "fid", 50.0)
    bad = [Trial("m", "f", 0, "defaults", {}, "diverged", "fid", None),
           Trial("m", "f", 2, "sampler", {}, "no_value", "fid", None)]
    assert best_trial([*bad, ok], "minimize") is ok
    assert best_trial(bad, "minimize") is None


# ------------------------------------------------------------------------------ the validation split


class _Untouchable:
    """Stands in for the test split: any use of it fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the test split was read ({name})")

    def __len__(self):
        raise AssertionError("the test split was read (len)")

    def __getitem__(self, key):
        raise AssertionError("the test split was read (indexing)")


def _without_test(ds):
    from dataclasses import replace

    return replace(ds, test_x=_Untouchable(), test_y=_Untouchable())


def test_validation_split_is_disjoint_from_fit_and_test_on_indices():
    ds = load_dataset("digits")
    n = len(ds.train_x)
    split = carve_validation(_without_test(ds), 0.2, seed=5)  # the test split is never read while carving
    val, fit = set(split.validation_indices.tolist()), set(split.fit_indices.tolist())
    assert not val & fit and val | fit == set(range(n)) and len(val) == round(0.2 * n)
    # what trials are scored on is exactly the held-out part of the *training* split, and they train on the rest
    assert torch.equal(split.evaluation.test_x, ds.train_x[split.validation_indices])
    assert torch.equal(split.evaluation.test_y, ds.train_y[split.validation_indices])
    assert torch.equal(split.fit.train_x, ds.train_x[split.fit_indices])
    # seeded: the same seed holds out the same examples, another seed others
    assert torch.equal(carve_validation(ds, 0.2, seed=5).validation_indices, split.validation_indices)
    assert not torch.equal(carve_validation(ds, 0.2, seed=6).validation_indices, split.validation_indices)
    sub = carve_validation(ds, 0.2, seed=5, train_subset=100)
    assert len(sub.fit.train_x) == 100 and len(sub.evaluation.train_x) == len(fit)  # the subset limits training only


TUNE_SUITE = """
name: tt
dataset: digits
seeds: [0]
budget: {epochs: 1}
batch_size: 64
threads: 1
eval: {metrics: [likelihood, quality], n_samples: 100, quality: {metrics: [fid], n_reference: 297}}
tuning: {trials: 4, sampler: random, seed: 0, objective: nll_bpd_exact}
models:
  - name: nb   # gaussian by default
    family: naive_bayes
    tune: {space: {pixel_model: {type: categorical, choices: [gaussian, categorical]}, alpha: null, min_std: null}}
"""


def test_selecting_on_the_test_split_is_impossible_through_the_cli(write_suite, tmp_path, monkeypatch, capsys):
    import re

    from bench import cli, tune

    # 1. the command line and the schema have no way to name a split
    with pytest.raises(SystemExit):
        cli.main(["tune", "--help"])
    flags = set(re.findall(r"--[a-z-]+", capsys.readouterr().out))
    assert flags == {"--help", "--trials", "--sampler", "--objective", "--only", "--out", "--resume", "--dry-run",
                     "--quiet", "--executor", "--address"}
    suite = write_suite(TUNE_SUITE)
    with pytest.raises(SystemExit) as e:
        cli.main(["tune", str(suite), "--split", "test", "--dry-run"])
    assert e.value.code == 2 and "unrecognized arguments: --split test" in capsys.readouterr().err
    bad = write_suite(TUNE_SUITE.replace("objective: nll_bpd_exact", "objective: nll_bpd_exact, validation: {split: test}"),
                      "bad.yaml")
    assert cli.main(["tune", str(bad), "--dry-run"]) == 2
    assert "tuning.validation.split: unknown key" in capsys.readouterr().err
    # 2. a whole tuning run, quality objective included (domain feature net, reference features), with a dataset
    # whose test split fails on any use: it finishes, so nothing a trial is scored with came from the test split
    real = tune.load_dataset
    monkeypatch.setattr(tune, "load_dataset", lambda name, options=None: _without_test(real(name, options)))
    out = tmp_path / "run"
    assert cli.main(["tune", str(suite), "--out", str(out), "--objective", "fid_domain", "--trials", "2", "--quiet"]) == 0
    rec = json.loads((out / "trials" / "nb__t001.json").read_text())
    assert rec["state"] == "ok" and rec["objective"] == "fid_domain" and rec["value"] > 0
    fid = next(m for m in rec["record"]["metrics"] if m["name"] == "fid_domain")
    assert fid["params"]["reference_split"] == "validation" and fid["params"]["n_reference"] == 150


def test_objective_must_be_a_metric_with_a_direction(write_suite, capsys):
    from bench import cli

    suite = write_suite(TUNE_SUITE)
    assert cli.main(["tune", str(suite), "--objective", "kid_domain_std", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "informational (no direction)" in err and "fid_domain" in err
    assert cli.main(["tune", str(suite), "--objective", "fid_domian", "--dry-run"]) == 2
    assert "unknown metric 'fid_domian'" in capsys.readouterr().err


# ------------------------------------------------------------------------------ end to end


def test_tune_cli_end_to_end_and_resume(write_suite, tmp_path, capsys):
    from bench import cli

    suite = write_suite(TUNE_SUITE)
    out = tmp_path / "run"
    r = run_cli("tune", str(suite), "--out", str(out))  # through a real subprocess, as a user runs it
    assert r.returncode == 0, r.stderr
    assert "the test split is not used" in r.stdout and f"tuned suite: {out / 'tuned-suite.yaml'}" in r.stdout
    trials = sorted((out / "trials").glob("nb__t*.json"))
    assert len(trials) == 4
    first = json.loads(trials[0].read_text())
    assert first["source"] == "defaults" and first["options"] == {}  # trial 0 is the suite as written
    # known answer: on 8x8 digits (17 grey levels) categorical pixels beat a discretized Gaussian in bits/dim
    summary = json.loads((out / "tuning.json").read_text())["models"][0]
    assert summary["best_params"] == {"pixel_model": "categorical"} and summary["trials"] == 4
    assert summary["best"] < summary["defaults_value"] and summary["median"] is not None
    val = json.loads((out / "validation.json").read_text())
    assert val["n_validation"] == 150 == len(val["validation_indices"]) and val["n_fit"] == 1350
    assert "data:image/png;base64," in (out / "tuning.html").read_text()
    assert (out / "tuning.csv").read_text().count("\n") == 5
    tuned = load_suite(out / "tuned-suite.yaml")
    assert tuned.models[0].options == {"pixel_model": "categorical"}
    text = (out / "tuned-suite.yaml").read_text()
    assert text.startswith(f"# Tuned by `bench tune` (run {out})") and "# gaussian by default" in text
    # the confirmation suite: winner vs the settings it replaces, fresh seeds, scored on the held-out part
    assert f"python -m bench run {out / 'confirm-suite.yaml'}" in r.stdout
    confirm = load_suite(out / "confirm-suite.yaml")
    assert [m.name for m in confirm.models] == ["nb", "nb-before"] and confirm.seeds == [1, 2]
    assert confirm.models[0].options == {"pixel_model": "categorical"} and confirm.models[1].options == {}
    assert confirm.eval.split == "validation" and confirm.dataset.options["validation"] == {"fraction": 0.1, "seed": 0}
    confirmed = run_suite(confirm, out / "confirm-suite.yaml", out=tmp_path / "confirm", quiet=True)
    bpd = {r.cell_id: r.value("nll_bpd_exact") for r in RunStore(confirmed).records()}
    assert bpd["nb__seed1"] < bpd["nb-before__seed1"] and bpd["nb__seed2"] < bpd["nb-before__seed2"]  # it holds

    # resume: a deleted (= killed) trial is rerun, the finished ones are not touched
    mtimes = {p.name: p.stat().st_mtime_ns for p in trials}
    trials[2].unlink()
    assert cli.main(["tune", str(suite), "--out", str(out), "--resume"]) == 0
    stdout = capsys.readouterr().out
    assert "resuming: 3 of 4 trials already finished" in stdout
    assert stdout.count("[nb ") == 1 and "[nb 3/4]" in stdout
    for p in trials:
        if p != trials[2]:
            assert p.stat().st_mtime_ns == mtimes[p.name]
    # a resumed run must share the protocol
    other = write_suite(TUNE_SUITE.replace("seed: 0, objective", "seed: 1, objective"), "other.yaml")
    assert cli.main(["tune", str(other), "--out", str(out), "--resume", "--dry-run"]) == 2
    assert "different suite or protocol" in capsys.readouterr().err


def test_dry_run_prints_the_plan_and_writes_nothing(write_suite, tmp_path, capsys):
    from bench import cli

    suite = write_suite(TUNE_SUITE)
    root = tmp_path / "reports"
    assert cli.main(["tune", str(suite), "--dry-run", "--reports-root", str(root)]) == 0
    out = capsys.readouterr().out
    assert "1 models x 4 trials (random, seed 0)" in out and "pixel_model {gaussian, categorical}" in out
    assert not root.exists()


# ------------------------------------------------------------------------------ spaces and the schema


@pytest.mark.parametrize("family", FAMILIES.names())
def test_every_family_declares_a_sound_search_space(family):
    cls = FAMILIES.get(family).cls
    space = model_space(cls, None)
    assert space, f"{family} declares no search_space"
    assert space_problem(cls, {}, None, whole=True) is None
    defaults = cls.Options().model_dump()
    for k, p in space.items():
        assert k == BATCH_SIZE or k in defaults
        if defaults.get(k) is not None:  # an unset default is resolved by the family (per loss, per data kind)
            assert p.contains(defaults[k]), f"{family}.{k}: the default {defaults[k]!r} lies outside {p.describe()}"


def test_suite_space_overrides_are_checked_with_their_line(write_suite):
    bad_key = TUNE_SUITE.replace("{pixel_model: {type", "{pixel_modle: {type")
    with pytest.raises(BenchError, match=r":13: models\[0\]\.tune\.space\.pixel_modle: not an option of family 'naive_bayes'"):
        parse_suite(textwrap.dedent(bad_key), "s.yaml")
    bad_value = TUNE_SUITE.replace("choices: [gaussian, categorical]", "choices: [gaussian, poisson]")
    with pytest.raises(BenchError, match=r"pixel_model: value 'poisson' is not a valid pixel_model"):
        parse_suite(bad_value, "s.yaml")
    bad_range = TUNE_SUITE.replace("alpha: null", "alpha: {type: float, low: 1.0, high: 0.1}")
    with pytest.raises(BenchError, match="need finite low < high"):
        parse_suite(bad_range, "s.yaml")


def test_model_space_adds_replaces_and_drops():
    cls = FAMILIES.get("vae").cls
    family = model_space(cls, None)
    tune = ModelTuning(space={"lr": {"type": "float", "low": 1e-3, "high": 2e-3}, "latent_dim": None})
    mine = model_space(cls, tune)
    assert mine["lr"] == Float(1e-3, 2e-3) and "latent_dim" not in mine and "latent_dim" in family


def test_tuned_suite_keeps_comments_and_style(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text(textwrap.dedent("""
        # the main job
        name: s
        dataset: digits
        budget: {steps: 5}
        models:
          - {name: a, family: vae, options: {width: 8, lr: 1e-3}}   # a comment of its own
          - {name: b, family: vae}
          - name: c       # block style
            family: vae
            batch_size: 32
            options:
              width: 8
          - {name: d, family: vae, options: {width: 8,
             latent_dim: 4}, batch_size: 32,
             seeds: [0]}
          - {name: untouched, family: naive_bayes}
        # the end
        """).lstrip())
    plan = {"direction": "minimize", "tuning": {"sampler": "tpe", "seed": 0, "objective": "fid_domain",
                                                  "validation": {"fraction": 0.1}},
            "models": {m: {"batch_size": 32 if m in "cd" else 128} for m in "abcd"}}

    def t(m, params):
        return [Trial(m, "vae", 0, "defaults", {}, "ok", "fid_domain", 9.0),
                Trial(m, "vae", 1, "sampler", params, "ok", "fid_domain", 1.0)]

    results = {"a": t("a", {"width": 16}), "b": t("b", {"lr": 0.0005, BATCH_SIZE: 64}),
               "c": t("c", {"lr": 0.003, BATCH_SIZE: 16}), "d": t("d", {"lr": 0.001})}
    dest = write_tuned_suite(suite, tmp_path / "tuned.yaml", tmp_path / "run", plan, results, 2)
    text = dest.read_text()
    for keep in ("# the main job", "# a comment of its own", "# block style", "# the end",
                 "- {name: untouched, family: naive_bayes}\n"):
        assert keep in text
    # 1e-3 is a number, as parse_suite reads it (PyYAML alone reads text): written back as one
    assert "- {name: a, family: vae, options: {width: 16, lr: 0.001}}   # a comment of its own" in text
    assert "- {name: b, family: vae, options: {lr: 0.0005}, batch_size: 64}  # tuned: trial 1 of 2" in text
    models = {m["name"]: m for m in yaml.safe_load(text)["models"]}
    assert models["c"]["options"] == {"width": 8, "lr": 0.003} and models["c"]["batch_size"] == 16
    assert models["untouched"] == {"name": "untouched", "family": "naive_bayes"}
    # an entry over several lines: the comment went inside the value being rewritten (the file did not parse)
    assert models["d"]["options"] == {"width": 8, "latent_dim": 4, "lr": 0.001} and models["d"]["seeds"] == [0]
    assert "options: {width: 8, latent_dim: 4, lr: 0.001}, batch_size: 32,  # tuned: trial 1 of 2" in text


def test_sensitivity_names_the_parameter_that_matters():
    from bench.report.tuning import sensitivity

    space = {"x": Float(0.0, 1.0), "noise": Float(0.0, 1.0), "c": Categorical(["a", "b"])}
    from bench.space import space_to_json

    g = torch.Generator().manual_seed(0)
    trials = []
    for k in range(16):
        x, n = torch.rand(2, generator=g).tolist()
        c = "ab"[k % 2]
        trials.append(Trial("m", "f", k, "sampler", {"x": x, "noise": n, "c": c}, "ok", "f", 10 * x + 0.1 * n))
    s = sensitivity(trials, space_to_json(space), "minimize")
    assert s["x"]["spearman"] > 0.9 and abs(s["noise"]["spearman"] or 0) < 0.6 and s["c"]["spearman"] is None
    assert s["x"]["importance"] > 0.8 and s["x"]["n"] == 16


def test_the_simple_vae_a_user_tries_first_is_in_the_vae_search_space():
    # the 20-line MNIST VAE of the well-known examples: MLP with 400 hidden units, Bernoulli decoder, latent 20,
    # Adam 1e-3, batch 128; and bench's own default (conv, discretized logistic) beside it
    space = model_space(FAMILIES.get("vae").cls, None)
    for point in ({"arch": "mlp", "decoder": "bernoulli", "hidden": 400, "latent_dim": 20, "lr": 1e-3, BATCH_SIZE: 128},
                  {"arch": "conv", "decoder": "logistic", "width": 32, "latent_dim": 16, "lr": 1e-3, BATCH_SIZE: 128}):
        for k, v in point.items():
            assert space[k].contains(v), (k, v)


def _tune_one(tmp_path, models_text):
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\ndataset: digits\nbudget: {steps: 5}\nmodels:\n" + models_text)
    plan = {"direction": "minimize", "tuning": {"sampler": "tpe", "seed": 0, "objective": "fid_domain",
                                                  "validation": {"fraction": 0.1}}, "models": {"a": {"batch_size": 128}}}
    results = {"a": [Trial("a", "vae", 0, "defaults", {}, "ok", "fid_domain", 9.0),
                     Trial("a", "vae", 1, "sampler", {"lr": 0.002}, "ok", "fid_domain", 1.0)]}
    return write_tuned_suite(suite, tmp_path / "tuned.yaml", tmp_path / "run", plan, results, 2)


def test_tuned_suite_of_an_entry_built_with_a_merge_key(tmp_path):
    """``<<: *d`` brings family from another entry: the new keys had no family: to follow (KeyError)."""
    dest = _tune_one(tmp_path, "  - &d {name: z, family: vae, options: {width: 8}}\n  - {<<: *d, name: a}\n")
    models = {m.name: m for m in load_suite(dest).models}
    assert models["a"].options == {"width": 8, "lr": 0.002} and models["z"].options == {"width": 8}


@pytest.mark.parametrize("models_text", [
    "  - &d {name: a, family: vae, options: {width: 8}}\n  - {<<: *d, name: z}\n",  # z would change with a
    "  - {name: a, family: vae, options: &o {width: 8}}\n  - {name: z, family: vae, options: *o}\n",  # anchor lost
])
def test_tuned_suite_refuses_edits_that_reach_other_entries(tmp_path, models_text):
    with pytest.raises(BenchError) as e:
        _tune_one(tmp_path, models_text)
    msg = str(e.value)
    assert msg.startswith(f"cannot write {tmp_path / 'tuned.yaml'}: ") and "\n" not in msg
    assert "fill in the chosen settings by hand: a: options {'width': 8, 'lr': 0.002}, batch_size None" in msg
    assert not (tmp_path / "tuned.yaml").exists()


def test_no_confirmation_suite_when_the_suite_settings_won(tmp_path):
    suite = tmp_path / "s.yaml"
    suite.write_text("name: s\ndataset: digits\nbudget: {steps: 5}\nmodels:\n  - {name: a, family: vae}\n")
    plan = {"direction": "minimize", "tuning": {"sampler": "tpe", "seed": 0, "objective": "fid_domain",
                                                  "validation": {"fraction": 0.1, "seed": 0}}, "models": {"a": {"batch_size": 128}}}
    won = {"a": [Trial("a", "vae", 0, "defaults", {}, "ok", "fid_domain", 1.0),
                 Trial("a", "vae", 1, "sampler", {"lr": 0.002}, "ok", "fid_domain", 9.0)]}
    assert write_confirm_suite(suite, tmp_path / "c.yaml", tmp_path / "run", plan, won) is None
    assert not (tmp_path / "c.yaml").exists()
    lost = {"a": [Trial("a", "vae", 0, "defaults", {}, "ok", "fid_domain", 9.0),
                  Trial("a", "vae", 1, "sampler", {"lr": 0.002}, "ok", "fid_domain", 1.0)]}
    dest = write_confirm_suite(suite, tmp_path / "c.yaml", tmp_path / "run", plan, lost)
    models = load_suite(dest).models
    assert [(m.name, m.options) for m in models] == [("a", {"lr": 0.002}), ("a-before", {})]
