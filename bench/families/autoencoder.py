"""Deterministic autoencoder + ex-post latent density: the "autoencoder" baseline.

A plain (regularised) autoencoder is not a generative model until something samples its
latent space. Following Ghosh et al. 2020 ("From variational to deterministic autoencoders",
RAE, Sec. 4), we train encoder and decoder on reconstruction alone (plus the RAE penalty
``beta/2 ||z||^2`` that keeps the codes compact) and, once the budget is spent, fit a Gaussian
mixture to the codes of the whole training split (10 components, full covariances, as in the
paper). Samples are decoded draws from that mixture. Before the fit (snapshots during
training) a single Gaussian with running moments stands in for it.

This is the baseline that separates "a good decoder" from "a good model of the data": it has
no likelihood (kind ``none``), one network evaluation per sample, and its quality depends on
how well a small mixture covers the code distribution.

Outside reference (issue 14): none trained side by side. The method's reference is the RAE code of
Ghosh et al. 2020 (``ParthaEth/Regularized_autoencoders-RAE``, TensorFlow, trained for many epochs on a GPU),
which has no 45-second CPU configuration to reproduce; its published MNIST FID (Inception) is not
comparable with the domain FID here. At the main budget the tuned settings (``suites/mnist.yaml``:
latent 20, width 64, lr 1.98e-3, beta 7.9e-3, 22 components, batch 64; ``docs/tuning/mnist-2026-12-01``)
reach domain FID 25.6 +- 2.0 over 3 seeds, against 69 +- 2 for the earlier hand-set ones.
"""
from __future__ import annotations

from typing import Iterator

import torch
import torch.nn.functional as F
from pydantic import Field

from bench.families.base import DataSpec, FamilyOptions, GenerativeModel, register_family
from bench.families.nets import ConvDecoder, ConvEncoder, mlp
from bench.space import Categorical, Float, Int


class AutoencoderOptions(FamilyOptions):
    latent_dim: int = Field(16, gt=0)  # size of the code z
    width: int = Field(32, gt=0)  # channels of the first conv layer (doubles per downsampling)
    hidden: int = Field(256, gt=0)  # MLP width on 2-D points
    lr: float = Field(1e-3, gt=0)  # Adam learning rate
    beta: float = Field(1e-4, ge=0)  # RAE code penalty beta/2 ||z||^2 (Ghosh et al. 2020, eq. 11)
    components: int = Field(10, gt=0)  # Gaussian-mixture components fitted to the codes after training
    fit_examples: int | None = Field(20000, gt=0)  # training codes used for the mixture fit (None: all)


class Autoencoder(GenerativeModel):
    """Deterministic conv autoencoder with a Gaussian mixture fitted to its codes (RAE-style); no likelihood."""

    family = "autoencoder"
    Options = AutoencoderOptions
    search_space = {  # bench tune (bench/space.py)
        "lr": Float(1e-4, 3e-3, log=True),
        "latent_dim": Int(4, 64, log=True),
        "width": Categorical([16, 32, 64]),
        "beta": Float(1e-6, 1e-2, log=True),
        "components": Int(1, 30),
        "batch_size": Categorical([32, 64, 128, 256]),
    }
    likelihood_kind = "none"

    def __init__(self, spec: DataSpec, options: AutoencoderOptions):
        super().__init__(spec, options)
        z, k = options.latent_dim, options.components
        if spec.kind == "image":
            self.encoder = ConvEncoder(spec.shape, z, width=options.width)  # (B, C, H, W) -> (B, z)
            self.decoder = ConvDecoder(z, spec.shape, width=options.width)  # (B, z) -> (B, C, H, W) logits
        else:
            self.encoder = mlp(spec.dim, z, options.hidden)
            self.decoder = mlp(z, spec.dim, options.hidden)
        # running code moments (the stand-in density before the mixture is fitted)
        self.register_buffer("code_mean", torch.zeros(z))
        self.register_buffer("code_cov", torch.eye(z))
        # the ex-post mixture: weights (K,), means (K, z), Cholesky factors of the covariances (K, z, z)
        self.register_buffer("gmm_fitted", torch.zeros((), dtype=torch.bool))
        self.register_buffer("gmm_weights", torch.full((k,), 1.0 / k))
        self.register_buffer("gmm_means", torch.zeros(k, z))
        self.register_buffer("gmm_chol", torch.eye(z).repeat(k, 1, 1))

    def _decode(self, z: torch.Tensor) -> torch.Tensor:
        out = self.decoder(z)
        return torch.sigmoid(out) if self.spec.kind == "image" else out  # images in [0, 1]

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
        z = self.encoder(x)
        rec = self._decode(z)
        rec_loss = F.mse_loss(rec, x, reduction="none").flatten(1).sum(1).mean()  # per example
        code_pen = 0.5 * self.options.beta * z.square().sum(1).mean()
        with torch.no_grad():  # running moments of the codes (like BatchNorm's running stats), sampled before the fit
            zd = z.detach().float()
            self.code_mean.lerp_(zd.mean(0), 0.05)
            self.code_cov.lerp_(torch.cov(zd.T) + 1e-4 * torch.eye(zd.shape[1], device=zd.device), 0.05)
        return {"loss": rec_loss + code_pen, "rec": rec_loss}

    def on_train_end(self, batches: Iterator[torch.Tensor]) -> None:
        """Fit the ex-post Gaussian mixture to the training codes (scikit-learn's EM, seeded)."""
        from sklearn.mixture import GaussianMixture

        self.eval()
        codes, n = [], 0
        limit = self.options.fit_examples
        for x in batches:
            codes.append(self.encoder(x.to(self.device)).cpu())
            n += len(x)
            if limit is not None and n >= limit:
                break
        z = torch.cat(codes)[:limit].double().numpy()
        gmm = GaussianMixture(self.options.components, covariance_type="full", reg_covar=1e-4,
                              random_state=self._gen_seed).fit(z)
        dev = self.gmm_means.device
        self.gmm_weights.copy_(torch.as_tensor(gmm.weights_, dtype=torch.float, device=dev))
        self.gmm_means.copy_(torch.as_tensor(gmm.means_, dtype=torch.float, device=dev))
        self.gmm_chol.copy_(torch.linalg.cholesky(torch.as_tensor(gmm.covariances_, device=dev)).float())
        self.gmm_fitted.fill_(True)
        self.train()

    @torch.no_grad()
    def sample_codes(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draws from the fitted mixture (or the running Gaussian before the fit), (n, z)."""
        dev = generator.device
        eps = torch.randn(n, self.options.latent_dim, generator=generator, device=dev).to(self.device)
        if not bool(self.gmm_fitted):
            chol = torch.linalg.cholesky(self.code_cov)
            return self.code_mean + eps @ chol.T
        comp = torch.multinomial(self.gmm_weights.to(dev), n, replacement=True, generator=generator).to(self.device)
        return self.gmm_means[comp] + torch.einsum("nij,nj->ni", self.gmm_chol[comp], eps)

    @torch.no_grad()
    def sample(self, n: int, generator: torch.Generator, y: torch.Tensor | None = None) -> torch.Tensor:
        out = self._decode(self.sample_codes(n, generator))
        return out.clamp(0, 1) if self.spec.kind == "image" else out


register_family("autoencoder", Autoencoder)
