"""Generative adversarial networks: a DCGAN-style generator G and discriminator/critic D.

G maps noise ``z ~ N(0, I)`` (plus a one-hot label when conditional) to a sample in one
network evaluation; D scores samples. Five losses, selectable per model:

* ``minimax``: the original saturating game, Goodfellow et al. 2014, Eq. 1:
  D maximises ``log D(x) + log(1 - D(G(z)))``, G minimises ``log(1 - D(G(z)))``.
* ``nonsaturating``: the same D, but G maximises ``log D(G(z))`` (Goodfellow 2014, Sec. 3),
  which keeps G's gradient alive when D wins.
* ``wgan``: a critic estimating the Wasserstein-1 distance, Lipschitz by weight clipping,
  RMSProp, 5 critic steps per G step (Arjovsky et al. 2017, Algorithm 1).
* ``wgan_gp``: the critic's Lipschitz constraint as a gradient penalty on random
  interpolates, weight 10, Adam(1e-4, 0, 0.9), 5 critic steps (Gulrajani et al. 2017, Algorithm 1).
* ``hinge``: D minimises ``relu(1 - D(x)) + relu(1 + D(G(z)))``, G minimises ``-D(G(z))``
  (Lim & Ye 2017; Miyato et al. 2018, Eq. 16-17), with spectral normalisation in D by default
  (Miyato et al. 2018).

Options left unset get the defaults of the paper that introduced the loss (see
``GANOptions._resolve``). Minibatch standard deviation in D (Karras et al. 2018, Sec. 3) is the
classic remedy for mode collapse; spectral normalisation (Miyato et al. 2018) can be switched
on for any loss. Nets: images use DCGAN nets (Radford et al. 2016) in the MNIST layout of InfoGAN
(Chen et al. 2016, App. C): stride-2 4x4 (transposed) convolutions, no pooling, 28 -> 14 -> 7 and
8 -> 4; batch norm and ReLU in G, tanh output (images are trained in ``[-1, 1]``); LeakyReLU(0.2)
and no normalisation in D, because the gradient penalty is per example (Gulrajani 2017, Sec. 4).
Points (toy2d) use MLPs. Sampling with ``truncation: tau`` draws z from the normal truncated to
``|z_i| <= tau`` (the truncation trick, Brock et al. 2019, sec. 3.1): fidelity up, variety down, with no
retraining, so a sweep over tau traces a precision/recall curve.

The harness's step is one G step with its ``d_steps`` D steps. The D steps of one harness
step share the real batch and draw fresh noise each time (the trainer hands one batch per step).

Outside reference at equal CPU time (issue 14): the DCGAN of eriklindernoren/PyTorch-GAN
(``implementations/dcgan/dcgan.py`` at img_size 28: latent 100, BCE, Adam 2e-4 (0.5, 0.999), batch 64),
re-implemented in ``scripts/references.py`` and trained for the main suite's 45 s on this 2-core machine
(2 threads, idle): 250 steps, domain FID 570.8 +- 68.1, recall 0.04, 7.7 classes over 3 seeds (2,000
samples vs the 10,000 test images). bench's GAN as ``suites/mnist.yaml`` ships it (tuned:
non-saturating, lr_g 1.09e-3, lr_d 1.38e-4, z 39, width 16, minibatch std, batch 32;
``docs/tuning/mnist-2026-12-01``): 3,641 steps, FID 160.4 +- 6.7, recall 0.65, all 10 classes, same
protocol and machine (commit 45de26f). The reference's 128-channel 3x3 convolutions at full resolution
train on about 7x fewer images per second (250 steps at batch 64 against 3,641 at batch 32), which at
45 s decides the comparison.

Conditional (``conditional: true``), the same way: the conditional GAN of eriklindernoren/PyTorch-GAN
(``implementations/cgan/cgan.py`` at img_size 28: Mirza & Osindero's MLPs with a label embedding in G and D,
least-squares losses, Adam 2e-4 (0.5, 0.999), batch 64; ``scripts/references.py --only cgan --threads 1``),
45 s at one thread as ``suites/mnist-conditional.yaml``'s Ray cells get, idle, 3 seeds: 1,434 +- 79 steps,
domain FID 754 +- 53, recall 0.00, 7.7 classes, controllability 0.18 +- 0.05. bench's conditional GAN as that
suite ships it (tuned with the label: lr_g 1.37e-3, lr_d 1.19e-3, z 78, width 16, minibatch std, batch 32;
``docs/tuning/mnist-conditional-gan-diffusion-fm-2026-12-01``), same protocol, one thread, 3 seeds: 2,054 +-
88 steps, FID 133 +- 47, recall 0.49, all 10 classes, controllability 0.75 +- 0.03 (commit 49320f9).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from bench.families.base import DataSpec, FamilyOptions, GenerativeModel, register_family
from bench.families.nets import ConvDecoder, ConvEncoder, mlp
from bench.space import Categorical, Float, Int

if TYPE_CHECKING:
    from bench.engine import Engine

Loss = Literal["minimax", "nonsaturating", "wgan", "wgan_gp", "hinge"]

# Paper defaults per loss: d_steps, optimizer, lr (G and D), Adam betas, spectral norm in D.
_DEFAULTS: dict[str, dict] = {
    # Radford et al. 2016 (DCGAN): Adam(2e-4, beta1=0.5); one D step (Goodfellow 2014 uses k=1).
    "minimax": dict(d_steps=1, optimizer="adam", lr=2e-4, betas=(0.5, 0.999), spectral_norm=False),
    "nonsaturating": dict(d_steps=1, optimizer="adam", lr=2e-4, betas=(0.5, 0.999), spectral_norm=False),
    # Arjovsky et al. 2017, Algorithm 1: RMSProp(5e-5), n_critic=5, clip c=0.01.
    "wgan": dict(d_steps=5, optimizer="rmsprop", lr=5e-5, betas=(0.5, 0.999), spectral_norm=False),
    # Gulrajani et al. 2017, Algorithm 1: Adam(1e-4, 0, 0.9), n_critic=5, lambda=10.
    "wgan_gp": dict(d_steps=5, optimizer="adam", lr=1e-4, betas=(0.0, 0.9), spectral_norm=False),
    # Miyato et al. 2018, Table 1 setting C (the one where SN is strong with n_dis=1): Adam(2e-4, 0.5, 0.999).
    "hinge": dict(d_steps=1, optimizer="adam", lr=2e-4, betas=(0.5, 0.999), spectral_norm=True),
}


class GANOptions(FamilyOptions):
    loss: Loss = "nonsaturating"  # the adversarial game (module docstring); unset options follow its paper
    d_steps: int | None = Field(None, ge=1)  # D steps per G step; default 5 for wgan/wgan_gp, else 1
    conditional: bool = False  # feed the class label to G and D (one-hot); sampling draws labels from the data
    minibatch_std: bool = False  # append the minibatch std feature map to D's last features (Karras 2018)
    spectral_norm: bool | None = None  # spectral normalisation of D's weights; default on for hinge only
    z_dim: int = Field(64, ge=1)  # noise dimension
    width: int | None = Field(None, ge=1)  # images: channels at the finest hidden resolution (x2 per
    #                                        halving), default 32 (InfoGAN's 64 halved for a 2-core CPU);
    #                                        points: MLP hidden units, default 128
    optimizer: Literal["adam", "rmsprop"] | None = None  # default rmsprop for wgan, else adam
    lr_g: float | None = Field(None, gt=0)  # G learning rate; default per loss (2e-4, wgan 5e-5, wgan_gp 1e-4)
    lr_d: float | None = Field(None, gt=0)  # D learning rate; same defaults as lr_g
    betas: tuple[float, float] | None = None  # Adam betas; default (0.5, 0.999), wgan_gp (0.0, 0.9)
    clip: float | None = Field(None, gt=0)  # wgan only: clip D's weights to [-clip, clip]; default 0.01
    gp_weight: float | None = Field(None, gt=0)  # wgan_gp only: gradient-penalty weight lambda; default 10
    truncation: float | None = Field(None, gt=0)  # sampling only: z from N(0, I) truncated to |z_i| <= this
    #                                               (Brock et al. 2019, BigGAN, sec. 3.1); None: plain N(0, I)

    @model_validator(mode="after")
    def _resolve(self) -> GANOptions:
        """Fill unset options with the loss's paper defaults; reject options the loss ignores."""
        if self.clip is not None and self.loss != "wgan":
            raise ValueError(f"clip applies to loss 'wgan' only (loss is {self.loss!r}); remove clip")
        if self.gp_weight is not None and self.loss != "wgan_gp":
            raise ValueError(f"gp_weight applies to loss 'wgan_gp' only (loss is {self.loss!r}); remove gp_weight")
        if self.betas is not None and not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"betas {self.betas} must lie in [0, 1)")
        d = _DEFAULTS[self.loss]
        self.d_steps = self.d_steps or d["d_steps"]
        self.optimizer = self.optimizer or d["optimizer"]
        self.lr_g = self.lr_g or d["lr"]
        self.lr_d = self.lr_d or d["lr"]
        self.betas = self.betas or d["betas"]
        self.spectral_norm = d["spectral_norm"] if self.spectral_norm is None else self.spectral_norm
        if self.loss == "wgan":
            self.clip = self.clip or 0.01
        if self.loss == "wgan_gp":
            self.gp_weight = self.gp_weight or 10.0
        return self


