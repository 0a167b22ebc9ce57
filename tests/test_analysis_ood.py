"""Known answers for out-of-distribution scoring (bench.analysis.ood)."""
from __future__ import annotations

import math

import pytest
import torch

from bench.analysis.ood import (auroc, complexity_score, likelihood_ratio_score, nll_bits_per_dim, png_bits_per_dim,
                                reconstruction_error, synthetic_ood, typicality_score)
from bench.errors import BenchError


def test_auroc_of_one_distribution_is_half_within_its_standard_error():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3000, generator=g), torch.randn(2000, generator=g)
    value, se = auroc(a, b)
    # at A = 0.5 Hanley-McNeil reduces to the Mann-Whitney null variance (n1 + n2 + 1) / (12 n1 n2)
    assert se == pytest.approx(math.sqrt((3000 + 2000 + 1) / (12 * 3000 * 2000)), rel=1e-3)
    assert abs(value - 0.5) < 3 * se


def test_auroc_of_disjoint_supports_is_one_and_reversed_is_zero():
    inside, outside = torch.rand(500), torch.rand(400) + 2.0
    assert auroc(inside, outside) == (1.0, 0.0)
    assert auroc(outside, inside)[0] == 0.0


def test_auroc_rejects_empty_and_non_finite_scores():
    with pytest.raises(ValueError):
        auroc(torch.zeros(0), torch.ones(3))
    with pytest.raises(ValueError):
        auroc(torch.tensor([0.0, math.nan]), torch.ones(3))


def test_scores_have_the_direction_higher_is_more_out_of_distribution():
    dim = 4
    lp = torch.tensor([-4 * math.log(2), -8 * math.log(2)])  # 1 and 2 bits/dim
    nll = nll_bits_per_dim(lp, dim)
    assert nll.tolist() == pytest.approx([1.0, 2.0])
    # typical NLL 1.5: both are 0.5 away, whichever side
    assert typicality_score(nll, torch.tensor([1.0, 2.0])).tolist() == pytest.approx([0.5, 0.5])
    assert likelihood_ratio_score(nll, torch.tensor([3.0, 1.0])).tolist() == pytest.approx([-2.0, 1.0])
    with pytest.raises(ValueError):
        likelihood_ratio_score(nll, torch.zeros(3))


def test_reconstruction_error_is_per_image_mean_squared_error_in_unit_scale():
    x = torch.tensor([[[[0, 255]]], [[[255, 255]]]], dtype=torch.uint8)  # (2, 1, 1, 2)
    rec = torch.tensor([[[[0.0, 1.0]]], [[[0.0, 1.0]]]])
    assert reconstruction_error(x, rec).tolist() == pytest.approx([0.0, 0.5])


def test_synthetic_sets_keep_shape_and_dtype():
    x = torch.randint(0, 256, (5, 1, 4, 4), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    noise = synthetic_ood("noise", x, g)
    assert noise.shape == x.shape and noise.dtype == torch.uint8
    assert torch.equal(synthetic_ood("hflip", synthetic_ood("hflip", x, g), g), x)
    assert torch.equal(synthetic_ood("vflip", x, g)[:, :, 0], x[:, :, -1])
    with pytest.raises(BenchError, match="noise, hflip, vflip"):
        synthetic_ood("blur", x, g)


def test_png_length_ranks_noise_above_blank_images_and_complexity_subtracts_it():
    blank = torch.zeros(3, 1, 28, 28, dtype=torch.uint8)
    noise = torch.randint(0, 256, (3, 1, 28, 28), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    lb, ln = png_bits_per_dim(blank), png_bits_per_dim(noise)
    assert (lb < 1).all() and (ln > 8).all()  # incompressible noise costs more than its 8 bits (PNG overhead)
    assert torch.equal(lb, lb[:1].expand(3))  # identical images, identical lengths
    nll = torch.tensor([2.0, 2.0, 2.0])
    assert torch.allclose(complexity_score(nll, noise), nll.double() - ln)
