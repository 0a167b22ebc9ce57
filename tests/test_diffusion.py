"""Tests of the DDPM family: schedules, samplers and the VLB against closed forms; determinism; training."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from bench.engine import Engine
from bench.errors import BenchError
from bench.families.base import FAMILIES, DataSpec
from bench.families.diffusion import (
    Diffusion,
    DiffusionOptions,
    discretized_gaussian_logp,
    make_betas,
    respaced,
    sample_ddim,
    sample_ddpm,
    strata,
)

DIGITS = DataSpec("image", (1, 8, 8), 10, (0.1,) * 10)
MNIST = DataSpec("image", (1, 28, 28), 10, (0.1,) * 10)
POINTS = DataSpec("points", (2,), 8, (0.125,) * 8)
CPU = torch.device("cpu")


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _model(spec: DataSpec, seed: int = 0, **opts) -> Diffusion:
    torch.manual_seed(seed)
    return Diffusion(spec, DiffusionOptions(**opts))


def _abar(schedule: str, T: int) -> torch.Tensor:
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - make_betas(schedule, T), 0)])


# ---------------------------------------------------------------------- schedule and helpers
def test_registered():
    assert FAMILIES.get("diffusion").cls is Diffusion


def test_linear_schedule_matches_ho_et_al():
    b = make_betas("linear", 1000)
    assert b[0].item() == pytest.approx(1e-4) and b[-1].item() == pytest.approx(0.02)
    # abar_T of the DDPM schedule is about 4e-5 (x_T is almost pure noise)
    assert torch.prod(1 - b).item() == pytest.approx(4.04e-5, rel=0.02)


def test_cosine_schedule_follows_eq_17():
    T, s = 100, 0.008
    abar = _abar("cosine", T)
    f = lambda t: math.cos((t / T + s) / (1 + s) * math.pi / 2) ** 2
    for t in (1, 10, 50, 90):
        assert abar[t].item() == pytest.approx(f(t) / f(0), rel=1e-9)
    assert torch.all(make_betas("cosine", T) <= 0.999)


def test_respaced_and_strata():
    assert respaced(1000, 1000) == list(range(1000, 0, -1))
    ts = respaced(1000, 25)
    assert ts[0] == 1000 and ts[-1] == 1 and len(ts) == 25 and ts == sorted(ts, reverse=True)
    for T, k in [(1000, 7), (1000, 32), (30, 5), (30, 28), (3, 1)]:
        first, sizes = strata(T, k)
        assert len(first) == k and first[0] == 2 and int(sizes.sum()) == T - 1 and torch.all(sizes >= 1)
        assert torch.all(first[1:] == first[:-1] + sizes[:-1])  # contiguous, covering 2..T
    first, sizes = strata(1000, 32)
    assert sizes[:8].tolist() == [1] * 8 and sizes[-1] > 100  # small t exactly, the long tail sampled
    first, sizes = strata(10, None)  # one stratum per t: the exact sum
    assert first.tolist() == list(range(2, 11)) and sizes.tolist() == [1] * 9


def test_discretized_gaussian_sums_to_one():
    """The decoder of Ho et al. eq. 13 is a distribution over the 256 values."""
    v = torch.arange(256, dtype=torch.float64) / 127.5 - 1  # (256,)
    for mean, std in [(0.0, 0.01), (0.99, 0.003), (-1.3, 0.2), (0.5, 2.0)]:
        p = discretized_gaussian_logp(v, torch.full_like(v, mean), std).exp()
        assert p.sum().item() == pytest.approx(1.0, abs=1e-9)


def test_options_are_checked():
    with pytest.raises(ValidationError, match="sample_steps"):
        DiffusionOptions(timesteps=10, sample_steps=20)
    with pytest.raises(ValidationError):
        DiffusionOptions(sampler="euler")
    with pytest.raises(BenchError, match="patch=3"):
        _model(DIGITS, patch=3)


# ---------------------------------------------------------------------- samplers, known answer
def _gaussian_eps(abar: torch.Tensor, mu: torch.Tensor, s: torch.Tensor):
    """The exact eps-prediction E[eps | x_t] for data N(mu, diag(s^2)): x_t ~ N(sqrt(a) mu, a s^2 + 1 - a)."""

    def eps_fn(x, t):
        a = abar[t].float()[:, None]
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * s**2 + 1 - a)

    return eps_fn


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_samplers_recover_gaussian_data(sampler):
    """With the exact noise model of Gaussian data, many-step DDIM/DDPM samples have the data's mean and std."""
    mu, s = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.1])
    abar = _abar("linear", 1000)
    eps_fn = _gaussian_eps(abar, mu, s)
    n = 4000
    if sampler == "ddim":
        x = sample_ddim(eps_fn, abar, (n, 2), 200, 0.0, _gen(), False, CPU)
    else:
        x = sample_ddpm(eps_fn, abar, (n, 2), 1000, "beta", _gen(), False, CPU)
    se_mean = s / math.sqrt(n)
    assert torch.all((x.mean(0) - mu).abs() < 4 * se_mean + 0.01)
    assert torch.allclose(x.std(0), s, rtol=0.06)


