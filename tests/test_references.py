"""scripts/references.py: each public reference trains a few steps and samples images in [0, 1]; the PixelCNN's
bits/dim and row-cropped sampler, the dopri5 solver, the OT coupling and the MAF's density conversion, inverse and
BatchNorm statistics against known answers; the CLI."""
from __future__ import annotations

import copy
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributions import AffineTransform, Normal, SigmoidTransform, TransformedDistribution

from bench.data import Dataset, load_dataset

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "references.py"
_spec = importlib.util.spec_from_file_location("references", SCRIPT)
refs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(refs)

# Per reference: constructor options and batch size for a tiny run. The DDPM's eps-model costs ~26 GFLOP per
# image and call, so it trains on 2 images and samples through a 5-step schedule (the CLI always uses 1000).
# The MAF keeps its 784 dimensions but gets 2 blocks of 64 hidden units (5 x 1024: 17M parameters).
TINY = {"vae": ({}, 8), "dcgan": ({}, 8), "cgan": ({}, 8), "ddpm": ({"n_t": 5}, 2), "pixelcnn": ({}, 4), "flow-matching": ({}, 8),
        "maf": ({"blocks": 2, "hidden": 64}, 8)}
# PixelCNN sampling is 784 network calls per image: 2 images; the others 4 (DCGAN: a partial BN batch of 4)
N_SAMPLES = {"pixelcnn": 2}


@pytest.fixture(scope="module")
def mnist() -> Dataset:
    return load_dataset("mnist", {"train_subset": 64})


def test_every_reference_has_a_tiny_setting():
    assert set(TINY) == set(refs.REFERENCES)
    for cls in refs.REFERENCES.values():
        assert cls.source and cls.settings and cls.batch_size > 0


@pytest.mark.parametrize("name", list(refs.REFERENCES))
def test_reference_trains_and_samples_images_in_unit_range(name: str, mnist: Dataset):
    options, batch = TINY[name]
    ref = refs.build(name, seed=0, **options)
    spent = refs.train(ref, mnist.train_x, seconds=None, max_steps=3, batch_size=batch, train_y=mnist.train_y)
    assert spent["steps"] == 3 and spent["train_seconds"] > 0 and math.isfinite(spent["last_loss"])
    ref.finish_training(mnist.train_x)
    n = N_SAMPLES.get(name, 4)
    torch.manual_seed(1)
    x = ref.sample(n, torch.arange(n) % 10) if ref.conditional else ref.sample(n)
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    assert x.std() > 0  # not a constant image
    assert ref.nfe_per_sample() >= 1


def test_same_seed_same_weights():
    a, b = refs.build("dcgan", seed=3), refs.build("dcgan", seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.G.parameters(), b.G.parameters()))


def test_cgan_is_conditioned_on_the_label_in_both_players(mnist: Dataset):
    """The label enters G and D (Mirza & Osindero): the same z with another label is another image, and D's
    verdict on one image changes with the label; training without labels is refused."""
    ref = refs.build("cgan", seed=0)
    with pytest.raises(ValueError, match="conditional: give train_y"):
        refs.train(ref, mnist.train_x, seconds=None, max_steps=1)
    z = torch.randn(2, ref.latent_dim)
    ref.G.eval()
    with torch.no_grad():
        a, b = ref.generate(z, torch.tensor([0, 0])), ref.generate(z, torch.tensor([0, 7]))
        assert torch.equal(a[0], b[0]) and not torch.allclose(a[1], b[1])
        ref.D.eval()
        x = a[:1].expand(2, -1, -1, -1)
        d = ref.discriminate(x, torch.tensor([3, 5]))
        assert d[0] != d[1]
    g_params = sum(p.numel() for p in ref.G.parameters())
    d_params = sum(p.numel() for p in ref.D.parameters())
    # the published MLPs at img_size 28: 110-128-256-512-1024-784 with BN(eps .8) on three, 794-512-512-512-1
    assert g_params == 100 + (110 * 128 + 128) + (128 * 256 + 256 + 512) + (256 * 512 + 512 + 1024) \
        + (512 * 1024 + 1024 + 2048) + (1024 * 784 + 784)
    assert d_params == 100 + (794 * 512 + 512) + 2 * (512 * 512 + 512) + (512 + 1)


def test_budget_in_seconds_counts_the_step_that_crosses_it(mnist: Dataset):
    ref = refs.build("vae", seed=0)
    spent = refs.train(ref, mnist.train_x, seconds=0.05)
    assert spent["steps"] >= 1 and spent["train_seconds"] >= 0.05
    with pytest.raises(ValueError, match="budget"):
        refs.train(ref, mnist.train_x, seconds=None)


