"""The family interface: what a generative family writes, and what the harness does for it.

This docstring is the one place the interface is documented (DESIGN.md, "The family interface";
``docs/design.md`` for where it departs from the shared page). A family is one ``GenerativeModel``
subclass in one file: its network, its loss and its sampler. The harness owns the rest: the
budgeted loop (``bench.train``: data order, timing, divergence guard, snapshots) and the
optimisation step (``bench.engine.Engine``: backward, gradient clipping, learning-rate warm-up and
schedule, EMA, mixed precision, ``torch.compile``).

What a family states (class attributes)::

    family          = "my_model"       # registry name (``register_family`` checks it)
    Options         = MyOptions        # pydantic FamilyOptions: the suite's ``options:``, unknown keys are errors
    likelihood_kind = "exact"          # what log_likelihood gives: exact | lower_bound | estimate | none
    watched_loss    = "loss"           # key of loss()'s dict that is minimised and that the divergence guard watches
    adversarial     = False            # True: training_step is overridden with alternating updates (GANs);
                                       # stability then reports the D/G balance metrics
    train_defaults  = TrainSettings()  # this family's defaults for the engine (grad_clip, ema, warmup_steps, ...);
                                       # the suite's ``train:`` (top level, then per model) overrides them
    conditional_capable = False        # sample() honours class labels y (when the model's options make it
                                       # conditional; ``is_conditional`` says whether this instance is)
    sampling_options = frozenset()     # options read at sampling/evaluation time only: a sweep may change them
                                       # on a trained model (``set_sampling_options``) without retraining

What a family writes (methods)::

    loss(x, y) -> dict[str, Tensor]            # the watched loss (with grad) + any extra scalars to log
    sample(n, generator, y=None) -> Tensor     # images in [0, 1] (n, C, H, W), or points (n, D)
    log_likelihood(x_uint8, generator) -> list[Likelihood]   # [] for families without one; a conditional
                                                             # family also takes y (the test labels)

and, when the defaults do not fit::

    configure_optimizers() -> dict[str, Optimizer]  # default: {"adam": Adam(trainable_parameters(), options.lr)}
    ema_modules() -> dict[str, nn.Module]   # default {}: modules the engine keeps an EMA copy of; evaluation
                                            # reads the copies through averaged(name)
    compile_modules() -> dict[str, nn.Module]   # what ``compile: true`` compiles; default: the direct submodules
    training_step(x, y, engine) -> dict         # default: engine.minimise(loss()[watched_loss]) under
                                                # engine.autocast(); adversarial families override it and call
                                                # the same helpers once per player
    nfe_per_sample (property), on_train_end(batches), num_parameters()
    nfe_modules() -> list[nn.Module]        # the networks one call of which is one network evaluation
                                            # (what ``measure_nfe`` counts); default: the direct submodules
                                            # and their EMA copies

What the engine gives an overriding ``training_step`` (``bench/families/gan.py`` is the example):
``engine.autocast()`` (the forward pass's precision context), ``engine.minimise(loss, *names)``
(zero_grad, backward, clip, step of the named optimisers; all when none is named),
``engine.watched(losses)``, and ``engine.scale(t)`` / ``engine.loss_scale`` for gradients taken
inside a loss under fp16. One harness step is ``engine.step(x, y)``: ``training_step``, then the
EMA update and one step of the learning-rate schedule; ``Engine(model).step(x, y)`` trains a family
by hand (tests, notebooks) with its ``train_defaults``.

A minimal family (register it, and import its module in ``bench/families/__init__.py``)::

    class MyOptions(FamilyOptions):
        lr: float = Field(1e-3, gt=0)  # the default optimiser reads options.lr

    class MyModel(GenerativeModel):
        '''One line that `bench list` shows.'''
        family, Options, likelihood_kind = "my_model", MyOptions, "none"

        def __init__(self, spec: DataSpec, options: MyOptions):
            super().__init__(spec, options)
            self.net = nets.mlp(spec.dim, spec.dim)

        def loss(self, x, y):
            return {"loss": (self.net(x) - x).square().mean()}

        @torch.no_grad()
        def sample(self, n, generator, y=None):
            return self.net(torch.randn(n, self.spec.dim, generator=generator))

    register_family("my_model", MyModel)

Data conventions (the same for every family):

* images arrive in ``loss`` / ``training_step`` as float32 in ``[0, 1]`` equal to ``uint8 / 255``
  (so ``x * 255`` recovers the exact 8-bit value); a family rescales or dequantizes as it needs;
* 2-D toy data (``spec.kind == "points"``) arrive as float32 ``(B, D)`` as they are;
* every random draw in training goes through ``self.gen`` (seeded per cell by the harness);
* ``sample`` returns images in ``[0, 1]`` (the harness quantizes with ``round(x * 255)``) or
  points in data units;
* ``sample(n, generator, y)`` of a conditional model draws class ``y[i]`` for row i; with ``y=None`` it
  draws the labels from the training frequencies first (``sample_labels``), so a plain
  ``sample(n, g)`` is a sample of the model's p(x);
* ``log_likelihood(x, generator, y)`` of a conditional model returns log p(x | y) of the given test
  labels as ``Likelihood(..., given="y")`` (metric names gain ``_given_y``), and log p(x) with
  ``given=None`` where the family can compute it (cVAE, conditional PixelCNN:
  ``log sum_y p(y) p(x | y)``), and the null-label model's as ``given="null"`` (diffusion, flow
  matching); with ``y=None`` only the log p(x) ones (none for diffusion and flow matching). A number
  for log p(x | y) is never returned as a log p(x) one;
* ``log_likelihood`` takes uint8 images (points: float) and returns per-example
  log-likelihoods in nats on the common protocol: 8-bit data, continuous models with
  uniform dequantization, i.e. the log-probability of the 8-bit value. A bits/dim figure
  is ``-log_prob / (D * ln 2)``;
* evaluation (``sample``, ``log_likelihood``, snapshots) runs in fp32, outside the engine's
  autocast, whatever the training precision.
"""
from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Literal, Mapping