class LeakyReLU02(nn.LeakyReLU):
    """LeakyReLU with slope 0.2 (Radford et al. 2016), as a class the shared nets can instantiate."""

    def __init__(self) -> None:
        super().__init__(0.2)


def minibatch_std(h: torch.Tensor) -> torch.Tensor:
    """Karras et al. 2018, Sec. 3: append one constant feature, the batch std averaged over features.

    (B, C, H, W) -> (B, C+1, H, W) or (B, F) -> (B, F+1). A batch of near-identical samples (mode
    collapse) has a std near 0 that real batches do not, so D can tell them apart.
    """
    s = h.float().var(dim=0, unbiased=False).add(1e-8).sqrt().mean()  # scalar: std over the batch, averaged
    extra = s.to(h.dtype).expand(h.shape[0], 1, *h.shape[2:])  # (B, 1, ...) replicated
    return torch.cat([h, extra], dim=1)


class Discriminator(nn.Module):
    """Features -> [minibatch std] -> linear score; label as extra one-hot input when conditional.

    Images: DCGAN D (Radford 2016; the MNIST layout of InfoGAN, App. C), i.e. the shared ``ConvEncoder``
    with LeakyReLU(0.2) and no normalisation (the gradient penalty is per example, Gulrajani Sec. 4):
    (C, 28, 28) -> (w, 14, 14) -> (2w, 7, 7) -> score.
    """

    def __init__(self, spec: DataSpec, width: int, n_cond: int, mbstd: bool):
        super().__init__()
        self.kind, self.n_cond, self.mbstd = spec.kind, n_cond, mbstd
        extra = 1 if mbstd else 0
        if spec.kind == "image":
            enc = ConvEncoder(spec.shape, 1, width, act=LeakyReLU02, extra_in_channels=n_cond, extra_feature_maps=extra)
            self.body, self.head = enc.features, enc.head  # (B, c, s, s) features; head over (c + extra) maps
        else:
            hidden = mlp(spec.dim + n_cond, width, hidden=width, depth=3, act=LeakyReLU02)  # (B, width)
            self.body = nn.Sequential(hidden, LeakyReLU02())
            self.head = nn.Linear(width + extra, 1)

    def forward(self, x: torch.Tensor, onehot: torch.Tensor | None) -> torch.Tensor:
        if onehot is not None:
            if self.kind == "image":  # (B, K) -> (B, K, H, W) constant label planes
                onehot = onehot[:, :, None, None].expand(-1, -1, *x.shape[2:])
            x = torch.cat([x, onehot], dim=1)
        h = self.body(x)
        if self.mbstd:
            h = minibatch_std(h)
        return self.head(h.flatten(1)).squeeze(1)  # (B,) logits / critic scores