def test_ddpm_with_beta_tilde_is_ddim_with_eta_one():
    """Song et al. 2021 (sec. 4.1): eta = 1 turns DDIM into the ancestral sampler with sigma^2 = beta_tilde."""
    abar = _abar("cosine", 100)
    eps_fn = _gaussian_eps(abar, torch.tensor([0.3, -0.2]), torch.tensor([0.4, 0.2]))
    a = sample_ddim(eps_fn, abar, (64, 2), 17, 1.0, _gen(3), True, CPU)
    b = sample_ddpm(eps_fn, abar, (64, 2), 17, "beta_tilde", _gen(3), True, CPU)
    assert torch.allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------------- likelihood, known answer
def _expected_bound_untrained(x0: torch.Tensor, abar: torch.Tensor, sigma: str) -> float:
    """E[L] (nats) of Ho et al. eq. 5 when eps_theta == 0, for one image x0 (D,) in [-1, 1].

    With eps_theta = 0: mu_theta = x_t / sqrt(alpha_t), so mu_post - mu_theta = beta_t eps / sqrt(alpha_t (1 - abar_t))
    and E[L_{t-1}] = D/2 [log(var / beta_tilde) + beta_tilde / var - 1 + beta_t^2 / (alpha_t (1 - abar_t) var)].
    L_0: the decoder mean is x0 + sqrt(beta_1 / alpha_1) eps; its expectation over eps by Gauss-Hermite quadrature.
    """
    T = len(abar) - 1
    d = x0.numel()
    betas = 1 - abar[1:] / abar[:-1]
    l_T = 0.5 * ((1 - abar[T]) + abar[T] * x0.double().square() - 1 - torch.log(1 - abar[T])).sum().item()
    mid = 0.0
    for t in range(2, T + 1):
        b, a, ab, ab_prev = betas[t - 1].item(), 1 - betas[t - 1].item(), abar[t].item(), abar[t - 1].item()
        bt = b * (1 - ab_prev) / (1 - ab)
        var = b if sigma == "beta" else bt
        mid += 0.5 * d * (math.log(var / bt) + bt / var - 1 + b * b / (a * (1 - ab) * var))
    b1 = betas[0].item()
    nodes, weights = np.polynomial.hermite_e.hermegauss(60)  # E over eps ~ N(0, 1)
    nodes = torch.tensor(nodes, dtype=torch.float64)
    weights = torch.tensor(weights / weights.sum(), dtype=torch.float64)
    means = x0.double()[:, None] + math.sqrt(b1 / (1 - b1)) * nodes[None]  # (D, Q)
    logp = discretized_gaussian_logp(x0.double()[:, None].expand_as(means), means, math.sqrt(b1))
    l_0 = -(logp * weights).sum().item()
    return l_T + mid + l_0


@pytest.mark.parametrize("sigma,t_samples", [("beta_tilde", 5), ("beta", 5), ("beta_tilde", None)])
def test_vlb_of_untrained_model_matches_closed_form(sigma, t_samples):
    """The untrained U-Net outputs exactly 0, so E[VLB] has a closed form; the Monte-Carlo estimate must match it."""
    T = 30
    m = _model(DIGITS, timesteps=T, sigma=sigma, vlb_t_samples=t_samples).eval()
    v = torch.randint(0, 256, (1, 1, 8, 8), generator=_gen(1)).to(torch.uint8)
    v[0, 0, 0, :3] = torch.tensor([0, 255, 128], dtype=torch.uint8)  # both edge bins and a middle one
    x = v.expand(600, 1, 8, 8)  # one image, 600 independent estimates
    assert float(m.averaged("net")(x.float(), torch.rand(600)).abs().max()) == 0.0
    lk = m.log_likelihood(x, _gen(2))[0]
    assert lk.kind == "lower_bound" and lk.estimator == "vlb"
    assert lk.params["t_samples"] == (t_samples or T - 1) and lk.params["T"] == T
    est = -lk.log_prob.double()
    expected = _expected_bound_untrained(v.flatten().double() / 127.5 - 1, _abar("linear", T), sigma)
    se = est.std().item() / math.sqrt(len(est))
    assert abs(est.mean().item() - expected) < 4 * se + 1e-3 * abs(expected), (est.mean().item(), expected, se)


