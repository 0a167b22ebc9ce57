"""GAN family: options, losses with known values, nets on 28x28 / 8x8 / points, ring-of-8 training,
mode-collapse detection, divergence, conditional sampling."""
from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError

import bench.data.registered  # noqa: F401  (registers toy2d, digits, ...)
from bench.config import Budget
from bench.data import Dataset, load_dataset
from bench.engine import Engine
from bench.families.base import DataSpec
from bench.families.gan import GAN, GANOptions, minibatch_std
from bench.metrics.stability import snapshot_fn_for, training_stability
from bench.train import TrainContext, train

LOSSES = ["minimax", "nonsaturating", "wgan", "wgan_gp", "hinge"]
CPU = torch.device("cpu")
# Toy settings: the image papers' defaults (2e-4, beta2 0.999) learn the ring far more slowly; these
# reach 8/8 modes in ~2000 steps on 4 of 4 seeds we tried.
TOY = dict(lr_g=5e-4, lr_d=5e-4)
TOY_ADAM = dict(TOY, betas=(0.5, 0.9))
# Per loss, chosen so that 300 steps move G toward the ring on 6 of 6 seeds we tried (seeds 0-5):
# wgan keeps its paper's RMSProp and 5 critic steps; wgan_gp its paper's betas (0, 0.9), with 2 critic
# steps at a higher learning rate to stay fast.
TOY_PER_LOSS = {
    "minimax": TOY_ADAM,
    "nonsaturating": TOY_ADAM,
    "hinge": TOY_ADAM,
    "wgan": TOY,
    "wgan_gp": dict(lr_g=1e-3, lr_d=1e-3, d_steps=2),
}


@pytest.fixture(scope="module")
def ring() -> Dataset:
    # std 0.1 (the literature's 0.02 needs ~10x more steps for samples within 3 std); modes 15 std apart.
    return load_dataset("toy2d", {"pattern": "ring8", "std": 0.1, "n_train": 10000, "n_test": 1000})


def spec_of(ds: Dataset) -> DataSpec:
    return DataSpec(ds.kind, ds.shape, ds.num_classes, tuple(ds.class_frequencies().tolist()))


def build(spec: DataSpec, seed: int = 0, **options) -> GAN:
    torch.manual_seed(seed)  # the runner seeds weight init the same way
    return GAN(spec, GANOptions(**options))


def ring_coverage(points: torch.Tensor, ds: Dataset, min_share: float = 0.25) -> tuple[int, float]:
    """The mode-collapse literature's protocol (VEEGAN, Unrolled GAN): a sample is high quality if it lies
    within 3 std of its nearest mode; a mode is covered if it gets at least ``min_share`` of its fair share
    (1/K of the samples) as high-quality samples. Returns (modes covered, high-quality share)."""
    means, std = ds.mixture.means, ds.mixture.std
    dist, nearest = torch.cdist(points.float(), means).min(dim=1)  # (N,), (N,)
    hq = dist < 3 * std
    counts = torch.bincount(nearest[hq], minlength=len(means))  # (K,)
    covered = int((counts >= min_share * len(points) / len(means)).sum())
    return covered, float(hq.float().mean())


def coverage_probe(samples: torch.Tensor, ds: Dataset, device) -> dict[str, float]:
    """Stand-in for quick_quality on toy2d (same protocol as ring_coverage)."""
    covered, hq = ring_coverage(samples, ds)
    return {"modes_covered": float(covered), "high_quality_share": hq}


def median_mode_distance(model: GAN, ds: Dataset) -> float:
    s = model.sample(2000, torch.Generator().manual_seed(123))
    return float(torch.cdist(s, ds.mixture.means).min(dim=1).values.median())


# ----------------------------------------------------------------------------- options


