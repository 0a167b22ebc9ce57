"""VAE: the IWAE bound is >= the ELBO, tightens with k, and both are finite; the decoder is a proper 8-bit pmf."""
from __future__ import annotations

import torch

from bench.engine import Engine
from bench.families.base import DataSpec
from bench.families.vae import VAE, VAEOptions, discretized_logistic_logp

SPEC = DataSpec("image", (1, 8, 8), 10, tuple([0.1] * 10))


def _model(seed=0) -> VAE:
    torch.manual_seed(seed)
    return VAE(SPEC, VAEOptions(latent_dim=4, width=8, iwae_k=1))


def test_discretized_logistic_sums_to_one():
    v = torch.arange(256).double()
    x = v / 127.5 - 1
    for mean, log_scale in ((0.0, -2.0), (0.9, -4.0), (-1.2, 0.5)):
        p = discretized_logistic_logp(x, torch.tensor(mean).double(), torch.tensor(log_scale).double()).exp()
        assert abs(p.sum().item() - 1) < 1e-6


def test_iwae_bound_is_tighter_than_elbo_and_grows_with_k():
    m = _model()
    x01 = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    engine = Engine(m)
    for _ in range(30):  # a little training so the posterior is not the prior
        engine.step((x01 * 255).round() / 255, torch.zeros(32, dtype=torch.long))
    m.eval()
    x = (x01 * 255).round().to(torch.uint8)
    means = {}
    for k in (1, 5, 50):
        m.options.iwae_k = k
        lks = {lk.estimator: lk for lk in m.log_likelihood(x, torch.Generator().manual_seed(2))}
        assert lks["elbo"].kind == "lower_bound" and lks["iwae"].kind == "lower_bound"
        assert torch.isfinite(lks["iwae"].log_prob).all() and torch.isfinite(lks["elbo"].log_prob).all()
        assert lks["iwae"].params == {"k": k}
        means[k] = lks["iwae"].log_prob.mean().item()
        elbo = lks["elbo"].log_prob.mean().item()
    assert means[50] > means[5] > means[1] - 0.5  # statistically increasing in k
    assert means[50] >= elbo


def test_training_reduces_negative_elbo_and_samples_are_images():
    m = _model()
    g = torch.Generator().manual_seed(0)
    x = (torch.rand(64, 1, 8, 8, generator=g) > 0.5).float()
    engine = Engine(m)
    first = engine.step(x, torch.zeros(64, dtype=torch.long))["neg_elbo"].item()
    for _ in range(60):
        last = engine.step(x, torch.zeros(64, dtype=torch.long))["neg_elbo"].item()
    assert last < first
    s = m.sample(10, torch.Generator().manual_seed(0))
    assert s.shape == (10, 1, 8, 8) and s.min() >= 0 and s.max() <= 1


def test_sampling_is_deterministic_given_the_generator():
    m = _model()
    a = m.sample(5, torch.Generator().manual_seed(3))
    b = m.sample(5, torch.Generator().manual_seed(3))
    assert torch.equal(a, b)
