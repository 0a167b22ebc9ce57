"""The range of every seed a suite can set (cells, data splits, tuning), declared once.

``torch.manual_seed`` takes -2**63 .. 2**64 - 1, but bench adds offsets to a seed before it seeds a
generator (an evaluator's stream is ``seed + 1_000_003 * stream``): a seed near the top of torch's range
overflows there, inside a cell, after training. A signed 64-bit seed leaves room for every offset.
"""
from __future__ import annotations

from typing import Annotated

from pydantic import Field

SEED_MIN, SEED_MAX = -(2**63), 2**63 - 1
Seed = Annotated[int, Field(ge=SEED_MIN, le=SEED_MAX)]  # a seed field of a suite's options


def seeds_problem(seeds: list[int]) -> tuple[int, str] | None:
    """The first problem of a list of seeds, as (its position, a message): out of range, or given twice."""
    for i, seed in enumerate(seeds):
        if not SEED_MIN <= seed <= SEED_MAX:
            return i, f"seed {seed} is outside {SEED_MIN}..{SEED_MAX} (a signed 64-bit integer)"
        if seed in seeds[:i]:
            return i, f"seed {seed} appears twice; a seed names one cell per model"
    return None