def test_paper_defaults_are_resolved_per_loss():
    o = GANOptions(loss="wgan")
    assert (o.d_steps, o.optimizer, o.lr_g, o.lr_d, o.clip, o.gp_weight) == (5, "rmsprop", 5e-5, 5e-5, 0.01, None)
    o = GANOptions(loss="wgan_gp")
    assert (o.d_steps, o.betas, o.lr_d, o.gp_weight, o.clip) == (5, (0.0, 0.9), 1e-4, 10.0, None)
    o = GANOptions(loss="hinge")
    assert o.spectral_norm is True and o.d_steps == 1
    o = GANOptions()
    assert (o.loss, o.d_steps, o.betas, o.lr_g, o.spectral_norm) == ("nonsaturating", 1, (0.5, 0.999), 2e-4, False)
    assert GANOptions(loss="wgan", d_steps=2, clip=0.05).d_steps == 2


@pytest.mark.parametrize("bad, field", [
    ({"loss": "hinge", "clip": 0.01}, "clip"),
    ({"loss": "wgan", "gp_weight": 10}, "gp_weight"),
    ({"loss": "lsgan"}, "loss"),
    ({"d_steps": 0}, "d_steps"),
    ({"betas": (0.5, 1.5)}, "betas"),
    ({"dropout": 0.1}, "dropout"),
])
def test_bad_options_are_rejected_naming_the_field(bad, field):
    with pytest.raises(ValidationError, match=field):
        GANOptions(**bad)


def test_resolved_options_round_trip_for_checkpoints():
    spec = DataSpec("image", (1, 8, 8), 10, (0.1,) * 10)
    for loss in LOSSES:
        m = GAN(spec, GANOptions(loss=loss))
        again = GANOptions(**m.options.model_dump())
        assert again == m.options and again.width == 32
        GAN(spec, again).load_state_dict(m.state_dict())


# ----------------------------------------------------------------------------- known values


def test_losses_at_an_undecided_discriminator():
    # All scores 0 (D(x) = 1/2): minimax/non-saturating D loss 2 ln 2 (Goodfellow 2014, Thm 1: -log 4),
    # minimax G loss log(1/2), non-saturating G loss -log(1/2); hinge D loss 2; critics 0.
    spec = DataSpec("points", (2,), 8, (0.125,) * 8)
    z = torch.zeros(16)
    expect = {"minimax": (2 * math.log(2), -math.log(2)), "nonsaturating": (2 * math.log(2), math.log(2)),
              "wgan": (0.0, 0.0), "wgan_gp": (0.0, 0.0), "hinge": (2.0, 0.0)}
    for loss, (d, g) in expect.items():
        m = GAN(spec, GANOptions(loss=loss))
        assert float(m._d_loss(z, z)) == pytest.approx(d) and float(m._g_loss(z)) == pytest.approx(g)


class _Linear(torch.nn.Module):
    def forward(self, x, onehot):
        return x @ torch.tensor([3.0, 4.0])  # (B,)


def test_gradient_penalty_of_a_linear_critic():
    # D(x) = w.x has gradient w everywhere, so the penalty is (||w|| - 1)^2 = (5 - 1)^2 = 16 for w = (3, 4).
    spec = DataSpec("points", (2,), 8, (0.125,) * 8)
    m = GAN(spec, GANOptions(loss="wgan_gp"))
    m.D = _Linear()
    m.seed_training(0)
    gp = m._gradient_penalty(torch.randn(32, 2), torch.randn(32, 2), None)
    assert float(gp) == pytest.approx(16.0, rel=1e-6)


def test_minibatch_std_feature_by_hand():
    # Two examples, two features: (0, 1) and (2, 5). Per-feature population std: 1 and 2 -> mean 1.5.
    h = torch.tensor([[0.0, 1.0], [2.0, 5.0]])
    out = minibatch_std(h)
    assert out.shape == (2, 3) and torch.allclose(out[:, 2], torch.tensor([1.5, 1.5]), atol=1e-6)
    img = torch.randn(4, 3, 5, 5)
    assert minibatch_std(img).shape == (4, 4, 5, 5)
    collapsed = img[:1].expand(4, -1, -1, -1)  # four identical samples: the std feature is ~0
    assert torch.all(minibatch_std(collapsed)[:, 3] < 1e-3)