import torch
from pydantic import ConfigDict, ValidationError
from torch import nn

from bench.engine import TrainSettings
from bench.errors import BenchError
from bench.registry import Registry, check_class, describe
from bench.schema import Checked
from bench.space import Space

if TYPE_CHECKING:
    from bench.engine import Engine

LikelihoodKind = Literal["exact", "lower_bound", "estimate", "none"]


class FamilyOptions(Checked):
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
    given: Literal["y", "null"] | None = None  # None: log p(x) of the model that samples; "y": log p(x | y) of the
    # test label (metric name + "_given_y"); "null": log p(x | null label), the unconditional mode of a
    # classifier-free-guidance net (metric name + "_null_label")


class GenerativeModel(nn.Module):
    """Base class of every family; the module docstring is the interface's documentation."""

    family: ClassVar[str] = ""
    Options: ClassVar[type[FamilyOptions]] = FamilyOptions
    likelihood_kind: ClassVar[LikelihoodKind] = "none"  # what log_likelihood gives
    conditional_capable: ClassVar[bool] = False
    watched_loss: ClassVar[str] = "loss"  # key of loss()'s dict that is minimised and watched for divergence
    adversarial: ClassVar[bool] = False  # alternating updates in an overridden training_step (GANs)
    train_defaults: ClassVar[TrainSettings] = TrainSettings()  # engine defaults; the suite's train: overrides
    sampling_options: ClassVar[frozenset[str]] = frozenset()  # options a sweep may change without retraining
    # What a family class must define itself; bench.registry.check_class refuses a class from outside bench
    # (import path or entry point) that leaves one of these at the base's value. Adapt when the contract changes.
    required: ClassVar[tuple[str, ...]] = ("family", "sample", "loss|training_step")
    search_space: ClassVar[Space] = {}  # what `bench tune` may vary: option name (or batch_size) -> range

    def __init__(self, spec: DataSpec, options: FamilyOptions):
        super().__init__()
        self.spec = spec
        self.options = options
        self._gen: torch.Generator | None = None
        self._gen_seed = 0

    # ------------------------------------------------------------------ randomness
    def seed_training(self, seed: int) -> None:
        """Seed the generator used for every random draw inside ``loss`` / ``training_step``."""
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

    # ------------------------------------------------------------------ training (the engine calls these)
    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """Scalar losses of a batch: ``watched_loss`` (with grad; the engine minimises it) and extras to log."""
        raise NotImplementedError(f"family {self.family!r} implements neither loss() nor training_step()")

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """The optimisers, by name (``engine.minimise(loss, name)`` picks one). Default: one Adam over the
        trainable parameters at ``options.lr``; none when there is nothing to train."""
        params = list(self.trainable_parameters())
        if not params:
            return {}
        lr = getattr(self.options, "lr", None)
        if lr is None:
            raise TypeError(f"family {self.family!r}: the default configure_optimizers reads options.lr; "
                            "give the Options an lr field or override configure_optimizers")
        return {"adam": torch.optim.Adam(params, lr=lr)}

    def training_step(self, x: torch.Tensor, y: torch.Tensor, engine: Engine) -> dict[str, torch.Tensor]:
        """One update on a batch: ``loss`` under the engine's autocast, then one step of every optimiser on
        ``watched_loss``. Adversarial families override this with their alternating updates, using the
        same ``engine.autocast()`` and ``engine.minimise(loss, name)``."""
        with engine.autocast():
            losses = self.loss(x, y)
        engine.minimise(engine.watched(losses))
        return losses

    def ema_modules(self) -> dict[str, nn.Module]:
        """Modules the engine keeps an exponential moving average of (``train.ema``), by name; sampling and
        likelihood read the averages through ``averaged(name)``. Default: none."""
        return {}

    def compile_modules(self) -> dict[str, nn.Module]:
        """Modules ``train.compile`` compiles: by default every direct submodule but the EMA copies."""
        return {n: m for n, m in self.named_children() if n != "ema"}

    # ------------------------------------------------------------------ EMA copies
    @property
    def has_ema(self) -> bool:
        return "ema" in self._modules

    def init_ema(self) -> None:
        """Create the EMA copies of ``ema_modules()`` (equal to the live weights) and their step counter, once."""
        if self.has_ema:
            return
        self.ema = nn.ModuleDict({k: copy.deepcopy(m).requires_grad_(False) for k, m in self.ema_modules().items()})
        self.register_buffer("ema_steps", torch.zeros((), dtype=torch.long, device=self.device))

    def averaged(self, name: str) -> nn.Module:
        """The EMA copy of ``ema_modules()[name]``, for sampling and likelihoods (created on first use)."""
        self.init_ema()
        return self.ema[name]

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False):
        """As ``nn.Module.load_state_dict``; a checkpoint with EMA copies creates them first."""
        if any(k.startswith("ema.") for k in state_dict):
            self.init_ema()
        return super().load_state_dict(state_dict, strict=strict, assign=assign)

    def trainable_parameters(self) -> Iterator[nn.Parameter]:
        """Every parameter but the EMA copies'."""
        return (p for n, p in self.named_parameters() if not n.startswith("ema."))

    # ------------------------------------------------------------------ evaluation
    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, y: torch.Tensor | None = None) -> torch.Tensor:
        """``n`` samples: images in [0, 1] ``(n, C, H, W)`` or points ``(n, D)``."""
        raise NotImplementedError

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, generator: torch.Generator,
                       y: torch.Tensor | None = None) -> list[Likelihood]:
        """Per-example log-likelihoods (nats) of test data; empty list for families with none. ``y`` (the
        test labels) is passed to conditional models only (``is_conditional``): unconditional families may
        keep the two-argument signature."""
        return []

    @property
    def nfe_per_sample(self) -> float:
        """Network evaluations needed for one sample (1 for one-shot decoders): the declared, expected
        value; ``measure_nfe`` counts them (a test checks that the two agree)."""
        return 1.0

    def nfe_modules(self) -> list[nn.Module]:
        """The networks whose every (outermost) forward call is one network evaluation, for
        ``measure_nfe``. Default: the direct submodules (not containers) and the EMA copies."""
        mods = [m for n, m in self.named_children() if n != "ema"]
        if self.has_ema:
            mods += list(self.ema.values())
        return [m for m in mods if not isinstance(m, (nn.ModuleList, nn.ModuleDict))]

    def set_sampling_options(self, **changes: Any) -> None:
        """Change sampling-time options of a trained model (a sweep point: steps, sampler, guidance scale,
        truncation, ...), validated as the suite's ``options:`` are. Options that shape the network or
        its training are refused: changing them needs a new model."""
        bad = sorted(set(changes) - self.sampling_options)
        if bad:
            raise BenchError(f"{self.family}: option(s) {', '.join(bad)} cannot change after training; "
                             f"sampling options: {', '.join(sorted(self.sampling_options)) or 'none'}")
        try:
            self.options = type(self.options).model_validate({**self.options.model_dump(), **changes})
        except ValidationError as e:
            msg = e.errors()[0]["msg"] if e.errors() else str(e)
            raise BenchError(f"{self.family}: sampling options {changes}: {msg}") from None

    @property
    def is_conditional(self) -> bool:
        """Whether this instance models p(x | y) (a conditional-capable family with ``conditional: true``)."""
        return self.conditional_capable and bool(getattr(self.options, "conditional", False))

    def labels_for(self, n: int, generator: torch.Generator, y: torch.Tensor | None) -> torch.Tensor:
        """The labels a conditional ``sample`` draws: ``y`` (checked) or, when None, ``sample_labels``."""
        if y is None:
            return self.sample_labels(n, generator).to(self.device)
        if y.shape != (n,) or (n and (int(y.min()) < 0 or int(y.max()) >= self.spec.num_classes)):
            raise ValueError(f"{self.family}: y must be ({n},) labels in 0..{self.spec.num_classes - 1}, "
                             f"got shape {tuple(y.shape)}")
        return y.to(self.device).long()

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
        """Parameters of the model (an EMA copy is the same network, not counted twice)."""
        return sum(p.numel() for p in self.trainable_parameters())


