"""Metric modules; importing this package registers every metric name (see ``bench list``)."""
from __future__ import annotations

from bench.metrics import likelihood, speed  # noqa: F401
