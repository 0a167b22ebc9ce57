"""A family bench does not ship: every pixel an independent Gaussian, trained by gradient descent.

The smallest model that honestly trains and has an exact likelihood: ``D`` means and ``D`` log-stds,
fitted by maximum likelihood of the 8-bit data under the *discretized* Gaussian (each value owns the
bin ``[v - 1/2, v + 1/2] / 255``, the two edge bins open to infinity, as in PixelCNN++'s discretized
logistic, Salimans et al. 2017, eq. 2). Sampling draws ``mu + sigma * eps`` and clips to [0, 1]; the
harness rounds to 8 bits, which is exactly the binning above, so samples and likelihood are one model.

It follows bench's family contract (``bench.families.base``): it states ``family``, ``Options``,
``likelihood_kind`` and ``watched_loss``, and writes ``loss``, ``sample`` and ``log_likelihood``;
bench's engine does the backward pass and the optimiser step.
"""
from __future__ import annotations

import math

import torch
from pydantic import Field
from torch import nn

from bench.families.base import DataSpec, FamilyOptions, GenerativeModel, Likelihood


class PixelGaussianOptions(FamilyOptions):
    lr: float = Field(0.05, gt=0)  # Adam learning rate (bench's default optimiser reads options.lr)
    init_std: float = Field(0.3, gt=0)  # starting std of every pixel, in [0, 1] units


def log_bin_prob(v: torch.Tensor, mu: torch.Tensor, log_sigma: torch.Tensor) -> torch.Tensor:
    """log P(v) of 8-bit values v (B, D) under N(mu, sigma^2) discretized to 256 bins, (B, D) nats."""
    sigma = log_sigma.exp()
    a, b = ((v - 0.5) / 255 - mu) / sigma, ((v + 0.5) / 255 - mu) / sigma  # bin edges in std units, finite
    # interior bins: Phi(b) - Phi(a) = Phi(-a) - Phi(-b); take the lower tail, where the difference does not cancel
    upper = a + b > 0
    lo, hi = torch.where(upper, -b, a), torch.where(upper, -a, b)
    la, lb = torch.special.log_ndtr(lo), torch.special.log_ndtr(hi)
    interior = lb + torch.log(-torch.expm1(la - lb).clamp(max=-1e-30))
    # edge bins are open: P(v = 0) = Phi(b), P(v = 255) = 1 - Phi(a) (no infinities, so no NaN gradients)
    return torch.where(v == 0, torch.special.log_ndtr(b), torch.where(v == 255, torch.special.log_ndtr(-a), interior))


class PixelGaussian(GenerativeModel):
    """Independent Gaussian per pixel, fitted by gradient descent (a bench-example plugin); exact likelihood."""

    family = "pixel_gaussian"
    Options = PixelGaussianOptions
    likelihood_kind = "exact"
    watched_loss = "nll"

    def __init__(self, spec: DataSpec, options: PixelGaussianOptions):
        super().__init__(spec, options)
        if spec.kind != "image":
            raise ValueError("pixel_gaussian models 8-bit images")
        self.mu = nn.Parameter(torch.full((spec.dim,), 0.5))  # (D,) in [0, 1] units
        self.log_sigma = nn.Parameter(torch.full((spec.dim,), math.log(options.init_std)))  # (D,)

    def _log_prob(self, v: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) 8-bit values (any dtype) -> (B,) nats."""
        return log_bin_prob(v.flatten(1).float(), self.mu, self.log_sigma).sum(1)

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        nll = -self._log_prob((x * 255).round()).mean()  # x = uint8 / 255 (bench's convention)
        return {"nll": nll, "bpd": (nll / (self.spec.dim * math.log(2))).detach()}

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        return {"adam": torch.optim.Adam(self.parameters(), lr=self.options.lr)}

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, y: torch.Tensor | None = None) -> torch.Tensor:
        eps = torch.randn(n, self.spec.dim, generator=generator, device=generator.device).to(self.mu.device)
        return (self.mu + self.log_sigma.exp() * eps).clamp(0, 1).view(n, *self.spec.shape)

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, generator: torch.Generator) -> list[Likelihood]:
        return [Likelihood("exact", "exact", self._log_prob(x))]
