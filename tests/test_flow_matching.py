"""Tests of the flow-matching family: ODE sampler and likelihood against closed forms, the 8-bit protocol, training."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.special import log_ndtr

from bench.engine import Engine
from bench.errors import BenchError
from bench.families.base import FAMILIES, DataSpec
from bench.families.flow_matching import (
    FlowMatching,
    FlowMatchingOptions,
    ode_log_likelihood,
    ode_step,
    sample_ode,
)

DIGITS = DataSpec("image", (1, 8, 8), 10, (0.1,) * 10)
MNIST = DataSpec("image", (1, 28, 28), 10, (0.1,) * 10)
POINTS = DataSpec("points", (2,), 8, (0.125,) * 8)
CPU = torch.device("cpu")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _model(spec: DataSpec, seed: int = 0, **opts) -> FlowMatching:
    torch.manual_seed(seed)
    return FlowMatching(spec, FlowMatchingOptions(**opts))


def test_registered_and_options_checked():
    assert FAMILIES.get("flow_matching").cls is FlowMatching
    with pytest.raises(BenchError, match="patch=3"):
        _model(DIGITS, patch=3)


# ---------------------------------------------------------------------- solvers, known answer
def test_solvers_have_their_order():
    """dx/dt = x from 1 at t = 0 gives e at t = 1: Euler's error is O(h), Heun's and midpoint's O(h^2)."""
    f = lambda x, t: x
    err = {}
    for solver in ("euler", "heun", "midpoint"):
        for n in (10, 20):
            x = torch.ones(1, dtype=torch.float64)
            for i in range(n):
                x = ode_step(f, x, i / n, 1 / n, solver)
            err[solver, n] = abs(x.item() - math.e)
    assert 1.8 < err["euler", 10] / err["euler", 20] < 2.2
    for s in ("heun", "midpoint"):
        assert 3.6 < err[s, 10] / err[s, 20] < 4.4 and err[s, 20] < err["euler", 20] / 20


MU = torch.tensor([1.0, -0.5])
SIGMA = torch.tensor([[0.5, 0.3], [0.3, 0.4]])


