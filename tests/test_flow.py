"""Flow: every log-determinant equals the brute-force log|det J|, the flow inverts, the density integrates
to one, training lowers the NLL and puts samples on the data, and sampling is deterministic."""
from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from bench.config import Budget
from bench.data import load_dataset
from bench.errors import BenchError
from bench.families.base import DataSpec
from bench.families.flow import (
    ActNorm, AffineCoupling, Flow, FlowOptions, FlowStep, InvConv1x1, SplitPrior, squeeze, std_normal_logp, unsqueeze,
)
from bench.train import TrainContext, train

IMG = DataSpec("image", (1, 8, 8), 10, tuple([0.1] * 10))
TINY_IMG = DataSpec("image", (1, 4, 4), 10, tuple([0.1] * 10))
POINTS = DataSpec("points", (2,), 8, tuple([1 / 8] * 8))


def _perturb(module: torch.nn.Module, seed: int, scale: float = 0.3) -> None:
    """Random non-zero weights everywhere (the zero-initialised coupling outputs would make tests trivial)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))


def _brute_logdet(fn, x: torch.Tensor) -> float:
    """log|det J| of fn at one example x (1, ...), from the full Jacobian (double precision)."""
    d = x.numel()
    jac = jacobian(lambda t: fn(t.view_as(x)).reshape(-1), x.reshape(-1))  # (D, D)
    assert jac.shape == (d, d)
    return torch.linalg.slogdet(jac)[1].item()


@pytest.mark.parametrize("make", [
    lambda: ActNorm(4), lambda: InvConv1x1(4), lambda: AffineCoupling(4, 8, 3),
    lambda: AffineCoupling(4, 8, 3, tanh_scale=False), lambda: FlowStep(4, 8, 3),
])
def test_layer_logdet_matches_brute_force_jacobian_and_inverts(make):
    torch.manual_seed(0)
    layer = make().double()
    _perturb(layer, 1)
    layer.eval()  # no ActNorm data init: the perturbed parameters are what is tested
    x = torch.randn(1, 4, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    y, ld = layer(x, torch.zeros(1, dtype=torch.float64))
    brute = _brute_logdet(lambda t: layer(t, torch.zeros(1, dtype=torch.float64))[0], x)
    assert abs(ld.item() - brute) < 1e-8 * max(1.0, abs(brute))
    assert abs(ld.item()) > 0.1  # the test is not trivially 0 = 0
    assert torch.allclose(layer.inverse(y), x, atol=1e-10)


def test_split_prior_logdet_matches_brute_force_jacobian_and_inverts():
    torch.manual_seed(0)
    split = SplitPrior(2, 3).double()
    _perturb(split, 8)
    x = torch.randn(1, 5, 3, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(9))

    def fn(t: torch.Tensor) -> torch.Tensor:  # (out, keep) -> (z, keep)
        return torch.cat([split(t[:, :2], t[:, 2:], torch.zeros(1, dtype=torch.float64))[0], t[:, 2:]], 1)

    z, ld = split(x[:, :2], x[:, 2:], torch.zeros(1, dtype=torch.float64))
    brute = _brute_logdet(fn, x)
    assert abs(ld.item() - brute) < 1e-8 * max(1.0, abs(brute)) and abs(brute) > 0.1
    assert torch.allclose(split.inverse(z, x[:, 2:]), x[:, :2], atol=1e-10)


def test_squeeze_is_a_permutation_and_unsqueeze_inverts_it():
    x = torch.arange(2 * 8 * 6, dtype=torch.float).view(1, 2, 8, 6)
    s = squeeze(x)
    assert s.shape == (1, 8, 4, 3)
    assert torch.equal(s.flatten().sort().values, x.flatten())
    assert torch.equal(unsqueeze(s), x)
    assert torch.equal(s[0, :4, 0, 0], torch.tensor([0.0, 1, 6, 7]))  # the top-left 2x2 block of channel 0


def test_image_log_prob_equals_change_of_variables_with_brute_force_jacobian():
    """log p(v + u) on [0, 256)^D = log N(f(pre(v + u))) + log|det d f(pre(.)) / d(v + u)|, the Jacobian by autograd."""
    torch.manual_seed(0)
    m = Flow(TINY_IMG, FlowOptions(levels=2, steps_per_level=2, hidden=8)).double()
    _perturb(m, 3, 0.2)
    m.eval()
    g = torch.Generator().manual_seed(4)
    v = torch.randint(0, 256, (1, 1, 4, 4), generator=g).double()
    u = torch.rand(1, 1, 4, 4, generator=g, dtype=torch.float64)
    logp = m.log_prob(v, u).item()

    def full_map(w: torch.Tensor) -> torch.Tensor:  # w = v + u on [0, 256)^D -> all base variables, flattened
        x, _ = m._preprocess(w, torch.zeros_like(w))
        return torch.cat([z.flatten(1) for z in m._forward(x)[0]], 1)

    w = v + u
    z = full_map(w)
    expected = std_normal_logp(z).item() + _brute_logdet(full_map, w)
    assert abs(logp - expected) < 1e-7 * abs(expected)
    assert z.shape[1] == 16  # the base has the data's dimension


@pytest.mark.parametrize("spec", [IMG, TINY_IMG, POINTS])
def test_inverse_of_forward_is_identity(spec):
    torch.manual_seed(0)
    m = Flow(spec, FlowOptions(steps_per_level=2, point_steps=3, hidden=8))
    _perturb(m, 5, 0.1)
    m.eval()
    x = torch.randn(5, *spec.shape, generator=torch.Generator().manual_seed(6))
    zs, _ = m._forward(x)
    assert [tuple(z.shape[1:]) for z in zs] == m._z_shapes()
    assert torch.allclose(m._inverse(zs), x, atol=1e-4)


def test_points_density_integrates_to_one():
    """Known answer: a normalised density on R^2 integrates to 1 (midpoint rule on a fine grid)."""
    torch.manual_seed(0)
    m = Flow(POINTS, FlowOptions(point_steps=4, hidden=16))
    _perturb(m, 7, 0.15)
    m.eval()
    n, lim = 801, 8.0
    axis = torch.linspace(-lim, lim, n, dtype=torch.float64)
    h = (axis[1] - axis[0]).item()
    gx, gy = torch.meshgrid(axis, axis, indexing="ij")
    pts = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)
    with torch.no_grad():
        mass = m.double().log_prob(pts).exp().sum().item() * h * h
    assert abs(mass - 1) < 0.01


def test_likelihood_is_exact_kind_and_bits_per_dim_of_an_untrained_flow_is_sane():
    torch.manual_seed(0)
    m = Flow(IMG, FlowOptions(steps_per_level=1, hidden=8)).eval()
    x = torch.randint(0, 256, (7, 1, 8, 8), dtype=torch.uint8)
    (lk,) = m.log_likelihood(x, torch.Generator().manual_seed(0))
    assert lk.estimator == "exact" and lk.kind == "exact" and lk.log_prob.shape == (7,)
    bpd = -lk.log_prob / (64 * math.log(2))
    assert torch.isfinite(bpd).all() and (bpd > 0).all()  # a density on [0, 256)^D of 8-bit noise: > 0 bits/dim


def test_levels_must_divide_the_image():
    with pytest.raises(BenchError, match="levels=3"):
        Flow(DataSpec("image", (1, 28, 28), 10, tuple([0.1] * 10)), FlowOptions(levels=3))


def test_samples_have_the_right_shape_range_and_are_deterministic():
    torch.manual_seed(0)
    m = Flow(IMG, FlowOptions(steps_per_level=1, hidden=8)).eval()
    a = m.sample(6, torch.Generator().manual_seed(3))
    b = m.sample(6, torch.Generator().manual_seed(3))
    c = m.sample(6, torch.Generator().manual_seed(4))
    assert a.shape == (6, 1, 8, 8) and a.min() >= 0 and a.max() <= 1
    assert torch.allclose((a * 255).round(), a * 255, atol=1e-4)  # 8-bit values
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert m.nfe_per_sample == 1.0


def test_training_is_deterministic_given_the_seed():
    ds = load_dataset("digits", {})
    outs = []
    for _ in range(2):
        torch.manual_seed(0)
        m = Flow(IMG, FlowOptions(steps_per_level=1, hidden=8))
        r = train(m, ds, TrainContext(Budget(steps=5), batch_size=32, seed=0))
        outs.append((r.log["nll_bpd"].tolist(), m.sample(3, torch.Generator().manual_seed(0))))
    assert outs[0][0] == outs[1][0] and torch.equal(outs[0][1], outs[1][1])


def test_training_on_ring8_lowers_the_nll_and_puts_samples_on_the_ring():
    ds = load_dataset("toy2d", {"pattern": "ring8"})
    torch.manual_seed(0)
    m = Flow(POINTS, FlowOptions())
    r = train(m, ds, TrainContext(Budget(steps=400), batch_size=128, seed=0))
    loss = r.log["nll"]
    assert loss[-50:].mean() < loss[:20].mean() - 2.0
    test_nll = -m.log_likelihood(ds.test_x, torch.Generator())[0].log_prob.mean().item()
    assert test_nll < 1.0  # a Gaussian fit gives ~3.4 nats, the true density -2.9 (measured: -0.02)
    s = m.sample(2000, torch.Generator().manual_seed(0))
    on_ring = ((s.norm(dim=1) - 2).abs() < 0.3).float().mean()
    assert on_ring > 0.8  # measured 0.92: most samples on the ring of radius 2


def test_training_on_digits_lowers_bits_per_dim():
    ds = load_dataset("digits", {})
    torch.manual_seed(0)
    m = Flow(IMG, FlowOptions(steps_per_level=2, hidden=16))
    r = train(m, ds, TrainContext(Budget(steps=150), batch_size=64, seed=0))
    bpd = r.log["nll_bpd"]
    assert bpd[-10:].mean() < bpd[:5].mean() - 1.0
    test = -m.log_likelihood(ds.test_x, torch.Generator().manual_seed(0))[0].log_prob.mean().item() / (64 * math.log(2))
    assert test < bpd[:5].mean()
