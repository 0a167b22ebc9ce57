"""Likelihood on one protocol: per-example log-likelihoods from the family -> NLL metrics.

Names say the estimator, the kind says what it is, and a bound is never reported under
an exact name: ``nll_bpd_exact`` (flows, autoregressive, naive Bayes), ``nll_bpd_elbo`` and
``nll_bpd_iwae`` (VAE lower bounds on log p, so upper bounds on the NLL), ``nll_bpd_vlb``
(diffusion). Bits/dim = nats / (D ln 2) on 8-bit data; on continuous 2-D points only
nats per point are reported (bits/dim of a continuous density is not the 8-bit protocol).
"""
from __future__ import annotations

import math

import torch

from bench.data import Dataset
from bench.families.base import GenerativeModel, Likelihood
from bench.results import Metric, metric, register_metric

# estimator -> kind of the log-likelihood it gives
ESTIMATORS: dict[str, str] = {
    "exact": "exact",
    "elbo": "lower_bound",
    "iwae": "lower_bound",
    "vlb": "lower_bound",
    "ode": "estimate",  # continuous-time flows: probability-flow ODE with a stochastic trace estimator
}
for _est, _kind in ESTIMATORS.items():
    register_metric(
        f"nll_nats_{_est}", unit="nats", higher_is_better=False, kind=_kind, group="likelihood",  # type: ignore[arg-type]
        description=f"test negative log-likelihood per example, {_est} ({_kind}); 8-bit protocol on images",
    )
    register_metric(
        f"nll_bpd_{_est}", unit="bits/dim", higher_is_better=False, kind=_kind, group="likelihood",  # type: ignore[arg-type]
        description=f"test negative log-likelihood in bits per dimension, {_est} ({_kind}); 8-bit protocol",
    )


@torch.no_grad()
def evaluate_likelihood(
    model: GenerativeModel,
    dataset: Dataset,
    device: torch.device,
    generator: torch.Generator,
    n_examples: int | None = None,
    batch_size: int = 500,
) -> list[Metric]:
    """Mean test NLL for every estimator the family offers, with its standard error."""
    x_all = dataset.test_x[:n_examples] if n_examples else dataset.test_x
    parts: dict[str, list[Likelihood]] = {}
    for i in range(0, len(x_all), batch_size):
        for lk in model.log_likelihood(x_all[i : i + batch_size].to(device), generator):
            parts.setdefault(lk.estimator, []).append(lk)
    out: list[Metric] = []
    d = dataset.dim
    for est, chunks in parts.items():
        if est not in ESTIMATORS:
            raise ValueError(f"{model.family}: unknown likelihood estimator {est!r}; add it to ESTIMATORS")
        if chunks[0].kind != ESTIMATORS[est]:
            raise ValueError(f"{model.family}: estimator {est!r} must be of kind {ESTIMATORS[est]!r}")
        lp = torch.cat([c.log_prob.double().cpu() for c in chunks])  # (N,)
        nll, se = -lp.mean().item(), (lp.std().item() / math.sqrt(len(lp)) if len(lp) > 1 else 0.0)
        params = {"n_examples": len(lp), "split": "test", **chunks[0].params}
        out.append(metric(f"nll_nats_{est}", nll, stderr=se, **params))
        if dataset.kind == "image":
            out.append(metric(f"nll_bpd_{est}", nll / (d * math.log(2)), stderr=se / (d * math.log(2)), **params))
    return out