def gaussian_velocity(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The exact marginal velocity of the linear path for data N(MU, SIGMA) and noise N(0, I).

    x_t = (1 - t) x_0 + t x_1 is Gaussian with mean t mu and covariance C_t = (1 - t)^2 I + t^2 Sigma;
    E[x_1 - x_0 | x_t] = mu + (t Sigma - (1 - t) I) C_t^{-1} (x_t - t mu).
    """
    eye = torch.eye(2, dtype=x.dtype)
    tt = t.to(x.dtype)[:, None, None]  # (B, 1, 1)
    c = (1 - tt) ** 2 * eye + tt**2 * SIGMA.to(x.dtype)  # (B, 2, 2)
    k = tt * SIGMA.to(x.dtype) - (1 - tt) * eye
    r = torch.linalg.solve(c, (x - t.to(x.dtype)[:, None] * MU.to(x.dtype)).unsqueeze(-1))
    return MU.to(x.dtype) + (k @ r).squeeze(-1)


def _gaussian_logpdf(x: torch.Tensor) -> torch.Tensor:
    return torch.distributions.MultivariateNormal(MU.double(), SIGMA.double()).log_prob(x.double())


def test_ode_sampler_recovers_gaussian_data():
    x = sample_ode(gaussian_velocity, (4000, 2), 50, "heun", _gen(0), CPU)
    assert torch.allclose(x.mean(0), MU, atol=0.04)
    assert torch.allclose(torch.cov(x.T), SIGMA, atol=0.04)


def test_ode_likelihood_is_exact_for_the_exact_gaussian_flow():
    """Change of variables along the exact flow gives log N(x; mu, Sigma) up to the solver's error."""
    x = torch.tensor([[1.0, -0.5], [0.2, 0.1], [2.0, -1.5]], dtype=torch.float64)
    lp = ode_log_likelihood(gaussian_velocity, x, 100, "heun", None)
    assert torch.allclose(lp, _gaussian_logpdf(x), atol=2e-3)


def test_hutchinson_estimate_is_unbiased():
    """Rademacher probes: the mean of many one-probe estimates matches the exact-trace value."""
    x = torch.tensor([[0.4, 0.3]], dtype=torch.float64).expand(3000, 2)
    exact = ode_log_likelihood(gaussian_velocity, x[:1], 20, "euler", None)
    g = _gen(3)
    probes = (2.0 * torch.randint(0, 2, (1, *x.shape), generator=g) - 1).double()
    est = ode_log_likelihood(gaussian_velocity, x, 20, "euler", probes)
    se = est.std().item() / math.sqrt(len(est))
    assert est.std().item() > 0.01  # the off-diagonal Jacobian terms make it noisy ...
    assert abs(est.mean().item() - exact.item()) < 4 * se  # ... but unbiased


# ---------------------------------------------------------------------- the 8-bit protocol
def test_untrained_image_likelihood_is_the_dequantized_gaussian_on_the_8bit_scale():
    """v_theta == 0: the flow is the identity, so log P(v) estimate = log N(x; 0, I) - D log 128 exactly."""
    m = _model(DIGITS).eval()
    v = torch.randint(0, 256, (50, 1, 8, 8), generator=_gen(1)).to(torch.uint8)
    lk = m.log_likelihood(v, _gen(2))[0]
    assert lk.kind == "estimate" and lk.estimator == "ode" and lk.params["probes"] == 1
    u = torch.rand(v.shape, generator=_gen(2))  # the same dequantization draw
    x = (v.double() + u) / 128 - 1
    expected = (-0.5 * x.square() - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1) - 64 * math.log(128)
    assert torch.allclose(lk.log_prob.double(), expected, atol=1e-3)


def test_dequantized_estimate_is_a_tight_lower_bound_on_the_exact_8bit_probability():
    """With p_x = N(0, I) the exact P(v) is a product of normal-CDF differences over the bins of width 1/128;
    E_u[estimate] <= log P(v) (Jensen) and the gap is tiny because the bins are narrow."""
    m = _model(DIGITS).eval()
    v = torch.randint(0, 256, (1, 1, 8, 8), generator=_gen(4)).to(torch.uint8)
    est = m.log_likelihood(v.expand(400, 1, 8, 8), _gen(5))[0].log_prob.double()
    lo = v.double().flatten().numpy() / 128 - 1
    hi = lo + 1 / 128
    exact = float(np.sum(np.log(np.exp(log_ndtr(hi)) - np.exp(log_ndtr(lo)))))
    assert est.mean().item() <= exact + 4 * est.std().item() / 20
    assert exact - est.mean().item() < 0.01 * 64


# ---------------------------------------------------------------------- shapes, NFE, determinism
@pytest.mark.parametrize("spec", [DIGITS, MNIST, POINTS])
def test_sample_shapes_and_8bit_grid(spec):
    m = _model(spec, sample_steps=3).eval()
    s = m.sample(5, _gen())
    assert s.shape == (5, *spec.shape) and torch.isfinite(s).all()
    if spec.kind == "image":
        assert s.min() >= 0 and s.max() <= 1
        assert torch.equal(s * 255, (s * 255).round())  # each sample is an 8-bit value (its dequantization bin)


@pytest.mark.parametrize("solver,steps,nfe", [("euler", 7, 7), ("heun", 5, 10), ("midpoint", 4, 8)])
def test_nfe_is_the_number_of_network_calls(solver, steps, nfe):
    m = _model(DIGITS, solver=solver, sample_steps=steps).eval()
    calls = []
    m.averaged("net").register_forward_hook(lambda *a: calls.append(1))
    m.sample(3, _gen())
    assert len(calls) == m.nfe_per_sample == nfe


def test_same_seed_same_samples_and_likelihood():
    outs = []
    for _ in range(2):
        m = _model(DIGITS, seed=5, sample_steps=4, likelihood_steps=3)
        m.seed_training(11)
        x = torch.randint(0, 256, (16, 1, 8, 8), generator=_gen(0)).float() / 255
        engine = Engine(m)
        for _ in range(3):
            engine.step(x, torch.zeros(16, dtype=torch.long))
        m.eval()
        outs.append((m.sample(6, _gen(1)), m.log_likelihood((x * 255).round().to(torch.uint8), _gen(2))[0].log_prob))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_likelihood_can_be_switched_off():
    m = _model(DIGITS, likelihood=False)
    assert m.log_likelihood(torch.zeros(2, 1, 8, 8, dtype=torch.uint8), _gen()) == []


# ---------------------------------------------------------------------- training
def _ring(n: int, g: torch.Generator) -> torch.Tensor:
    k = torch.randint(0, 8, (n,), generator=g).double()
    ang = k * 2 * math.pi / 8
    return (2 * torch.stack([ang.cos(), ang.sin()], 1) + 0.02 * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def test_training_on_ring_lowers_loss_and_samples_land_on_the_ring():
    m = _model(POINTS)
    m.seed_training(0)
    g = _gen(0)
    engine = Engine(m)
    losses = [float(engine.step(_ring(128, g), torch.zeros(128, dtype=torch.long))["loss"]) for _ in range(1500)]
    assert np.mean(losses[-100:]) < 0.8 * np.mean(losses[:20])
    m.eval()
    s = m.sample(1000, _gen(1))
    assert ((s.norm(dim=1) - 2).abs() < 0.25).float().mean() > 0.8  # on the ring of radius 2
    test = _ring(300, _gen(7))
    trained = m.log_likelihood(test, _gen(2))[0].log_prob.mean()
    fresh = _model(POINTS).log_likelihood(test, _gen(2))[0].log_prob.mean()
    assert trained > fresh + 2.0
