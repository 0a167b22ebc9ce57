"""Public reference implementations at bench's budget (issue 14): same data, same CPU seconds, bench's metrics.

    python scripts/references.py                                  # every reference, 45 s, 3 seeds, 2 threads
    python scripts/references.py --only vae dcgan --seeds 0 --seconds 10 --n-samples 500 --out refs.json
    python scripts/references.py --only ddpm --n-samples-for ddpm=50   # more DDPM samples (slow: see below)

Each reference below is a re-implementation, written for this script, of a published MNIST training
script: its architecture, initialisation, loss, optimiser, batch size, data normalisation and sampler
follow the published file (cited with its commit); where something had to change, the class says
what and why. None of the published code is imported or copied.

  vae            pytorch/examples vae/main.py: MLP 784-400-20 (ReLU) encoder, 20-400-784 decoder with a
                 Bernoulli likelihood (BCE summed over pixels and batch) + analytic KL; Adam lr 1e-3,
                 batch 128; samples are the decoder's sigmoid means at z ~ N(0, I).
  dcgan          eriklindernoren/PyTorch-GAN implementations/dcgan/dcgan.py at img_size 28 (generator from
                 7x7 = img_size // 4), latent 100, Adam 2e-4 betas (0.5, 0.999), batch 64, its
                 weights_init_normal, BCE losses, one G then one D update per batch; data in [-1, 1].
  cgan           eriklindernoren/PyTorch-GAN implementations/cgan/cgan.py (Mirza & Osindero's conditional GAN)
                 at img_size 28: G an MLP on [label embedding (10), z (100)] 128-256-512-1024-784 (LeakyReLU .2,
                 BatchNorm(eps .8) from the second layer, tanh); D an MLP on [image, label embedding (10)]
                 512-512-512-1 (Dropout .4 on the two middle layers); least-squares (MSE) losses, Adam 2e-4
                 betas (0.5, 0.999), batch 64, G on fresh z and uniform labels then D; data in [-1, 1].
                 Scored as bench scores a conditional model: labels drawn from the training class frequencies,
                 plus controllability (the domain classifier's share of samples in the requested class).
  ddpm           cloneofsimo/minDiffusion superminddpm.py (the repository has no train_mnist.py; its MNIST
                 script is superminddpm.py): the 7-layer 7x7 conv eps-model 64-128-256-512-256-128-64 with
                 BatchNorm, no time input; n_T 1000, linear betas 1e-4..0.02, MSE on eps, Adam 2e-4,
                 batch 128, data x - 0.5; the ancestral sampler of DDPM Algorithm 2 over all 1000 steps.
  pixelcnn       jzbontar/pixelcnn-pytorch main.py: mask A + 7 mask B 7x7 convs of 64 channels (no bias),
                 BatchNorm + ReLU, a 1x1 conv to 256 logits per pixel; cross-entropy on the 8-bit value,
                 Adam (defaults, lr 1e-3), batch 128, inputs in [0, 1]; pixel-by-pixel multinomial
                 sampling. Also its exact test bits/dim (8-bit protocol) on the first 1,000 test images.
  flow-matching  atong01/conditional-flow-matching examples/images/mnist_example.ipynb, its OT-CFM cell:
                 torchcfm's UNetModel (guided-diffusion U-Net) with num_channels 32, num_res_blocks 1
                 (channel_mult (1, 2, 2), attention at 28x28 and in the middle), exact minibatch OT
                 coupling, sigma 0, Adam (defaults, lr 1e-3), batch 128 (drop_last), data in [-1, 1];
                 samples by its NeuralODE: dopri5, atol = rtol = 1e-4, t from 0 to 1. The U-Net was checked
                 against torchcfm 1.0.7's own class: same parameter shapes, identical outputs for equal weights.
  maf            ikostrikov/pytorch-flows main.py --dataset MNIST --flow maf (with its flows.py and datasets/mnist.py,
                 @bf12ed9): 5 x [MADE 784-1024-1024-2x784 (masked, ReLU), BatchNormFlow, Reverse], orthogonal init,
                 zero biases; -log p in the logit space of the MAF paper's data, logit(1e-6 + (1 - 2e-6)(v + u)/256);
                 Adam lr 1e-4, weight decay 1e-6, batch 100; before it evaluates, the script's BatchNorm pass over the
                 whole training set (``finish_training``), then eval mode; samples by the sequential MADE inverse
                 (cut to the units each output reads: exact). Changed: dequantisation noise drawn per batch, not once
                 at loading (45 s stays inside the first epoch, so the same in distribution); pixels floor(256 y).
                 Also its exact test bits/dim: the logit map's log-Jacobian added, a density on [0, 256)^784 (``MAF``).

Protocol (that of suites/mnist.yaml): bench's MNIST loader (``load_dataset("mnist")``), training images as
floats in [0, 1] with each reference's own normalisation on top; ``torch.set_num_threads(--threads)``;
``torch.manual_seed(seed)`` before the networks are built; epochs reshuffled with ``torch.randperm`` as a
shuffling DataLoader does; training until ``--seconds`` of wall-clock *training* time are spent (the clock
runs only around a step: batch gather, normalisation, forward, backward, update; a step that starts
before the budget ends is finished and counted, as in bench's trainer). Then what the reference does before it
evaluates, outside the budget and timed as ``finish_seconds`` (only the MAF does anything: its BatchNorm
statistics over the 60,000 training images). Then ``--n-samples`` samples,
mapped to [0, 1], quantised to 8 bits as bench saves samples, scored by ``bench.metrics.quality.evaluate_quality``
with the suite's ``eval.quality`` options (domain feature space, 10,000 test images).

Sampling cost. The DDPM reference's eps-model costs ~26 GFLOP per image and network call and its sampler
makes 1,000 calls: ~3 minutes of one CPU core per image (2,000 images: days). The PixelCNN reference
makes 784 calls per image at ~2.5 GFLOP each (this script crops every call to the rows the next pixel
can see, which is exact: ~2x cheaper). So by default these two are scored on fewer samples
(``--n-samples-for``, default ddpm=10 pixelcnn=200; each record says its n_samples): FID at small N is
biased upward (bench's docs/metrics.md), so compare their FIDs only at equal N. Their training steps are
expensive too: a DDPM step at batch 128 takes ~30-60 s on this 2-core machine, so 45 s buys 1-2 steps.
The MAF samples by 5 x 784 sequential MADE calls (each cut to what its output reads) and is run at the full
``--n-samples``: at a load average of 6.8 on the 2 cores, 200 samples took 117 s and its BatchNorm pass 143 s,
so 2,000 samples take minutes per seed, not hours.

Output: a progress line per cell and the 1-minute load average at start and end on stderr (wall-clock
budgets depend on the load); one JSON object on stdout, ``{reference: {source, settings, per_seed, mean,
std}}``, also written to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.config import load_suite  # noqa: E402
from bench.data import Dataset, load_dataset  # noqa: E402
from bench.evaluate import to_uint8  # noqa: E402
from bench.io import atomic_write_json  # noqa: E402
from bench.metrics.controllability import controllability  # noqa: E402
from bench.metrics.fidelity import domain_extractor  # noqa: E402
from bench.metrics.quality import QualityOptions, evaluate_quality  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SUITE = ROOT / "suites" / "mnist.yaml"  # the quality options are this suite's eval.quality
WATCHED = ["fid_domain", "precision_domain", "recall_domain", "density_domain", "coverage_domain", "classes_covered"]
DEFAULT_SAMPLES_FOR = {"ddpm": 10, "pixelcnn": 200}  # the slow samplers (module docstring: sampling cost)
SAMPLE_SEED_OFFSET = 10_000  # sampling draws from torch.manual_seed(seed + this): its own stream, per seed
LIKELIHOOD_EXAMPLES = 1000  # bits/dim on the first 1,000 test images, as suites/mnist.yaml
LN2 = math.log(2)


class Reference:
    """One published training script: its networks and optimisers (built in ``__init__``), one training step
    and its sampler. The harness (``train``, ``run_cell``) owns the data order, the budget and the clock."""

    source: ClassVar[str]  # "owner/repo path @ commit"
    settings: ClassVar[str]  # what was reproduced, in one line
    batch_size: ClassVar[int]
    drop_last: ClassVar[bool] = False  # the reference's DataLoader drops the last partial batch
    conditional: ClassVar[bool] = False  # trains on (image, label) and samples given labels (``sample(n, y)``)

    def train_step(self, x: torch.Tensor) -> float:
        """One optimiser step on a batch ``x`` (B, 1, 28, 28) in [0, 1]; returns the reference's loss."""
        raise NotImplementedError

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        """``n`` images (n, 1, 28, 28) in [0, 1], from the global torch RNG."""
        raise NotImplementedError

    def finish_training(self, train_x: torch.Tensor) -> None:
        """What the reference does after its last step and before it evaluates, given the uint8 training images
        (N, 1, 28, 28): nothing for most (the MAF's end-of-epoch BatchNorm statistics pass)."""

    def bits_per_dim(self, x_u8: torch.Tensor) -> float | None:
        """Exact test NLL in bits per dimension on the 8-bit protocol, where the reference defines one."""
        return None

    def nfe_per_sample(self) -> float:
        """Network evaluations per sample of the last ``sample`` call."""
        raise NotImplementedError

    def _descend(self, loss: torch.Tensor) -> float:
        """One step of ``self.opt`` on ``loss`` (the references with one optimiser); returns the loss."""
        self.opt.zero_grad()
        loss.backward()
        self.opt.step()
        return loss.item()


