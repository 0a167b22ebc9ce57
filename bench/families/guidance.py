"""Conditioning and guidance shared by the diffusion and flow-matching families.

* **Label dropout** (Ho & Salimans 2022, "Classifier-Free Diffusion Guidance", Algorithm 1): during
  training each label is replaced by the null label K with probability ``p_uncond``, so one network
  learns both the conditional prediction f(x, t, y) and the unconditional one f(x, t, null).
* **Classifier-free guidance** (ibid., eq. 6 / Algorithm 2): the sampler uses
  ``f_w = (1 + w) f(x, t, y) - w f(x, t, null)``; w = 0 is the plain conditional model and the
  unconditional pass is then skipped, so the sampler is bit-identical to the unguided one. The same
  combination applies to a flow-matching velocity (the velocity is an affine function of the
  score along the linear path, so guiding it is guiding the score).
* **Classifier guidance** (Dhariwal & Nichol 2021, "Diffusion Models Beat GANs on Image Synthesis",
  sec. 4.2, eq. 14 / Algorithm 2): a classifier p_phi(y | x_t, t) trained on noisy inputs shifts the
  noise prediction to ``eps_hat = eps - s sqrt(1 - abar_t) grad_x log p_phi(y | x_t, t)``.

NFE accounting: one network evaluation is one batch row through one network. A CFG step costs 2
per sample whether the two passes are batched (one call on 2n rows) or not; a classifier-guided step
costs 1 for the denoiser plus 1 for the classifier's forward pass (its backward pass is not counted,
as a Heun step's second slope is counted but not the arithmetic between them).
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from bench.families.base import DataSpec
from bench.families.nets import ConvEncoder, mlp, timestep_embedding

CondFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]  # (x, t, y or None) -> out
StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # what the samplers call: (x, t) -> out


def drop_labels(y: torch.Tensor, p_uncond: float, null: int, generator: torch.Generator) -> torch.Tensor:
    """Replace each label by the null label ``null`` with probability ``p_uncond`` (Ho & Salimans, Alg. 1)."""
    if p_uncond <= 0:
        return y
    drop = torch.rand(y.shape, generator=generator, device=generator.device).to(y.device) < p_uncond
    return torch.where(drop, torch.full_like(y, null), y)


def classifier_free(fn: CondFn, y: torch.Tensor, null: int, w: float, batched: bool = False) -> StepFn:
    """The guided prediction ``(1 + w) fn(x, t, y) - w fn(x, t, null)`` as a sampler's (x, t) -> out.

    w = 0 returns the conditional prediction alone (no unconditional pass, bit-identical to the
    unguided sampler). ``batched`` runs both passes as one call on 2n rows (faster on an accelerator;
    the same 2 NFE per sample, possibly different in the last bits).
    """
    y_null = torch.full_like(y, null)
    if w == 0:
        return lambda x, t: fn(x, t, y)
    if batched:
        def guided_batched(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            both = fn(torch.cat([x, x]), torch.cat([t, t]), torch.cat([y, y_null]))  # (2n, ...)
            cond, uncond = both.chunk(2)
            return (1 + w) * cond - w * uncond
        return guided_batched
    return lambda x, t: (1 + w) * fn(x, t, y) - w * fn(x, t, y_null)  # Ho & Salimans, eq. 6


class NoisyClassifier(nn.Module):
    """p_phi(y | x_t, t): a small classifier of noisy inputs (Dhariwal & Nichol 2021, sec. 4.1 use the
    U-Net's encoder half; a stride-2 conv encoder is the CPU-sized version here). (B, ...), (B,) -> (B, K).

    Images: the shared ``ConvEncoder`` features, then an MLP over [features, time embedding]; points: an
    MLP over [x, time embedding]. Time t is continuous in [0, 1], as for the time-conditioned nets.
    """

    def __init__(self, spec: DataSpec, width: int, hidden: int, t_dim: int = 32):
        super().__init__()
        self.t_dim = t_dim
        k = spec.num_classes
        if spec.kind == "image":
            enc = ConvEncoder(spec.shape, 1, width)
            self.features, d_in = enc.features, enc.flat_dim  # (B, c, s, s) feature maps, c s s of them
        else:
            self.features = nn.Identity()
            d_in = spec.dim
        self.head = mlp(d_in + t_dim, k, hidden, depth=2)

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        h = self.features(x).flatten(1)
        return self.head(torch.cat([h, timestep_embedding(t, self.t_dim)], dim=1))  # (B, K) logits


def classifier_loss(clf: NoisyClassifier, xt: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the noisy classifier on the training batch's own x_t (Dhariwal & Nichol, sec. 4.1)."""
    return F.cross_entropy(clf(xt.detach(), t), y)


def classifier_guided(eps_fn: StepFn, clf: nn.Module, y: torch.Tensor, s: float,
                      sigma: Callable[[torch.Tensor], torch.Tensor], time: Callable[[torch.Tensor], torch.Tensor]
                      ) -> StepFn:
    """``eps - s sigma_t grad_x log p(y | x_t, t)`` (Dhariwal & Nichol 2021, eq. 14, Algorithm 2).

    ``sigma(t)`` gives sqrt(1 - abar_t) as (B, 1, ...) and ``time(t)`` the classifier's time in [0, 1].
    The gradient is taken with grad mode on inside the samplers' no_grad.
    """
    def guided(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        eps = eps_fn(x, t)
        with torch.enable_grad():
            xg = x.detach().requires_grad_(True)
            logp = F.log_softmax(clf(xg, time(t)), dim=1).gather(1, y[:, None]).sum()
            (grad,) = torch.autograd.grad(logp, xg)
        return eps - s * sigma(t) * grad
    return guided
