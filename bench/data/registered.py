"""Importing this module registers every built-in dataset (``bench/data/__init__.py`` imports it)."""
from __future__ import annotations

from bench.data import digits, fashion_mnist, files, mnist, toy2d  # noqa: F401  (imported for registration)
