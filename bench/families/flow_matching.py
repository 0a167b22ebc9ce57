"""Conditional flow matching / rectified flow with the linear (optimal-transport) path.

Path and loss (Lipman et al. 2023, eq. 20-23 with sigma_min = 0; Liu et al. 2023, eq. 1):
noise ``x_0 ~ N(0, I)`` at t = 0, data ``x_1`` at t = 1, ``x_t = (1 - t) x_0 + t x_1`` with
t ~ U[0, 1], and the velocity network regresses the conditional velocity:
``|| v_theta(x_t, t) - (x_1 - x_0) ||^2``. Training times are uniform or, by default on images,
logit-normal (Esser et al. 2024, sec. 3.1: more weight on the middle of the path). The velocity
network is the shared time-conditioned U-Net (images) or MLP (points); sampling and likelihood
use an exponential moving average of its weights. Sized for a 2-core CPU like ``diffusion``
(a 60 s budget is 900-1000 steps at batch 128 on MNIST; U-Net width 16 on 2x2 patches, lr 3e-3).

Data: 8-bit images are uniformly dequantized and scaled to [-1, 1]: ``x = (v + u) / 128 - 1``,
u ~ U[0, 1) (Theis et al. 2016), in training and in the likelihood alike. Points are used as they are.

Sampler: the ODE ``dx/dt = v_theta(x, t)`` from t = 0 to 1 with ``sample_steps`` uniform steps
of Euler (1 network evaluation per step), Heun (explicit trapezoid, Karras et al. 2022,
Algorithm 1, 2 per step) or midpoint (RK2, 2 per step). A sample's 8-bit value is the
dequantization bin it lands in, ``floor((x + 1) * 128)`` clipped to 0..255.

Class conditioning (``conditional: true``): the velocity net takes a class embedding and is trained
with labels dropped to a null label with probability ``label_dropout`` (Ho & Salimans 2022,
Algorithm 1), and ``guidance: w`` samples with the classifier-free guided velocity
``(1 + w) v(x, t, y) - w v(x, t, null)`` (ibid., eq. 6 applied to the velocity, as in Esser et al. 2024:
on the linear path v is affine in the score, so this is guidance of the score). w = 0 skips the null
pass (the plain conditional sampler, bit for bit); w > 0 doubles the NFE per step. Given the test
labels, a conditional model's likelihoods are log p(x | y) (``given="y"``) and the null-label model's
(``given="null"``); without labels it reports none (its log p(x) is a sum over classes, not computed).

Likelihood (``ode``, kind ``estimate``): the instantaneous change of variables along the same
ODE (Chen et al. 2018, Theorem 1; Grathwohl et al. 2019, FFJORD, eq. 4):
``log p_1(x_1) = log N(x_0; 0, I) - int_0^1 div v_theta(x_t, t) dt``, integrating x backwards
from the data with the configured solver and ``likelihood_steps`` steps, and the divergence
with Hutchinson's estimator ``eps^T (dv/dx) eps`` (FFJORD, eq. 7) with ``probes`` Rademacher
vectors held fixed along the trajectory (on 2-D points the trace is computed exactly).
On images the 8-bit protocol adds the change of scale: the dequantized value in [0, 1) has
density ``p_x(x) * 2^D`` and its bin has width 1/256, so
``log P(v) >= E_u[log p_x(x)] + D log 2 - D log 256 = E_u[log p_x(x)] - D log 128``
(Jensen's inequality; Theis et al. 2016); we report one draw of u per image. The result is an
estimate (solver error, trace noise, one dequantization draw), never an exact likelihood. Cost per
test image: ``likelihood_steps x NFE per step`` forward passes, each with one backward pass per probe.

Outside reference at equal CPU time (issue 14): the OT-CFM MNIST example of atong01/conditional-flow-matching
(``examples/images/mnist_example.ipynb``: torchcfm's U-Net with 32 channels, exact minibatch OT coupling,
Adam 1e-3, batch 128, dopri5 sampling), re-implemented in ``scripts/references.py`` (its U-Net checked
against torchcfm's own class: equal outputs for equal weights) and trained for the main suite's 45 s on
this 2-core machine (2 threads, idle): 14 steps, 2,000 samples in 347 s, domain FID 1,374 (one seed; one
class covered). bench's flow matching as ``suites/mnist.yaml`` ships it (tuned: width 16, logit-normal
t, lr 3.42e-3, batch 32; ``docs/tuning/mnist-2026-12-01``): 1,920 steps, FID 173 +- 18 over 3 seeds,
with 20 Euler steps. The reference's U-Net (1.08 M parameters, attention at 28x28) is built for GPU
epochs; at 45 CPU-seconds it has not started to learn.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator

from bench.families.base import DataSpec, FamilyOptions, GenerativeModel, Likelihood, register_family
from bench.engine import TrainSettings
from bench.families.guidance import classifier_free, drop_labels
from bench.families.nets import time_conditioned_net
from bench.space import Categorical, Float

LOG_2PI = math.log(2 * math.pi)
Solver = Literal["euler", "heun", "midpoint"]
VelocityFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x (B, ...), t (B,) in [0, 1]) -> v
NFE_PER_STEP = {"euler": 1, "heun": 2, "midpoint": 2}


class FlowMatchingOptions(FamilyOptions):
    solver: Solver = "euler"  # ODE solver for sampling and likelihood
    sample_steps: int = Field(20, gt=0)  # solver steps per sample (NFE = steps, x2 for heun/midpoint)
    likelihood: bool = True  # report the ODE likelihood estimate (costs likelihood_steps x (1 + probes) passes)
    likelihood_steps: int = Field(20, gt=0)  # solver steps of the likelihood ODE
    probes: int = Field(1, gt=0)  # Hutchinson probe vectors per image (images; points use the exact trace)
    width: int = Field(16, gt=0)  # U-Net channels at the first level (CPU-sized; see the module docstring)
    mults: list[int] = Field([1, 2, 2], min_length=1)  # U-Net width multiplier per resolution level
    patch: int | None = Field(None, gt=0)  # fold p x p pixels into channels first; None: 2 if H >= 16 else 1
    hidden: int = Field(256, gt=0)  # MLP width on 2-D points
    lr: float = Field(3e-3, gt=0)  # Adam learning rate (high: budgets here are about a thousand steps)
    time_sampling: Literal["uniform", "logit_normal"] | None = None  # training t: U[0, 1] or logit-normal (Esser et
    # al. 2024); None: logit_normal on images (faster to clean digits), uniform on points (sharper thin modes)
    conditional: bool = False  # class-conditional velocity v(x, t, y) with a null label (module docstring)
    label_dropout: float = Field(0.1, ge=0, lt=1)  # conditional: P(label -> null) in training (Ho & Salimans 2022)
    guidance: float = Field(0.0, ge=0)  # classifier-free guidance scale w; 0: the plain conditional sampler
    cfg_batched: bool = False  # w > 0: conditional and null passes in one 2n-row call (same NFE per sample)

    @model_validator(mode="after")
    def _guidance_needs_labels(self) -> FlowMatchingOptions:
        if self.guidance > 0 and not self.conditional:
            raise ValueError(f"guidance={self.guidance} needs conditional: true (classifier-free guidance "
                             "combines the conditional and null-label velocities)")
        return self


# ---------------------------------------------------------------------- ODE solvers
def ode_step(f: Callable[[torch.Tensor, float], torch.Tensor], x: torch.Tensor, t: float, h: float,
             solver: str) -> torch.Tensor:
    """One step of size h (negative: backwards in time) of dx/dt = f(x, t)."""
    k1 = f(x, t)
    if solver == "euler":
        return x + h * k1
    if solver == "midpoint":
        return x + h * f(x + 0.5 * h * k1, t + 0.5 * h)
    k2 = f(x + h * k1, t + h)  # Heun: trapezoid of the slopes at both ends
    return x + 0.5 * h * (k1 + k2)


@torch.no_grad()
def sample_ode(v_fn: VelocityFn, shape: tuple[int, ...], steps: int, solver: str, generator: torch.Generator,
               device: torch.device) -> torch.Tensor:
    """Integrate the flow from noise at t = 0 to data at t = 1: (B, ...) samples in model scale."""
    x = torch.randn(shape, generator=generator, device=generator.device).to(device)
    h = 1.0 / steps

    def f(x: torch.Tensor, t: float) -> torch.Tensor:
        return v_fn(x, torch.full((shape[0],), t, device=device))

    for i in range(steps):
        x = ode_step(f, x, i * h, h, solver)
    return x


def divergence(v_fn: VelocityFn, x: torch.Tensor, t: torch.Tensor, probes: torch.Tensor | None
               ) -> tuple[torch.Tensor, torch.Tensor]:
    """(v, div v) at x: Hutchinson's ``mean_k eps_k^T J eps_k`` with probes (K, B, ...) (FFJORD eq. 7),
    or the exact trace of the Jacobian (one vector-Jacobian product per dimension) when probes is None."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        v = v_fn(x, t)
        if probes is None:
            d = x[0].numel()
            vf = v.flatten(1)
            div = sum(torch.autograd.grad(vf[:, i].sum(), x, retain_graph=i < d - 1)[0].flatten(1)[:, i]
                      for i in range(d))
        else:
            div = torch.zeros(x.shape[0], device=x.device)
            for k, eps in enumerate(probes):
                vjp = torch.autograd.grad(v, x, eps, retain_graph=k < len(probes) - 1)[0]  # eps^T J
                div = div + (vjp * eps).flatten(1).sum(1) / len(probes)
    return v.detach(), div.detach()  # (B, ...), (B,)


