"""Denoising diffusion (DDPM, Ho et al. 2020) with epsilon prediction; DDPM and DDIM samplers.

Forward process (Ho et al. 2020, eq. 2 and 4): ``q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)``
for t = 1..T with a linear beta schedule (Ho et al. 2020, sec. 4) or the cosine schedule
(Nichol & Dhariwal 2021, eq. 17). The network ``eps_theta(x_t, t)`` is trained on the simple
loss ``|| eps - eps_theta(sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps, t) ||^2`` (Ho et al. 2020,
eq. 14, Algorithm 1), on images by default re-weighted per t by ``min(SNR_t, 5) / SNR_t``
(Min-SNR, Hang et al. 2023): the same minimiser, less weight on the nearly clean steps. Images
are scaled to [-1, 1] (``v / 127.5 - 1`` for 8-bit values v); 2-D points are used as they are.
Sampling and likelihood use an exponential moving average of the weights.

Samplers are functions of the trained noise model (STYLE.md #2), on an evenly spaced
subsequence of ``sample_steps`` of the T training steps, one network evaluation per step
(NFE per sample = ``sample_steps``):

* ``ddpm`` (default): ancestral sampling (Ho et al. 2020, Algorithm 2) on the respaced
  schedule (Nichol & Dhariwal 2021, sec. 4), reverse variance ``beta`` or ``beta_tilde``;
* ``ddim``: Song et al. 2021, eq. 12, with the stochasticity ``eta`` of eq. 16 (0: deterministic).

Class conditioning and guidance (``bench/families/guidance.py`` has the shared pieces):

* ``conditional: true``: the denoiser takes a class embedding (added to the time embedding) and is
  trained with labels dropped to a null label with probability ``label_dropout`` (Ho & Salimans
  2022, Algorithm 1), so one network predicts eps(x_t, y) and eps(x_t, null);
* ``guidance: w`` (conditional only): classifier-free guidance, ``(1 + w) eps(x_t, y) - w eps(x_t, null)``
  (Ho & Salimans 2022, eq. 6); w = 0 skips the unconditional pass and is the plain conditional
  sampler bit for bit; w > 0 costs 2 network evaluations per step (``cfg_batched`` runs them as one
  2n-row call, still 2 per sample);
* ``classifier: true`` trains a noisy classifier p(y | x_t, t) beside the denoiser, inside the same
  budget (its cross-entropy on the batch's own x_t is added to the loss, one optimiser for both),
  and ``classifier_guidance: s`` uses it: ``eps - s sqrt(1 - abar_t) grad log p(y | x_t, t)``
  (Dhariwal & Nichol 2021, eq. 14, Algorithm 2; the eps form serves both samplers). One more
  network evaluation per step (the classifier's forward pass). It works with or without
  ``conditional``.

NFE per sample (``nfe_per_sample``, checked against ``measure_nfe`` by a test): ``sample_steps`` x
(1 + [guidance > 0] + [classifier_guidance > 0]).

Sized for a 2-core CPU: a 60 s budget is 800-900 steps at batch 128 on MNIST. The defaults
(U-Net width 16 on 2x2-pixel patches, lr 3e-3, Min-SNR, ancestral sampling with 25 steps) were
chosen by looking at MNIST samples after that many steps; deterministic DDIM gave visibly
noisier digits than the ancestral sampler from the same under-trained models.

Likelihood of a conditional model, given the test labels: the bound on log p(x | y)
(``given="y"``) and the bound of the shared net's unconditional (null-label) model
(``given="null"``); log p(x) of the conditional model (a sum over the K classes, K times the cost)
is not computed, so without labels a conditional model reports no likelihood rather than one
that could be read as log p(x).

Likelihood (``vlb``, a lower bound on log p of the 8-bit image): minus the variational bound
of Ho et al. 2020, eq. 5, ``L = L_T + sum_{t=2..T} L_{t-1} + L_0``, with the Gaussian KLs
``L_{t-1}`` (eq. 5-7, reverse variance as configured) and the discretized Gaussian decoder
``L_0 = -log p(x_0 | x_1)`` of sec. 3.3, eq. 13 (256 bins of width 2/255 on [-1, 1], edge
bins take the tails, sigma_1^2 = beta_1), so the number is on the common 8-bit protocol with no
dequantization. On points the decoder is a continuous Gaussian (nats per point).

Protocol of the bound, stated in ``Likelihood.params``: every term is evaluated with one draw
of x_t ~ q(x_t | x_0) (as the expectation in eq. 5 is usually estimated); L_T (closed form) and
L_0 are always computed; the sum over t = 2..T is either computed term by term
(``vlb_t_samples: null``, T network evaluations per image) or estimated without bias by
stratified sampling: the T - 1 steps are cut into ``vlb_t_samples`` strata that grow
geometrically with t (the terms are largest at small t, see ``strata``), one t is drawn
uniformly per stratum and weighted by the stratum's size. The result is a Monte-Carlo
estimate of the bound (its per-example noise is part of the reported standard error), never
an exact value. Cost: ``vlb_t_samples + 1`` network evaluations per test image.

Outside reference at equal CPU time (issue 14): cloneofsimo/minDiffusion ``superminddpm.py`` (a
16.9 M-parameter 7x7 conv eps-model without a time input, T = 1000, Adam 2e-4, batch 128),
re-implemented in ``scripts/references.py``. One of its training steps took 65 s on this machine (one
thread, loaded), so the main suite's 45 s buys it one or two updates, and its 1,000-step sampler costs
minutes per image: scored on 10 samples in that smoke run, noise (domain FID 2,236). Not run at the main
budget for that reason. bench's DDPM (``suites/mnist.yaml``; its settings won their own tuning run,
``docs/tuning/mnist-2026-12-01``) takes 829 steps in 45 s and reaches domain FID 227 +- 24 over 3 seeds
with 25 sampler steps.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import torch
from pydantic import Field, model_validator

from bench.families.base import DataSpec, FamilyOptions, GenerativeModel, Likelihood, register_family
from bench.families.guidance import (NoisyClassifier, classifier_free, classifier_guided, classifier_loss,
                                     drop_labels)
from bench.families.naive_bayes import log_diff_ndtr
from bench.engine import TrainSettings
from bench.families.nets import time_conditioned_net
from bench.space import Categorical, Float

LOG_2PI = math.log(2 * math.pi)
EpsFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x_t (B, ...), t (B,) int64 in 1..T) -> eps


class DiffusionOptions(FamilyOptions):
    timesteps: int = Field(1000, ge=2)  # T, diffusion steps of the forward process (training)
    schedule: Literal["linear", "cosine"] = "linear"  # beta schedule: Ho et al. 2020 / Nichol & Dhariwal 2021
    sampler: Literal["ddpm", "ddim"] = "ddpm"  # ancestral DDPM (Ho et al. 2020, Alg. 2) or DDIM (Song et al. 2021)
    sample_steps: int = Field(25, gt=0)  # network evaluations per sample (a respaced subsequence of the T steps)
    eta: float = Field(0.0, ge=0)  # DDIM noise scale (Song et al. 2021, eq. 16): 0 deterministic, 1 = DDPM-like
    sigma: Literal["beta", "beta_tilde"] = "beta_tilde"  # reverse variance for ddpm and the VLB (Ho et al. sec. 3.2)
    clip_x0: bool = True  # samplers clip the predicted x_0 to [-1, 1] (images only; the VLB never clips)
    vlb_t_samples: int | None = Field(32, gt=0)  # t-terms per test image (stratified); null or >= T - 1: all terms
    width: int = Field(16, gt=0)  # U-Net channels at the first level (CPU-sized; see the module docstring)
    mults: list[int] = Field([1, 2, 2], min_length=1)  # U-Net width multiplier per resolution level
    patch: int | None = Field(None, gt=0)  # fold p x p pixels into channels first; None: 2 if H >= 16 else 1
    hidden: int = Field(256, gt=0)  # MLP width on 2-D points
    lr: float = Field(3e-3, gt=0)  # Adam learning rate (high: budgets here are about a thousand steps)
    loss_weighting: Literal["simple", "min_snr"] | None = None  # L_simple (Ho eq. 14) or Min-SNR-5 (Hang et al.
    # 2023); None: min_snr on images (faster to clean digits), simple on points (sharper thin modes)
    conditional: bool = False  # class-conditional denoiser eps(x_t, t, y) with a null label (module docstring)
    label_dropout: float = Field(0.1, ge=0, lt=1)  # conditional: P(label -> null) in training (Ho & Salimans 2022)
    guidance: float = Field(0.0, ge=0)  # classifier-free guidance scale w (eq. 6); 0: the plain conditional sampler
    cfg_batched: bool = False  # w > 0: conditional and null passes in one 2n-row call (same NFE per sample)
    classifier: bool = False  # train a noisy classifier p(y | x_t, t) in the budget (for classifier_guidance)
    classifier_guidance: float = Field(0.0, ge=0)  # scale s of classifier guidance (Dhariwal & Nichol 2021, eq. 14)
    classifier_width: int = Field(16, gt=0)  # noisy classifier: conv channels (images) / MLP width is 4x this

    @model_validator(mode="after")
    def _steps_fit(self) -> DiffusionOptions:
        if self.sample_steps > self.timesteps:
            raise ValueError(f"sample_steps={self.sample_steps} exceeds timesteps={self.timesteps}; use at most T")
        if self.guidance > 0 and not self.conditional:
            raise ValueError(f"guidance={self.guidance} needs conditional: true (classifier-free guidance "
                             "combines the conditional and null-label predictions)")
        if self.classifier_guidance > 0 and not self.classifier:
            raise ValueError(f"classifier_guidance={self.classifier_guidance} needs classifier: true "
                             "(the noisy classifier is trained with the model)")
        return self


# ---------------------------------------------------------------------- schedule
def make_betas(schedule: str, T: int) -> torch.Tensor:
    """beta_1..beta_T, float64 (T,).

    linear: Ho et al. 2020 (1e-4 .. 0.02 for T = 1000), scaled by 1000 / T so other T keep the
    same endpoints of abar (as improved-diffusion does). cosine: Nichol & Dhariwal 2021, eq. 17,
    s = 0.008, betas clipped at 0.999.
    """
    if schedule == "linear":
        scale = 1000 / T
        return torch.linspace(scale * 1e-4, min(scale * 0.02, 0.999), T, dtype=torch.float64)
    s = 0.008
    f = torch.cos((torch.arange(T + 1, dtype=torch.float64) / T + s) / (1 + s) * math.pi / 2) ** 2  # (T + 1,)
    abar = f / f[0]
    return (1 - abar[1:] / abar[:-1]).clamp(max=0.999)


def respaced(T: int, steps: int) -> list[int]:
    """An evenly spaced, decreasing subsequence of T..1 with ``steps`` entries (steps <= T), starting at T."""
    return sorted({round(float(v)) for v in torch.linspace(T, 1, steps, dtype=torch.float64)}, reverse=True)


# ---------------------------------------------------------------------- samplers
def _predict_x0(x: torch.Tensor, eps: torch.Tensor, abar_t: float, clip: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """x_0 from x_t and eps (Ho et al. 2020, eq. 4 solved for x_0); if clipped, eps made consistent with it."""
    x0 = (x - math.sqrt(1 - abar_t) * eps) / math.sqrt(abar_t)
    if clip:
        x0 = x0.clamp(-1, 1)
        eps = (x - math.sqrt(abar_t) * x0) / math.sqrt(1 - abar_t)
    return x0, eps


@torch.no_grad()
def sample_ddim(eps_fn: EpsFn, abar: torch.Tensor, shape: tuple[int, ...], steps: int, eta: float,
                generator: torch.Generator, clip: bool, device: torch.device) -> torch.Tensor:
    """DDIM (Song et al. 2021, eq. 12) on ``steps`` respaced steps; eta sets sigma by eq. 16.

    ``abar`` is (T + 1,) with abar[0] = 1; the last step goes to t = 0 and returns the predicted x_0.
    """
    T = len(abar) - 1
    ts = respaced(T, steps)
    x = torch.randn(shape, generator=generator, device=generator.device).to(device)  # x_T ~ N(0, I)
    for i, t in enumerate(ts):
        prev = ts[i + 1] if i + 1 < len(ts) else 0
        a_t, a_prev = float(abar[t]), float(abar[prev])
        eps = eps_fn(x, torch.full((shape[0],), t, dtype=torch.long, device=device))
        x0, eps = _predict_x0(x, eps, a_t, clip)
        sigma = eta * math.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))  # eq. 16
        x = math.sqrt(a_prev) * x0 + math.sqrt(max(1 - a_prev - sigma**2, 0.0)) * eps  # eq. 12
        if sigma > 0:
            x = x + sigma * torch.randn(shape, generator=generator, device=generator.device).to(device)
    return x


@torch.no_grad()
def sample_ddpm(eps_fn: EpsFn, abar: torch.Tensor, shape: tuple[int, ...], steps: int, sigma: str,
                generator: torch.Generator, clip: bool, device: torch.device) -> torch.Tensor:
    """Ancestral sampling (Ho et al. 2020, Algorithm 2) on a respaced schedule (Nichol & Dhariwal 2021, sec. 4).

    Between consecutive kept steps t > s the respaced beta is ``1 - abar_t / abar_s``; the mean is the
    posterior mean of q(x_s | x_t, x_0) at the predicted x_0 (eq. 7), which equals eq. 11 when unclipped.
    The last step (to t = 0) returns the mean without noise, as Algorithm 2 does.
    """
    T = len(abar) - 1
    ts = respaced(T, steps)
    x = torch.randn(shape, generator=generator, device=generator.device).to(device)
    for i, t in enumerate(ts):
        prev = ts[i + 1] if i + 1 < len(ts) else 0
        a_t, a_prev = float(abar[t]), float(abar[prev])
        beta = 1 - a_t / a_prev
        eps = eps_fn(x, torch.full((shape[0],), t, dtype=torch.long, device=device))
        x0, _ = _predict_x0(x, eps, a_t, clip)
        mean = (math.sqrt(a_prev) * beta / (1 - a_t)) * x0 + (math.sqrt(1 - beta) * (1 - a_prev) / (1 - a_t)) * x
        if prev > 0:
            var = beta if sigma == "beta" else beta * (1 - a_prev) / (1 - a_t)
            x = mean + math.sqrt(var) * torch.randn(shape, generator=generator, device=generator.device).to(device)
        else:
            x = mean
    return x


# ---------------------------------------------------------------------- likelihood pieces
def discretized_gaussian_logp(x: torch.Tensor, mean: torch.Tensor, std: float) -> torch.Tensor:
    """log P(x) of 8-bit values under N(mean, std^2) integrated over each value's bin (Ho et al. 2020, eq. 13).

    ``x`` holds 8-bit values rescaled to [-1, 1] (``v / 127.5 - 1``); bins are [x - 1/255, x + 1/255],
    the first and last extended to -inf and +inf. Elementwise nats, float64.
    """
    x, mean = x.double(), mean.double()
    lo = torch.where(x < -0.999, torch.full_like(x, -math.inf), (x - 1 / 255 - mean) / std)
    hi = torch.where(x > 0.999, torch.full_like(x, math.inf), (x + 1 / 255 - mean) / std)
    return log_diff_ndtr(lo, hi)


def gaussian_kl(mean1: torch.Tensor, var1: float, mean2: torch.Tensor, var2: float) -> torch.Tensor:
    """KL(N(mean1, var1 I) || N(mean2, var2 I)) per example, summed over dimensions, nats (B,)."""
    d = (mean1 - mean2).double().flatten(1)
    return 0.5 * (math.log(var2 / var1) + var1 / var2 - 1 + d.square() / var2).sum(1)


def strata(T: int, k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Stratification of t = 2..T into k strata: (first t of each stratum, stratum sizes), each (k,) int64.

    Strata grow geometrically with t because the terms do: on MNIST most of the sum sits at
    t <= 20 of 1000 (measured: half of it at t <= 5), so small t get strata of their own and are
    summed exactly, while the long tail of tiny terms is sampled. Against k equal strata this cut
    the per-image spread of the estimate from 3.6 to 0.016 bits/dim (k = 50, T = 1000).
    ``k = None`` (or k >= T - 1): every t is its own stratum, i.e. the exact sum over t.
    """
    n = T - 1
    k = n if k is None else min(k, n)
    raw = torch.logspace(0, math.log10(n + 1), k + 1, dtype=torch.float64) - 1  # 0 .. n, geometric in 1 + offset
    edges = [0]
    for i in range(1, k + 1):  # round, keep every stratum non-empty, and leave room for the ones after
        edges.append(min(max(round(raw[i].item()), edges[-1] + 1), n - (k - i)))
    e = torch.tensor(edges)
    return 2 + e[:-1], e[1:] - e[:-1]