def test_batches_reshuffle_every_epoch_and_honour_drop_last():
    torch.manual_seed(0)
    kept = refs.batches(10, 4, drop_last=False)
    epoch1, epoch2 = [next(kept) for _ in range(3)], [next(kept) for _ in range(3)]
    assert [len(b) for b in epoch1] == [4, 4, 2] and sorted(torch.cat(epoch1).tolist()) == list(range(10))
    assert not torch.equal(torch.cat(epoch1), torch.cat(epoch2))
    dropped = refs.batches(10, 4, drop_last=True)
    assert [len(next(dropped)) for _ in range(3)] == [4, 4, 4]  # 4, 4 | next epoch 4
    with pytest.raises(ValueError, match="cannot fill"):
        next(refs.batches(3, 4, drop_last=True))


# ---------------------------------------------------------------------------------------------- PixelCNN
def test_pixelcnn_bits_per_dim_of_an_untrained_net_is_near_8(mnist: Dataset):
    """Near-uniform logits over 256 values give log2(256) = 8 bits per pixel."""
    bpd = refs.build("pixelcnn", seed=0).bits_per_dim(mnist.test_x[:8])
    assert math.isfinite(bpd) and 7.5 < bpd < 9.0


def test_pixelcnn_bits_per_dim_is_the_mean_cross_entropy_in_bits():
    ref = refs.build("pixelcnn", seed=0)
    x = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8)
    ref.net.eval()
    with torch.no_grad():
        logp = torch.log_softmax(ref.net(x.float() / 255), dim=1)  # (3, 256, 28, 28)
    want = -logp.gather(1, x.long()).mean().item() / math.log(2)
    assert ref.bits_per_dim(x, batch=2) == pytest.approx(want, rel=1e-5)


def test_pixelcnn_row_crop_gives_the_full_image_logits():
    """The sampler's shortcut: row i's logits from rows i-24..i equal those of the whole image."""
    ref = refs.build("pixelcnn", seed=0)
    ref.net.eval()
    x = torch.rand(1, 1, 28, 28)
    with torch.no_grad():
        full = ref.net(x)  # (1, 256, 28, 28)
        for i in (0, 5, 24, 25, 27):
            assert torch.allclose(ref.row_logits(x, i), full[:, :, i], atol=1e-4)


def test_pixelcnn_is_causal():
    """A pixel's logits do not depend on the pixel itself or anything after it in raster order."""
    ref = refs.build("pixelcnn", seed=0)
    ref.net.eval()
    x = torch.rand(1, 1, 28, 28)
    y = x.clone()
    y[0, 0, 14, 10:] = torch.rand(18)
    y[0, 0, 15:] = torch.rand(13, 28)
    with torch.no_grad():
        a, b = ref.net(x), ref.net(y)
    assert torch.allclose(a[:, :, :14], b[:, :, :14]) and torch.allclose(a[:, :, 14, :11], b[:, :, 14, :11])
    assert not torch.allclose(a[:, :, 14, 11:], b[:, :, 14, 11:])


# ---------------------------------------------------------------------------------------------- OT-CFM
def test_dopri5_solves_a_linear_ode_to_its_tolerance():
    """dy/dt = -2 t y from y(0) = 1 gives exp(-1) at t = 1."""
    y, nfe = refs.dopri5(lambda t, y: -2 * t * y, torch.ones(4, dtype=torch.float64), atol=1e-6, rtol=1e-6)
    assert torch.allclose(y, torch.full((4,), math.exp(-1), dtype=torch.float64), atol=1e-5)
    assert 8 <= nfe < 200


def test_ot_pairs_recovers_a_hidden_matching():
    torch.manual_seed(0)
    x1 = torch.randn(16, 1, 4, 4)
    perm = torch.randperm(16)
    x0 = x1[perm] + 0.01 * torch.randn(16, 1, 4, 4)  # x0[k] is next to x1[perm[k]]
    a, b = refs.ot_pairs(x0, x1)
    assert a.shape == x0.shape and (a - b).abs().max() < 0.1


def test_unet_maps_images_to_velocities():
    net = refs.UNet()
    v = net(torch.rand(3), torch.randn(3, 1, 28, 28))
    assert v.shape == (3, 1, 28, 28) and torch.all(v == 0)  # guided-diffusion zero-initialises the output conv


