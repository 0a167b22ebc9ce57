"""Metric modules; importing this package registers every metric name (see ``bench list``)."""
from __future__ import annotations

from bench.metrics import coverage, likelihood, quality, speed, stability  # noqa: F401
