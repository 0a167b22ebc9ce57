"""The controllability evaluator: does a conditional sample show the class that was asked for?

For a model that samples p(x | y) (``is_conditional``: a conditional-capable family with
``conditional: true``), labels y are drawn from the training class frequencies, ``sample(n, g, y)``
draws one sample per label, and the domain classifier (``bench.metrics.domain``, its logits) names
the class it sees in each. Controllability is the share of samples whose predicted class is the
requested one, overall and per requested class (Dhariwal & Nichol 2021 and Ho & Salimans 2022 read
guidance the same way, through a classifier's accuracy on guided samples). On 2-D mixtures the
classifier is the true mixture: a point belongs to the mode whose mean is nearest (modes have equal
weight and equal spread, so this is the Bayes classifier).

Known answers: a classifier that is always right gives 1; one that always says the same class
gives that class's share of the requested labels (1/K for balanced labels).
"""
from __future__ import annotations

import torch
from pydantic import Field

from bench.metrics.base import EvalContext, Evaluator, EvaluatorOptions, register_evaluator
from bench.metrics.fidelity import domain_extractor
from bench.results import Metric, MetricSpec, metric, unavailable


class ControllabilityOptions(EvaluatorOptions):
    """Conditional sampling and its classification (the suite's ``eval.controllability``)."""

    n_samples: int | None = Field(None, gt=0, le=1_000_000)  # conditional samples; None: eval.n_samples
    batch_size: int = Field(500, gt=0)  # samples per sample() call and per classifier pass


def controllability(predicted: torch.Tensor, requested: torch.Tensor, num_classes: int) -> tuple[float, list[float | None]]:
    """Share of ``predicted == requested`` (both (N,) class indices), overall and per requested class (None for
    a class never requested)."""
    hit = (predicted == requested).double()  # (N,)
    per_class = [hit[requested == k].mean().item() if bool((requested == k).any()) else None
                 for k in range(num_classes)]
    return hit.mean().item(), per_class


def nearest_mode(points: torch.Tensor, means: torch.Tensor) -> torch.Tensor:
    """(N, D) points -> (N,) index of the nearest of the (K, D) mode means."""
    return torch.cdist(points.float(), means.float()).argmin(dim=1)


class ControllabilityEvaluator(Evaluator):
    """Share of conditional samples the domain classifier assigns to the requested class."""

    name = "controllability"
    Options = ControllabilityOptions
    needs = frozenset({"model", "labels"})
    metrics = (
        MetricSpec("controllability", "", True, role="quality", headline=True,
                   description="share of conditional samples the domain classifier assigns to the requested class "
                               "(labels drawn from the class frequencies; per class in params.per_class)"),
    )

    def evaluate(self, ctx: EvalContext) -> list[Metric]:
        opts = self.options
        assert isinstance(opts, ControllabilityOptions)
        model, ds = ctx.model, ctx.dataset
        if not model.is_conditional:
            return [unavailable("controllability", "the model is not conditional (conditional: false or a family "
                                "that cannot be)")]
        if ds.kind == "points" and ds.mixture is None:
            return [unavailable("controllability", f"dataset {ds.name!r} has points but no known mixture to "
                                "classify them by")]
        n = opts.n_samples or ctx.eval.n_samples
        g = ctx.generator(6)
        model.eval()
        predicted, requested = [], []
        with torch.no_grad():
            for i in range(0, n, opts.batch_size):
                y = model.sample_labels(min(opts.batch_size, n - i), g).to(model.device)  # (b,) from class frequencies
                x = model.sample(len(y), g, y)
                if ds.kind == "points":
                    predicted.append(nearest_mode(x.cpu(), ds.mixture.means))
                else:
                    # quantised to 8 bits first, as every image metric sees samples (bench.evaluate.to_uint8;
                    # importing it here would be an import cycle: bench.evaluate imports the config, which
                    # imports the evaluators)
                    x8 = (x.clamp(0, 1) * 255).round().to(torch.uint8).cpu()
                    logits = domain_extractor(ds, ctx.device).extract(x8, opts.batch_size, ctx.device)["logits"]
                    predicted.append(logits.argmax(dim=1).cpu())
                requested.append(y.cpu())
        share, per_class = controllability(torch.cat(predicted), torch.cat(requested), ds.num_classes)
        return [metric("controllability", share, n_samples=n, per_class=[None if v is None else round(v, 4)
                                                                         for v in per_class])]


register_evaluator("controllability", ControllabilityEvaluator)
