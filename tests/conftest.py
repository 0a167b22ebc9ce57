"""Shared fixtures: tiny suites that train in seconds, and a CLI runner through a real subprocess."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from bench.metrics import metric_specs

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(autouse=True)
def _one_thread():
    """Unit tests run torch on one thread: the nets are tiny, one thread is faster for them, and on a
    busy 2-core machine two threads can be many times slower. Suites run in subprocesses set their own."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def run_cli(*args: str, cwd: Path | None = None, timeout: float = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m bench ARGS`` in a real subprocess; returns the completed process (never raises on exit status)."""
    e = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd or ROOT, capture_output=True, text=True,
                          timeout=timeout, env=e)


@pytest.fixture
def write_suite(tmp_path):
    """Write a YAML suite (dedented) into tmp_path and return its path."""

    def _write(text: str, name: str = "suite.yaml") -> Path:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text).lstrip())
        return p

    return _write


TINY = """
name: tiny
dataset: digits
seeds: [0, 1]
budget: {steps: 30}
batch_size: 64
eval: {metrics: [likelihood, speed], n_samples: 64, likelihood_examples: 64, speed: {batch_size: 64, repeats: 2}}
models:
  - {name: nb, family: naive_bayes}
  - {name: vae, family: vae, options: {iwae_k: 4, width: 8, latent_dim: 4}}
"""


# what legitimately differs between two runs of the same cells: timings, and where they ran
TIMING_METRICS = {s.name for s in metric_specs() if s.machine_dependent}  # timings, as their evaluators declare


def comparable(rec: dict) -> dict:
    """A record without what differs between two runs of the same cell: wall-clock and memory measurements."""
    spent = {k: v for k, v in rec["spent"].items() if not k.endswith("seconds") and k != "peak_memory_mb"}
    metrics = {m["name"]: m["value"] for m in rec["metrics"] if m["name"] not in TIMING_METRICS}
    return {"model": rec["model"], "seed": rec["seed"], "status": rec["status"], "spent": spent, "metrics": metrics}