# ---------------------------------------------------------------------- NFE counter
@dataclass
class CallCount:
    """Forward calls of the counted networks and the batch rows they processed."""

    calls: int = 0
    rows: int = 0

    def per_sample(self, n: int) -> float:
        """Network evaluations per sample: rows evaluated / samples drawn. A batched CFG step (cond and
        uncond rows in one 2n-row call) and an unbatched one (two n-row calls) both count 2."""
        return self.rows / n if n else 0.0


@contextmanager
def count_calls(*modules: nn.Module) -> Iterator[CallCount]:
    """Count the outermost forward calls of ``modules`` and their batch rows (``len`` of the first tensor
    argument) while the block runs. A call made inside another counted call (a network calling a
    counted submodule) is not counted again."""
    count, depth = CallCount(), [0]

    def pre(_m: nn.Module, args: tuple) -> None:
        if depth[0] == 0:
            count.calls += 1
            first = next((a for a in args if isinstance(a, torch.Tensor)), None)
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


@torch.no_grad()
def measure_nfe(model: GenerativeModel, n: int, generator: torch.Generator,
                y: torch.Tensor | None = None) -> float | None:
    """Network evaluations per sample, counted by the harness: forward calls of ``model.nfe_modules()``
    (times their batch rows, divided by ``n``) during one ``model.sample(n, generator, y)``.

    What counts as one evaluation is one row through one of those networks: a denoiser or velocity
    step, a guidance classifier's forward pass, a PixelCNN pixel (its output head), a decoder pass.
    None when no counted network was called: a sampler with no network (naive Bayes) or one that
    calls its layers other than through ``forward`` (the normalizing flow's inverse); the declared
    ``nfe_per_sample`` then stands alone.
    """
    with count_calls(*model.nfe_modules()) as count:
        model.sample(n, generator, y)
    return count.per_sample(n) if count.calls else None


