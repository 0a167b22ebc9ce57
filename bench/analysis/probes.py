"""What the analysis asks of a trained model: per-example log-likelihoods and reconstructions.

A family may define ``reconstruct(x_uint8) -> images in [0, 1]`` (the optional extension point); the
VAE (decoder mean at the posterior mean) and the autoencoder (decoder of the code) are adapted here
without touching their files.
"""
from __future__ import annotations

import torch

from bench.families.autoencoder import Autoencoder
from bench.families.base import GenerativeModel, Likelihood
from bench.families.vae import VAE

# When a family gives several estimators, the analysis uses the first it has: exact, then the tightest bound.
PREFERRED: tuple[str, ...] = ("exact", "iwae", "vlb", "ode", "elbo")


@torch.no_grad()
def log_likelihoods(model: GenerativeModel, x: torch.Tensor, generator: torch.Generator,
                    batch_size: int = 500) -> dict[str, Likelihood]:
    """Per-example log-likelihoods (nats, CPU float64) of uint8 ``x`` for every estimator the model gives."""
    model.eval()
    parts: dict[str, list[Likelihood]] = {}
    for b in x.split(batch_size):
        for lk in model.log_likelihood(b.to(model.device), generator):
            parts.setdefault(lk.estimator, []).append(lk)
    return {est: Likelihood(est, ch[0].kind, torch.cat([c.log_prob.double().cpu() for c in ch]), ch[0].params)
            for est, ch in parts.items()}


def preferred(lks: dict[str, Likelihood]) -> Likelihood | None:
    """The estimator the analysis reports: exact when there is one, else the tightest bound or estimate."""
    for est in PREFERRED:
        if est in lks:
            return lks[est]
    return next(iter(lks.values()), None)


def has_encoder(model: GenerativeModel) -> bool:
    """A reconstruction of an unlabelled image is possible: a family's own ``reconstruct``, an autoencoder, or an
    unconditional VAE (a cVAE's encoder needs the label, which an out-of-distribution image does not have)."""
    if hasattr(model, "reconstruct"):
        return True
    return isinstance(model, Autoencoder) or (isinstance(model, VAE) and not model.n_labels)


@torch.no_grad()
def reconstruct(model: GenerativeModel, x: torch.Tensor, batch_size: int = 500) -> torch.Tensor:
    """Reconstructions in [0, 1] of uint8 images ``x`` (N, C, H, W), on the CPU."""
    model.eval()
    out = []
    for b in x.split(batch_size):
        b01 = b.to(model.device).float() / 255
        if hasattr(model, "reconstruct"):
            r = model.reconstruct(b.to(model.device))
        elif isinstance(model, VAE) and not model.n_labels:
            mu, _ = model._posterior(b01 * 2 - 1)  # the posterior mean: a deterministic reconstruction
            dec = model._decode(mu, None)  # (B, C, H, W): Bernoulli logits, or the logistic's location in [-1, 1]
            # the decoder distribution's mean, as VAE.sample(sample_mode="mean") gives it
            r = torch.sigmoid(dec) if model.options.decoder == "bernoulli" else (dec.clamp(-1, 1) + 1) / 2
        elif isinstance(model, Autoencoder):
            r = model._decode(model.encoder(b01))
        else:
            raise ValueError(f"family {model.family!r} has no encoder to reconstruct with")
        out.append(r.clamp(0, 1).float().cpu())
    return torch.cat(out)
