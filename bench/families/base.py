"""The family interface every generative model implements (DESIGN.md, "The family interface").

A family is one ``nn.Module`` subclass in one file. It owns its network, its loss,
its optimizers and its sampler; the harness (``bench.train``) owns the loop, the
budget, timing, logging, checkpoints and the NaN guard.

Data conventions (the same for every family):

* images arrive in ``training_step`` as float32 in ``[0, 1]`` equal to ``uint8 / 255``
  (so ``x * 255`` recovers the exact 8-bit value); a family rescales or dequantizes
  as it needs;
* 2-D toy data (``spec.kind == "points"``) arrive as float32 ``(B, D)`` as they are;
* ``sample`` returns images in ``[0, 1]`` (the harness quantizes with
  ``round(x * 255)``) or points in data units;
* ``log_likelihood`` takes uint8 images (points: float) and returns per-example
  log-likelihoods in nats on the common protocol: 8-bit data, continuous models with
  uniform dequantization, i.e. the log-probability of the 8-bit value. A bits/dim figure
  is ``-log_prob / (D * ln 2)``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterator, Literal

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from bench.registry import Registry
from bench.space import Space

LikelihoodKind = Literal["exact", "lower_bound", "estimate", "none"]


class FamilyOptions(BaseModel):
    """Options of a family, validated from the suite's ``options:`` (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class DataSpec:
    """What a family needs to know about the data to build itself."""

    kind: Literal["image", "points"]
    shape: tuple[int, ...]  # (C, H, W) or (D,)
    num_classes: int
    class_frequencies: tuple[float, ...]  # training split; conditional sampling draws from it

    @property
    def dim(self) -> int:
        n = 1
        for s in self.shape:
            n *= s
        return n


@dataclass
class Likelihood:
    """Per-example log-likelihood in nats, with what it is (exact, bound, estimate)."""

    estimator: str  # "exact", "elbo", "iwae", "vlb", ...: becomes the metric name bpd_<estimator>
    kind: LikelihoodKind
    log_prob: torch.Tensor  # (N,) nats, common protocol
    params: dict[str, Any] = field(default_factory=dict)  # e.g. {"k": 64}


class GenerativeModel(nn.Module):
    """Base class of every family. Subclasses set ``family``, ``Options`` and implement the four methods."""

    family: ClassVar[str] = ""
    Options: ClassVar[type[FamilyOptions]] = FamilyOptions
    likelihood_kind: ClassVar[LikelihoodKind] = "none"  # what log_likelihood gives
    conditional_capable: ClassVar[bool] = False
    search_space: ClassVar[Space] = {}  # what `bench tune` may vary: option name (or batch_size) -> range

    def __init__(self, spec: DataSpec, options: FamilyOptions):
        super().__init__()
        self.spec = spec
        self.options = options
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self._gen: torch.Generator | None = None
        self._gen_seed = 0

    # ------------------------------------------------------------------ randomness
    def seed_training(self, seed: int) -> None:
        """Seed the generator used for every random draw inside ``training_step``."""
        self._gen_seed = seed
        self._gen = None

    @property
    def gen(self) -> torch.Generator:
        """The training-time generator, on the model's device (created lazily after ``.to``)."""
        dev = self.device
        if self._gen is None or self._gen.device != dev:
            self._gen = torch.Generator(device=dev)
            self._gen.manual_seed(self._gen_seed)
        return self._gen

    @property
    def device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    # ------------------------------------------------------------------ contract
    def training_step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One optimisation step on a batch (backward and optimizer steps included).

        Returns detached scalar losses for logging; the first key is the one the
        divergence guard watches. GANs do their D and G steps here.
        """
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` samples: images in [0, 1] ``(n, C, H, W)`` or points ``(n, D)``."""
        raise NotImplementedError

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, generator: torch.Generator) -> list[Likelihood]:
        """Per-example log-likelihoods (nats) of test data; empty list for families with none."""
        return []

    @property
    def nfe_per_sample(self) -> float:
        """Network evaluations needed for one sample (1 for one-shot decoders)."""
        return 1.0

    def on_train_end(self, batches: Iterator[torch.Tensor]) -> None:
        """Hook for families that finalise after the budget is spent (e.g. fit a latent density).

        ``batches`` yields the whole training split once, in the family's input scale. Its time is
        charged to training (``spent.finalize_seconds`` says how much).
        """

    def sample_labels(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Class labels drawn from the training frequencies, for conditional sampling."""
        p = torch.tensor(self.spec.class_frequencies, dtype=torch.float, device=generator.device)
        return torch.multinomial(p, n, replacement=True, generator=generator)

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


@dataclass(frozen=True)
class FamilyEntry:
    cls: type[GenerativeModel]
    description: str


FAMILIES: Registry[FamilyEntry] = Registry("family")


def register_family(name: str, cls: type[GenerativeModel]) -> type[GenerativeModel]:
    """Register a family class under ``name`` (must equal ``cls.family``)."""
    if not (isinstance(cls, type) and issubclass(cls, GenerativeModel)):
        raise ValueError(f"family {name!r}: {cls!r} is not a GenerativeModel subclass")
    if cls.family != name:
        raise ValueError(f"family {name!r}: class declares family={cls.family!r}")
    doc = (cls.__doc__ or "").strip().splitlines()
    FAMILIES.register(name, FamilyEntry(cls, doc[0] if doc else ""))
    return cls
