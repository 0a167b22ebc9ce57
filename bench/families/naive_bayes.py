"""Naive Bayes: class-conditional, every pixel independent given the class.

The simplest baseline with an *exact* likelihood: ``p(x) = sum_c pi_c prod_d p(x_d | c)``.
Fitting is counting, so ``training_step`` only accumulates sufficient statistics
(one epoch sees everything a closed-form fit would); there is no gradient step, so it is the
one non-adversarial family that overrides ``training_step`` (the engine's settings do not apply).

Pixel models on 8-bit images (both are proper distributions over {0..255}, so the
log-likelihood is the common protocol's without any dequantization):

* ``gaussian`` (Gaussian naive Bayes): a Gaussian per class and pixel, discretized to
  the 256 bins, the edge bins taking the tails (as in PixelCNN++'s discretized logistic);
* ``categorical``: a 256-way histogram per class and pixel with additive smoothing.

On 2-D points the Gaussian model is a class-conditional diagonal Gaussian (a
continuous density, exact).

Outside reference (issue 14): scikit-learn. Bayes-rule classification with these statistics equals
``sklearn.naive_bayes.GaussianNB`` / ``CategoricalNB`` predictions on the same data (tests/test_analysis_classify.py),
and the Gaussian bits/dim equals a closed form computed independently (tests/test_naive_bayes.py). The
smoothing is tuned like every other option (``min_std`` 0.302, ``alpha`` 0.0103 in ``suites/mnist.yaml``).
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, Literal

import torch
from pydantic import Field

from bench.families.base import DataSpec, FamilyOptions, GenerativeModel, Likelihood, register_family
from bench.space import Float

if TYPE_CHECKING:
    from bench.engine import Engine


class NaiveBayesOptions(FamilyOptions):
    pixel_model: Literal["gaussian", "categorical"] = "gaussian"  # per-pixel distribution given the class
    alpha: float = Field(1.0, gt=0)  # categorical: additive (Laplace) smoothing per bin
    min_std: float = Field(1.0, gt=0)  # gaussian: floor on the std, in 0..255 pixel units (points: data units)


def log_diff_ndtr(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """log(Phi(b) - Phi(a)) for a < b, stable in both tails (a, b may be +-inf)."""
    # In the upper tail use the mirror image Phi(b) - Phi(a) = Phi(-a) - Phi(-b) so nothing cancels.
    upper = a > 0
    hi = torch.where(upper, -a, b)
    lo = torch.where(upper, -b, a)
    lhi, llo = torch.special.log_ndtr(hi), torch.special.log_ndtr(lo)
    return lhi + torch.log1p(-torch.exp(llo - lhi).clamp(max=1 - 1e-12))


class NaiveBayes(GenerativeModel):
    """Class-conditional naive Bayes (Gaussian or categorical pixels); exact likelihood."""

    family = "naive_bayes"
    Options = NaiveBayesOptions
    search_space = {  # bench tune (bench/space.py): smoothing and the std floor; closed form, so no lr or batch size
        "alpha": Float(0.01, 10.0, log=True),
        "min_std": Float(0.3, 30.0, log=True),
    }
    likelihood_kind = "exact"
    conditional_capable = True
    watched_loss = "nll"
    LOGGED_ROWS = 16  # the logged training NLL is that of the first 16 images of each batch (training_step)

    def __init__(self, spec: DataSpec, options: NaiveBayesOptions):
        super().__init__(spec, options)
        k, d = spec.num_classes, spec.dim
        self.register_buffer("count", torch.zeros(k, dtype=torch.float64))  # examples per class
        if options.pixel_model == "categorical":
            if spec.kind != "image":
                raise ValueError("categorical naive Bayes needs 8-bit images")
            self.register_buffer("hist", torch.zeros(k, d, 256, dtype=torch.float64))  # (K, D, 256)
        else:
            self.register_buffer("s1", torch.zeros(k, d, dtype=torch.float64))  # sum of x
            self.register_buffer("s2", torch.zeros(k, d, dtype=torch.float64))  # sum of x^2

    # ------------------------------------------------------------------ fitting
    def _values(self, x: torch.Tensor) -> torch.Tensor:
        """(B, ...) -> (B, D) in model units: 0..255 integers for images, raw for points."""
        x = x.flatten(1).double()
        return (x * 255).round() if self.spec.kind == "image" else x

    def training_step(self, x: torch.Tensor, y: torch.Tensor, engine: Engine | None = None) -> dict[str, torch.Tensor]:
        """Add the batch to the counts (no optimiser, so the engine is not used); log the NLL of the batch."""
        v = self._values(x)  # (B, D)
        k = self.spec.num_classes
        onehot = torch.nn.functional.one_hot(y, k).double()  # (B, K)
        self.count += onehot.sum(0)
        if self.options.pixel_model == "categorical":
            idx = v.long()  # (B, D)
            for c in y.unique().tolist():
                sel = idx[y == c]  # (b, D)
                self.hist[c].scatter_add_(1, sel.T, torch.ones_like(sel.T, dtype=torch.float64))
        else:
            self.s1 += onehot.T @ v
            self.s2 += onehot.T @ v.square()
        # The logged loss is the exact NLL of the first LOGGED_ROWS images of the batch under the
        # statistics so far: the same curve for the stability evaluator at an eighth of the cost of the
        # whole batch (the Gaussian bin probabilities cost B x K x D double-precision ndtr calls).
        return {"nll": -self._log_prob_values(v[: self.LOGGED_ROWS]).mean().float()}

    # ------------------------------------------------------------------ the model
    def _log_prior(self) -> torch.Tensor:
        return torch.log((self.count + 1.0) / (self.count.sum() + self.spec.num_classes))  # (K,), add-one smoothed

    def _gaussian_params(self) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.count.clamp(min=1)[:, None]  # (K, 1)
        mu = self.s1 / n
        var = (self.s2 / n - mu.square()).clamp(min=0)
        return mu, var.sqrt().clamp(min=self.options.min_std)  # (K, D) each

    def _log_prob_values(self, v: torch.Tensor) -> torch.Tensor:
        """Exact log p(v) in nats, marginalising the class: (B, D) -> (B,)."""
        if self.options.pixel_model == "categorical":
            a = self.options.alpha
            idx = v.long().T.unsqueeze(0).expand(self.spec.num_classes, -1, -1)  # (K, D, B)
            counts = self.hist.gather(2, idx)  # (K, D, B): only the bins the batch uses, not all 256
            per_class = torch.log((counts + a) / (self.count[:, None, None] + 256 * a)).sum(1).T  # (B, K)
        else:
            mu, std = self._gaussian_params()
            if self.spec.kind == "image":
                # bin [v - 0.5, v + 0.5], with the edge bins extended to -inf / +inf
                lo = torch.where(v == 0, -math.inf, v - 0.5)[:, None, :]  # (B, 1, D)
                hi = torch.where(v == 255, math.inf, v + 0.5)[:, None, :]
                per_class = log_diff_ndtr((lo - mu) / std, (hi - mu) / std).sum(2)  # (B, K)
            else:
                z = (v[:, None, :] - mu) / std  # (B, K, D)
                per_class = (-0.5 * z.square() - std.log() - 0.5 * math.log(2 * math.pi)).sum(2)
        return torch.logsumexp(per_class + self._log_prior(), dim=1)

    @torch.no_grad()
    def log_likelihood(self, x: torch.Tensor, generator: torch.Generator) -> list[Likelihood]:
        v = x.flatten(1).double()  # 8-bit values as they are, or points
        return [Likelihood("exact", "exact", self._log_prob_values(v).float())]

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, y: torch.Tensor | None = None) -> torch.Tensor:
        if y is None:
            prior = self._log_prior().exp().float()
            y = torch.multinomial(prior.to(generator.device), n, replacement=True, generator=generator)
        y = y.to(self.count.device)
        if self.options.pixel_model == "categorical":
            # inverse-CDF draws per class: one uniform per pixel, located in that pixel's cumulative histogram
            a = self.options.alpha
            cdf = ((self.hist + a) / (self.count[:, None, None] + 256 * a)).cumsum(-1)  # (K, D, 256)
            u = torch.rand(n, self.spec.dim, generator=generator, device=generator.device, dtype=torch.float64)
            u = u.to(cdf.device)
            v = torch.empty(n, self.spec.dim, device=cdf.device)
            for c in y.unique().tolist():
                rows = (y == c).nonzero().squeeze(1)
                idx = torch.searchsorted(cdf[c], u[rows].T.contiguous())  # (D, n_c)
                v[rows] = idx.T.clamp(max=255).float()
        else:
            mu, std = self._gaussian_params()
            eps = torch.randn(n, self.spec.dim, generator=generator, device=generator.device, dtype=torch.float64)
            v = (mu[y] + std[y] * eps.to(mu.device)).float()
            if self.spec.kind == "image":
                v = v.round().clamp(0, 255)
        if self.spec.kind == "image":
            return (v / 255).view(n, *self.spec.shape)
        return v.view(n, *self.spec.shape)

    def num_parameters(self) -> int:
        """Fitted statistics count as parameters (there are no gradients here)."""
        return sum(b.numel() for b in self.buffers())


register_family("naive_bayes", NaiveBayes)
