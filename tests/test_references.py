"""scripts/references.py: each public reference trains a few steps and samples images in [0, 1]; the PixelCNN's
bits/dim and row-cropped sampler, the dopri5 solver and the OT coupling against known answers; the CLI."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bench.data import Dataset, load_dataset

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "references.py"
_spec = importlib.util.spec_from_file_location("references", SCRIPT)
refs = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(refs)

# Per reference: constructor options and batch size for a tiny run. The DDPM's eps-model costs ~26 GFLOP per
# image and call, so it trains on 2 images and samples through a 5-step schedule (the CLI always uses 1000).
TINY = {"vae": ({}, 8), "dcgan": ({}, 8), "ddpm": ({"n_t": 5}, 2), "pixelcnn": ({}, 4), "flow-matching": ({}, 8)}
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
    spent = refs.train(ref, mnist.train_x, seconds=None, max_steps=3, batch_size=batch)
    assert spent["steps"] == 3 and spent["train_seconds"] > 0 and math.isfinite(spent["last_loss"])
    n = N_SAMPLES.get(name, 4)
    torch.manual_seed(1)
    x = ref.sample(n)
    assert x.shape == (n, 1, 28, 28) and x.dtype == torch.float32
    assert torch.isfinite(x).all() and x.min() >= 0 and x.max() <= 1
    assert x.std() > 0  # not a constant image
    assert ref.nfe_per_sample() >= 1


def test_same_seed_same_weights():
    a, b = refs.build("dcgan", seed=3), refs.build("dcgan", seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.G.parameters(), b.G.parameters()))


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


def test_summarise_gives_no_std_for_one_seed():
    mean, std = refs.summarise([{"seed": 0, "steps": 4, "fid_domain": 10.0, "note": "x"}])
    assert mean == {"steps": 4, "fid_domain": 10.0} and std == {"steps": None, "fid_domain": None}


def test_slow_samplers_get_fewer_samples_unless_told():
    assert refs.samples_per_reference(2000, []) == {"vae": 2000, "dcgan": 2000, "ddpm": 10, "pixelcnn": 200,
                                                    "flow-matching": 2000}
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
