"""The likelihood evaluator: per-example log-likelihoods from the family -> NLL metrics on one protocol.

Names say the estimator, the kind says what it is, and a bound is never reported under
an exact name: ``nll_bpd_exact`` (flows, autoregressive, naive Bayes), ``nll_bpd_elbo`` and
``nll_bpd_iwae`` (VAE lower bounds on log p, so upper bounds on the NLL), ``nll_bpd_vlb``
(diffusion). Bits/dim = nats / (D ln 2) on 8-bit data; on continuous 2-D points only
nats per point are reported (bits/dim of a continuous density is not the 8-bit protocol).
Every estimator has the pair ``nll_nats_<estimator>`` / ``nll_bpd_<estimator>``: the report's
likelihood table is one row per pair. A conditional model's bounds of log p(x | y) with the test
labels carry ``_given_y`` (``nll_bpd_elbo_given_y``), a guidance net's null-label model
``_null_label``; log p(x) of a conditional model, where the family computes it (a sum over the
classes), has the plain names. How many test examples: ``eval.likelihood_examples``
and ``eval.likelihood_batch_size`` (top-level keys of the suite's eval section).
"""
from __future__ import annotations

import math

import torch

from bench.data import Dataset
from bench.families.base import GenerativeModel, Likelihood
from bench.metrics.base import EvalContext, Evaluator, register_evaluator
from bench.results import Metric, MetricKind, MetricSpec, metric

# estimator -> kind of the log-likelihood it gives. Order = the report's row order and the preference
# for the one-line cell summary: exact first, then the tighter bound (IWAE) before the looser (ELBO).
ESTIMATORS: dict[str, MetricKind] = {
    "exact": "exact",
    "iwae": "lower_bound",
    "elbo": "lower_bound",
    "vlb": "lower_bound",
    "ode": "estimate",  # continuous-time flows: probability-flow ODE with a stochastic trace estimator
}
# what a likelihood is of (Likelihood.given) -> metric-name suffix. A conditional model's log p(x | y) of
# the test labels and a guidance net's null-label model are other quantities than log p(x): other names,
# never mixed with the unconditional ones in one column.
GIVEN: dict[str | None, tuple[str, str]] = {
    None: ("", ""),
    "y": ("_given_y", ", of log p(x | y) with the test labels (a conditional model)"),
    "null": ("_null_label", ", of the null-label (unconditional) mode of a classifier-free-guidance net"),
}
LIKELIHOOD_METRICS: tuple[MetricSpec, ...] = tuple(
    spec
    for suffix, what in GIVEN.values()
    for est, kind in ESTIMATORS.items()
    for spec in (
        MetricSpec(f"nll_nats_{est}{suffix}", "nats", False, kind, role="likelihood", headline=not suffix,
                   description=f"test negative log-likelihood per example, {est} ({kind}){what}; 8-bit protocol on "
                               "images"),
        MetricSpec(f"nll_bpd_{est}{suffix}", "bits/dim", False, kind, role="likelihood", axis=not suffix,
                   description=f"test negative log-likelihood in bits per dimension, {est} ({kind}){what}; 8-bit "
                               "protocol"),
    )
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
    y_all = dataset.test_y[: len(x_all)]
    parts: dict[tuple[str, str | None], list[Likelihood]] = {}
    for i in range(0, len(x_all), batch_size):
        x = x_all[i : i + batch_size].to(device)
        # a conditional model also gets the test labels (log p(x | y)); unconditional families keep two arguments
        lks = (model.log_likelihood(x, generator, y_all[i : i + batch_size].to(device)) if model.is_conditional
               else model.log_likelihood(x, generator))
        for lk in lks:
            parts.setdefault((lk.estimator, lk.given), []).append(lk)
    out: list[Metric] = []
    d = dataset.dim
    for (est, given), chunks in parts.items():
        if est not in ESTIMATORS:
            raise ValueError(f"{model.family}: unknown likelihood estimator {est!r}; add it to ESTIMATORS")
        if chunks[0].kind != ESTIMATORS[est]:
            raise ValueError(f"{model.family}: estimator {est!r} must be of kind {ESTIMATORS[est]!r}")
        lp = torch.cat([c.log_prob.double().cpu() for c in chunks])  # (N,)
        nll, se = -lp.mean().item(), (lp.std().item() / math.sqrt(len(lp)) if len(lp) > 1 else 0.0)
        if given not in GIVEN:
            raise ValueError(f"{model.family}: Likelihood.given must be one of {list(GIVEN)}, got {given!r}")
        suffix = GIVEN[given][0]
        params = {"n_examples": len(lp), "split": "test", **chunks[0].params}
        out.append(metric(f"nll_nats_{est}{suffix}", nll, stderr=se, **params))
        if dataset.kind == "image":
            out.append(metric(f"nll_bpd_{est}{suffix}", nll / (d * math.log(2)), stderr=se / (d * math.log(2)),
                              **params))
    return out


class LikelihoodEvaluator(Evaluator):
    """Test-split negative log-likelihood, nats and bits/dim, with its kind (exact, bound, estimate)."""

    name = "likelihood"
    needs = frozenset({"model", "test_data"})
    metrics = LIKELIHOOD_METRICS

    def evaluate(self, ctx: EvalContext) -> list[Metric]:
        return evaluate_likelihood(ctx.model, ctx.dataset, ctx.device, ctx.generator(2), ctx.eval.likelihood_examples,
                                   ctx.eval.likelihood_batch_size)


register_evaluator("likelihood", LikelihoodEvaluator)
