"""CI regression tracking end to end: determinism of the smoke suite, and an injected regression fails the check."""
from __future__ import annotations

import json

import yaml

from bench.metrics import metric_specs
from bench.store import RunStore
from bench.sweep import grid
from conftest import ROOT, run_cli

SMOKE = ROOT / "suites" / "smoke.yaml"
BASELINE = ROOT / "reports" / "baselines" / "smoke"
# machine-dependent numbers (timings, as their evaluators declare them) are not expected to repeat
TIMINGS = {s.name for s in metric_specs() if s.machine_dependent}


def _metrics(run_dir):
    out = {}
    for r in RunStore(run_dir).records():
        out[r.cell_id] = (r.status, {m.name: m.value for m in r.metrics if m.name not in TIMINGS},
                          {k: v for k, v in r.spent.items() if k in ("steps", "examples", "params")})
    return out


def test_smoke_suite_is_bit_identical_across_runs(tmp_path):
    a = run_cli("run", str(SMOKE), "--quiet", "--seeds", "0", "--out", str(tmp_path / "a"))
    assert a.returncode == 0, a.stderr
    b = run_cli("run", str(SMOKE), "--quiet", "--seeds", "0", "--out", str(tmp_path / "b"))
    assert b.returncode == 0, b.stderr
    ma, mb = _metrics(tmp_path / "a"), _metrics(tmp_path / "b")
    models = yaml.safe_load(SMOKE.read_text())["models"]
    assert ma.keys() == mb.keys() and len(ma) == sum(1 + (len(grid(m["sweep"])) if m.get("sweep") else 0)
                                                        for m in models)  # cells + sweep points
    for cell in ma:
        assert ma[cell] == mb[cell], cell  # exact equality: same seed, same machine, same bits


def test_injected_regression_fails_the_ci_comparison(tmp_path):
    """Train the smoke VAE for 5 steps instead of its budget: the comparison must call it a regression."""
    suite = yaml.safe_load(SMOKE.read_text())
    for m in suite["models"]:
        if m["name"] == "vae":
            m["budget"] = {"steps": 5}
    suite["models"] = [m for m in suite["models"] if m["name"] == "vae"]
    p = tmp_path / "smoke.yaml"
    p.write_text(yaml.safe_dump(suite))
    r = run_cli("run", str(p), "--quiet", "--out", str(tmp_path / "run"), "--baseline", str(BASELINE))
    assert r.returncode == 1, r.stdout + r.stderr
    summary = json.loads((tmp_path / "run" / "compare.json").read_text())
    vae_regressions = {row["metric"] for row in summary["rows"] if row["model"] == "vae" and row["verdict"] == "regression"}
    assert vae_regressions & {"fid_domain", "nll_bpd_elbo", "nll_bpd_iwae"}, summary["rows"]


def test_baseline_compares_clean_against_itself():
    r = run_cli("compare", str(BASELINE), str(BASELINE), "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
