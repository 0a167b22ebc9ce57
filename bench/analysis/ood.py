"""Out-of-distribution detection with likelihood models, scored by AUROC.

A score is "higher = more out-of-distribution". Three scores per likelihood model:

* ``nll``: the negative log-likelihood itself (bits/dim). Nalisnick et al. (2019, "Do deep
  generative models know what they don't know?") showed that flows, PixelCNNs and VAEs trained
  on Fashion-MNIST give *higher* likelihood to MNIST, so this raw score can fall below 0.5;
* ``typicality``: |NLL(x) - H|, H the mean NLL of held-out in-distribution data: the
  single-input (M = 1) form of the typicality test of Nalisnick et al. (2019, "Detecting
  out-of-distribution inputs to deep generative models using typicality", eq. 4). An input far
  *more* likely than typical data is as suspicious as one far less likely;
* ``ratio``: NLL(x) - NLL_background(x), a likelihood ratio against a simple background model
  that explains low-level pixel statistics (here naive Bayes); the idea of Ren et al. (2019,
  "Likelihood ratios for out-of-distribution detection") and Schirrmeister et al. (2020), with
  the simplest background there is. What both models share (how many pixels are dark) cancels.

* ``complexity``: NLL(x) - L(x), L the PNG-compressed length of x in bits/dim: the input-complexity
  correction of Serrà et al. (2020, "Input complexity and out-of-distribution detection with
  likelihood-based generative models", eq. 2, with PNG as the generic compressor). It needs no
  training: a lossless compressor is a background model of "images in general".

Models with an encoder also get ``reconstruction``: the per-image squared error of x against
its reconstruction, which needs no likelihood at all.
"""
from __future__ import annotations

import io
import math
from typing import Literal

import numpy as np
import torch
from PIL import Image
from sklearn.metrics import roc_auc_score

from bench.errors import BenchError

OodKind = Literal["noise", "hflip", "vflip"]  # synthetic out-of-distribution sets; another dataset is named by name
SYNTHETIC: tuple[str, ...] = ("noise", "hflip", "vflip")


def auroc(score_in: torch.Tensor | np.ndarray, score_out: torch.Tensor | np.ndarray) -> tuple[float, float]:
    """AUROC of telling ``score_out`` (positives) from ``score_in`` by "higher = out", and its standard error.

    The AUROC is P(score_out > score_in) + P(tie) / 2 (scikit-learn's ``roc_auc_score``); 0.5 is
    chance, 1.0 perfect separation, below 0.5 the score ranks the wrong way round. The standard error
    is Hanley & McNeil (1982, "The meaning and use of the area under a ROC curve", eq. 2).
    """
    s_in, s_out = np.asarray(score_in, dtype=np.float64), np.asarray(score_out, dtype=np.float64)
    if len(s_in) == 0 or len(s_out) == 0:
        raise ValueError("auroc needs at least one in-distribution and one out-of-distribution score")
    if not (np.isfinite(s_in).all() and np.isfinite(s_out).all()):
        raise ValueError("auroc: scores must be finite")
    labels = np.r_[np.zeros(len(s_in)), np.ones(len(s_out))]
    a = float(roc_auc_score(labels, np.r_[s_in, s_out]))
    n_pos, n_neg = len(s_out), len(s_in)
    q1, q2 = a / (2 - a), 2 * a * a / (1 + a)
    var = (a * (1 - a) + (n_pos - 1) * (q1 - a * a) + (n_neg - 1) * (q2 - a * a)) / (n_pos * n_neg)
    return a, math.sqrt(max(var, 0.0))


def nll_bits_per_dim(log_prob: torch.Tensor, dim: int) -> torch.Tensor:
    """Per-example NLL in bits/dim from log-likelihoods in nats, (N,) -> (N,)."""
    return -log_prob.double() / (dim * math.log(2))


def typicality_score(nll: torch.Tensor, reference_nll: torch.Tensor) -> torch.Tensor:
    """|NLL(x) - mean NLL of held-out in-distribution data| (Nalisnick et al. 2019, typicality test, M = 1).

    ``reference_nll`` must not be the split being scored (use training or validation images),
    or the test split's own mean leaks into its scores.
    """
    return (nll.double() - reference_nll.double().mean()).abs()


def likelihood_ratio_score(nll: torch.Tensor, background_nll: torch.Tensor) -> torch.Tensor:
    """NLL under the model minus NLL under a background model: log p_bg(x) - log p(x), (N,)."""
    if nll.shape != background_nll.shape:
        raise ValueError(f"likelihood_ratio_score: shapes differ, {tuple(nll.shape)} vs {tuple(background_nll.shape)}")
    return nll.double() - background_nll.double()


def png_bits_per_dim(x: torch.Tensor) -> torch.Tensor:
    """Length of each uint8 image (N, C, H, W) compressed as PNG (Pillow, level 9), in bits per dimension, (N,).

    The file's fixed overhead (signature, header and end chunks) is included; it is the same for every
    image of one shape, so it shifts scores without changing any AUROC.
    """
    out = []
    for img in x.numpy():
        buf = io.BytesIO()
        Image.fromarray(img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)).save(buf, format="PNG", compress_level=9)
        out.append(8 * buf.getbuffer().nbytes / img.size)
    return torch.tensor(out, dtype=torch.float64)


def complexity_score(nll: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """NLL in bits/dim minus the PNG length in bits/dim (Serrà et al. 2020, S(x)), (N,)."""
    return nll.double() - png_bits_per_dim(x)


def reconstruction_error(x: torch.Tensor, x_rec: torch.Tensor) -> torch.Tensor:
    """Per-image mean squared error between uint8 images and reconstructions in [0, 1], (N,)."""
    return (x.double() / 255 - x_rec.double()).square().flatten(1).mean(1)


def synthetic_ood(kind: str, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """An out-of-distribution image set shaped like ``like`` (uint8 (N, C, H, W)).

    ``noise``: uniform 8-bit noise, every pixel independent; ``hflip`` / ``vflip``: the images
    mirrored left-right / upside down (digits that are no longer digits, with the same pixel
    statistics as the data: a likelihood model that only counts ink cannot tell them apart).
    """
    if kind == "noise":
        return torch.randint(0, 256, like.shape, generator=generator, dtype=torch.int64).to(torch.uint8)
    if kind == "hflip":
        return like.flip(-1).contiguous()
    if kind == "vflip":
        return like.flip(-2).contiguous()
    raise BenchError(f"ood set {kind!r}: unknown; choose one of: {', '.join(SYNTHETIC)}, or a dataset name")