class Generator(nn.Module):
    """(z, one-hot label) -> sample: DCGAN G with tanh for images, MLP for points.

    Images: DCGAN G (Radford 2016; InfoGAN's MNIST G), i.e. the shared ``ConvDecoder`` with batch norm and
    ReLU: z -> (2w, 7, 7) -> (w, 14, 14) -> (C, 28, 28), stride-2 4x4 transposed convolutions.
    """

    def __init__(self, spec: DataSpec, z_dim: int, width: int, n_cond: int):
        super().__init__()
        self.kind = spec.kind
        if spec.kind == "image":
            self.net = ConvDecoder(z_dim + n_cond, spec.shape, width=width, norm="batch", act=nn.ReLU)
        else:
            self.net = mlp(z_dim + n_cond, spec.dim, hidden=width, depth=4, act=nn.ReLU)

    def forward(self, z: torch.Tensor, onehot: torch.Tensor | None) -> torch.Tensor:
        h = z if onehot is None else torch.cat([z, onehot], dim=1)
        out = self.net(h)
        return torch.tanh(out) if self.kind == "image" else out  # images in [-1, 1]


class GAN(GenerativeModel):
    """GAN (DCGAN nets; minimax, non-saturating, WGAN, WGAN-GP or hinge loss); no likelihood."""

    family = "gan"
    Options = GANOptions
    search_space = {  # bench tune (bench/space.py); the loss is the model's identity, not searched
        "lr_g": Float(2e-5, 2e-3, log=True),
        "lr_d": Float(2e-5, 2e-3, log=True),
        "z_dim": Int(16, 128, log=True),
        "width": Categorical([16, 32, 64]),
        "minibatch_std": Categorical([False, True]),
        "batch_size": Categorical([32, 64, 128]),
    }
    likelihood_kind = "none"
    conditional_capable = True
    sampling_options = frozenset({"truncation"})
    watched_loss = "loss_d"  # D's loss: it blows up first when the game diverges
    adversarial = True

    def __init__(self, spec: DataSpec, options: GANOptions):
        width = options.width or (32 if spec.kind == "image" else 128)
        options = options.model_copy(update={"width": width})  # record the width actually used
        super().__init__(spec, options)
        o = options
        n_cond = spec.num_classes if o.conditional else 0
        self.G = Generator(spec, o.z_dim, width, n_cond)
        self.D = Discriminator(spec, width, n_cond, o.minibatch_std)
        if o.spectral_norm:
            for m in self.D.modules():
                if isinstance(m, (nn.Conv2d, nn.Linear)):
                    nn.utils.parametrizations.spectral_norm(m)

    def configure_optimizers(self) -> dict[str, torch.optim.Optimizer]:
        """One optimiser per player (the loss's paper defaults, ``GANOptions._resolve``)."""
        o = self.options
        if o.optimizer == "adam":
            return {"g": torch.optim.Adam(self.G.parameters(), lr=o.lr_g, betas=o.betas),
                    "d": torch.optim.Adam(self.D.parameters(), lr=o.lr_d, betas=o.betas)}
        return {"g": torch.optim.RMSprop(self.G.parameters(), lr=o.lr_g),
                "d": torch.optim.RMSprop(self.D.parameters(), lr=o.lr_d)}

    # ------------------------------------------------------------------ helpers
    def _onehot(self, y: torch.Tensor | None) -> torch.Tensor | None:
        if not self.options.conditional:
            return None
        return F.one_hot(y, self.spec.num_classes).float()  # (B, K)

    def _noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return torch.randn(n, self.options.z_dim, generator=generator, device=generator.device)  # (n, z_dim)

    def _sample_noise(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """z for sampling: N(0, I), or with ``truncation`` the truncation trick (Brock et al. 2019, sec. 3.1):
        entries beyond the threshold are redrawn until they fall inside, a truncated normal per entry."""
        z = self._noise(n, generator)
        tau = self.options.truncation
        if tau is None:
            return z
        out = z.abs() > tau
        while bool(out.any()):
            z = torch.where(out, self._noise(n, generator), z)
            out = z.abs() > tau
        return z

    def _d_loss(self, s_real: torch.Tensor, s_fake: torch.Tensor) -> torch.Tensor:
        loss = self.options.loss
        if loss in ("minimax", "nonsaturating"):
            # -[log sigmoid(s_r) + log(1 - sigmoid(s_f))] (Goodfellow 2014, Eq. 1), via softplus for stability
            return F.softplus(-s_real).mean() + F.softplus(s_fake).mean()
        if loss == "hinge":
            return F.relu(1 - s_real).mean() + F.relu(1 + s_fake).mean()  # Miyato 2018, Eq. 16
        return s_fake.mean() - s_real.mean()  # wgan, wgan_gp: -(W estimate) (Arjovsky 2017, Eq. 3)

    def _g_loss(self, s_fake: torch.Tensor) -> torch.Tensor:
        loss = self.options.loss
        if loss == "minimax":
            return -F.softplus(s_fake).mean()  # log(1 - sigmoid(s_f)): saturates when D wins
        if loss == "nonsaturating":
            return F.softplus(-s_fake).mean()  # -log sigmoid(s_f)
        return -s_fake.mean()  # wgan, wgan_gp, hinge (Miyato 2018, Eq. 17)

    def _gradient_penalty(self, real: torch.Tensor, fake: torch.Tensor, onehot: torch.Tensor | None,
                          engine: Engine | None = None) -> torch.Tensor:
        """Gulrajani 2017, Eq. 3: E[(||grad_xhat D(xhat)||_2 - 1)^2] on random interpolates xhat.

        Under fp16 the inner gradient is taken of the scaled score and unscaled (PyTorch AMP examples,
        "Gradient penalty"); otherwise this is the plain formula."""
        eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), generator=self.gen, device=real.device)
        xhat = (eps * real + (1 - eps) * fake).requires_grad_(True)  # (B, ...)
        score = self.D(xhat, onehot).sum()
        scaled = engine is not None and engine.scaler is not None
        (grad,) = torch.autograd.grad(engine.scale(score) if scaled else score, xhat, create_graph=True)
        if scaled:
            grad = grad / engine.loss_scale
        return (grad.flatten(1).norm(dim=1) - 1).square().mean()

    def _accuracy(self, s_real: torch.Tensor, s_fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Share of real scored 'real' and of fake scored 'fake'.

        Logistic and hinge D: the threshold is 0 (D(x) = 1/2, resp. the hinge's centre). A WGAN
        critic's scores have an arbitrary offset, so the threshold is the mean score of the joint
        batch (real and fake have the same size).
        """
        t = torch.cat([s_real, s_fake]).mean() if self.options.loss in ("wgan", "wgan_gp") else 0.0
        return (s_real > t).float().mean(), (s_fake < t).float().mean()

    # ------------------------------------------------------------------ the contract
    def training_step(self, x: torch.Tensor, y: torch.Tensor, engine: Engine) -> dict[str, torch.Tensor]:
        """``d_steps`` D updates, then one G update (Goodfellow 2014, Algorithm 1; Arjovsky 2017, Algorithm 1),
        each through the engine's autocast and ``minimise`` for that player's optimiser."""
        o = self.options
        real = x * 2 - 1 if self.spec.kind == "image" else x  # images to [-1, 1], G's tanh range
        onehot = self._onehot(y)  # fakes get the batch's labels, so both sides see the same classes
        b = real.shape[0]
        self.D.requires_grad_(True)
        for _ in range(o.d_steps):
            with engine.autocast():
                with torch.no_grad():
                    fake = self.G(self._noise(b, self.gen), onehot)
                s_real, s_fake = self.D(real, onehot), self.D(fake, onehot)  # (B,), (B,)
                loss_d = self._d_loss(s_real, s_fake)
                if o.loss == "wgan_gp":
                    gp = self._gradient_penalty(real, fake, onehot, engine)
                    loss_d = loss_d + o.gp_weight * gp
            engine.minimise(loss_d, "d")
            if o.loss == "wgan":  # Arjovsky 2017, Algorithm 1, line 7
                with torch.no_grad():
                    for p in self.D.parameters():
                        p.clamp_(-o.clip, o.clip)
        self.D.requires_grad_(False)  # G step: gradients flow through D to G only
        with engine.autocast():
            loss_g = self._g_loss(self.D(self.G(self._noise(b, self.gen), onehot), onehot))
        engine.minimise(loss_g, "g")
        self.D.requires_grad_(True)
        acc_real, acc_fake = self._accuracy(s_real.detach(), s_fake.detach())
        out = {
            "loss_d": loss_d.detach(),
            "loss_g": loss_g.detach(),
            "d_acc_real": acc_real,
            "d_acc_fake": acc_fake,
            "score_gap": (s_real.mean() - s_fake.mean()).detach(),  # critics: the Wasserstein estimate
        }
        if o.loss == "wgan_gp":
            out["gp"] = gp.detach()
        return out

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.options.conditional:
            y = self.labels_for(n, generator, y)
        out = []
        for i in range(0, n, 1000):  # chunks keep the decoder's activations small
            m = min(1000, n - i)
            onehot = self._onehot(None if y is None else y[i : i + m].to(self.device))
            out.append(self.G(self._sample_noise(m, generator).to(self.device), onehot))
        s = torch.cat(out) if out else torch.empty(0, *self.spec.shape, device=self.device)
        return (s + 1) / 2 if self.spec.kind == "image" else s  # images back to [0, 1]


register_family("gan", GAN)