def test_vlb_on_points_is_finite_and_below_the_untrained_bound():
    m = _model(POINTS, timesteps=50, vlb_t_samples=10)
    x = torch.randn(200, 2, generator=_gen(0))
    lk = m.log_likelihood(x, _gen(1))[0]
    assert lk.log_prob.shape == (200,) and torch.isfinite(lk.log_prob).all()


# ---------------------------------------------------------------------- shapes, NFE, determinism
@pytest.mark.parametrize("spec,opts", [(DIGITS, {}), (MNIST, {}), (POINTS, {}),
                                       (DIGITS, {"sampler": "ddim", "eta": 0.5, "patch": 2})])
def test_sample_shapes_and_range(spec, opts):
    m = _model(spec, sample_steps=4, **opts).eval()
    s = m.sample(5, _gen())
    assert s.shape == (5, *spec.shape) and torch.isfinite(s).all()
    if spec.kind == "image":
        assert s.min() >= 0 and s.max() <= 1


@pytest.mark.parametrize("sampler,steps,T", [("ddim", 7, 1000), ("ddpm", 25, 1000), ("ddim", 10, 10)])
def test_nfe_is_the_number_of_network_calls(sampler, steps, T):
    m = _model(DIGITS, sampler=sampler, sample_steps=steps, timesteps=T).eval()
    calls = []
    m.averaged("net").register_forward_hook(lambda *a: calls.append(1))
    m.sample(3, _gen())
    assert len(calls) == m.nfe_per_sample == steps


def test_same_seed_same_samples_and_likelihood():
    outs = []
    for _ in range(2):
        m = _model(DIGITS, seed=5, sample_steps=5, vlb_t_samples=4)
        m.seed_training(11)
        x = torch.randint(0, 256, (16, 1, 8, 8), generator=_gen(0)).float() / 255
        engine = Engine(m)
        for _ in range(3):
            engine.step(x, torch.zeros(16, dtype=torch.long))
        m.eval()
        outs.append((m.sample(6, _gen(1)), m.log_likelihood((x * 255).round().to(torch.uint8), _gen(2))[0].log_prob))
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1], outs[1][1])


def test_ema_and_parameter_count():
    m = _model(DIGITS)
    assert m.num_parameters() == sum(p.numel() for p in m.net.parameters())
    assert all(not p.requires_grad for p in m.averaged("net").parameters())
    before = [p.detach().clone() for p in m.net.parameters()]
    Engine(m).step(torch.rand(8, 1, 8, 8), torch.zeros(8, dtype=torch.long))
    d = (1 + 1) / (10 + 1)  # warm-up decay at the first update
    for p0, p1, e in zip(before, m.net.parameters(), m.averaged("net").parameters()):
        assert torch.allclose(e, d * p0 + (1 - d) * p1, atol=1e-7)
    assert any(not torch.equal(p0, p1) for p0, p1 in zip(before, m.net.parameters()))


# ---------------------------------------------------------------------- training
def _ring(n: int, g: torch.Generator) -> torch.Tensor:
    k = torch.randint(0, 8, (n,), generator=g).double()
    ang = k * 2 * math.pi / 8
    return (2 * torch.stack([ang.cos(), ang.sin()], 1) + 0.02 * torch.randn(n, 2, generator=g, dtype=torch.float64)).float()


def test_training_on_ring_lowers_loss_and_samples_land_on_the_ring():
    torch.manual_seed(0)
    m = Diffusion(POINTS, DiffusionOptions(timesteps=200))
    m.seed_training(0)
    g = _gen(0)
    engine = Engine(m)
    losses = [float(engine.step(_ring(128, g), torch.zeros(128, dtype=torch.long))["loss"]) for _ in range(1500)]
    assert np.mean(losses[-100:]) < 0.6 * np.mean(losses[:20])
    m.eval()
    s = m.sample(1000, _gen(1))
    r = s.norm(dim=1)
    assert ((r - 2).abs() < 0.25).float().mean() > 0.8  # on the ring of radius 2
    # and the bound improved on the untrained model's
    test = _ring(300, _gen(7))
    trained = m.log_likelihood(test, _gen(2))[0].log_prob.mean()
    fresh = Diffusion(POINTS, DiffusionOptions(timesteps=200)).log_likelihood(test, _gen(2))[0].log_prob.mean()
    assert trained > fresh + 1.0
