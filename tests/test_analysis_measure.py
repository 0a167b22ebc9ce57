"""The analyses wired to datasets and trained models (bench.analysis.measure), at tiny sizes on 8x8 digits."""
from __future__ import annotations

import pytest
import torch

from bench.analysis.measure import (generative_classifier, memorization, ood_sets, ood_table, train_per_class,
                                    train_test_gap)
from bench.analysis.probes import reconstruct
from bench.config import Budget
from bench.data import load_dataset
from bench.errors import BenchError
from bench.families import DataSpec
from bench.families.vae import VAE, VAEOptions
from bench.analysis.classify import fit_naive_bayes
from bench.families.naive_bayes import NaiveBayesOptions

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


@pytest.fixture(scope="module")
def nb(digits):
    return fit_naive_bayes(digits.train_x, digits.train_y, digits, NaiveBayesOptions())


@pytest.mark.parametrize("space", ["pixel", "domain"])
def test_memorization_flags_training_images_in_both_spaces(digits, space):
    copies = memorization(digits.train_x[:200], digits, space, CPU, n_test=297, cells=3, n_pairs=4)
    assert copies.closer_share > 0.95 and copies.exact_copy_share == 1.0 and copies.near_copy_share == 1.0
    assert copies.c_t < -3 and [p[2] for p in copies.pairs] == [0.0] * 4
    assert copies.pairs[0][1] == copies.pairs[0][0]  # sample i is training image i
    assert copies.row()["n_test"] == 297 and "pairs" not in copies.row()


def test_ood_table_separates_noise_and_gives_every_score(digits, nb):
    sets = ood_sets(digits, ["noise", "vflip"], n=200)
    rows = ood_table(nb, digits, sets, n=200, generator=torch.Generator().manual_seed(0), background=nb)
    got = {(r["ood_set"], r["score"]): r for r in rows}
    assert set(got) == {(s, k) for s in ("noise", "vflip") for k in ("nll", "typicality", "ratio", "complexity")}
    assert got["noise", "nll"]["auroc"] == 1.0 and got["noise", "typicality"]["auroc"] == 1.0
    # the model is its own background here: the ratio is identically zero and cannot rank anything
    assert got["noise", "ratio"]["auroc"] == 0.5 and got["noise", "nll"]["kind"] == "exact"
    with pytest.raises(BenchError, match="shape"):
        ood_sets(digits, ["mnist"], n=10)


def test_models_with_an_encoder_are_scored_by_reconstruction_too(digits, nb):
    spec = DataSpec("image", digits.shape, 10, tuple(digits.class_frequencies().tolist()))
    vae = VAE(spec, VAEOptions(width=8, latent_dim=4, iwae_k=2)).eval()
    assert reconstruct(vae, digits.test_x[:5]).shape == (5, 1, 8, 8)
    rows = ood_table(vae, digits, ood_sets(digits, ["noise"], n=50), n=50, generator=torch.Generator(), background=nb)
    assert {r["score"] for r in rows} == {"nll", "typicality", "ratio", "complexity", "reconstruction"}
    assert {r["estimator"] for r in rows if r["score"] == "nll"} == {"iwae"}  # the tighter bound


def test_train_test_gap_of_naive_bayes_is_small_and_positive(digits, nb):
    gap = train_test_gap(nb, digits, n=297, generator=torch.Generator())
    assert gap["kind"] == "exact" and 0 < gap["nll_gap_bpd"] < 0.5


def test_per_class_models_classify(digits):
    models = train_per_class("naive_bayes", {}, digits, Budget(epochs=1), batch_size=50, seed=0, device=CPU)
    (row,) = generative_classifier(models, digits, n=297, generator=torch.Generator())
    assert row["estimator"] == "exact" and row["accuracy"] > 0.7
    vaes = train_per_class("vae", {"width": 8, "latent_dim": 4, "iwae_k": 2}, digits, Budget(steps=2), 32, 0, CPU)
    rows = generative_classifier(vaes, digits, n=40, generator=torch.Generator())
    assert {(r["estimator"], r["kind"]) for r in rows} == {("elbo", "lower_bound"), ("iwae", "lower_bound")}
