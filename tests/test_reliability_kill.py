"""Killed runs (issue 11 part 2): SIGKILL a small suite at many moments, resume it, and compare.

A kill point is a ``BENCH_KILL_AT`` spec (``bench.io.fault_point``): a named moment, optionally plus a
delay that lands inside the work after it (training, evaluation). For every point the run is killed
in a real subprocess, checked (no partial record is readable as valid), resumed with ``--resume --out``
and compared with an uninterrupted run: the same cells, each once, equal records (timings aside), no
temp file left. A new kind of work unit (a sweep point, a tuning trial) is one more entry in POINTS.

Default CI runs three points; ``-m slow`` runs them all::

    python -m pytest -q -m slow tests/test_reliability_kill.py
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from bench.config import load_suite
from bench.io import KILL_ENV
from bench.runner import run_suite
from bench.store import LOCK_NAME, RunStore
from conftest import ROOT, comparable

SUITE = """
name: killme
dataset: digits
seeds: [0]
budget: {steps: 40}
batch_size: 64
threads: 1
eval: {metrics: [likelihood, speed], n_samples: 64, likelihood_examples: 64, speed: {batch_size: 64, repeats: 2}}
models:
  - {name: nb, family: naive_bayes}
  - {name: vae, family: vae, options: {iwae_k: 4, width: 8, latent_dim: 4}, budget: {steps: 400}}
"""
CELLS = ["nb__seed0", "vae__seed0"]

# (spec, what the moment is). The first three run in default CI.
CI_POINTS = [
    ("train:vae__seed0+0.4", "inside the second cell's training"),
    ("write:records/vae__seed0.json", "a record written to its temp file, not yet renamed"),
    ("write:*/index.html", "report rendering, results.json and .csv already written"),
]
SLOW_POINTS = [
    ("write:*/suite.yaml", "before anything is recorded (the run directory is empty)"),
    ("write:*/environment.json", "between suite.yaml and environment.json"),
    ("train:nb__seed0", "the start of the first cell"),
    ("train:nb__seed0+0.05", "inside the first cell's training"),
    ("write:logs/nb__seed0.csv", "the first cell's loss log"),
    ("write:checkpoints/vae__seed0.pt.sha256", "a checkpoint's sidecar"),
    ("write:checkpoints/vae__seed0.pt", "a checkpoint, its sidecar already in place"),
    ("evaluate:vae__seed0", "the start of an evaluation"),
    ("evaluate:vae__seed0+0.3", "inside an evaluation"),
    ("write:samples/vae__seed0.npz", "a samples file"),
    ("write:records/nb__seed0.json.sha256", "a record's sidecar"),
    ("write:records/nb__seed0.json", "the first record"),
    ("record:vae__seed0", "a cell finished, its record not yet written"),
    ("report:*", "all cells recorded, before the report"),
    ("write:*/results.json", "the first file of the report"),
    ("write:*/results.csv", "the second file of the report"),
    # timed kills: short enough to land before the run ends on an idle machine (it takes ~2-3 s from here)
    *[(f"train:nb__seed0+{t}", f"{t} s into the first cell") for t in (0.1, 0.3)],
    *[(f"train:vae__seed0+{t}", f"{t} s into the second cell") for t in (0.1, 0.2, 0.8)],
    ("report:*+0.2", "inside report rendering"),
]
POINTS = [pytest.param(s, d, id=s) for s, d in CI_POINTS] + \
         [pytest.param(s, d, id=s, marks=pytest.mark.slow) for s, d in SLOW_POINTS]


@pytest.fixture(scope="module")
def suite(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("kill") / "killme.yaml"
    p.write_text(SUITE.lstrip())
    return p


@pytest.fixture(scope="module")
def uninterrupted(suite, tmp_path_factory) -> dict[str, dict]:
    run_dir = run_suite(load_suite(suite), suite, out=tmp_path_factory.mktemp("full") / "run", quiet=True)
    return {r.cell_id: comparable(r.to_dict()) for r in RunStore(run_dir).records()}


def _leftovers(run_dir: Path) -> list[str]:
    """Temp files of unfinished writes, and sidecars whose file is missing."""
    tmp = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*.tmp")]
    orphans = [str(p.relative_to(run_dir)) for p in run_dir.rglob("*.sha256") if not p.with_suffix("").is_file()]
    return tmp + orphans


@pytest.mark.parametrize("spec,moment", POINTS)
def test_killed_run_resumes_to_the_same_records(spec, moment, suite, uninterrupted, tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT), KILL_ENV: spec}
    killed = subprocess.run([sys.executable, "-m", "bench", "run", str(suite), "--out", str(out), "--quiet"],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert killed.returncode == -signal.SIGKILL, f"not killed at {spec} ({moment}): {killed.stderr[-2000:]}"

    # what a killed run leaves is never read as valid: every record on disk passes its checks
    if out.is_dir():
        done = {r.cell_id for r in RunStore(out).records()}
        assert done <= set(CELLS)

    resumed = run_suite(load_suite(suite), suite, out=out, resume=True, quiet=True)
    records = RunStore(resumed).records()
    assert sorted(r.cell_id for r in records) == CELLS  # none missing, none duplicated
    assert {r.cell_id: comparable(r.to_dict()) for r in records} == uninterrupted
    assert _leftovers(out) == []
    results = json.loads((out / "results.json").read_text())
    assert sorted(f"{r['model']}__seed{r['seed']}" for r in results["records"]) == CELLS
    assert (out / "index.html").is_file() and (out / "environment.json").is_file()
    assert (out / LOCK_NAME).read_text() == ""  # released


def test_resume_out_dir_killed_before_anything_was_recorded(suite, tmp_path):
    """The issue's case: ``--resume --out DIR`` of a run killed in its first seconds starts the run in DIR
    (it used to say there was no earlier run under reports/<suite>)."""
    out = tmp_path / "early"
    out.mkdir()
    (out / LOCK_NAME).write_text('{"pid": 999999, "host": "gone"}\n')  # what the killed run left
    run_dir = run_suite(load_suite(suite), suite, out=out, resume=True, quiet=True, only=["nb"])
    assert run_dir == out and (out / "suite.yaml").is_file() and [r.cell_id for r in RunStore(out).records()] == ["nb__seed0"]