def test_accuracy_rule_logistic_and_critic():
    spec = DataSpec("points", (2,), 8, (0.125,) * 8)
    real, fake = torch.tensor([1.0, -1.0, 2.0, 3.0]), torch.tensor([-2.0, 0.5, -1.0, -3.0])
    a_r, a_f = GAN(spec, GANOptions(loss="nonsaturating"))._accuracy(real, fake)  # threshold 0
    assert (float(a_r), float(a_f)) == (0.75, 0.75)
    # critic: threshold = mean of all 8 scores = 0.0625 after shifting everything by +10 -> 10.0625
    a_r, a_f = GAN(spec, GANOptions(loss="wgan"))._accuracy(real + 10, fake + 10)
    assert (float(a_r), float(a_f)) == (0.75, 0.75)


# ----------------------------------------------------------------------------- nets and steps


@pytest.mark.parametrize("shape", [(1, 28, 28), (1, 8, 8)])
@pytest.mark.parametrize("loss", LOSSES)
def test_one_step_on_images_updates_both_nets(shape, loss):
    spec = DataSpec("image", shape, 10, (0.1,) * 10)
    m = build(spec, loss=loss, conditional=True, minibatch_std=True, d_steps=2, width=8)
    m.seed_training(0)
    g0 = [p.detach().clone() for p in m.G.parameters()]
    d0 = [p.detach().clone() for p in m.D.parameters()]
    x = torch.randint(0, 256, (6, *shape)).float() / 255
    out = Engine(m).step(x, torch.arange(6) % 10)
    assert GAN.watched_loss == "loss_d" and GAN.adversarial
    assert {"loss_d", "loss_g", "d_acc_real", "d_acc_fake"} <= set(out)
    assert all(v.dim() == 0 and not v.requires_grad and torch.isfinite(v) for v in out.values())
    assert any(not torch.equal(a, b) for a, b in zip(g0, m.G.parameters()))
    assert any(not torch.equal(a, b) for a, b in zip(d0, m.D.parameters()))
    if loss == "wgan":
        assert all(p.abs().max() <= m.options.clip + 1e-7 for p in m.D.parameters())
    m.eval()
    s = m.sample(5, torch.Generator().manual_seed(0))
    assert s.shape == (5, *shape) and s.min() >= 0 and s.max() <= 1
    y = torch.full((5,), 3)
    assert m.sample(5, torch.Generator().manual_seed(0), y).shape == (5, *shape)


