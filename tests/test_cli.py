"""The CLI through a real subprocess: list, run (smoke), report, evaluate, and errors as one line."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from conftest import TINY, run_cli


def test_list_shows_families_datasets_and_metric_metadata():
    r = run_cli("list")
    assert r.returncode == 0, r.stderr
    for family in ("naive_bayes", "vae", "gan", "flow", "autoregressive", "diffusion", "flow_matching"):
        assert f"\n  {family} " in r.stdout
    assert "fid_domain" in r.stdout and "lower is better" in r.stdout and "kind=lower_bound" in r.stdout
    for evaluator in ("quality", "likelihood", "speed", "stability", "cost (always)"):
        assert f"\n  {evaluator}: " in r.stdout
    (line,) = [ln for ln in r.stdout.splitlines() if ln.strip().startswith("samples_per_s ")]
    assert "speed" in line and "machine-dependent" in line and "unit=samples/s" in line


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    suite = tmp / "tiny.yaml"
    suite.write_text(TINY.replace("metrics: [likelihood, speed]", "metrics: [likelihood, quality, speed]"))
    r = run_cli("run", str(suite), "--out", str(tmp / "run"), "--quiet")
    assert r.returncode == 0, r.stderr
    return tmp / "run", r


def test_run_writes_records_csv_and_html(tiny_run):
    run_dir, r = tiny_run
    assert f"report: {run_dir / 'index.html'}" in r.stdout
    rows = list(csv.DictReader((run_dir / "results.csv").open()))
    assert {"model", "seed", "metric", "value", "unit", "kind", "higher_is_better"} <= set(rows[0])
    got = {(row["model"], row["seed"], row["metric"]) for row in rows}
    for model in ("nb", "vae"):
        for seed in ("0", "1"):
            assert (model, seed, "fid_domain") in got and (model, seed, "samples_per_s") in got
    assert ("vae", "0", "nll_bpd_iwae") in got and ("nb", "0", "nll_bpd_exact") in got
    kinds = {row["metric"]: row["kind"] for row in rows}
    assert kinds["nll_bpd_exact"] == "exact" and kinds["nll_bpd_elbo"] == "lower_bound"
    data = json.loads((run_dir / "results.json").read_text())
    assert len(data["records"]) == 4 and data["config"]["name"] == "tiny"
    html = (run_dir / "index.html").read_text()
    assert "The generative trilemma" in html and "data:image/png;base64," in html and "bound (NLL ≤ shown)" in html


def test_report_rerenders_from_records(tiny_run, tmp_path):
    import shutil

    run_dir, _ = tiny_run
    copy = tmp_path / "copy"
    shutil.copytree(run_dir, copy)
    for f in ("results.csv", "results.json", "index.html"):
        (copy / f).unlink()
    r = run_cli("report", str(copy))
    assert r.returncode == 0, r.stderr
    assert (copy / "results.csv").read_text() == (run_dir / "results.csv").read_text()


def test_evaluate_external_samples_matches_the_run(tiny_run, tmp_path):
    """Samples saved by a run, re-scored through `bench evaluate`, give the run's own FID."""
    run_dir, _ = tiny_run
    out = tmp_path / "m.json"
    r = run_cli("evaluate", str(run_dir / "samples" / "nb__seed0.npz"), "--dataset", "digits", "--json", str(out))
    assert r.returncode == 0, r.stderr
    ext = {m["name"]: m["value"] for m in json.loads(out.read_text())["metrics"]}
    rec = json.loads((run_dir / "records" / "nb__seed0.json").read_text())
    own = {m["name"]: m["value"] for m in rec["metrics"]}
    assert ext["fid_domain"] == pytest.approx(own["fid_domain"], rel=1e-6)


def test_evaluate_rejects_bad_samples(tmp_path):
    p = tmp_path / "bad.npy"
    np.save(p, np.zeros((10, 1, 8, 8), dtype=np.float32))
    r = run_cli("evaluate", str(p), "--dataset", "digits")
    assert r.returncode == 2 and "must be uint8" in r.stderr and "Traceback" not in r.stderr
    np.save(p, np.zeros((10, 1, 5, 5), dtype=np.uint8))
    r = run_cli("evaluate", str(p), "--dataset", "digits")
    assert r.returncode == 2 and "digits has (1, 8, 8)" in r.stderr


def test_unknown_subcommand_and_missing_suite():
    r = run_cli("run", "suites/nope.yaml")
    assert r.returncode == 2 and "no such suite file" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = run_cli("frobnicate")
    assert r.returncode == 2 and "invalid choice" in r.stderr
