"""Network evaluations per sample, counted by the harness rather than declared by the family.

A family declares ``nfe_per_sample``; a sweep point records what the sampler actually did: the
outermost forward calls of the model's networks during one ``sample(n)``, weighted by their batch
rows and divided by n. One row through a counted network is one network function evaluation (NFE),
so a batched classifier-free-guidance step (2n rows in one call) and an unbatched one (two n-row
calls) both count 2 per sample, and a Heun step counts 2.

The counted networks are ``model.nfe_modules()`` where the family says which they are, else its
direct submodules (containers skipped) and their EMA copies: the denoiser, the velocity net, the
generator, the decoder. A sampler that calls layers other than through a counted ``forward`` (the
normalizing flow's inverse) or has no network (naive Bayes) measures None; its declared
``nfe_per_sample`` then stands alone.
"""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from bench.families.base import GenerativeModel


@dataclass
class CallCount:
    """Forward calls of the counted networks and the batch rows they processed."""

    calls: int = 0
    rows: int = 0

    def per_sample(self, n: int) -> float:
        return self.rows / n if n else 0.0


@contextmanager
def count_calls(*modules: nn.Module) -> Iterator[CallCount]:
    """Count the outermost forward calls of ``modules`` and their batch rows (the first tensor argument's
    length) while the block runs; a counted module called inside another counted call is not counted again."""
    count, depth = CallCount(), [0]

    def pre(_m: nn.Module, args: tuple) -> None:
        if depth[0] == 0:
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
            count.calls += 1
            count.rows += int(first.shape[0]) if first is not None and first.dim() else 1
        depth[0] += 1

    def post(_m: nn.Module, _args: tuple, _out: Any) -> None:
        depth[0] -= 1

    handles = [h for m in modules for h in (m.register_forward_pre_hook(pre), m.register_forward_hook(post))]
    try:
        yield count
    finally:
        for h in handles:
            h.remove()


def network_modules(model: GenerativeModel) -> list[nn.Module]:
    """The networks one call of which is one evaluation: the family's ``nfe_modules()`` if it has them, else
    its direct submodules but containers, plus the EMA copies (sampling reads those)."""
    own = getattr(model, "nfe_modules", None)
    if callable(own):
        return list(own())
    mods = [m for name, m in model.named_children() if name != "ema"]
    if model.has_ema:
        mods += list(model.ema.values())
    return [m for m in mods if not isinstance(m, (nn.ModuleList, nn.ModuleDict))]


@torch.no_grad()
def measure_nfe(model: GenerativeModel, n: int, generator: torch.Generator,
                y: torch.Tensor | None = None) -> float | None:
    """Counted network evaluations per sample over one ``model.sample(n, generator, y)``; None when no counted
    network ran (see the module docstring)."""
    model.eval()
    with count_calls(*network_modules(model)) as count:
        model.sample(n, generator) if y is None else model.sample(n, generator, y)
    return count.per_sample(n) if count.calls else None
