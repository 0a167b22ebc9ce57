"""Autoregressive: the PixelCNN is causal, its joint pmf sums to one, its likelihood is the sum of per-pixel
log-softmax, the cached sampler computes the same logits as the network, the points model is a normalised
density that learns the ring, and everything is deterministic given the seed."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from bench.config import Budget
from bench.data import load_dataset
from bench.families.autoregressive import Autoregressive, AutoregressiveOptions, autoregress, scale_in
from bench.families.base import DataSpec
from bench.train import TrainContext, train

SMALL = dict(channels=8, layers=2, head=16)


def _spec(h: int, w: int) -> DataSpec:
    return DataSpec("image", (1, h, w), 10, tuple([0.1] * 10))


def _model(h: int = 8, w: int = 8, seed: int = 0, **opts) -> Autoregressive:
    torch.manual_seed(seed)
    return Autoregressive(_spec(h, w), AutoregressiveOptions(**{**SMALL, **opts})).eval()


@pytest.mark.parametrize("hw", [(8, 8), (5, 7)])
def test_pixelcnn_is_causal(hw):
    """The logits at pixel i have zero gradient w.r.t. every pixel >= i in raster order (the current one included),
    and nonzero gradient w.r.t. the pixel just before and the pixel just above-right (no blind spot)."""
    h, w = hw
    m = _model(h, w, layers=3)
    x = scale_in(torch.randint(0, 256, (1, 1, h, w), generator=torch.Generator().manual_seed(0))).requires_grad_(True)
    logits = m.net(x)  # (1, H, W, 256)
    order = torch.arange(h * w).view(h, w)
    for i in range(h):
        for j in range(w):
            (g,) = torch.autograd.grad(logits[0, i, j].sum(), x, retain_graph=True)
            dep = g[0, 0] != 0
            assert not (dep & (order >= i * w + j)).any(), f"pixel ({i},{j}) sees the future"
            if j > 0:
                assert dep[i, j - 1], f"pixel ({i},{j}) does not see its left neighbour"
            if i > 0 and j + 1 < w:
                assert dep[i - 1, j + 1], f"pixel ({i},{j}) does not see the pixel above-right (blind spot)"


@pytest.mark.parametrize("hw", [(1, 2), (2, 1)])
def test_joint_pmf_sums_to_one_over_all_images(hw):
    """Known answer: summing P(x) over all 256^2 two-pixel images gives 1 (horizontal and vertical stacks)."""
    h, w = hw
    m = _model(h, w, seed=1)
    a, b = torch.meshgrid(torch.arange(256), torch.arange(256), indexing="ij")
    x = torch.stack([a.reshape(-1), b.reshape(-1)], 1).view(-1, 1, h, w).to(torch.uint8)  # (65536, 1, h, w)
    (lk,) = m.log_likelihood(x, torch.Generator())
    total = torch.logsumexp(lk.log_prob.double(), 0).exp().item()
    assert abs(total - 1) < 1e-4


def test_one_pixel_probabilities_sum_to_one_given_the_rest():
    """Sum over the 256 values of the last pixel of P(image) = P(the other pixels), computed independently."""
    m = _model(6, 6, seed=2)
    base = torch.randint(0, 256, (1, 1, 6, 6), generator=torch.Generator().manual_seed(1))
    x = base.repeat(256, 1, 1, 1)
    x[:, 0, 5, 5] = torch.arange(256)
    lp = m.log_likelihood(x.to(torch.uint8), torch.Generator())[0].log_prob.double()
    logits = m.net(scale_in(base))[0].double()  # (H, W, 256)
    per_pixel = F.log_softmax(logits, -1).gather(-1, base[0, 0, :, :, None]).squeeze(-1)  # (H, W)
    prefix = per_pixel.flatten()[:-1].sum()
    assert abs(torch.logsumexp(lp, 0).item() - prefix.item()) < 1e-4


def test_log_likelihood_is_the_sum_of_per_pixel_log_softmax():
    m = _model(8, 8, seed=3)
    x = torch.randint(0, 256, (5, 1, 8, 8), generator=torch.Generator().manual_seed(2)).to(torch.uint8)
    (lk,) = m.log_likelihood(x, torch.Generator())
    assert lk.estimator == "exact" and lk.kind == "exact"
    logits = m.net(scale_in(x))  # (5, 8, 8, 256)
    expected = torch.zeros(5, dtype=torch.float64)
    for i in range(8):
        for j in range(8):
            lsm = torch.log_softmax(logits[:, i, j].double(), -1)
            expected += lsm[torch.arange(5), x[:, 0, i, j].long()]
    assert torch.allclose(lk.log_prob.double(), expected, rtol=1e-5)


def test_cached_sampler_computes_the_same_logits_as_the_network():
    m = _model(7, 9, seed=4, layers=3, kernel=5)
    x = torch.randint(0, 256, (4, 1, 7, 9), generator=torch.Generator().manual_seed(3))
    values, logits = autoregress(m.net, (7, 9), 4, None, given=x)
    assert torch.equal(values, x)
    assert torch.allclose(logits, m.net(scale_in(x)), atol=1e-5)


def test_samples_shape_range_determinism_and_nfe():
    m = _model(8, 8)
    a = m.sample(6, torch.Generator().manual_seed(5))
    b = m.sample(6, torch.Generator().manual_seed(5))
    c = m.sample(6, torch.Generator().manual_seed(6))
    assert a.shape == (6, 1, 8, 8) and a.min() >= 0 and a.max() <= 1
    assert torch.allclose((a * 255).round(), a * 255, atol=1e-4)  # 8-bit values
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert m.nfe_per_sample == 64


def test_colour_images_are_causal_normalised_and_sampled_from_the_network():
    """3 channels: no channel of a pixel sees any channel of that pixel or later ones; summing P over one
    channel's 256 values leaves the product of the other values' probabilities (channels of a pixel are
    conditionally independent given the past); the cached sampler computes the network's logits."""
    torch.manual_seed(4)
    m = Autoregressive(DataSpec("image", (3, 4, 4), 10, tuple([0.1] * 10)), AutoregressiveOptions(**SMALL)).eval()
    x = torch.randint(0, 256, (1, 3, 4, 4), generator=torch.Generator().manual_seed(3))
    xs = scale_in(x).requires_grad_(True)
    logits = m.net(xs)  # (1, 4, 4, 3 * 256)
    (g,) = torch.autograd.grad(logits[0, 2, 1].sum(), xs)
    dep = (g[0] != 0).any(0)  # (H, W): pixels any channel of which the logits at (2, 1) read
    assert dep[2, 0] and dep[1, 2] and not dep[2, 1:].any() and not dep[3].any()
    batch = x.repeat(256, 1, 1, 1)
    batch[:, 1, 3, 3] = torch.arange(256)  # every value of the green channel of the last pixel
    lp = m.log_likelihood(batch.to(torch.uint8), torch.Generator())[0].log_prob.double()
    per_value = F.log_softmax(logits.detach()[0].double().view(4, 4, 3, 256), -1)  # (H, W, C, 256)
    picked = per_value.gather(-1, x[0].permute(1, 2, 0)[..., None]).squeeze(-1)  # (H, W, C)
    assert abs(torch.logsumexp(lp, 0).item() - (picked.sum() - picked[3, 3, 1]).item()) < 1e-4
    values, cached = autoregress(m.net, (4, 4), 1, None, given=x)
    assert torch.equal(values, x) and torch.allclose(cached, logits.detach(), atol=1e-5)
    assert m.sample(2, torch.Generator().manual_seed(0)).shape == (2, 3, 4, 4)