class Diffusion(GenerativeModel):
    """DDPM (epsilon prediction, simple loss) with DDPM/DDIM samplers and a VLB on 8-bit data."""

    family = "diffusion"
    Options = DiffusionOptions
    search_space = {  # bench tune (bench/space.py); sample_steps is not searched: it is the sampling cost (NFE)
        "lr": Float(3e-4, 1e-2, log=True),
        "width": Categorical([8, 16, 32]),
        "schedule": Categorical(["linear", "cosine"]),
        "loss_weighting": Categorical(["simple", "min_snr"]),
        "sampler": Categorical(["ddpm", "ddim"]),
        "batch_size": Categorical([32, 64, 128, 256]),
    }
    likelihood_kind = "lower_bound"
    conditional_capable = True
    sampling_options = frozenset({"sampler", "sample_steps", "eta", "sigma", "clip_x0", "vlb_t_samples",
                                  "guidance", "cfg_batched", "classifier_guidance"})
    train_defaults = TrainSettings(ema=0.995)  # evaluation uses an EMA of the denoiser (Ho et al. 2020, sec. 4)

    def __init__(self, spec: DataSpec, options: DiffusionOptions):
        super().__init__(spec, options)
        o = options
        k = spec.num_classes if o.conditional else 0
        self.net = time_conditioned_net(spec, "diffusion", o.width, o.mults, o.patch, o.hidden, num_classes=k)
        if o.classifier:
            self.clf = NoisyClassifier(spec, o.classifier_width, 4 * o.classifier_width)
        betas = make_betas(o.schedule, o.timesteps)  # (T,)
        # index 0 is "t = 0": beta_0 = 0, abar_0 = 1, so tensors below are indexed by t directly
        self.register_buffer("betas", torch.cat([torch.zeros(1, dtype=torch.float64), betas]), persistent=False)
        self.register_buffer("abar", torch.cumprod(1 - self.betas, 0), persistent=False)  # (T + 1,)
        self.loss_weighting = o.loss_weighting or ("min_snr" if spec.kind == "image" else "simple")

    # ------------------------------------------------------------------ pieces
    def _to_model_scale(self, x01: torch.Tensor) -> torch.Tensor:
        return x01 * 2 - 1 if self.spec.kind == "image" else x01

    def _eps(self, net: torch.nn.Module) -> EpsFn:
        T = self.options.timesteps
        return lambda x, t: net(x, t.float() / T)  # the nets take continuous time in [0, 1]

    def _eps_given(self, net: torch.nn.Module, y: torch.Tensor) -> EpsFn:
        """eps(x_t, t, y), y (B,) labels or the null label K; guidance, if any, is applied by the sampler."""
        T = self.options.timesteps
        return lambda x, t: net(x, t.float() / T, y)

    def _guided_eps(self, n: int, generator: torch.Generator, y: torch.Tensor | None) -> EpsFn:
        """The sampler's eps: plain, classifier-free guided and/or classifier guided (module docstring)."""
        o, T, net = self.options, self.options.timesteps, self.averaged("net")
        if not (self.is_conditional or o.classifier_guidance > 0):
            return self._eps(net)
        y = self.labels_for(n, generator, y)
        if self.is_conditional:
            eps_fn = classifier_free(lambda x, t, c: net(x, t.float() / T, c), y, self.spec.num_classes,
                                     o.guidance, o.cfg_batched)
        else:
            eps_fn = self._eps(net)
        if o.classifier_guidance > 0:
            def sigma(t: torch.Tensor) -> torch.Tensor:  # sqrt(1 - abar_t), (B, 1, ...)
                return (1 - self.abar[t]).sqrt().float().view(-1, *[1] * len(self.spec.shape))
            eps_fn = classifier_guided(eps_fn, self.averaged("clf"), y, o.classifier_guidance, sigma,
                                       lambda t: t.float() / T)
        return eps_fn

    def _bcast(self, v: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(B,) -> (B, 1, ...) to broadcast against x, in x's dtype."""
        return v.to(x.dtype).view(-1, *([1] * (x.dim() - 1)))

    # ------------------------------------------------------------------ interface
    def ema_modules(self) -> dict[str, torch.nn.Module]:
        # sampling and the VLB use the EMA of the denoiser (train.ema); the guiding classifier is averaged too
        return {"net": self.net, "clf": self.clf} if self.options.classifier else {"net": self.net}

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        o = self.options
        x0 = self._to_model_scale(x)
        b = x0.shape[0]
        t = torch.randint(1, o.timesteps + 1, (b,), generator=self.gen, device=x0.device)  # (B,)
        eps = torch.randn(x0.shape, generator=self.gen, device=x0.device)
        ab = self._bcast(self.abar[t], x0)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps  # eq. 4
        if self.is_conditional:  # label dropout: the same net learns eps(x_t, null) (Ho & Salimans 2022, Alg. 1)
            pred = self._eps_given(self.net, drop_labels(y, o.label_dropout, self.spec.num_classes, self.gen))(xt, t)
        else:
            pred = self._eps(self.net)(xt, t)
        err = (pred - eps).square().flatten(1).mean(1)  # (B,)
        if self.loss_weighting == "min_snr":  # Min-SNR-5 for eps-prediction (Hang et al. 2023): min(SNR, 5) / SNR
            snr = self.abar[t] / (1 - self.abar[t])
            err = err * (snr.clamp(max=5.0) / snr).to(err.dtype)
        if not o.classifier:
            return {"loss": err.mean()}  # L_simple, eq. 14 (optionally re-weighted per t)
        # the guidance classifier learns on the same x_t, in the same step and budget (Dhariwal & Nichol, sec. 4.1)
        clf = classifier_loss(self.clf, xt, t.float() / o.timesteps, y)
        return {"loss": err.mean() + clf, "eps_loss": err.mean().detach(), "clf_loss": clf.detach()}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, y: torch.Tensor | None = None) -> torch.Tensor:
        o = self.options
        shape = (n, *self.spec.shape)
        clip = o.clip_x0 and self.spec.kind == "image"
        eps_fn = self._guided_eps(n, generator, y)
        if o.sampler == "ddim":
            x = sample_ddim(eps_fn, self.abar, shape, o.sample_steps, o.eta, generator, clip, self.device)
        else:
            x = sample_ddpm(eps_fn, self.abar, shape, o.sample_steps, o.sigma, generator, clip, self.device)
        return ((x + 1) / 2).clamp(0, 1) if self.spec.kind == "image" else x

    @property
    def nfe_per_sample(self) -> float:
        """Network evaluations per sample: one per step, x2 with classifier-free guidance (w > 0), +1 per
        step for the guiding classifier."""
        o = self.options
        per_step = 1 + (self.is_conditional and o.guidance > 0) + (o.classifier_guidance > 0)
        return float(len(respaced(o.timesteps, o.sample_steps)) * per_step)

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, generator: torch.Generator,
                       y: torch.Tensor | None = None) -> list[Likelihood]:
        o = self.options
        x0 = x.float() / 127.5 - 1 if self.spec.kind == "image" else x.float()  # 8-bit grid in [-1, 1]
        k = o.timesteps - 1 if o.vlb_t_samples is None else min(o.vlb_t_samples, o.timesteps - 1)
        params = {"T": o.timesteps, "schedule": o.schedule, "sigma": o.sigma, "t_samples": k,
                  "t_sampling": "all" if k == o.timesteps - 1 else "stratified",
                  "x_t_draws_per_term": 1, "monte_carlo": True}
        if not self.is_conditional:
            lb = -self.vlb_terms(x0, generator, k).sum(1)  # (B,)
            return [Likelihood("vlb", "lower_bound", lb.float(), params)]
        if y is None:  # log p(x) of a conditional model is a sum over classes: not computed (module docstring)
            return []
        lb_y = -self.vlb_terms(x0, generator, k, y.to(x0.device).long()).sum(1)  # log p(x | y), test labels
        null = torch.full((x0.shape[0],), self.spec.num_classes, dtype=torch.long, device=x0.device)
        lb_null = -self.vlb_terms(x0, generator, k, null).sum(1)  # the shared net's unconditional (null-label) model
        return [Likelihood("vlb", "lower_bound", lb_y.float(), params, given="y"),
                Likelihood("vlb", "lower_bound", lb_null.float(), {**params, "label": "null"}, given="null")]

    def vlb_terms(self, x0: torch.Tensor, generator: torch.Generator, t_samples: int | None,
                  y: torch.Tensor | None = None) -> torch.Tensor:
        """Per-example parts of the bound L (Ho et al. 2020, eq. 5), nats (B, 3): [L_T, sum_t L_{t-1}, L_0];
        of log p(x | y) with labels y (B,) (the null label K: the unconditional model) on a conditional net.

        The middle column is the stratified estimate of the sum over t = 2..T (see the module docstring).
        """
        T = self.options.timesteps
        eps_fn = self._eps(self.averaged("net")) if y is None else self._eps_given(self.averaged("net"), y)
        b = x0.shape[0]
        dev = x0.device
        abar, betas = self.abar, self.betas
        x0d = x0.double().flatten(1)  # (B, D)

        # L_T = KL(q(x_T | x_0) || N(0, I)), closed form
        aT = float(abar[T])
        l_T = gaussian_kl(math.sqrt(aT) * x0d, 1 - aT, torch.zeros_like(x0d), 1.0)

        # sum_{t=2}^{T} L_{t-1}: L_{t-1} = KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t))
        first, sizes = strata(T, t_samples)
        middle = torch.zeros(b, dtype=torch.float64, device=dev)
        for f, s in zip(first.tolist(), sizes.tolist()):
            u = torch.rand(b, generator=generator, device=generator.device).to(dev)
            t = f + (u * s).long().clamp(max=s - 1)  # (B,) uniform in the stratum [f, f + s)
            middle += s * self._kl_term(x0, t, eps_fn, generator)

        # L_0 = -log p(x_0 | x_1): discretized Gaussian decoder (eq. 13) with sigma_1^2 = beta_1
        t1 = torch.ones(b, dtype=torch.long, device=dev)
        mean, _ = self._reverse_mean(x0, t1, eps_fn, generator)
        std1 = math.sqrt(float(betas[1]))
        if self.spec.kind == "image":
            l_0 = -discretized_gaussian_logp(x0, mean, std1).flatten(1).sum(1)
        else:
            l_0 = -(-0.5 * ((x0.double() - mean.double()) / std1).square() - math.log(std1) - 0.5 * LOG_2PI).sum(1)
        return torch.stack([l_T, middle, l_0], dim=1)

    def _reverse_mean(self, x0: torch.Tensor, t: torch.Tensor, eps_fn: EpsFn,
                      generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Draw x_t ~ q(x_t | x_0) and return (mu_theta(x_t, t) (eq. 11), x_t)."""
        eps = torch.randn(x0.shape, generator=generator, device=generator.device).to(x0.device)
        ab = self._bcast(self.abar[t], x0)
        beta = self._bcast(self.betas[t], x0)
        xt = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
        mean = (xt - beta / (1 - ab).sqrt() * eps_fn(xt, t)) / (1 - beta).sqrt()  # eq. 11
        return mean, xt

    def _kl_term(self, x0: torch.Tensor, t: torch.Tensor, eps_fn: EpsFn, generator: torch.Generator) -> torch.Tensor:
        """L_{t-1} for per-example t >= 2 (Ho et al. 2020, eq. 5-7), nats (B,)."""
        mean, xt = self._reverse_mean(x0, t, eps_fn, generator)
        ab, ab_prev, beta = self.abar[t], self.abar[t - 1], self.betas[t]  # (B,) float64
        beta_tilde = beta * (1 - ab_prev) / (1 - ab)  # posterior variance, eq. 7
        var = beta if self.options.sigma == "beta" else beta_tilde
        c0 = ab_prev.sqrt() * beta / (1 - ab)
        ct = (1 - beta).sqrt() * (1 - ab_prev) / (1 - ab)
        x0d, xtd = x0.double().flatten(1), xt.double().flatten(1)  # (B, D)
        mu_post = c0[:, None] * x0d + ct[:, None] * xtd  # eq. 7
        d = (mu_post - mean.double().flatten(1)).square().sum(1)  # (B,)
        dim = x0d.shape[1]
        return 0.5 * (dim * (torch.log(var / beta_tilde) + beta_tilde / var - 1) + d / var)


register_family("diffusion", Diffusion)
