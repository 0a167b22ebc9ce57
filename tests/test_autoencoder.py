"""Autoencoder baseline: reconstruction trains, the ex-post mixture is fitted by the trainer and sampled."""
from __future__ import annotations

import torch

from bench.config import Budget
from bench.data import load_dataset
from bench.families.autoencoder import Autoencoder, AutoencoderOptions
from bench.families.base import DataSpec
from bench.runner import data_spec
from bench.train import TrainContext, train


def test_training_lowers_reconstruction_and_fits_the_mixture():
    ds = load_dataset("digits")
    torch.manual_seed(0)
    m = Autoencoder(data_spec(ds), AutoencoderOptions(latent_dim=4, width=8, components=3))
    r = train(m, ds, TrainContext(Budget(steps=120), batch_size=64, seed=0))
    assert r.status == "ok" and r.log["rec"].iloc[-10:].mean() < 0.5 * r.log["rec"].iloc[:5].mean()
    assert bool(m.gmm_fitted) and abs(m.gmm_weights.sum().item() - 1) < 1e-5
    assert r.spent.finalize_seconds > 0 and r.spent.seconds >= r.spent.finalize_seconds
    s = m.sample(50, torch.Generator().manual_seed(0))
    assert s.shape == (50, 1, 8, 8) and 0 <= s.min() and s.max() <= 1
    assert torch.equal(s, m.sample(50, torch.Generator().manual_seed(0)))
    assert m.log_likelihood(ds.test_x[:4], torch.Generator()) == []


def test_mixture_draws_have_the_fitted_moments():
    """Known answer: codes from two separated Gaussians; the mixture's draws reproduce their means and shares."""
    spec = DataSpec("points", (2,), 2, (0.5, 0.5))
    m = Autoencoder(spec, AutoencoderOptions(latent_dim=2, components=2, hidden=8))
    m.encoder = torch.nn.Identity()  # codes = the data itself, so the fitted mixture is known
    g = torch.Generator().manual_seed(0)
    a = torch.randn(3000, 2, generator=g) * 0.5 + torch.tensor([5.0, 0.0])
    b = torch.randn(1000, 2, generator=g) * 0.5 + torch.tensor([-5.0, 0.0])
    m.on_train_end(iter([torch.cat([a, b])]))
    z = m.sample_codes(20000, torch.Generator().manual_seed(1))
    right = z[:, 0] > 0
    assert abs(right.float().mean().item() - 0.75) < 0.02
    assert torch.allclose(z[right].mean(0), torch.tensor([5.0, 0.0]), atol=0.05)
    assert torch.allclose(z[right].std(0), torch.tensor([0.5, 0.5]), atol=0.03)
    assert torch.allclose(z[~right].mean(0), torch.tensor([-5.0, 0.0]), atol=0.08)