def test_even_kernel_is_refused():
    with pytest.raises(ValueError, match="odd"):
        AutoregressiveOptions(kernel=4)


def test_training_on_digits_lowers_bits_per_dim_and_is_deterministic():
    ds = load_dataset("digits", {})
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        m = Autoregressive(_spec(8, 8), AutoregressiveOptions(**SMALL, lr=3e-3))
        r = train(m, ds, TrainContext(Budget(steps=40), batch_size=64, seed=0))
        runs.append((r.log["nll_bpd"], m.sample(4, torch.Generator().manual_seed(0))))
    bpd = runs[0][0]
    assert bpd[-5:].mean() < bpd[:3].mean() - 2.0  # from ~8 bits/dim (uniform) to well below
    assert bpd.tolist() == runs[1][0].tolist() and torch.equal(runs[0][1], runs[1][1])
    test = -m.log_likelihood(ds.test_x, torch.Generator())[0].log_prob.mean().item() / (64 * math.log(2))
    assert test < 6.0


# ---------------------------------------------------------------------------------- points

POINTS = DataSpec("points", (2,), 8, tuple([1 / 8] * 8))


def test_points_density_integrates_to_one():
    torch.manual_seed(0)
    m = Autoregressive(POINTS, AutoregressiveOptions(hidden=16, components=3)).double().eval()
    n, lim = 1201, 12.0
    axis = torch.linspace(-lim, lim, n, dtype=torch.float64)
    h = (axis[1] - axis[0]).item()
    gx, gy = torch.meshgrid(axis, axis, indexing="ij")
    with torch.no_grad():
        lp = m._points_logp(torch.stack([gx.reshape(-1), gy.reshape(-1)], 1))
    assert abs(lp.exp().sum().item() * h * h - 1) < 0.01


def test_training_on_ring8_fits_the_density_and_samples_land_on_the_modes():
    ds = load_dataset("toy2d", {"pattern": "ring8", "n_train": 4000, "n_test": 2000})
    torch.manual_seed(0)
    m = Autoregressive(POINTS, AutoregressiveOptions())
    r = train(m, ds, TrainContext(Budget(steps=600), batch_size=128, seed=0))
    assert r.log["nll"][-20:].mean() < r.log["nll"][:5].mean() - 2.0
    test_nll = -m.log_likelihood(ds.test_x, torch.Generator())[0].log_prob.mean().item()
    assert test_nll < -1.5  # the true density's NLL is about -2.93 nats; a single Gaussian gets ~ +3.4
    s = m.sample(2000, torch.Generator().manual_seed(0))
    d = torch.cdist(s.double(), ds.mixture.means.double()).min(1).values  # distance to the nearest mode
    assert (d < 0.3).float().mean() > 0.85  # modes are 1.5 apart; 0.3 = 15 of their stds
    assert m.nfe_per_sample == 2