def ode_log_likelihood(v_fn: VelocityFn, x1: torch.Tensor, steps: int, solver: str,
                       probes: torch.Tensor | None) -> torch.Tensor:
    """log p_1(x1) by the instantaneous change of variables (Chen et al. 2018, Thm. 1), nats (B,).

    Integrates the augmented state [x, int div] from t = 1 back to t = 0 with the given solver
    (the divergence rides along as an extra coordinate, so it gets the solver's own quadrature),
    then adds the standard normal log-density at x_0.
    """
    b = x1.shape[0]

    def f(x: torch.Tensor, t: float) -> tuple[torch.Tensor, torch.Tensor]:
        return divergence(v_fn, x, torch.full((b,), t, device=x1.device), probes)

    x, acc = x1, torch.zeros(b, dtype=torch.float64, device=x1.device)
    h = -1.0 / steps
    for i in range(steps):
        t = 1.0 + i * h
        v1, d1 = f(x, t)
        if solver == "euler":
            x, acc = x + h * v1, acc + h * d1.double()
        elif solver == "midpoint":
            v2, d2 = f(x + 0.5 * h * v1, t + 0.5 * h)
            x, acc = x + h * v2, acc + h * d2.double()
        else:
            v2, d2 = f(x + h * v1, t + h)
            x, acc = x + 0.5 * h * (v1 + v2), acc + 0.5 * h * (d1 + d2).double()
    # acc = int_1^0 div dt = -int_0^1 div dt, so log p_1(x_1) = log p_0(x_0) + acc
    log_p0 = (-0.5 * x.double().flatten(1).square() - 0.5 * LOG_2PI).sum(1)
    return log_p0 + acc