# ---------------------------------------------------------------------------------------------------------
# vae: pytorch/examples vae/main.py


class ExamplesVAE(Reference):
    """pytorch/examples vae/main.py (@77f55b9, 2025-08): Kingma & Welling's MLP VAE with a Bernoulli decoder."""

    source = "pytorch/examples vae/main.py @77f55b912142"
    settings = ("MLP 784-400-20 / 20-400-784, ReLU, Bernoulli decoder: BCE(sum) + KL(sum); Adam lr 1e-3; "
                "batch 128 (last partial batch kept); samples: sigmoid means at z ~ N(0, I)")
    batch_size = 128

    def __init__(self) -> None:
        self.fc1, self.fc21, self.fc22 = nn.Linear(784, 400), nn.Linear(400, 20), nn.Linear(400, 20)
        self.fc3, self.fc4 = nn.Linear(20, 400), nn.Linear(400, 784)
        self.net = nn.ModuleList([self.fc1, self.fc21, self.fc22, self.fc3, self.fc4])
        self.opt = torch.optim.Adam(self.net.parameters(), lr=1e-3)

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.fc4(F.relu(self.fc3(z))))  # (B, 784) Bernoulli means

    def train_step(self, x: torch.Tensor) -> float:
        x = x.view(-1, 784)
        h = F.relu(self.fc1(x))
        mu, logvar = self.fc21(h), self.fc22(h)  # (B, 20) each
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)  # reparameterisation
        bce = F.binary_cross_entropy(self.decode(z), x, reduction="sum")
        kld = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp())  # Kingma & Welling, Appendix B
        loss = bce + kld  # summed over the batch, not averaged: the reference's scale for Adam
        return self._descend(loss)

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        return self.decode(torch.randn(n, 20)).view(n, 1, 28, 28)

    def nfe_per_sample(self) -> float:
        return 1.0  # one decoder call


# ---------------------------------------------------------------------------------------------------------
# dcgan: eriklindernoren/PyTorch-GAN implementations/dcgan/dcgan.py


def _dcgan_init(m: nn.Module) -> None:
    """The reference's weights_init_normal: conv weights N(0, 0.02) (biases keep torch's default), BatchNorm
    weights N(1, 0.02) and biases 0; the linear layers keep torch's default."""
    if isinstance(m, nn.Conv2d):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class DCGAN(Reference):
    """eriklindernoren/PyTorch-GAN implementations/dcgan/dcgan.py (@11de060) at ``--img_size 28``.

    Deviation: at img_size 28 the published discriminator crashes (four stride-2 convs leave 2x2 maps,
    but its ``ds_size = img_size // 2**4`` = 1 sizes the last linear layer for 1x1); the linear layer here
    takes 128 * 2 * 2 inputs, the fix of the repository's issue #164 (``ceil(img_size / 2**4)``).
    The noise is drawn with torch instead of the reference's unseeded ``np.random.normal``. ``BatchNorm2d(c,
    0.8)`` in the reference sets eps = 0.8 (the second positional argument), kept as published.
    """

    source = "eriklindernoren/PyTorch-GAN implementations/dcgan/dcgan.py @11de0602b679"
    settings = ("img_size 28 (G from 128x7x7: BN, up, conv128, BN(eps .8), LReLU .2, up, conv64, BN(eps .8), LReLU, "
                "conv1, tanh; D: 4 stride-2 convs 16-32-64-128 with LReLU, Dropout2d .25, BN(eps .8) on 2-3, "
                "linear 512 -> 1, sigmoid); latent 100; BCE; Adam 2e-4 betas (0.5, 0.999); batch 64; N(0, .02) "
                "init; data (x - .5) / .5; samples from G in train mode (batch statistics, batches of 64) as the "
                "reference makes its images, mapped (x + 1) / 2")
    batch_size = 64
    latent_dim = 100

    def __init__(self) -> None:
        self.init_size = 28 // 4  # 7
        self.g_fc = nn.Linear(self.latent_dim, 128 * self.init_size**2)
        self.g_conv = nn.Sequential(
            nn.BatchNorm2d(128),
            nn.Upsample(scale_factor=2),  # 7 -> 14
            nn.Conv2d(128, 128, 3, stride=1, padding=1), nn.BatchNorm2d(128, 0.8), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2),  # 14 -> 28
            nn.Conv2d(128, 64, 3, stride=1, padding=1), nn.BatchNorm2d(64, 0.8), nn.LeakyReLU(0.2),
            nn.Conv2d(64, 1, 3, stride=1, padding=1), nn.Tanh(),
        )
        layers: list[nn.Module] = []
        for c_in, c_out, bn in [(1, 16, False), (16, 32, True), (32, 64, True), (64, 128, False)]:
            layers += [nn.Conv2d(c_in, c_out, 3, 2, 1), nn.LeakyReLU(0.2), nn.Dropout2d(0.25)]
            layers += [nn.BatchNorm2d(c_out, 0.8)] if bn else []
        self.d_conv = nn.Sequential(*layers)  # 28 -> 14 -> 7 -> 4 -> 2
        self.d_fc = nn.Sequential(nn.Linear(128 * 2 * 2, 1), nn.Sigmoid())  # issue #164: ceil(28 / 16) = 2
        self.G = nn.ModuleList([self.g_fc, self.g_conv])
        self.D = nn.ModuleList([self.d_conv, self.d_fc])
        self.G.apply(_dcgan_init)
        self.D.apply(_dcgan_init)
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))

    def generate(self, z: torch.Tensor) -> torch.Tensor:
        h = self.g_fc(z).view(len(z), 128, self.init_size, self.init_size)  # (B, 128, 7, 7)
        return self.g_conv(h)  # (B, 1, 28, 28) in [-1, 1]

    def discriminate(self, img: torch.Tensor) -> torch.Tensor:
        return self.d_fc(self.d_conv(img).flatten(1))  # (B, 1) probability of "real"

    def train_step(self, x: torch.Tensor) -> float:
        real = (x - 0.5) / 0.5  # transforms.Normalize(0.5, 0.5)
        valid, fake = torch.ones(len(x), 1), torch.zeros(len(x), 1)
        # generator first, on the batch's fresh noise (its backward also fills D's grads: cleared below)
        self.opt_g.zero_grad()
        gen = self.generate(torch.randn(len(x), self.latent_dim))
        g_loss = F.binary_cross_entropy(self.discriminate(gen), valid)
        g_loss.backward()
        self.opt_g.step()
        # then the discriminator, on the real batch and the same generated images
        self.opt_d.zero_grad()
        d_loss = 0.5 * (F.binary_cross_entropy(self.discriminate(real), valid)
                        + F.binary_cross_entropy(self.discriminate(gen.detach()), fake))
        d_loss.backward()
        self.opt_d.step()
        return g_loss.item()

    @torch.no_grad()
    def sample(self, n: int) -> torch.Tensor:
        self.G.train()  # the reference never switches to eval: its images come from batch statistics
        out = [self.generate(torch.randn(min(64, n - i), self.latent_dim)) for i in range(0, n, 64)]
        return ((torch.cat(out) + 1) / 2).clamp(0, 1)

    def nfe_per_sample(self) -> float:
        return 1.0


