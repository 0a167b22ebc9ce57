"""Runner and results store: records per cell, resume after a kill, divergence recorded, checkpoints loadable."""
from __future__ import annotations

import signal
import subprocess
import sys
import time

import pytest
import torch

from bench.config import load_suite
from bench.errors import BenchError
from bench.runner import run_suite
from bench.store import RunStore, load_results
from conftest import ROOT, TINY, comparable as _comparable, run_cli


def test_run_writes_one_record_per_cell_and_the_report(tmp_path, write_suite):
    p = write_suite(TINY)
    run_dir = run_suite(load_suite(p), p, out=tmp_path / "run", quiet=True)
    recs = RunStore(run_dir).records()
    assert sorted(r.cell_id for r in recs) == ["nb__seed0", "nb__seed1", "vae__seed0", "vae__seed1"]
    assert all(r.status == "ok" for r in recs)
    nb = next(r for r in recs if r.model == "nb")
    assert nb.value("nll_bpd_exact") > 0 and nb.spent["steps"] == 30
    vae = next(r for r in recs if r.model == "vae")
    assert vae.value("nll_bpd_iwae") <= vae.value("nll_bpd_elbo") + 0.05
    for f in ("results.json", "results.csv", "index.html", "suite.yaml", "environment.json"):
        assert (run_dir / f).is_file(), f
    assert (run_dir / "samples" / "nb__seed0.npz").is_file() and (run_dir / "logs" / "vae__seed1.csv").is_file()
    meta, loaded = load_results(run_dir)
    assert len(loaded) == 4 and meta["config"]["name"] == "tiny"
    # a checkpoint is state dict + config and loads with weights_only=True
    ck = torch.load(run_dir / "checkpoints" / "vae__seed0.pt", weights_only=True)
    assert ck["family"] == "vae" and "state_dict" in ck and ck["options"]["latent_dim"] == 4


def test_run_directories_are_never_overwritten(tmp_path, write_suite):
    p = write_suite(TINY)
    out = tmp_path / "run"
    out.mkdir()
    (out / "something").write_text("x")
    with pytest.raises(BenchError, match="never overwritten"):
        run_suite(load_suite(p), p, out=out, quiet=True)
    a = run_suite(load_suite(p), p, reports_root=tmp_path, quiet=True, only=["nb"], seeds=[0])
    b = run_suite(load_suite(p), p, reports_root=tmp_path, quiet=True, only=["nb"], seeds=[0])
    assert a != b and a.parent == b.parent


def test_diverged_cell_is_recorded_and_the_suite_goes_on(tmp_path, write_suite):
    p = write_suite(TINY.replace("{name: nb, family: naive_bayes}",
                                 "{name: nb, family: naive_bayes, debug: {nan_at_step: 4}}"))
    run_dir = run_suite(load_suite(p), p, out=tmp_path / "run", quiet=True, seeds=[0])
    recs = {r.model: r for r in RunStore(run_dir).records()}
    assert recs["nb"].status == "diverged" and recs["nb"].diverged_at == 4 and "nan" in recs["nb"].error
    assert recs["vae"].status == "ok"
    html = (run_dir / "index.html").read_text()
    assert "diverged" in html


def test_checkpoint_is_loaded_instead_of_training(tmp_path, write_suite):
    p = write_suite(TINY)
    first = run_suite(load_suite(p), p, out=tmp_path / "a", quiet=True, only=["vae"], seeds=[0])
    ck = first / "checkpoints" / "vae__seed0.pt"
    p2 = write_suite(TINY.replace("{name: vae, family: vae, options: {iwae_k: 4, width: 8, latent_dim: 4}}",
                                  f"{{name: vae, family: vae, checkpoint: {ck}}}"), "s2.yaml")
    second = run_suite(load_suite(p2), p2, out=tmp_path / "b", quiet=True, only=["vae"], seeds=[0])
    r1, r2 = RunStore(first).records()[0], RunStore(second).records()[0]
    assert r2.spent["steps"] == 0 and r2.spent["loaded_from"] == str(ck)
    assert r1.value("nll_bpd_elbo") == pytest.approx(r2.value("nll_bpd_elbo"), rel=1e-6)
    # a checkpoint that does not match the model is a clear error
    p3 = write_suite(TINY.replace("{name: nb, family: naive_bayes}", f"{{name: nb, family: vae, options: {{width: 4}}, checkpoint: {ck}}}"), "s3.yaml")
    with pytest.raises(BenchError, match="does not match the model"):
        run_suite(load_suite(p3), p3, out=tmp_path / "c", quiet=True, only=["nb"], seeds=[0])