# ---------------------------------------------------------------------------------------------- MAF
def test_made_is_autoregressive():
    """du/dx is lower triangular (u_i reads x_<=i) with diagonal exp(-a_i)."""
    torch.manual_seed(0)
    made = refs.MADE(12, 30)  # 30 hidden units > d - 1: degrees wrap around, as 1024 over 783
    x = torch.randn(12)
    jac = torch.autograd.functional.jacobian(lambda x: made(x[None])[0][0], x)  # (12, 12)
    _, a = made.mean_log_scale(x[None])
    assert torch.all(jac.triu(1) == 0)
    assert torch.allclose(jac.diagonal(), torch.exp(-a[0]))
    assert jac.tril(-1).abs().sum() > 0


def test_made_cut_inverse_equals_the_reference_loop():
    """The cut inverse against the reference's loop: the full MADE on x with zeros at >= i, column i kept."""
    torch.manual_seed(0)
    made = refs.MADE(12, 30)
    for layer in made.layers:
        torch.nn.init.normal_(layer.bias, 0, 0.5)  # nonzero biases: the cut must keep them
    u = torch.randn(5, 12)
    x = torch.zeros_like(u)
    with torch.no_grad():
        for i in range(12):
            m, a = made.mean_log_scale(x)
            x[:, i] = u[:, i] * torch.exp(a[:, i]) + m[:, i]
    assert torch.allclose(made.inverse(u), x, atol=1e-5)
    assert torch.allclose(made(x)[0], u, atol=1e-5)


@pytest.fixture(scope="module")
def small_maf():
    """A 2-block MAF on 784 dimensions with nonzero, random BatchNorm parameters and statistics, in eval mode."""
    ref = refs.build("maf", seed=0, blocks=2, hidden=64)
    torch.manual_seed(1)
    for layer in ref.flow:
        if isinstance(layer, refs.BatchNormFlow):
            for t in (layer.log_gamma.data, layer.beta.data, layer.running_mean):
                t.copy_(0.3 * torch.randn(784))
            layer.running_var.copy_(torch.rand(784) + 0.5)
    ref.flow.eval()
    return ref


def test_maf_flow_inverse_inverts_the_forward_in_eval_mode(small_maf):
    l = 2 * torch.randn(6, 784)
    with torch.no_grad():
        z, _ = small_maf.flow_forward(l)
        assert torch.allclose(small_maf.flow_inverse(z), l, atol=1e-4)


def test_maf_batchnorm_statistics_are_those_of_one_full_batch(small_maf):
    """set_batchnorm_statistics over chunks = a train-mode forward of everything as one batch (momentum 0)."""
    ref = copy.deepcopy(small_maf)
    l = 2 * torch.randn(64, 784) + 1
    ref.flow.train()
    with torch.no_grad():
        ref.flow_forward(l)
    want = [(m.running_mean.clone(), m.running_var.clone()) for m in ref.flow if isinstance(m, refs.BatchNormFlow)]
    ref.set_batchnorm_statistics(list(l.split(16)))
    got = [(m.running_mean, m.running_var) for m in ref.flow if isinstance(m, refs.BatchNormFlow)]
    for (m0, v0), (m1, v1) in zip(want, got):
        assert torch.allclose(m0, m1, atol=1e-4) and torch.allclose(v0, v1, rtol=1e-4)
    assert not torch.allclose(want[0][1], want[1][1])  # the second layer's statistics are of the first's outputs


@pytest.mark.parametrize("alpha", [1e-6, 0.05])
def test_logit_space_jacobian_is_a_density_on_0_256(alpha: float):
    """N(0, 1) in logit space, moved to w in [0, 256) by the log-Jacobian, integrates to the normal mass of the
    logit's range (logit(alpha), logit(1 - alpha)): 1 - 2e-12 at alpha 1e-6, 0.99676 at 0.05."""
    w = torch.linspace(0, 256, 400_001, dtype=torch.float64)[:-1, None]  # (N, 1)
    l, logdet = refs.logit_space(w, alpha)
    density = torch.exp(refs.std_normal_logp(l) + logdet)
    edge = math.log((1 - alpha) / alpha)  # logit(1 - alpha)
    assert torch.trapezoid(density, w[:, 0]).item() == pytest.approx(math.erf(edge / math.sqrt(2)), abs=1e-5)


def test_logit_space_log_jacobian_matches_autograd():
    w = (256 * torch.rand(3, 5, dtype=torch.float64)).requires_grad_()
    l, logdet = refs.logit_space(w, 1e-6)
    (grad,) = torch.autograd.grad(l.sum(), w)  # the Jacobian is diagonal: dl_i/dw_i
    assert torch.allclose(logdet, grad.log().sum(1), rtol=1e-10)