@dataclass(frozen=True)
class FamilyEntry:
    cls: type[GenerativeModel]
    description: str


def _external_family(obj: object, where: str) -> FamilyEntry:
    """A family named by import path or entry point: checked against the interface, like a built-in."""
    cls = check_class(obj, GenerativeModel, where, "family")
    return FamilyEntry(cls, describe(cls))


FAMILIES: Registry[FamilyEntry] = Registry("family", group="bench.families", adapt=_external_family)


def register_family(name: str, cls: type[GenerativeModel]) -> type[GenerativeModel]:
    """Register a family class under ``name`` (must equal ``cls.family``)."""
    if not (isinstance(cls, type) and issubclass(cls, GenerativeModel)):
        raise ValueError(f"family {name!r}: {cls!r} is not a GenerativeModel subclass")
    if cls.family != name:
        raise ValueError(f"family {name!r}: class declares family={cls.family!r}")
    if not (isinstance(cls.watched_loss, str) and cls.watched_loss):
        raise ValueError(f"family {name!r}: watched_loss must name a key of loss()'s dict, got {cls.watched_loss!r}")
    if not isinstance(cls.adversarial, bool) or not isinstance(cls.train_defaults, TrainSettings):
        raise ValueError(f"family {name!r}: adversarial must be a bool and train_defaults a TrainSettings")
    doc = (cls.__doc__ or "").strip().splitlines()
    FAMILIES.register(name, FamilyEntry(cls, doc[0] if doc else ""))
    return cls