class FlowMatching(GenerativeModel):
    """Conditional flow matching (linear path) with an Euler/Heun ODE sampler and an ODE likelihood estimate."""

    family = "flow_matching"
    Options = FlowMatchingOptions
    search_space = {  # bench tune (bench/space.py); solver and sample_steps are not searched: they are the NFE
        "lr": Float(3e-4, 1e-2, log=True),
        "width": Categorical([8, 16, 32]),
        "time_sampling": Categorical(["uniform", "logit_normal"]),
        "batch_size": Categorical([32, 64, 128, 256]),
    }
    likelihood_kind = "estimate"
    conditional_capable = True
    sampling_options = frozenset({"solver", "sample_steps", "likelihood", "likelihood_steps", "probes", "guidance",
                                  "cfg_batched"})
    train_defaults = TrainSettings(ema=0.995)  # evaluation uses an EMA of the velocity net

    def __init__(self, spec: DataSpec, options: FlowMatchingOptions):
        super().__init__(spec, options)
        o = options
        k = spec.num_classes if o.conditional else 0
        self.net = time_conditioned_net(spec, "flow_matching", o.width, o.mults, o.patch, o.hidden, num_classes=k)
        self.time_sampling = o.time_sampling or ("logit_normal" if spec.kind == "image" else "uniform")

    def _dequantize(self, v: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """8-bit values (float, 0..255) -> uniformly dequantized model scale (v + u) / 128 - 1 in [-1, 1)."""
        u = torch.rand(v.shape, generator=generator, device=generator.device).to(v.device)
        return (v + u) / 128 - 1

    # ------------------------------------------------------------------ interface
    def ema_modules(self) -> dict[str, torch.nn.Module]:
        return {"net": self.net}  # sampling and the likelihood use the EMA of the velocity net (train.ema)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        x1 = self._dequantize((x * 255).round(), self.gen) if self.spec.kind == "image" else x
        b = x1.shape[0]
        x0 = torch.randn(x1.shape, generator=self.gen, device=x1.device)  # noise
        if self.time_sampling == "uniform":
            t = torch.rand(b, generator=self.gen, device=x1.device)  # (B,)
        else:  # sigmoid of N(0, 1): more weight on mid-path times (Esser et al. 2024, sec. 3.1, lognorm(0, 1))
            t = torch.sigmoid(torch.randn(b, generator=self.gen, device=x1.device))
        tb = t.view(-1, *([1] * (x1.dim() - 1)))
        xt = (1 - tb) * x0 + tb * x1  # linear path (Lipman et al. eq. 22, sigma_min = 0)
        if self.is_conditional:  # label dropout: the same net learns v(x, t, null) (Ho & Salimans 2022, Alg. 1)
            v = self.net(xt, t, drop_labels(y, self.options.label_dropout, self.spec.num_classes, self.gen))
        else:
            v = self.net(xt, t)
        return {"loss": F.mse_loss(v, x1 - x0)}  # CFM loss with target velocity x1 - x0 (eq. 23)

    def _velocity(self, n: int, generator: torch.Generator, y: torch.Tensor | None) -> VelocityFn:
        """The sampler's velocity: the EMA net, conditioned and classifier-free guided when conditional."""
        net = self.averaged("net")
        if not self.is_conditional:
            return net
        o = self.options
        return classifier_free(net, self.labels_for(n, generator, y), self.spec.num_classes, o.guidance,
                               o.cfg_batched)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, y: torch.Tensor | None = None) -> torch.Tensor:
        o = self.options
        v_fn = self._velocity(n, generator, y)
        x = sample_ode(v_fn, (n, *self.spec.shape), o.sample_steps, o.solver, generator, self.device)
        if self.spec.kind != "image":
            return x
        v = torch.floor((x + 1) * 128).clamp(0, 255)  # the dequantization bin each sample lands in
        return v / 255

    @property
    def nfe_per_sample(self) -> float:
        """Steps x evaluations per step of the solver (Heun, midpoint: 2), x2 with classifier-free guidance."""
        cfg = 2 if self.is_conditional and self.options.guidance > 0 else 1
        return float(self.options.sample_steps * NFE_PER_STEP[self.options.solver] * cfg)

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, generator: torch.Generator,
                       y: torch.Tensor | None = None) -> list[Likelihood]:
        if not self.options.likelihood:
            return []
        if not self.is_conditional:
            return [self._ode_likelihood(x, generator, self.averaged("net"), None)]
        if y is None:  # log p(x) of a conditional model is a sum over classes: not computed
            return []
        net, yl = self.averaged("net"), y.to(x.device).long()
        null = torch.full((x.shape[0],), self.spec.num_classes, dtype=torch.long, device=x.device)
        return [self._ode_likelihood(x, generator, lambda xt, t: net(xt, t, yl), "y"),  # log p(x | y), test labels
                self._ode_likelihood(x, generator, lambda xt, t: net(xt, t, null), "null")]  # the null-label model

    def _ode_likelihood(self, x: torch.Tensor, generator: torch.Generator, v_fn: VelocityFn,
                        given: Literal["y", "null"] | None) -> Likelihood:
        """The ODE estimate of log P(x) (module docstring) under velocity v_fn."""
        o = self.options
        image = self.spec.kind == "image"
        x1 = self._dequantize(x.float(), generator) if image else x.float()
        probes = None
        if image:  # Rademacher probes, one set per image, fixed along the trajectory (FFJORD sec. 3.1)
            r = torch.randint(0, 2, (o.probes, *x1.shape), generator=generator, device=generator.device)
            probes = (2.0 * r - 1).to(x1.device)
        logp = ode_log_likelihood(v_fn, x1, o.likelihood_steps, o.solver, probes)
        if image:
            logp = logp - self.spec.dim * math.log(128)  # [-1, 1) scale and 256 bins -> log P(8-bit value)
        params = {"solver": o.solver, "ode_steps": o.likelihood_steps,
                  "nfe_per_example": o.likelihood_steps * NFE_PER_STEP[o.solver],
                  "trace": f"hutchinson_rademacher_{o.probes}" if image else "exact",
                  "probes": o.probes if image else 0, "dequantization": "uniform, 1 draw" if image else "none"}
        if given == "null":
            params["label"] = "null"
        return Likelihood("ode", "estimate", logp.float(), params, given=given)


register_family("flow_matching", FlowMatching)