def test_maf_bits_per_dim_of_a_diagonal_gaussian_is_the_logit_normal_density(mnist: Dataset):
    """Known answer: with its MADE at zero, a 1-block MAF in eval mode is l ~ N(mean, var) per pixel (the BN's
    running statistics), so v + u has the logit-normal density of torch.distributions' change of variables."""
    ref = refs.build("maf", seed=0, blocks=1, hidden=16)
    made, bn = ref.flow[0], ref.flow[1]
    for layer in made.layers:
        torch.nn.init.zeros_(layer.weight)
        torch.nn.init.zeros_(layer.bias)
    torch.manual_seed(2)
    mean, var = torch.randn(784, dtype=torch.float64), torch.rand(784, dtype=torch.float64) + 0.5
    bn.running_mean.copy_(mean)
    bn.running_var.copy_(var)
    x = mnist.test_x[:7]
    v = x.flatten(1).double()
    u = torch.rand(v.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)  # bits_per_dim's draws
    a = refs.MAF.alpha
    to_pixels = [SigmoidTransform(), AffineTransform(-256 * a / (1 - 2 * a), 256 / (1 - 2 * a))]  # l -> v + u
    want = TransformedDistribution(Normal(mean, var.sqrt()), to_pixels).log_prob(v + u).sum(1)  # (7,)
    assert torch.allclose(ref.log_prob(v + u), want, rtol=1e-5)
    assert ref.bits_per_dim(x) == pytest.approx(-want.mean().item() / (784 * math.log(2)), rel=1e-5)


def test_summarise_gives_no_std_for_one_seed():
    mean, std = refs.summarise([{"seed": 0, "steps": 4, "fid_domain": 10.0, "note": "x"}])
    assert mean == {"steps": 4, "fid_domain": 10.0} and std == {"steps": None, "fid_domain": None}


def test_slow_samplers_get_fewer_samples_unless_told():
    assert refs.samples_per_reference(2000, []) == {"vae": 2000, "dcgan": 2000, "cgan": 2000, "ddpm": 10, "pixelcnn": 200,
                                                    "flow-matching": 2000, "maf": 2000}
    assert refs.samples_per_reference(50, ["ddpm=100"])["ddpm"] == 100
    assert refs.samples_per_reference(50, [])["pixelcnn"] == 50
    with pytest.raises(SystemExit, match="N >= 6"):
        refs.samples_per_reference(50, ["ddpm=3"])


# ---------------------------------------------------------------------------------------------- CLI
def run_script(*args: str, timeout: float) -> subprocess.CompletedProcess:
    """scripts/references.py ARGS in a real subprocess, one OpenMP thread."""
    return subprocess.run([sys.executable, str(SCRIPT), *args], check=False, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_cli_rejects_an_unknown_reference(capsys):
    with pytest.raises(SystemExit) as e:
        refs.main(["--only", "vea"])
    assert e.value.code == 2 and "invalid choice: 'vea'" in capsys.readouterr().err


def test_cli_accepts_every_reference_name():
    assert refs.parse_args(["--only", "maf", "pixelcnn"]).only == ["maf", "pixelcnn"]
    assert refs.parse_args([]).only == list(refs.REFERENCES)


def test_cli_trains_samples_scores_and_writes_json(tmp_path: Path):
    out = tmp_path / "refs.json"
    r = run_script("--only", "vae", "--seconds", "0.2", "--seeds", "0", "--n-samples", "50", "--threads", "1",
                   "--out", str(out), timeout=300)
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert json.loads(out.read_text()) == report
    vae = report["vae"]
    assert vae["source"].startswith("pytorch/examples vae/main.py")
    (rec,) = vae["per_seed"]
    assert rec["seed"] == 0 and rec["steps"] >= 1 and rec["n_samples"] == 50 and rec["nfe_per_sample"] == 1
    for key in refs.WATCHED:
        assert isinstance(rec[key], (int, float)) and math.isfinite(rec[key]), key
    assert vae["mean"]["fid_domain"] == rec["fid_domain"] and vae["std"]["fid_domain"] is None
    assert "load average (1 min) at start" in r.stderr and "load average (1 min) at end" in r.stderr


@pytest.mark.slow
def test_cli_runs_the_maf_end_to_end(tmp_path: Path):
    """--only maf through a real subprocess: 5 x 1024 MADEs, the BatchNorm pass over 60,000 images, 6 samples
    (~2 minutes on 2 loaded cores)."""
    r = run_script("--only", "maf", "--seconds", "0.1", "--seeds", "0", "--n-samples", "6", "--threads", "2",
                   timeout=900)
    assert r.returncode == 0, r.stderr
    (rec,) = json.loads(r.stdout)["maf"]["per_seed"]
    assert rec["steps"] >= 1 and rec["finish_seconds"] > 0 and rec["nfe_per_sample"] == 5 * 784
    assert 1.0 < rec["nll_bpd_exact"] < 8.0