def test_resume_after_kill_gives_the_same_records(tmp_path, write_suite):
    """Kill the run after its first cell; --resume finishes it; records equal an uninterrupted run's."""
    text = TINY.replace("budget: {steps: 30}", "budget: {steps: 30}\nthreads: 1").replace(
        "{name: vae, family: vae, options: {iwae_k: 4, width: 8, latent_dim: 4}}",
        "{name: vae, family: vae, options: {iwae_k: 4, width: 8, latent_dim: 4}, budget: {steps: 400}}")
    p = write_suite(text)
    full = run_cli("run", str(p), "--out", str(tmp_path / "full"), "--quiet", "--seeds", "0")
    assert full.returncode == 0, full.stderr

    out = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "bench", "run", str(p), "--out", str(out), "--quiet", "--seeds", "0"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while not (out / "records" / "nb__seed0.json").exists():
        assert proc.poll() is None and time.time() < deadline, "run ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "records" / "vae__seed0.json").exists()
    assert not list((out / "records").glob("*.tmp"))

    again = run_cli("run", str(p), "--out", str(out), "--resume", "--seeds", "0")
    assert again.returncode == 0, again.stderr
    assert "resuming: 1 of 2 cells already finished" in again.stdout
    a = {r.cell_id: _comparable(r.to_dict()) for r in RunStore(tmp_path / "full").records()}
    b = {r.cell_id: _comparable(r.to_dict()) for r in RunStore(out).records()}
    assert a == b


def test_resume_refuses_a_changed_suite(tmp_path, write_suite):
    p = write_suite(TINY)
    run_suite(load_suite(p), p, out=tmp_path / "r", quiet=True, only=["nb"], seeds=[0])
    p2 = write_suite(TINY.replace("steps: 30", "steps: 31"), "changed.yaml")
    with pytest.raises(BenchError, match="different suite config"):
        run_suite(load_suite(p2), p2, out=tmp_path / "r", resume=True, quiet=True)


def test_dry_run_prints_the_plan_and_writes_nothing(tmp_path, write_suite):
    p = write_suite(TINY)
    r = run_cli("run", str(p), "--dry-run", "--reports-root", str(tmp_path / "reports"))
    assert r.returncode == 0, r.stderr
    assert "suite tiny: 4 cells on cpu" in r.stdout and "vae__seed1" in r.stdout and "steps=30" in r.stdout
    assert not (tmp_path / "reports").exists()


def test_only_unknown_model_is_an_error(write_suite):
    p = write_suite(TINY)
    r = run_cli("run", str(p), "--only", "gann", "--dry-run")
    assert r.returncode == 2 and "--only: no model named gann; the suite has: nb, vae" in r.stderr


def test_budget_sweep_runs_model_x_budget_x_seed(tmp_path, write_suite):
    """cells = model x budget x seed; each cell spends its own budget; --only takes the suite's name;
    results follow the suite's order (5 steps before 25, which file-name order would reverse)."""
    p = write_suite(TINY.replace("budget: {steps: 30}", "budgets: [{steps: 5}, {steps: 25}]")
                    .replace("eval: {metrics: [likelihood, speed]", "eval: {metrics: [likelihood, quality, speed]"))
    run_dir = run_suite(load_suite(p), p, out=tmp_path / "run", quiet=True, only=["vae"], seeds=[0])
    _, recs = load_results(run_dir / "results.json")
    assert [r.cell_id for r in recs] == ["vae@5steps__seed0", "vae@25steps__seed0"]
    assert [r.spent["steps"] for r in recs] == [5, 25]
    assert all(r.status == "ok" and r.family == "vae" for r in recs)
    assert "Quality vs training budget" in (run_dir / "index.html").read_text()
    with pytest.raises(BenchError, match="no model named vae@99steps"):
        run_suite(load_suite(p), p, out=tmp_path / "run2", quiet=True, only=["vae@99steps"])
