"""The optimisation step every family shares: backward, clipping, learning-rate schedule, EMA,
mixed precision and compilation, configured by ``TrainSettings``.

A family states *what* to minimise (``loss(x, y)``, the key ``watched_loss``) and *with what*
(``configure_optimizers()``); the engine does the rest, the same way for every family
(nanoGPT's ``configure_optimizers`` + training loop; EDM's loss callables + ``training_loop``).
The budgeted loop around it (data order, timing, divergence guard, snapshots) is ``bench.train``.

One harness step is ``Engine.step(x, y)``: the family's ``training_step`` (by default: the
loss under autocast, then ``minimise``), then the EMA update and one step of the learning-rate
schedule. Adversarial families override ``training_step`` for their alternating updates and
call the same helpers (``autocast``, ``minimise``) once per player.

With ``precision: fp32`` (the default) no autocast, no scaler and, without warm-up or a
schedule, no scheduler exist, so the arithmetic is exactly that of a hand-written loop:
``zero_grad(set_to_none=True)``, ``backward()``, ``clip_grad_norm_``, ``step()``.
"""
from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any, ContextManager, Literal

import torch
from pydantic import ConfigDict, Field, model_serializer
from torch import nn

from bench.errors import BenchError
from bench.schema import Checked

if TYPE_CHECKING:
    from bench.families.base import GenerativeModel

Precision = Literal["fp32", "bf16", "fp16", "auto"]
Schedule = Literal["constant", "cosine"]