# ---------------------------------------------------------------------------------------------------------
# cgan: eriklindernoren/PyTorch-GAN implementations/cgan/cgan.py


class CGAN(Reference):
    """eriklindernoren/PyTorch-GAN implementations/cgan/cgan.py (@022e6aa) at ``--img_size 28``.

    The published default is ``--img_size 32`` (MNIST resized); bench scores 28x28 images, so the MLPs end in
    784 units (the script's own ``img_size 28`` path). The noise and labels are drawn with torch instead of
    the reference's unseeded ``np.random``. Sampling labels follow the training class frequencies (bench's
    protocol for every conditional model; MNIST's are 9.0-11.2 %, near the reference's uniform draw).
    """

    source = "eriklindernoren/PyTorch-GAN implementations/cgan/cgan.py @022e6aa27deb"
    settings = ("img_size 28; G: MLP on [emb(10), z(100)] 128-256-512-1024-784, LReLU .2, BN(eps .8) on 2-4, tanh; "
                "D: MLP on [x, emb(10)] 512-512-512-1, Dropout .4 on 2-3; MSE (LSGAN) losses; Adam 2e-4 betas "
                "(0.5, 0.999); batch 64; G on fresh z and uniform labels, then D; data (x - .5) / .5; samples from G "
                "in train mode (batches of 64) as the reference makes its images, labels from the class frequencies")
    batch_size = 64
    latent_dim = 100
    n_classes = 10
    conditional = True

    def __init__(self) -> None:
        def block(c_in: int, c_out: int, normalize: bool = True) -> list[nn.Module]:
            return [nn.Linear(c_in, c_out), *([nn.BatchNorm1d(c_out, 0.8)] if normalize else []), nn.LeakyReLU(0.2)]

        self.g_emb = nn.Embedding(self.n_classes, self.n_classes)
        self.g_mlp = nn.Sequential(*block(self.latent_dim + self.n_classes, 128, normalize=False), *block(128, 256),
                                   *block(256, 512), *block(512, 1024), nn.Linear(1024, 784), nn.Tanh())
        self.d_emb = nn.Embedding(self.n_classes, self.n_classes)
        self.d_mlp = nn.Sequential(nn.Linear(784 + self.n_classes, 512), nn.LeakyReLU(0.2),
                                   nn.Linear(512, 512), nn.Dropout(0.4), nn.LeakyReLU(0.2),
                                   nn.Linear(512, 512), nn.Dropout(0.4), nn.LeakyReLU(0.2), nn.Linear(512, 1))
        self.G = nn.ModuleList([self.g_emb, self.g_mlp])
        self.D = nn.ModuleList([self.d_emb, self.d_mlp])
        self.opt_g = torch.optim.Adam(self.G.parameters(), lr=2e-4, betas=(0.5, 0.999))
        self.opt_d = torch.optim.Adam(self.D.parameters(), lr=2e-4, betas=(0.5, 0.999))

    def generate(self, z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.g_mlp(torch.cat([self.g_emb(y), z], -1)).view(len(z), 1, 28, 28)  # in [-1, 1]

    def discriminate(self, img: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.d_mlp(torch.cat([img.flatten(1), self.d_emb(y)], -1))  # (B, 1), least-squares target 1 / 0

    def train_step(self, x: torch.Tensor, y: torch.Tensor | None = None) -> float:
        assert y is not None, "the conditional GAN trains on labels"
        real = (x - 0.5) / 0.5
        valid, fake = torch.ones(len(x), 1), torch.zeros(len(x), 1)
        self.opt_g.zero_grad()
        gen_y = torch.randint(0, self.n_classes, (len(x),))
        gen = self.generate(torch.randn(len(x), self.latent_dim), gen_y)
        g_loss = F.mse_loss(self.discriminate(gen, gen_y), valid)
        g_loss.backward()
        self.opt_g.step()
        self.opt_d.zero_grad()
        d_loss = 0.5 * (F.mse_loss(self.discriminate(real, y), valid)
                        + F.mse_loss(self.discriminate(gen.detach(), gen_y), fake))
        d_loss.backward()
        self.opt_d.step()
        return g_loss.item()

    @torch.no_grad()
    def sample(self, n: int, y: torch.Tensor | None = None) -> torch.Tensor:
        assert y is not None and len(y) == n, "the conditional GAN samples given n labels"
        self.G.train()  # as the reference's sample_image: batch statistics
        out = [self.generate(torch.randn(len(y[i:i + 64]), self.latent_dim), y[i:i + 64]) for i in range(0, n, 64)]
        return ((torch.cat(out) + 1) / 2).clamp(0, 1)

    def nfe_per_sample(self) -> float:
        return 1.0


# ---------------------------------------------------------------------------------------------------------
# ddpm: cloneofsimo/minDiffusion superminddpm.py


def ddpm_schedules(beta1: float, beta2: float, n_t: int) -> dict[str, torch.Tensor]:
    """superminddpm's schedules, indexed 0..n_T: linear betas, alpha-bar by a cumulative sum of logs."""
    beta_t = (beta2 - beta1) * torch.arange(0, n_t + 1, dtype=torch.float32) / n_t + beta1
    alpha_t = 1 - beta_t
    alphabar_t = torch.cumsum(torch.log(alpha_t), dim=0).exp()
    sqrtmab = torch.sqrt(1 - alphabar_t)
    return {"sqrt_beta_t": torch.sqrt(beta_t), "oneover_sqrta": 1 / torch.sqrt(alpha_t),
            "sqrtab": torch.sqrt(alphabar_t), "sqrtmab": sqrtmab, "mab_over_sqrtmab": (1 - alpha_t) / sqrtmab}


def _ddpm_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 7, padding=3), nn.BatchNorm2d(c_out), nn.LeakyReLU())


class MinDDPM(Reference):
    """cloneofsimo/minDiffusion superminddpm.py (@00a3c80, its latest; the repository has no train_mnist.py).

    The eps-model is the published ``DummyEpsModel`` (it ignores t) and evaluation uses ``ddpm.eval()``
    (BatchNorm running statistics), as the reference samples. Its data transform is
    ``Normalize((0.5,), (1.0))``: x - 0.5, so samples are mapped back by + 0.5 and clamped to [0, 1].
    ``n_t`` is a parameter for the tests only (the schedule then has n_t steps); the CLI uses 1000.
    """

    source = "cloneofsimo/minDiffusion superminddpm.py @00a3c8066d25"
    settings = ("DummyEpsModel: 7x7 convs 1-64-128-256-512-256-128-64 (BN, LeakyReLU) + 3x3 conv to 1, no time "
                "input; n_T 1000, betas linear 1e-4..0.02, t ~ U{1..n_T-1}, MSE(eps); Adam 2e-4; batch 128; data "
                "x - 0.5; ancestral sampler (DDPM Algorithm 2, 1000 steps) in eval mode, mapped x + 0.5")
    batch_size = 128

    def __init__(self, n_t: int = 1000) -> None:
        self.n_t = n_t
        self.sched = ddpm_schedules(1e-4, 0.02, n_t)
        self.eps_model = nn.Sequential(
            _ddpm_block(1, 64), _ddpm_block(64, 128), _ddpm_block(128, 256), _ddpm_block(256, 512),
            _ddpm_block(512, 256), _ddpm_block(256, 128), _ddpm_block(128, 64), nn.Conv2d(64, 1, 3, padding=1))
        self.opt = torch.optim.Adam(self.eps_model.parameters(), lr=2e-4)

    def train_step(self, x: torch.Tensor) -> float:
        self.eps_model.train()
        x = x - 0.5
        ts = torch.randint(1, self.n_t, (len(x),))  # DDPM Algorithm 1
        eps = torch.randn_like(x)
        x_t = self.sched["sqrtab"][ts, None, None, None] * x + self.sched["sqrtmab"][ts, None, None, None] * eps
        loss = F.mse_loss(self.eps_model(x_t), eps)
        return self._descend(loss)

    @torch.no_grad()
    def sample(self, n: int, batch: int = 100) -> torch.Tensor:
        self.eps_model.eval()
        return torch.cat([self._sample(min(batch, n - i)) for i in range(0, n, batch)])

    def _sample(self, n: int) -> torch.Tensor:
        s = self.sched
        x = torch.randn(n, 1, 28, 28)  # x_T
        for i in range(self.n_t, 0, -1):  # DDPM Algorithm 2
            z = torch.randn(n, 1, 28, 28) if i > 1 else 0
            eps = self.eps_model(x)
            x = s["oneover_sqrta"][i] * (x - eps * s["mab_over_sqrtmab"][i]) + s["sqrt_beta_t"][i] * z
        return (x + 0.5).clamp(0, 1)

    def nfe_per_sample(self) -> float:
        return float(self.n_t)


