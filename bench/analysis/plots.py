"""Figures of the analysis: learning curves with their crossing point, closest sample-training pairs."""
from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from bench.analysis.classify import Crossing  # noqa: E402
from bench.report.plots import image_grid  # noqa: E402

LABELS = {"nb_gaussian": "naive Bayes (Gaussian pixels)", "nb_categorical": "naive Bayes (256-bin pixels)",
          "nb_gaussian_tuned": "naive Bayes (Gaussian, std floor on validation)",
          "nb_categorical_tuned": "naive Bayes (256-bin, alpha on validation)",
          "logistic": "logistic regression (C on validation)", "logistic_c1": "logistic regression (C = 1)",
          "cnn": "small CNN"}


def learning_curves(curve: pd.DataFrame, crossings: dict[str, Crossing] | None = None, title: str = "") -> bytes:
    """Test accuracy against training-set size (log axis), mean +- std over seeds; crossings as vertical lines."""
    fig, ax = plt.subplots(figsize=(6, 4))
    stats = curve.groupby(["classifier", "n_train"])["accuracy"].agg(["mean", "std"]).reset_index()
    for name, s in stats.groupby("classifier", sort=False):
        line, = ax.plot(s.n_train, s["mean"], marker="o", ms=3, label=LABELS.get(name, name))
        ax.fill_between(s.n_train, s["mean"] - s["std"].fillna(0), s["mean"] + s["std"].fillna(0),
                        color=line.get_color(), alpha=0.2)
    for label, c in (crossings or {}).items():
        if c.n_train is not None:
            ax.axvline(c.n_train, color="0.4", ls="--", lw=1)
            ax.text(c.n_train, 0.02, f" {label}\n n={c.n_train:,.0f}", fontsize=7, color="0.3", va="bottom")
    ax.set_xscale("log")
    ax.set_xlabel("training examples (balanced subsets; last point: whole pool)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    ax.set_title(title, fontsize=9)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def closest_pairs_grid(samples: np.ndarray, train: np.ndarray, pairs: list[tuple[int, int, float]],
                       per_row: int = 8) -> bytes:
    """PNG: blocks of ``per_row`` pairs, each a sample (top) above its nearest training image (bottom).

    ``samples`` and ``train`` are uint8 (N, C, H, W); ``pairs`` from ``memorization.closest_pairs``.
    """
    c, h, w = samples.shape[1:]
    blocks = -(-len(pairs) // per_row)
    gap = 4  # white rows between blocks, so a pair is read top to bottom
    mosaic = np.full((c, blocks * (2 * h + 1 + gap), per_row * (w + 1)), 255, dtype=np.uint8)
    for i, (s, t, _) in enumerate(pairs):
        r, q = divmod(i, per_row)
        top, left = r * (2 * h + 1 + gap), q * (w + 1)
        mosaic[:, top : top + h, left : left + w] = samples[s]
        mosaic[:, top + h + 1 : top + 2 * h + 1, left : left + w] = train[t]
    return image_grid(mosaic[None], n=1)