class TrainSettings(Checked):
    """How the engine trains one model: the family's ``train_defaults``, overridden by the suite's
    ``train:`` and then by the model's own ``train:`` (only the keys each one sets)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    precision: Precision = "fp32"  # autocast dtype of the training forward pass: fp32 = none; bf16 on CUDA or a CPU
    #                                with AMX / AVX512-BF16; fp16 on CUDA only (with a GradScaler); auto = bf16 where the
    #                                device supports it, else fp32 (the record's train key says which ran). Evaluation,
    #                                likelihoods included, is fp32
    grad_clip: float | None = Field(None, gt=0)  # clip the global gradient norm of each optimizer's parameters; null = off
    ema: float | None = Field(None, ge=0, lt=1)  # EMA decay of the modules the family names (used to sample and
    #                                               evaluate), warmed up as min(ema, (1 + n) / (10 + n)); null = off
    warmup_steps: int = Field(0, ge=0)  # linear learning-rate warm-up over the first N steps; 0 = none
    schedule: Schedule = "constant"  # after warm-up: constant, or cosine decay to 0 at the end of a step budget
    compile: bool = False  # torch.compile the family's networks (compile_modules); compile time counts as training

    @model_serializer(mode="wrap")
    def _given_keys_only(self, handler: Any) -> dict[str, Any]:
        """Dump only the keys that were given, so a suite written back to YAML (the run directory's suite.yaml)
        still leaves the rest to the family's defaults; resolved settings have every key given."""
        return {k: v for k, v in handler(self).items() if k in self.model_fields_set}


def resolve_settings(defaults: TrainSettings, *overrides: TrainSettings | None) -> TrainSettings:
    """``defaults`` with the fields each override *sets* (in order); an explicit ``null`` counts as set."""
    merged = {k: getattr(defaults, k) for k in TrainSettings.model_fields}  # every key given: a full record
    for o in overrides:
        if o is not None:
            merged.update({k: getattr(o, k) for k in o.model_fields_set})
    return TrainSettings(**merged)


def bf16_supported(device: torch.device) -> bool:
    """bf16 autocast pays off on CUDA (compute capability >= 8) and on CPUs with AMX or AVX512-BF16 (oneDNN)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    cpu = torch.cpu
    return bool(getattr(cpu, "_is_amx_tile_supported", lambda: False)()
                or getattr(cpu, "_is_avx512_bf16_supported", lambda: False)())


def resolve_precision(precision: Precision, device: torch.device) -> Precision:
    """``auto`` as ``device`` decides it: bf16 where ``bf16_supported``, else fp32; any other value as given.

    Meant as a family default where bf16 buys >= 1.3x the steps with no loss in quality at equal seconds
    (issue 12 part 3; measured by scripts/bf16_quality.py): on a device without bf16 such a family trains
    exactly as before. No family defaults to it yet (docs/design.md says why)."""
    if precision != "auto":
        return precision
    return "bf16" if bf16_supported(device) else "fp32"


def check_precision(precision: Precision, device: torch.device) -> None:
    """A precision the device cannot run is the user's to fix: one line naming the field and the choices."""
    if precision == "fp16" and device.type != "cuda":
        raise BenchError(f"train.precision: fp16 needs a CUDA device (this cell runs on {device.type}); "
                         "use bf16 or fp32")
    if precision == "bf16" and not bf16_supported(device):
        raise BenchError(f"train.precision: bf16 is not supported on this {device.type} (needs CUDA with bf16, "
                         "or a CPU with AMX / AVX512-BF16); use fp32")


def lr_factor(step: int, warmup: int, schedule: Schedule, total: int | None) -> float:
    """Learning-rate multiplier of the update with 0-based index ``step``: linear warm-up to 1 over ``warmup``
    updates (Goyal et al. 2017), then constant or a half cosine to 0 at update ``total`` (Loshchilov & Hutter
    2017, SGDR, without restarts)."""
    k = step + 1
    factor = min(1.0, k / warmup) if warmup else 1.0  # written as flow's original warm-up: its numbers do not move
    if schedule == "cosine" and total and k > warmup:
        factor = 0.5 * (1.0 + math.cos(math.pi * min(1.0, (k - warmup - 1) / max(1, total - warmup))))
    return factor


@torch.no_grad()
def ema_update_(target: nn.Module, source: nn.Module, decay: float) -> None:
    """target <- decay * target + (1 - decay) * source, parameter by parameter (Polyak averaging); buffers
    (e.g. batch-norm statistics) are copied, as they are estimates of the live weights' activations."""
    for pt, ps in zip(target.parameters(), source.parameters()):
        pt.lerp_(ps.detach(), 1.0 - decay)
    for bt, bs in zip(target.buffers(), source.buffers()):
        bt.copy_(bs)


def compile_targets(model: GenerativeModel) -> list[nn.Module]:
    """The modules ``compile: true`` compiles: ``model.compile_modules()``, a ModuleList / ModuleDict standing
    for its items (it has no forward of its own)."""
    out: list[nn.Module] = []
    todo = list(model.compile_modules().values())
    while todo:
        m = todo.pop(0)
        if isinstance(m, (nn.ModuleList, nn.ModuleDict)):
            todo[:0] = list(m.children())
        else:
            out.append(m)
    return out


class Engine:
    """Owns the optimisers of one model and does its optimisation steps (see the module docstring).

    ``settings`` overrides the family's ``train_defaults`` in the keys it gives (a resolved ``TrainSettings``
    gives them all). ``total_steps`` (the budget in updates, None for a wall-clock budget) is what a cosine
    schedule decays over.
    """

    def __init__(self, model: GenerativeModel, settings: TrainSettings | None = None, *,
                 total_steps: int | None = None):
        self.model = model
        s = resolve_settings(type(model).train_defaults, settings)
        if s.schedule == "cosine" and total_steps is None:
            raise BenchError("train.schedule: cosine needs a budget in steps, epochs or examples (a wall-clock "
                             "budget has no known last step); use constant")
        device = model.device
        s = s.model_copy(update={"precision": resolve_precision(s.precision, device)})  # what runs, and is recorded
        check_precision(s.precision, device)
        averaged = model.ema_modules()
        if s.ema is not None and not averaged:
            s = s.model_copy(update={"ema": None})  # the family averages nothing: record that no EMA was kept
        self.settings = s
        self.device = device
        self.total_steps = total_steps
        self.optimizers: dict[str, torch.optim.Optimizer] = model.configure_optimizers()
        self.schedulers = []
        if s.warmup_steps or s.schedule != "constant":
            self.schedulers = [torch.optim.lr_scheduler.LambdaLR(
                o, lambda i: lr_factor(i, s.warmup_steps, s.schedule, total_steps)) for o in self.optimizers.values()]
        self.scaler = torch.amp.GradScaler(device.type) if s.precision == "fp16" else None
        self._dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(s.precision)
        if averaged:
            model.init_ema()
        if s.compile:
            for m in compile_targets(model):
                m.compile()
        self.steps = 0

    # ------------------------------------------------------------------ helpers families call
    def autocast(self) -> ContextManager[Any]:
        """The forward pass's mixed-precision context (a no-op for fp32). Backward runs outside it."""
        if self._dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._dtype)

    def minimise(self, loss: torch.Tensor, *names: str) -> None:
        """One update of the named optimisers (all of them when none is named) on ``loss``:
        zero the gradients, backward (scaled under fp16), clip the global norm, step."""
        opts = [self.optimizers[n] for n in names] if names else list(self.optimizers.values())
        for o in opts:
            o.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
        else:
            loss.backward()
        for o in opts:
            if self.settings.grad_clip is not None:
                if self.scaler is not None:
                    self.scaler.unscale_(o)  # clip the true gradients, not the scaled ones
                params = [p for g in o.param_groups for p in g["params"]]
                torch.nn.utils.clip_grad_norm_(params, self.settings.grad_clip)
            if self.scaler is not None:
                self.scaler.step(o)
            else:
                o.step()
        if self.scaler is not None:
            self.scaler.update()

    def watched(self, losses: dict[str, torch.Tensor]) -> torch.Tensor:
        """The family's ``watched_loss`` entry of ``losses``; its absence is the family's bug, said plainly."""
        key = self.model.watched_loss
        if key not in losses:
            raise KeyError(f"family {self.model.family!r} returned losses {sorted(losses)} without its "
                           f"watched_loss {key!r}")
        return losses[key]

    def scale(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` times the fp16 loss scale (``t`` itself otherwise): for gradients taken inside a loss, such
        as a gradient penalty (PyTorch AMP examples, "Gradient penalty"); divide the result by ``loss_scale``."""
        return self.scaler.scale(t) if self.scaler is not None else t

    @property
    def loss_scale(self) -> float:
        return float(self.scaler.get_scale()) if self.scaler is not None else 1.0

    # ------------------------------------------------------------------ the harness's step
    def step(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        """One harness step on a batch: the family's ``training_step``, then the EMA and the schedule.
        Returns the detached losses; the family's ``watched_loss`` is among them."""
        model = self.model
        losses = model.training_step(x, y, self)
        self.watched(losses)
        self.steps += 1
        if model.has_ema:
            self._update_ema()
        for sch in self.schedulers:
            sch.step()
        return {k: v.detach() for k, v in losses.items()}

    def _update_ema(self) -> None:
        """EMA with the usual warm-up ``min(decay, (1 + n) / (10 + n))`` (TensorFlow's ExponentialMovingAverage
        with ``num_updates``) so short runs are not dominated by the initial weights; decay 0 (EMA off) keeps the
        copies equal to the live weights."""
        model = self.model
        model.ema_steps += 1
        n = int(model.ema_steps)
        decay = min(self.settings.ema or 0.0, (1 + n) / (10 + n))
        for name, live in model.ema_modules().items():
            ema_update_(model.ema[name], live, decay)