def test_sampling_is_deterministic_given_the_generator():
    spec = DataSpec("image", (1, 8, 8), 10, (0.1,) * 10)
    m = build(spec, conditional=True).eval()
    a = m.sample(7, torch.Generator().manual_seed(5))
    b = m.sample(7, torch.Generator().manual_seed(5))
    c = m.sample(7, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_training_is_deterministic_given_the_seed(ring):
    runs = []
    for _ in range(2):
        m = build(spec_of(ring), seed=1, **TOY_ADAM)
        r = train(m, ring, TrainContext(Budget(steps=20), batch_size=64, seed=1))
        runs.append((r.log.drop(columns="seconds"), m.sample(10, torch.Generator().manual_seed(0))))
    assert runs[0][0].equals(runs[1][0]) and torch.equal(runs[0][1], runs[1][1])


def test_hinge_default_spectral_norm_keeps_d_layers_at_unit_norm(ring):
    # Miyato 2018: W / sigma(W) with sigma from power iteration (one iteration per forward in train mode).
    # After training, a few more forwards let the iteration converge: the largest singular value is then 1.
    m = build(spec_of(ring), loss="hinge", **TOY_ADAM)
    train(m, ring, TrainContext(Budget(steps=30), batch_size=64, seed=0))
    m.train()
    with torch.no_grad():
        for _ in range(30):
            m.D(ring.train_x[:64], None)
    m.eval()
    linears = [mod for mod in m.D.modules() if isinstance(mod, torch.nn.Linear)]
    assert len(linears) == 4
    for lin in linears:
        assert float(torch.linalg.matrix_norm(lin.weight.detach(), ord=2)) == pytest.approx(1.0, abs=0.01)
    plain = build(spec_of(ring), loss="nonsaturating")
    assert not any(hasattr(mod, "parametrizations") for mod in plain.D.modules())


def test_unconditioned_sampling_of_a_conditional_gan_draws_labels_from_the_data():
    spec = DataSpec("points", (2,), 4, (0.7, 0.1, 0.1, 0.1))
    m = build(spec, conditional=True).eval()
    drawn = []
    real = m.sample_labels
    m.sample_labels = lambda n, g: drawn.append(real(n, g)) or drawn[-1]  # noqa: E731  (record the draw)
    m.sample(4000, torch.Generator().manual_seed(0))
    counts = torch.bincount(drawn[0], minlength=4).float() / 4000
    assert torch.allclose(counts, torch.tensor([0.7, 0.1, 0.1, 0.1]), atol=0.03)


def test_interface_metadata():
    m = GAN(DataSpec("points", (2,), 8, (0.125,) * 8), GANOptions())
    assert m.likelihood_kind == "none" and m.nfe_per_sample == 1.0
    assert m.log_likelihood(torch.zeros(3, 2), torch.Generator()) == []


# ----------------------------------------------------------------------------- toy2d ring of 8


@pytest.mark.parametrize("loss", LOSSES)
def test_each_loss_trains_on_the_ring(loss, ring):
    """Every loss moves G's samples from the origin toward the ring within a few hundred steps."""
    m = build(spec_of(ring), loss=loss, **TOY_PER_LOSS[loss])
    m.eval()
    before = median_mode_distance(m, ring)
    m.train()
    r = train(m, ring, TrainContext(Budget(steps=300), batch_size=128, seed=0))
    assert r.status == "ok" and r.log.drop(columns=["step", "seconds"]).notna().all().all()
    after = median_mode_distance(m, ring)
    assert before > 1.5  # the ring has radius 2; an untrained G sits near the origin
    assert after < 0.75 * before, f"{loss}: median distance to the nearest mode {before:.2f} -> {after:.2f}"


def test_nonsaturating_gan_covers_the_ring_and_the_curve_shows_it(ring):
    """Seeded, real check: >= 6 of 8 modes covered at the end, with the quality-over-time curve recorded."""
    m = build(spec_of(ring), loss="nonsaturating", minibatch_std=True, **TOY_ADAM)
    probe = snapshot_fn_for(ring, CPU, n_samples=2000, seed=0, quality_fn=coverage_probe)
    r = train(m, ring, TrainContext(Budget(steps=1500), batch_size=256, seed=0, snapshot_every=500, snapshot_fn=probe))
    assert r.status == "ok"
    curve = [s["modes_covered"] for s in r.snapshots]
    assert [s["step"] for s in r.snapshots] == [500, 1000, 1500]
    covered, hq = ring_coverage(m.sample(2000, torch.Generator().manual_seed(7)), ring)
    assert covered >= 6, f"modes covered {covered} (curve {curve})"
    assert hq > 0.5
    v = {x.name: x.value for x in training_stability(r, adversarial=True)}
    assert v["snap_modes_covered_final"] >= 6 and v["diverged"] == 0.0
    assert 0.3 < v["d_acc"] < 0.95  # neither side has won outright


class _OneMode(torch.nn.Module):
    """A generator forced to emit mode 0 only: the trained net's output times 0, plus mode 0 and its noise."""

    def __init__(self, g: torch.nn.Module, mode: torch.Tensor, std: float):
        super().__init__()
        self.g, self.mode, self.std = g, mode, std

    def forward(self, z, onehot):
        return 0 * self.g(z, onehot) + self.mode + self.std * z[:, :2]  # (B, 2), still differentiable


def test_a_collapsed_generator_is_flagged_by_coverage_and_by_the_curve(ring):
    m = build(spec_of(ring), **TOY_ADAM)
    m.G = _OneMode(m.G, ring.mixture.means[0], ring.mixture.std)
    probe = snapshot_fn_for(ring, CPU, n_samples=1000, seed=0, quality_fn=coverage_probe)
    r = train(m, ring, TrainContext(Budget(steps=60), batch_size=64, seed=0, snapshot_every=20, snapshot_fn=probe))
    assert r.status == "ok"
    assert [s["modes_covered"] for s in r.snapshots] == [1.0, 1.0, 1.0]  # the whole curve stays at one mode
    assert all(s["high_quality_share"] > 0.95 for s in r.snapshots)  # quality alone would not flag it
    v = {x.name: x.value for x in training_stability(r, adversarial=True)}
    assert v["snap_modes_covered_final"] == 1.0 and v["snap_modes_covered_min"] == 1.0
    assert v["snap_modes_covered_drop"] == 0.0


def test_conditional_gan_samples_the_asked_mode(ring):
    """toy2d labels are mode indices: samples for label c should land nearest mode c (chance: 1/8)."""
    m = build(spec_of(ring), conditional=True, **TOY_ADAM)
    r = train(m, ring, TrainContext(Budget(steps=800), batch_size=256, seed=0))
    assert r.status == "ok"
    m.eval()
    y = torch.arange(8).repeat_interleave(100)  # (800,)
    s = m.sample(800, torch.Generator().manual_seed(0), y)
    hit = (torch.cdist(s, ring.mixture.means).argmin(dim=1) == y).float().mean()
    assert hit > 0.5, f"share of samples at the asked mode {float(hit):.2f} (chance 0.125)"
    # without labels, labels are drawn from the class frequencies: every mode appears
    free = m.sample(800, torch.Generator().manual_seed(1))
    assert len(torch.cdist(free, ring.mixture.means).argmin(dim=1).unique()) == 8


# ----------------------------------------------------------------------------- divergence


def test_nan_at_step_k_is_diverged_at_k(ring):
    m = build(spec_of(ring), **TOY_ADAM)
    r = train(m, ring, TrainContext(Budget(steps=50), batch_size=64, seed=0, nan_at_step=7))
    assert r.status == "diverged" and r.diverged_at == 7 and len(r.log) == 7
    v = {x.name: x.value for x in training_stability(r, adversarial=True)}
    assert v["diverged"] == 1.0 and v["diverged_at_step"] == 7.0


def test_diverged_gan_cell_is_recorded_and_the_next_cell_runs(tmp_path, write_suite):
    from bench.config import load_suite
    from bench.runner import run_suite
    from bench.store import RunStore

    p = write_suite("""
        name: gan-nan
        dataset: {name: toy2d, n_train: 512, n_test: 128}
        budget: {steps: 12}
        batch_size: 64
        eval: {metrics: [stability], save_samples: false, snapshot_every: 6, snapshot_samples: 200}
        models:
          - {name: broken, family: gan, debug: {nan_at_step: 3}}
          - {name: fine, family: gan, options: {loss: hinge}}
        """)
    run_dir = run_suite(load_suite(p), p, reports_root=tmp_path / "reports", quiet=True)
    recs = {r.model: r for r in RunStore(run_dir).records()}
    assert recs["broken"].status == "diverged" and recs["broken"].diverged_at == 3
    assert recs["broken"].value("diverged_at_step") == 3.0
    assert recs["fine"].status == "ok" and recs["fine"].spent["steps"] == 12
    assert recs["fine"].value("diverged") == 0.0 and recs["fine"].value("d_acc") is not None
    # snapshots through the real quick_quality: steps 6 and 12, summarised as metrics
    assert [s["step"] for s in recs["fine"].curves["snapshots"]] == [6, 12]
    assert recs["fine"].value("snap_modes_covered_final") is not None
    assert recs["broken"].curves["snapshots"] == []  # diverged at step 3, before the first snapshot