# ---------------------------------------------------------------------------------------------------------
# pixelcnn: jzbontar/pixelcnn-pytorch main.py


class MaskedConv2d(nn.Conv2d):
    """van den Oord et al. 2016's masked convolution: a kernel sees the rows above the centre and, in the
    centre row, the pixels to its left; mask "B" also the centre itself, mask "A" not (the first layer)."""

    def __init__(self, mask_type: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        _, _, kh, kw = self.weight.shape
        mask = torch.ones_like(self.weight)
        mask[:, :, kh // 2, kw // 2 + (mask_type == "B"):] = 0
        mask[:, :, kh // 2 + 1:] = 0
        self.register_buffer("mask", mask)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # the reference zeroes the masked weights in place before each call; multiplying gives the same outputs
        return self._conv_forward(x, self.weight * self.mask, self.bias)


class PixelCNN(Reference):
    """jzbontar/pixelcnn-pytorch main.py (@a5b9f1e, its latest: 8 masked layers with BatchNorm, Adam).

    The sampler is the reference's (eval mode, start from zeros, one multinomial draw per pixel in raster
    order, value / 255), with one exact shortcut: the call for row i runs on rows max(0, i - 24) .. i only.
    Every masked 7x7 layer looks 3 rows up and none down, so 8 layers see 24 rows up; the logits of row i
    are unchanged (tests/test_references.py checks it) at about half the cost.
    """

    source = "jzbontar/pixelcnn-pytorch main.py @a5b9f1e02f1f"
    settings = ("MaskedConv 7x7 A then 7x B, 64 channels, no bias, BN + ReLU each, 1x1 conv to 256 logits; "
                "cross-entropy on the 8-bit value; Adam (lr 1e-3); batch 128; inputs in [0, 1]; raster-order "
                "multinomial sampling in eval mode; bits/dim on the first 1000 test images")
    batch_size = 128
    reach = 8 * (7 // 2)  # rows above a pixel that its logits depend on

    def __init__(self) -> None:
        fm = 64
        layers: list[nn.Module] = [MaskedConv2d("A", 1, fm, 7, 1, 3, bias=False), nn.BatchNorm2d(fm), nn.ReLU()]
        for _ in range(7):
            layers += [MaskedConv2d("B", fm, fm, 7, 1, 3, bias=False), nn.BatchNorm2d(fm), nn.ReLU()]
        self.net = nn.Sequential(*layers, nn.Conv2d(fm, 256, 1))
        self.opt = torch.optim.Adam(self.net.parameters())

    def train_step(self, x: torch.Tensor) -> float:
        self.net.train()
        target = (x[:, 0] * 255).round().long()  # (B, 28, 28): the 8-bit value (the reference's .long() of x * 255)
        loss = F.cross_entropy(self.net(x), target)  # logits (B, 256, 28, 28)
        return self._descend(loss)

    def row_logits(self, x: torch.Tensor, i: int) -> torch.Tensor:
        """The logits (B, 256, W) of row ``i`` of ``x`` (B, 1, H, W), from the rows it depends on only."""
        top = max(0, i - self.reach)
        return self.net(x[:, :, top:i + 1])[:, :, -1]

    @torch.no_grad()
    def sample(self, n: int, batch: int = 144) -> torch.Tensor:
        self.net.eval()
        return torch.cat([self._sample(min(batch, n - k)) for k in range(0, n, batch)])

    def _sample(self, n: int) -> torch.Tensor:
        x = torch.zeros(n, 1, 28, 28)
        for i in range(28):
            for j in range(28):
                probs = F.softmax(self.row_logits(x, i)[:, :, j], dim=1)  # (n, 256)
                x[:, 0, i, j] = torch.multinomial(probs, 1)[:, 0].float() / 255
        return x

    @torch.no_grad()
    def bits_per_dim(self, x_u8: torch.Tensor, batch: int = 100) -> float:
        """Exact NLL of 8-bit images (N, 1, 28, 28): cross-entropy over the 256 values, in bits per pixel."""
        self.net.eval()
        nats = sum(F.cross_entropy(self.net(xb.float() / 255), xb[:, 0].long(), reduction="sum").item()
                   for xb in x_u8.split(batch))
        return nats / (x_u8[0].numel() * len(x_u8) * LN2)

    def nfe_per_sample(self) -> float:
        return 28.0 * 28.0  # one call per pixel


# ---------------------------------------------------------------------------------------------------------
# flow-matching: atong01/conditional-flow-matching examples/images/mnist_example.ipynb (OT-CFM)
# The network is torchcfm's UNetModel (torchcfm/models/unet/unet.py, guided-diffusion's U-Net): at
# dim (1, 28, 28) its wrapper picks channel_mult (1, 2, 2) and attention_resolutions "16" -> downsample
# rate 28 // 16 = 1 (attention at full resolution); 1 head, dropout 0, no scale-shift norm, conv resampling.


def _group_norm(c: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, c)  # guided-diffusion's normalization(): 32 groups


def _zero(m: nn.Module) -> nn.Module:
    for p in m.parameters():
        nn.init.zeros_(p)
    return m


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """guided-diffusion's sinusoidal embedding (N,) -> (N, dim): [cos, sin] of t * 10000^(-k / (dim/2))."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32) / half)
    args = t[:, None].float() * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, + time embedding (added), GroupNorm-SiLU-dropout-zero conv; 1x1 skip if the
    channels change."""

    def __init__(self, c_in: int, emb: int, c_out: int) -> None:
        super().__init__()
        self.in_layers = nn.Sequential(_group_norm(c_in), nn.SiLU(), nn.Conv2d(c_in, c_out, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb, c_out))
        self.out_layers = nn.Sequential(_group_norm(c_out), nn.SiLU(), nn.Dropout(0.0),
                                        _zero(nn.Conv2d(c_out, c_out, 3, padding=1)))
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x) + self.emb_layers(emb)[:, :, None, None]
        return self.skip(x) + self.out_layers(h)


class AttentionBlock(nn.Module):
    """Self-attention over all positions, one head, guided-diffusion's legacy q/k/v split, zero output proj."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.norm, self.qkv, self.proj = _group_norm(c), nn.Conv1d(c, 3 * c, 1), _zero(nn.Conv1d(c, c, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        flat = x.reshape(b, c, h * w)  # (B, C, T)
        q, k, v = self.qkv(self.norm(flat)).split(c, dim=1)  # (B, C, T) each
        scale = 1 / math.sqrt(math.sqrt(c))
        weight = torch.softmax(torch.einsum("bct,bcs->bts", q * scale, k * scale), dim=-1)  # (B, T, T)
        a = torch.einsum("bts,bcs->bct", weight, v)
        return (flat + self.proj(a)).reshape(b, c, h, w)


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv (guided-diffusion's Upsample with conv_resample)."""

    def __init__(self, c: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2, mode="nearest"))


class Stage(nn.ModuleList):
    """guided-diffusion's TimestepEmbedSequential: the residual blocks also get the time embedding."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        for layer in self:
            x = layer(x, emb) if isinstance(layer, ResBlock) else layer(x)
        return x


class UNet(nn.Module):
    """torchcfm's UNetModel(dim=(1, 28, 28), num_channels=32, num_res_blocks=1) with its defaults."""

    def __init__(self, mc: int = 32, num_res_blocks: int = 1, channel_mult: tuple[int, ...] = (1, 2, 2),
                 attention_ds: tuple[int, ...] = (1,)) -> None:
        super().__init__()
        emb = 4 * mc
        self.mc = mc
        self.time_embed = nn.Sequential(nn.Linear(mc, emb), nn.SiLU(), nn.Linear(emb, emb))
        ch = mc * channel_mult[0]
        self.input_blocks = nn.ModuleList([Stage([nn.Conv2d(1, ch, 3, padding=1)])])
        skips, ds = [ch], 1  # channels of each input block's output, consumed in reverse by the output blocks
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ResBlock(ch, emb, mc * mult)]
                ch = mc * mult
                layers += [AttentionBlock(ch)] if ds in attention_ds else []
                self.input_blocks.append(Stage(layers))
                skips.append(ch)
            if level != len(channel_mult) - 1:
                self.input_blocks.append(Stage([nn.Conv2d(ch, ch, 3, stride=2, padding=1)]))  # 28 -> 14 -> 7
                skips.append(ch)
                ds *= 2
        self.middle_block = Stage([ResBlock(ch, emb, ch), AttentionBlock(ch), ResBlock(ch, emb, ch)])
        self.output_blocks = nn.ModuleList()
        for level, mult in list(enumerate(channel_mult))[::-1]:
            for i in range(num_res_blocks + 1):
                layers = [ResBlock(ch + skips.pop(), emb, mc * mult)]
                ch = mc * mult
                layers += [AttentionBlock(ch)] if ds in attention_ds else []
                if level and i == num_res_blocks:
                    layers.append(Upsample(ch))  # 7 -> 14 -> 28
                    ds //= 2
                self.output_blocks.append(Stage(layers))
        self.out = nn.Sequential(_group_norm(ch), nn.SiLU(), _zero(nn.Conv2d(ch, 1, 3, padding=1)))

    def forward(self, t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Velocity (B, 1, 28, 28) at times ``t`` (B,) or a scalar."""
        t = t.expand(len(x)) if t.dim() == 0 else t
        emb = self.time_embed(timestep_embedding(t, self.mc))  # (B, 4 mc)
        hs, h = [], x
        for block in self.input_blocks:
            h = block(h, emb)
            hs.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, hs.pop()], dim=1), emb)
        return self.out(h)


def ot_pairs(x0: torch.Tensor, x1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """torchcfm's exact minibatch OT coupling (OTPlanSampler("exact").sample_plan): the plan of ``ot.emd`` between
    two uniform batches under squared Euclidean cost, then batch-size pairs drawn from it with replacement.
    For equal-size uniform batches the exact plan is a permutation / n (Birkhoff), which
    ``linear_sum_assignment`` finds; drawing from it is drawing assignment pairs uniformly with replacement."""
    cost = torch.cdist(x0.flatten(1), x1.flatten(1)) ** 2  # (B, B)
    rows, cols = linear_sum_assignment(cost.numpy())
    pick = torch.randint(len(rows), (len(x0),))
    return x0[torch.as_tensor(rows)[pick]], x1[torch.as_tensor(cols)[pick]]


# Dormand & Prince (1980) 5(4) tableau: nodes, stage weights, 5th-order and 4th-order solution weights
DOPRI_C = [0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0, 1.0]
DOPRI_A = [[], [1 / 5], [3 / 40, 9 / 40], [44 / 45, -56 / 15, 32 / 9],
           [19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729],
           [9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656],
           [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84]]
DOPRI_B5 = [35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84, 0.0]
DOPRI_B4 = [5179 / 57600, 0.0, 7571 / 16695, 393 / 640, -92097 / 339200, 187 / 2100, 1 / 40]
DOPRI_E = [b5 - b4 for b5, b4 in zip(DOPRI_B5, DOPRI_B4)]  # local error estimate y5 - y4, per stage


def _rms(x: torch.Tensor) -> float:
    return float(x.pow(2).mean().sqrt())


def dopri5(f: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], y: torch.Tensor, t0: float = 0.0,
           t1: float = 1.0, atol: float = 1e-4, rtol: float = 1e-4) -> tuple[torch.Tensor, int]:
    """Adaptive Dormand-Prince 5(4) from t0 to t1 (Hairer, Norsett & Wanner, Solving ODEs I, II.4: the
    starting step and the step-size control with safety 0.9, factors in [0.2, 10]); one step size for the
    whole batch, as torchdyn's NeuralODE solves it. Returns y(t1) and the number of calls of ``f``."""
    k1, nfe = f(torch.tensor(t0), y), 1
    scale = atol + rtol * y.abs()
    d0, d1 = _rms(y / scale), _rms(k1 / scale)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    d2 = _rms((f(torch.tensor(t0 + h0), y + h0 * k1) - k1) / scale) / h0
    nfe += 1
    h = min(100 * h0, max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5))
    t = t0
    while t < t1 - 1e-12:
        h = min(h, t1 - t)
        ks = [k1]
        for i in range(1, 7):
            yi = y + h * sum(a * k for a, k in zip(DOPRI_A[i], ks) if a != 0.0)
            ks.append(f(torch.tensor(t + DOPRI_C[i] * h), yi))
        nfe += 6
        y5 = yi  # the last stage is evaluated at the 5th-order solution (first same as last)
        err = h * sum(e * k for e, k in zip(DOPRI_E, ks) if e != 0.0)
        e = _rms(err / (atol + rtol * torch.maximum(y.abs(), y5.abs())))
        if e <= 1.0:  # accept
            t, y, k1 = t + h, y5, ks[6]
        h *= 10.0 if e == 0 else min(10.0, max(0.2, 0.9 * e ** (-1 / 5)))
    return y, nfe


class OTCFM(Reference):
    """atong01/conditional-flow-matching (torchcfm) examples/images/mnist_example.ipynb, the OT-CFM cell (@cacd4dc).

    Deviations: the notebook's packages are not dependencies of bench, so the exact OT plan comes from
    scipy's assignment solver instead of POT's ``ot.emd`` (the same plan for equal uniform batches, see
    ``ot_pairs``) and the sampler is this file's dopri5 at the notebook's tolerances instead of torchdyn's
    (step-size controllers differ in detail; the solution agrees to the tolerance); the pairs are drawn with
    torch's RNG instead of numpy's. Euler is not this model's sampler: the notebook integrates the OT-CFM
    model with dopri5 (it uses Euler over 1000 points only for its SF2M model). ``UNet`` was compared with
    torchcfm 1.0.7's ``UNetModelWrapper(dim=(1, 28, 28), num_channels=32, num_res_blocks=1)`` outside the tests
    (torchcfm needs POT): 1,075,361 parameters of the same shapes in the same order, and, with its weights
    copied in, outputs equal to the last bit.
    """

    source = "atong01/conditional-flow-matching examples/images/mnist_example.ipynb (OT-CFM cell) @cacd4dc8a5b6"
    settings = ("torchcfm UNetModel(dim=(1,28,28), num_channels=32, num_res_blocks=1): channel_mult (1,2,2), "
                "attention at 28x28 + middle, 1 head, GroupNorm 32; ExactOptimalTransportConditionalFlowMatcher "
                "sigma 0, loss mean (v - (x1 - x0))^2; Adam (lr 1e-3); batch 128, drop_last; data (x - .5) / .5; "
                "samples: dopri5 atol=rtol=1e-4 t 0 -> 1 in batches of 100, clip(-1, 1), mapped (x + 1) / 2")
    batch_size = 128
    drop_last = True

    def __init__(self) -> None:
        self.model = UNet()
        self.opt = torch.optim.Adam(self.model.parameters())
        self.nfe: list[int] = []  # network calls of each sampling batch

    def train_step(self, x: torch.Tensor) -> float:
        x1 = (x - 0.5) / 0.5
        x0 = torch.randn_like(x1)
        x0, x1 = ot_pairs(x0, x1)
        t = torch.rand(len(x1))
        xt = t[:, None, None, None] * x1 + (1 - t[:, None, None, None]) * x0  # sigma = 0: no noise added
        loss = torch.mean((self.model(t, xt) - (x1 - x0)) ** 2)
        return self._descend(loss)

    @torch.no_grad()
    def sample(self, n: int, batch: int = 100) -> torch.Tensor:
        self.model.eval()
        out, self.nfe = [], []
        for k in range(0, n, batch):
            x1, nfe = dopri5(self.model, torch.randn(min(batch, n - k), 1, 28, 28))
            self.nfe.append(nfe)
            out.append((x1.clamp(-1, 1) + 1) / 2)
        return torch.cat(out)

    def nfe_per_sample(self) -> float:
        return statistics.fmean(self.nfe)  # adaptive: the mean over the sampling batches


# ---------------------------------------------------------------------------------------------------------
# maf: ikostrikov/pytorch-flows main.py --dataset MNIST --flow maf (its flows.py and datasets/mnist.py)


def made_degrees(d: int, hidden: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MADE's degrees (Germain et al. 2015) as pytorch-flows' ``get_mask`` assigns them: input k has
    degree k, hidden unit j degree j mod (d - 1), output i of each half (means, log-scales) degree i - 1."""
    return torch.arange(d), torch.arange(hidden) % (d - 1), torch.arange(2 * d) % d - 1


def made_masks(d: int, hidden: int) -> list[torch.Tensor]:
    """The (out, in) masks of MADE's three layers: a hidden unit sees the units of degree <= its own, an output
    of degree i - 1 the hidden units of degree <= i - 1; so output i depends on x_<i only."""
    deg_x, deg_h, deg_out = made_degrees(d, hidden)
    return [(deg_h[:, None] >= deg_x).float(), (deg_h[:, None] >= deg_h).float(), (deg_out[:, None] >= deg_h).float()]


class MADE(nn.Module):
    """MAF's autoregressive layer (Papamakarios et al. 2017, Sec. 3.1): ``u_i = (x_i - m_i) exp(-a_i)``
    with (m_i, a_i) from x_<i by a masked MLP d-H-H-2d with ReLUs; log-det ``-sum_i a_i``."""

    def __init__(self, d: int, hidden: int) -> None:
        super().__init__()
        self.d, self.hidden = d, hidden
        self.layers = nn.ModuleList([nn.Linear(d, hidden), nn.Linear(hidden, hidden), nn.Linear(hidden, 2 * d)])
        for k, mask in enumerate(made_masks(d, hidden)):
            self.register_buffer(f"mask{k}", mask)

    def _params(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """(masked weight, bias) per layer: the reference multiplies by the mask at every call, so the masked
        entries never act (their gradients are zero)."""
        return [(layer.weight * getattr(self, f"mask{k}"), layer.bias) for k, layer in enumerate(self.layers)]

    def mean_log_scale(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(m, a), (B, d) each, from x (B, d): column i from x_<i only."""
        (w1, b1), (w2, b2), (w3, b3) = self._params()
        h = F.relu(F.linear(F.relu(F.linear(x, w1, b1)), w2, b2))  # (B, H)
        m, a = F.linear(h, w3, b3).chunk(2, dim=1)
        return m, a

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m, a = self.mean_log_scale(x)
        return (x - m) * torch.exp(-a), -a.sum(1)

    @torch.no_grad()
    def inverse(self, u: torch.Tensor) -> torch.Tensor:
        """x from u (B, d), one dimension at a time as the reference's loop, each call cut to what output i reads.

        With the hidden units sorted by degree, those of degree < i are a prefix of c_i units; output i reads
        only those in the second layer, they read only the first layer's prefix, and that prefix reads x_<i.
        The reference computes the full MADE on x with zeros at >= i; the cut drops only terms that are zero
        (masked weights) or never reach output i, so it is exact up to float rounding (the tests compare it
        with the reference's loop): a fifth of the multiply-adds, ~2.5x faster on this machine.
        """
        (w1, b1), (w2, b2), (w3, b3) = self._params()
        _, deg_h, _ = made_degrees(self.d, self.hidden)
        deg_sorted, order = torch.sort(deg_h, stable=True)
        w1, b1, w2, b2, w3 = w1[order], b1[order], w2[order][:, order], b2[order], w3[:, order]
        n_below = torch.searchsorted(deg_sorted, torch.arange(self.d)).tolist()  # c_i: units of degree < i
        x = torch.zeros_like(u)
        for i, c in enumerate(n_below):
            h = F.relu(F.linear(x[:, :i], w1[:c, :i], b1[:c]))  # (B, c_i)
            h = F.relu(F.linear(h, w2[:c, :c], b2[:c]))
            rows = [i, self.d + i]  # m_i and a_i
            m, a = F.linear(h, w3[rows, :c], b3[rows]).unbind(1)
            x[:, i] = u[:, i] * torch.exp(a) + m
        return x


class BatchNormFlow(nn.Module):
    """RealNVP's batch normalisation as a flow layer (Dinh et al. 2017, Sec. 3.7) as pytorch-flows writes it:
    ``y = exp(log_gamma) (x - mean) / sqrt(var) + beta`` with var the biased variance + eps, log-det
    ``sum(log_gamma - log(var) / 2)`` (the same for every example of a batch). Training normalises with the
    batch's statistics and, at the reference's momentum 0, keeps them as the running ones; eval mode uses the
    running ones, which ``MAF.finish_training`` sets from the whole training set as the script does."""

    def __init__(self, d: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.log_gamma, self.beta = nn.Parameter(torch.zeros(d)), nn.Parameter(torch.zeros(d))
        self.register_buffer("running_mean", torch.zeros(d))
        self.register_buffer("running_var", torch.ones(d))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.training:
            mean = x.mean(0)
            var = (x - mean).pow(2).mean(0) + self.eps
            self.running_mean.copy_(mean.detach())  # momentum 0: the last batch's statistics
            self.running_var.copy_(var.detach())
        else:
            mean, var = self.running_mean, self.running_var
        y = torch.exp(self.log_gamma) * (x - mean) / var.sqrt() + self.beta
        return y, (self.log_gamma - 0.5 * torch.log(var)).sum().expand(len(x))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        """Eval mode only (running statistics): the reference samples in eval mode."""
        return (y - self.beta) * torch.exp(-self.log_gamma) * self.running_var.sqrt() + self.running_mean

    @torch.no_grad()
    def set_statistics(self, chunks: list[torch.Tensor]) -> None:
        """Running mean and variance (+ eps) of all rows of ``chunks`` together, accumulated in float64."""
        n = sum(len(c) for c in chunks)
        mean = sum(c.double().sum(0) for c in chunks) / n
        var = sum((c.double() - mean).pow(2).sum(0) for c in chunks) / n + self.eps
        self.running_mean.copy_(mean)
        self.running_var.copy_(var)


class Reverse(nn.Module):
    """Reverses the order of the dimensions, so the next MADE conditions the other way (as main.py stacks them)."""

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.flip(1), x.new_zeros(len(x))

    def inverse(self, y: torch.Tensor) -> torch.Tensor:
        return y.flip(1)


def logit_space(w: torch.Tensor, alpha: float) -> tuple[torch.Tensor, torch.Tensor]:
    """MAF's data map, from dequantised pixels ``w = v + u`` in [0, 256)^D (B, D) to ``l = logit(s)``,
    ``s = alpha + (1 - 2 alpha) w / 256``, in float64 (the reference computes it in numpy's float64), and its
    log-Jacobian per example (B,): ``sum_i log dl_i/dw_i = sum_i [log(1 - 2 alpha) - log 256 - log s_i -
    log(1 - s_i)]`` (each l_i depends on w_i alone, so the Jacobian is diagonal)."""
    s = alpha + (1 - 2 * alpha) * w.double() / 256  # (alpha, 1 - alpha)
    l = torch.log(s) - torch.log1p(-s)
    logdet = (math.log(1 - 2 * alpha) - math.log(256) - torch.log(s) - torch.log1p(-s)).sum(1)
    return l, logdet


def std_normal_logp(z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, I) per row of z (B, D) -> (B,)."""
    return torch.distributions.Normal(0.0, 1.0).log_prob(z).sum(1)


class MAF(Reference):
    """ikostrikov/pytorch-flows main.py with ``--dataset MNIST --flow maf`` (@bf12ed9, its latest): a masked
    autoregressive flow (Papamakarios et al. 2017) on flattened 784-dimensional images, the repository's
    MNIST choices (1024 hidden units, ReLU) and main.py's defaults (5 blocks, Adam lr 1e-4, weight decay
    1e-6, batch 100, orthogonal init of every linear layer, zero biases).

    Data, as its ``datasets/mnist.py`` (the MAF paper's): pixels v/256 (deeplearning.net's mnist.pkl.gz; with
    v/255 a dequantised 255 would leave [0, 1] and its logit would be NaN), plus U[0, 1)/256 noise, giving y,
    then ``logit(1e-6 + (1 - 2e-6) y)``: so ``l = logit(alpha + (1 - 2 alpha)(v + u) / 256)``, alpha = 1e-6, bench's
    map with a smaller alpha (bench's flow uses 0.05). The model is a density on that logit space, the loss
    is ``-log p(l)`` in nats, and the script prints that logit-space number.

    Bits/dim on bench's 8-bit protocol. ``logit_space`` maps w = v + u in [0, 256)^784 to l; by the change of
    variables ``log p_W(w) = log p_L(l(w)) + sum_i log dl_i/dw_i``, with ``dl_i/dw_i = (1 - 2 alpha) / (256
    s_i (1 - s_i))``; that is a density on [0, 256)^784 like bench's flow's ``log_prob``, and bits/dim =
    ``-log p_W / (784 ln 2)`` on the first 1,000 test images, one u per image (a fixed generator, so it does not
    depend on the sampling draws). So a logit-space log-likelihood L (nats per image) is ``-(L + J) / (784 ln 2)``
    bits/dim, J the mean log-Jacobian: 272.6 nats per image on MNIST's test set at alpha 1e-6. A check of the
    conversion: the MAF paper's MAF (5) on MNIST, L = -1300.5 (its Table 2, logit space), gives 1.89 bits/dim,
    the number later flow papers list for MAF on MNIST (e.g. FFJORD's Table 2).

    Deviations, all about the budget or the harness:
    * Dequantisation: the reference draws the noise once when it loads the data (numpy RandomState(42)); here
      it is drawn fresh for each batch. At 45 s training stays inside the first epoch (600 steps of batch 100;
      a step is ~10 GFLOP, ~1 s on the 2 loaded cores here), so every image is seen once either way and the
      two are the same in distribution.
    * BatchNormFlow statistics: the reference evaluates and samples only at the end of an epoch, after one
      forward pass of the whole training set in train mode at momentum 0 (which makes the running statistics
      those of the whole set), then momentum 1 (frozen). ``finish_training`` does that pass once after the
      budget, on bench's 60,000 training images (the reference's set has 50,000: MAF's split keeps 10,000
      for validation), block by block in chunks (the same numbers as one batch of 60,000); the harness times
      it outside the training budget, like sampling. Likelihood and samples then use eval mode, as the script.
    * The script's early stopping on the validation split does not arise within the first epoch.
    * Samples: the reference saves ``sigmoid(l)`` through torchvision (round(255 y)); here y = (sigmoid(l) -
      alpha) / (1 - 2 alpha) is mapped back to its bin, pixel ``floor(256 y)``, the inverse of its data map and
      bench's flow's rule (at most one grey level apart). The sequential inverse is cut to the units each
      output reads (``MADE.inverse``): exact, ~2.5x faster here.

    ``blocks`` and ``hidden`` are parameters for the tests only; the CLI uses 5 and 1024.
    """

    source = "ikostrikov/pytorch-flows main.py --dataset MNIST --flow maf (flows.py, datasets/mnist.py) @bf12ed91b868"
    settings = ("5 x [MADE 784-1024-1024-2x784 (masked, ReLU), BatchNormFlow (eps 1e-5), Reverse]; orthogonal init, "
                "zero biases; loss -log p in logit space; Adam lr 1e-4, weight decay 1e-6; batch 100; data "
                "logit(1e-6 + (1 - 2e-6)(v + u)/256), u ~ U[0, 1) per batch; BN statistics of the whole training set "
                "after training, then eval mode; samples z ~ N(0, I) through the sequential inverse, pixel "
                "floor(256 y); bits/dim on [0, 256)^784 (logit Jacobian added) on the first 1000 test images")
    batch_size = 100
    alpha = 1e-6  # datasets/mnist.py's MNIST.alpha (the MAF paper's lambda)
    dim = 28 * 28

    def __init__(self, blocks: int = 5, hidden: int = 1024) -> None:
        layers: list[nn.Module] = []
        for _ in range(blocks):
            layers += [MADE(self.dim, hidden), BatchNormFlow(self.dim), Reverse()]
        self.flow = nn.ModuleList(layers)
        for m in self.flow.modules():  # main.py: every nn.Linear orthogonal, biases zero
            if isinstance(m, nn.Linear):
                nn.init.orthogonal_(m.weight)
                nn.init.zeros_(m.bias)
        self.opt = torch.optim.Adam(self.flow.parameters(), lr=1e-4, weight_decay=1e-6)

    def flow_forward(self, l: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logit space (B, 784) -> base z (B, 784) and the log-det (B,) of the flow (FlowSequential)."""
        logdet = torch.zeros(len(l))
        for layer in self.flow:
            l, ld = layer(l)
            logdet = logdet + ld
        return l, logdet

    def flow_inverse(self, z: torch.Tensor) -> torch.Tensor:
        for layer in reversed(self.flow):
            z = layer.inverse(z)
        return z

    def train_step(self, x: torch.Tensor) -> float:
        self.flow.train()
        v = (x.flatten(1).double() * 255).round()  # (B, 784) 8-bit values
        l, _ = logit_space(v + torch.rand_like(v), self.alpha)
        z, logdet = self.flow_forward(l.float())
        loss = -(std_normal_logp(z) + logdet).mean()  # nats per image in logit space: the reference's loss
        return self._descend(loss)

    @torch.no_grad()
    def finish_training(self, train_x: torch.Tensor, chunk: int = 2000) -> None:
        """The script's end-of-epoch pass on the training images (uint8 (N, 1, 28, 28), dequantised afresh)."""
        chunks = []
        for xb in train_x.split(chunk):
            v = xb.flatten(1).double()
            chunks.append(logit_space(v + torch.rand_like(v), self.alpha)[0].float())  # (chunk, 784)
        self.set_batchnorm_statistics(chunks)

    @torch.no_grad()
    def set_batchnorm_statistics(self, chunks: list[torch.Tensor]) -> None:
        """Every BatchNormFlow's running statistics from all rows of ``chunks`` (logit space) together, each from
        the previous layers' outputs: what one train-mode forward of them all as one batch sets at momentum 0."""
        self.flow.eval()
        for layer in self.flow:
            if isinstance(layer, BatchNormFlow):
                layer.set_statistics(chunks)
            chunks = [layer(c)[0] for c in chunks]

    @torch.no_grad()
    def log_prob(self, w: torch.Tensor) -> torch.Tensor:
        """log density (B,) in nats of dequantised pixels ``w = v + u`` (B, 784) on [0, 256)^784, in eval mode."""
        self.flow.eval()
        l, logdet_data = logit_space(w, self.alpha)
        z, logdet_flow = self.flow_forward(l.float())
        return std_normal_logp(z).double() + logdet_flow.double() + logdet_data

    def bits_per_dim(self, x_u8: torch.Tensor, batch: int = 500) -> float:
        """Test NLL on the 8-bit protocol: -log p_W(v + u) / (784 ln 2), one u ~ U[0, 1)^784 per image."""
        gen = torch.Generator().manual_seed(0)  # its own draws: the number does not depend on the sampling
        nats = 0.0
        for xb in x_u8.split(batch):
            v = xb.flatten(1).double()
            u = torch.rand(v.shape, generator=gen, dtype=torch.float64)
            nats -= self.log_prob(v + u).sum().item()
        return nats / (x_u8[0].numel() * len(x_u8) * LN2)

    @torch.no_grad()
    def sample(self, n: int, batch: int = 1000) -> torch.Tensor:
        self.flow.eval()
        out = []
        for k in range(0, n, batch):
            l = self.flow_inverse(torch.randn(min(batch, n - k), self.dim))  # (b, 784) logit space
            y = (torch.sigmoid(l.double()) - self.alpha) / (1 - 2 * self.alpha)  # back to (v + u) / 256
            out.append(torch.floor(256 * y).clamp(0, 255).float() / 255)
        return torch.cat(out).view(n, 1, 28, 28)

    def nfe_per_sample(self) -> float:
        return float(sum(isinstance(m, MADE) for m in self.flow) * self.dim)  # one (cut) MADE call per dimension


REFERENCES: dict[str, Callable[..., Reference]] = {
    "vae": ExamplesVAE, "dcgan": DCGAN, "cgan": CGAN, "ddpm": MinDDPM, "pixelcnn": PixelCNN, "flow-matching": OTCFM, "maf": MAF}


# ---------------------------------------------------------------------------------------------------------
# The harness: data order, budget, clock, evaluation


def batches(n: int, batch_size: int, drop_last: bool) -> Iterator[torch.Tensor]:
    """Index batches, a fresh torch.randperm each epoch (a shuffling DataLoader)."""
    if drop_last and n < batch_size:
        raise ValueError(f"{n} training images cannot fill one batch of {batch_size} with drop_last")
    while True:
        perm = torch.randperm(n)
        stop = n - n % batch_size if drop_last else n
        yield from perm[:stop].split(batch_size)


def train(ref: Reference, train_x: torch.Tensor, seconds: float | None, max_steps: int | None = None,
          batch_size: int | None = None, train_y: torch.Tensor | None = None) -> dict[str, float]:
    """Steps of ``ref`` on uint8 images ``train_x`` (and their labels ``train_y``, for a conditional reference)
    until ``seconds`` of step time (or ``max_steps``) are spent. The clock runs only around a step; a step
    begun inside the budget is finished and counted."""
    if ref.conditional and train_y is None:
        raise ValueError(f"{type(ref).__name__} is conditional: give train_y")
    if seconds is None and max_steps is None:
        raise ValueError("give a budget: seconds or max_steps")
    elapsed, steps, loss = 0.0, 0, math.nan
    stream = batches(len(train_x), batch_size or ref.batch_size, ref.drop_last)
    while (seconds is None or elapsed < seconds) and (max_steps is None or steps < max_steps):
        idx = next(stream)
        t0 = time.perf_counter()
        x = train_x[idx].float() / 255  # (B, 1, 28, 28) in [0, 1]
        loss = ref.train_step(x, train_y[idx]) if ref.conditional else ref.train_step(x)
        elapsed += time.perf_counter() - t0
        steps += 1
    return {"steps": steps, "train_seconds": elapsed, "last_loss": loss}


def build(name: str, seed: int, **options: Any) -> Reference:
    """The reference ``name`` with its networks initialised from ``torch.manual_seed(seed)``."""
    if name not in REFERENCES:
        raise ValueError(f"unknown reference {name!r}; choose from {sorted(REFERENCES)}")
    torch.manual_seed(seed)
    return REFERENCES[name](**options)


def quality_options() -> QualityOptions:
    """The quality evaluator's options exactly as suites/mnist.yaml sets them (domain space, 10,000 references)."""
    opts = load_suite(SUITE).eval.options("quality")
    assert isinstance(opts, QualityOptions)
    return opts


def run_cell(name: str, ds: Dataset, seed: int, seconds: float, n_samples: int, opts: QualityOptions) -> dict[str, Any]:
    """Train reference ``name`` for ``seconds`` with ``seed``, sample, score; one per-seed record."""
    ref = build(name, seed)
    rec: dict[str, Any] = {"seed": seed, **train(ref, ds.train_x, seconds, train_y=ds.train_y)}
    t0 = time.perf_counter()
    ref.finish_training(ds.train_x)  # outside the training budget, like sampling
    rec["finish_seconds"] = time.perf_counter() - t0
    torch.manual_seed(seed + SAMPLE_SEED_OFFSET)
    t0 = time.perf_counter()
    labels = None
    if ref.conditional:  # as bench's conditional models are sampled and scored: labels from the class frequencies
        labels = torch.multinomial(ds.class_frequencies(), n_samples, replacement=True)
        samples = ref.sample(n_samples, labels)  # (N, 1, 28, 28) in [0, 1]
    else:
        samples = ref.sample(n_samples)
    rec["sample_seconds"] = time.perf_counter() - t0
    rec["n_samples"] = n_samples
    rec["nfe_per_sample"] = ref.nfe_per_sample()
    if not (samples.shape == (n_samples, 1, 28, 28) and torch.isfinite(samples).all()
            and samples.min() >= 0 and samples.max() <= 1):
        raise RuntimeError(f"{name}: samples are not finite images in [0, 1] of shape (N, 1, 28, 28)")
    x8 = to_uint8(samples)  # 8 bits, as bench saves and scores samples
    metrics = {m.name: m.value for m in evaluate_quality(x8, ds, opts, torch.device("cpu"))}
    rec.update({k: metrics.get(k) for k in WATCHED})
    if labels is not None:  # what bench's controllability evaluator computes, on the same samples
        logits = domain_extractor(ds, torch.device("cpu")).extract(x8, 500, torch.device("cpu"))["logits"]
        rec["controllability"] = controllability(logits.argmax(dim=1), labels, ds.num_classes)[0]
    bpd = ref.bits_per_dim(ds.test_x[:LIKELIHOOD_EXAMPLES])
    if bpd is not None:
        rec["nll_bpd_exact"] = bpd
    rec["load_avg_1min"] = os.getloadavg()[0]
    return rec


def summarise(records: list[dict[str, Any]]) -> tuple[dict[str, float], dict[str, float | None]]:
    """Mean and standard deviation over seeds of every numeric field (std None for one seed)."""
    mean: dict[str, float] = {}
    std: dict[str, float | None] = {}
    for key in records[0]:
        vals = [r[key] for r in records if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
        if key == "seed" or not vals:
            continue
        mean[key] = statistics.fmean(vals)
        std[key] = statistics.stdev(vals) if len(vals) > 1 else None
    return mean, std


def samples_per_reference(n_samples: int, items: list[str]) -> dict[str, int]:
    """Samples per reference: ``--n-samples``, the slow samplers' defaults below it, explicit NAME=N over both."""
    out = {name: min(n_samples, DEFAULT_SAMPLES_FOR.get(name, n_samples)) for name in REFERENCES}
    for item in items:
        name, _, n = item.partition("=")
        if name not in REFERENCES or not n.isdigit() or int(n) < 6:
            raise SystemExit(f"--n-samples-for {item!r}: want NAME=N with NAME in {sorted(REFERENCES)} and N >= 6 "
                             f"(the quality metrics need k + 1 samples)")
        out[name] = int(n)
    return out


def _json_safe(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line (module docstring); argparse rejects an unknown reference name."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="+", choices=sorted(REFERENCES), default=list(REFERENCES), metavar="NAME",
                    help=f"references to run: {', '.join(REFERENCES)}")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--seconds", type=float, default=45.0, help="training wall-clock budget per cell")
    ap.add_argument("--threads", type=int, default=2, help="torch threads (suites/mnist.yaml: 2)")
    ap.add_argument("--n-samples", type=int, default=2000, help="samples per cell (suites/mnist.yaml: 2000)")
    ap.add_argument("--n-samples-for", nargs="+", default=[], metavar="NAME=N",
                    help=f"per-reference sample counts, over --n-samples (defaults, capped by --n-samples: "
                         f"{DEFAULT_SAMPLES_FOR}, the slow samplers)")
    ap.add_argument("--out", type=Path, help="also write the JSON here")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    if args.n_samples < 6:
        raise SystemExit(f"--n-samples {args.n_samples}: the quality metrics need at least 6 (k + 1)")
    per_ref = samples_per_reference(args.n_samples, args.n_samples_for)
    torch.set_num_threads(args.threads)
    print(f"load average (1 min) at start: {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs; "
          f"{args.threads} torch threads", file=sys.stderr, flush=True)
    ds = load_dataset("mnist")
    opts = quality_options()
    report: dict[str, Any] = {}
    for name in args.only:
        cls = REFERENCES[name]
        n = per_ref[name]
        records = []
        for seed in args.seeds:
            rec = run_cell(name, ds, seed, args.seconds, n, opts)
            records.append(rec)
            bpd = f", {rec['nll_bpd_exact']:.3f} bits/dim" if "nll_bpd_exact" in rec else ""
            print(f"{name} seed {seed}: {rec['steps']} steps in {rec['train_seconds']:.1f} s, {n} samples in "
                  f"{rec['sample_seconds']:.1f} s, fid_domain {rec['fid_domain']:.1f}, recall {rec['recall_domain']:.3f}, "
                  f"classes {rec['classes_covered']}{bpd} (load {rec['load_avg_1min']:.2f})", file=sys.stderr, flush=True)
        mean, std = summarise(records)
        report[name] = {"source": cls.source, "settings": cls.settings, "per_seed": records, "mean": mean, "std": std}
    print(f"load average (1 min) at end: {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    report = _json_safe(report)
    if args.out:
        atomic_write_json(args.out, report)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
