"""Conditional families, guidance and the NFE counter: known answers that can fail.

* guidance at the neutral scale is the plain conditional sampler bit for bit (same generator);
* the NFE counter counts sample_steps (x2 Heun/midpoint, x2 CFG) on a counting stub and equals
  every family's declared ``nfe_per_sample`` on the real samplers;
* DDIM with eta = 0 draws nothing after x_T (deterministic given x_T);
* conditional models trained for a few seconds on labelled toy data draw the requested class
  more often than chance (nearest-class-mean rule); classifier guidance moves an unconditional model;
* conditional likelihoods are labelled ``given="y"``, and the marginal log p(x) is the log-sum.
"""
from __future__ import annotations

import math

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from bench.engine import Engine
from bench.errors import BenchError
from bench.families.autoregressive import Autoregressive, AutoregressiveOptions, autoregress, scale_in
from bench.families.base import DataSpec, count_calls, measure_nfe
from bench.families.diffusion import Diffusion, DiffusionOptions, make_betas, sample_ddim, sample_ddpm
from bench.families.flow_matching import FlowMatching, FlowMatchingOptions, sample_ode
from bench.families.gan import GAN, GANOptions
from bench.families.guidance import classifier_free, drop_labels
from bench.families.naive_bayes import NaiveBayes, NaiveBayesOptions
from bench.families.vae import VAE, VAEOptions

K = 4
CENTRES = torch.tensor([[2.0, 2.0], [-2.0, 2.0], [-2.0, -2.0], [2.0, -2.0]])  # one Gaussian blob per class
POINTS = DataSpec("points", (2,), K, (0.25,) * K)
DIGITS = DataSpec("image", (1, 8, 8), 10, (0.1,) * 10)
TINY = DataSpec("image", (1, 4, 4), 3, (0.5, 0.3, 0.2))


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _blobs(n: int, g: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    y = torch.randint(0, K, (n,), generator=g)
    return CENTRES[y] + 0.3 * torch.randn(n, 2, generator=g), y


def _nearest_class(x: torch.Tensor) -> torch.Tensor:
    return torch.cdist(x, CENTRES).argmin(1)  # the nearest-class-mean rule


def _randomise(model: nn.Module, seed: int = 0) -> None:
    """Random weights everywhere (the nets' zero-initialised output layers would hide the labels)."""
    g = _gen(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.3 * torch.randn(p.shape, generator=g))


def _train(model, steps: int, seed: int = 0):
    torch.manual_seed(seed)
    model.seed_training(seed)
    engine, g = Engine(model), _gen(seed)
    for _ in range(steps):
        engine.step(*_blobs(128, g))
    return model.eval()


class Stub(nn.Module):
    """A counting stub of a denoiser/velocity net: (x, t[, y]) -> 0.1 x (+ y's value when given)."""

    def forward(self, x, t, y=None):
        out = 0.1 * x
        return out if y is None else out + y.float().view(-1, *[1] * (x.dim() - 1))


# ---------------------------------------------------------------------- NFE counter on a stub
ABAR = torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - make_betas("linear", 100), 0)])


@pytest.mark.parametrize("sampler", [sample_ddpm, sample_ddim])
def test_counter_counts_one_evaluation_per_diffusion_step(sampler):
    net = Stub()
    extra = "beta_tilde" if sampler is sample_ddpm else 0.0
    with count_calls(net) as c:
        sampler(lambda x, t: net(x, t), ABAR, (6, 2), 17, extra, _gen(), False, torch.device("cpu"))
    assert (c.calls, c.rows, c.per_sample(6)) == (17, 17 * 6, 17.0)


@pytest.mark.parametrize("solver,per_step", [("euler", 1), ("heun", 2), ("midpoint", 2)])
def test_counter_counts_solver_evaluations(solver, per_step):
    net = Stub()
    with count_calls(net) as c:
        sample_ode(net, (5, 2), 9, solver, _gen(), torch.device("cpu"))
    assert c.per_sample(5) == 9 * per_step


@pytest.mark.parametrize("batched", [False, True])
def test_counter_counts_cfg_twice_per_step_batched_or_not(batched):
    net = Stub()
    y = torch.arange(5) % K
    with count_calls(net) as c:
        sample_ode(classifier_free(net, y, K, 2.0, batched), (5, 2), 9, "euler", _gen(), torch.device("cpu"))
    assert c.per_sample(5) == 18
    assert c.calls == (9 if batched else 18)  # one 2n-row call or two n-row calls per step


def test_counter_ignores_nested_calls_and_detaches():
    inner = nn.Linear(2, 2)
    outer = nn.Sequential(inner, nn.ReLU())
    with count_calls(outer, inner) as c:
        outer(torch.zeros(3, 2))
        inner(torch.zeros(4, 2))  # a direct call of the inner net counts
    outer(torch.zeros(3, 2))  # hooks removed
    assert (c.calls, c.rows) == (2, 7)


# ---------------------------------------------------------------------- NFE counter on the real samplers
NFE_CASES = [
    (Diffusion, DiffusionOptions(sampler="ddpm", sample_steps=7, timesteps=50), 7),
    (Diffusion, DiffusionOptions(sampler="ddim", sample_steps=5, timesteps=50), 5),
    (Diffusion, DiffusionOptions(sample_steps=5, timesteps=50, conditional=True), 5),
    (Diffusion, DiffusionOptions(sample_steps=5, timesteps=50, conditional=True, guidance=1.5), 10),
    (Diffusion, DiffusionOptions(sample_steps=5, timesteps=50, conditional=True, guidance=1.5, cfg_batched=True), 10),
    (Diffusion, DiffusionOptions(sample_steps=5, timesteps=50, classifier=True, classifier_guidance=2.0), 10),
    (FlowMatching, FlowMatchingOptions(solver="euler", sample_steps=6), 6),
    (FlowMatching, FlowMatchingOptions(solver="heun", sample_steps=6), 12),
    (FlowMatching, FlowMatchingOptions(solver="heun", sample_steps=6, conditional=True, guidance=3.0), 24),
    (VAE, VAEOptions(conditional=True), 1),
    (GAN, GANOptions(conditional=True, truncation=1.0), 1),
    (Autoregressive, AutoregressiveOptions(), 2),
]


@pytest.mark.parametrize("cls,opts,expected", NFE_CASES, ids=lambda v: getattr(v, "__name__", None))
def test_measured_nfe_equals_declared_on_points(cls, opts, expected):
    m = cls(POINTS, opts).eval()
    assert m.nfe_per_sample == expected
    assert measure_nfe(m, 8, _gen()) == expected


@pytest.mark.parametrize("spec,opts", [(DIGITS, DiffusionOptions(sample_steps=4, timesteps=20, conditional=True,
                                                                 guidance=1.0, classifier=True,
                                                                 classifier_guidance=1.0, width=8)),
                                       (TINY, AutoregressiveOptions(channels=4, layers=1, conditional=True))])
def test_measured_nfe_equals_declared_on_images(spec, opts):
    cls = Diffusion if isinstance(opts, DiffusionOptions) else Autoregressive
    m = cls(spec, opts).eval()
    assert measure_nfe(m, 3, _gen()) == m.nfe_per_sample == (12 if cls is Diffusion else 16)


def test_measure_nfe_is_none_when_no_network_runs():
    assert measure_nfe(NaiveBayes(DIGITS, NaiveBayesOptions()).eval(), 4, _gen()) is None


# ---------------------------------------------------------------------- guidance: known answers
@pytest.mark.parametrize("sampler", ["ddpm", "ddim"])
def test_diffusion_guidance_zero_is_the_plain_conditional_sampler_bit_for_bit(sampler):
    o = DiffusionOptions(sampler=sampler, sample_steps=6, timesteps=40, conditional=True, eta=0.5)
    m = Diffusion(POINTS, o).eval()
    _randomise(m)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    net, T = m.averaged("net"), o.timesteps
    plain = sample_ddpm if sampler == "ddpm" else sample_ddim
    extra = o.sigma if sampler == "ddpm" else o.eta
    ref = plain(lambda x, t: net(x, t.float() / T, y), m.abar, (6, 2), 6, extra, _gen(3), False, m.device)
    assert torch.equal(m.sample(6, _gen(3), y), ref)
    guided = Diffusion(POINTS, o.model_copy(update={"guidance": 2.0})).eval()
    guided.load_state_dict(m.state_dict())
    assert not torch.allclose(guided.sample(6, _gen(3), y), ref)  # w > 0 does change the samples


def test_flow_matching_guidance_zero_is_the_plain_conditional_sampler_bit_for_bit():
    o = FlowMatchingOptions(solver="heun", sample_steps=5, conditional=True)
    m = FlowMatching(POINTS, o).eval()
    _randomise(m, 1)
    y = torch.tensor([3, 2, 1, 0])
    net = m.averaged("net")
    ref = sample_ode(lambda x, t: net(x, t, y), (4, 2), 5, "heun", _gen(4), m.device)
    assert torch.equal(m.sample(4, _gen(4), y), ref)


def test_cfg_is_the_affine_combination_and_batching_agrees():
    net = Stub()
    x, t, y = torch.randn(5, 2, generator=_gen()), torch.full((5,), 0.5), torch.arange(5) % K
    w = 1.5
    expected = (1 + w) * net(x, t, y) - w * net(x, t, torch.full_like(y, K))  # Ho & Salimans 2022, eq. 6
    assert torch.allclose(classifier_free(net, y, K, w)(x, t), expected)
    assert torch.allclose(classifier_free(net, y, K, w, batched=True)(x, t), expected)


def test_ddim_eta_zero_is_deterministic_given_x_T():
    """With eta = 0 the sampler draws x_T and nothing else: the generator ends where drawing x_T leaves it."""
    m = Diffusion(POINTS, DiffusionOptions(sampler="ddim", eta=0.0, sample_steps=8, timesteps=40)).eval()
    _randomise(m)
    g = _gen(5)
    a = m.sample(16, g)
    after_sampling = g.get_state()
    g2 = _gen(5)
    torch.randn((16, 2), generator=g2)  # x_T alone
    assert torch.equal(after_sampling, g2.get_state())
    assert torch.equal(a, m.sample(16, _gen(5)))
    stochastic = Diffusion(POINTS, DiffusionOptions(sampler="ddim", eta=1.0, sample_steps=8, timesteps=40)).eval()
    stochastic.load_state_dict(m.state_dict())
    g3 = _gen(5)
    stochastic.sample(16, g3)
    assert not torch.equal(g3.get_state(), after_sampling)  # eta > 0 does draw (the check can fail)


def test_label_dropout_rate_and_null_label():
    y = torch.zeros(20000, dtype=torch.long)
    d = drop_labels(y, 0.1, K, _gen())
    assert set(d.unique().tolist()) == {0, K}
    assert abs((d == K).float().mean().item() - 0.1) < 0.01
    assert torch.equal(drop_labels(y, 0.0, K, _gen()), y)


def test_guidance_options_are_checked():
    with pytest.raises(ValidationError, match="needs conditional"):
        DiffusionOptions(guidance=1.0)
    with pytest.raises(ValidationError, match="needs classifier"):
        DiffusionOptions(classifier_guidance=1.0)
    with pytest.raises(ValidationError, match="needs conditional"):
        FlowMatchingOptions(guidance=1.0)
    with pytest.raises(BenchError, match="conditional=true is for images"):
        Autoregressive(POINTS, AutoregressiveOptions(conditional=True))


def test_unconditional_nets_have_no_label_parameters():
    """Defaults are unchanged: no label embedding, so earlier checkpoints and seeded weights still match."""
    for m in (Diffusion(DIGITS, DiffusionOptions(width=8)), FlowMatching(POINTS, FlowMatchingOptions()),
              VAE(DIGITS, VAEOptions(width=8)), Autoregressive(TINY, AutoregressiveOptions(channels=4))):
        assert not any("label" in k or "clf" in k for k in m.state_dict()), type(m).__name__


def test_sampling_options_change_a_trained_model_and_network_options_are_refused():
    m = Diffusion(POINTS, DiffusionOptions(conditional=True, sample_steps=10, timesteps=50)).eval()
    m.set_sampling_options(sample_steps=4, sampler="ddim", guidance=2.0)
    assert (m.options.sample_steps, m.nfe_per_sample) == (4, 8) and measure_nfe(m, 3, _gen()) == 8
    with pytest.raises(BenchError, match="hidden cannot change after training"):
        m.set_sampling_options(hidden=8)
    with pytest.raises(BenchError, match="exceeds timesteps"):
        m.set_sampling_options(sample_steps=51)
    plain = FlowMatching(POINTS, FlowMatchingOptions()).eval()
    with pytest.raises(BenchError, match="needs conditional"):
        plain.set_sampling_options(guidance=1.0)
    gan = GAN(POINTS, GANOptions(loss="wgan_gp"))
    gan.set_sampling_options(truncation=0.7)  # the resolved paper defaults validate again unchanged
    assert gan.options.truncation == 0.7 and gan.options.gp_weight == 10.0


def test_labels_are_checked():
    m = FlowMatching(POINTS, FlowMatchingOptions(conditional=True)).eval()
    with pytest.raises(ValueError, match="y must be"):
        m.sample(3, _gen(), torch.tensor([0, 1, K]))


def test_gan_truncation_bounds_z_and_none_is_plain_normal():
    m = GAN(POINTS, GANOptions(truncation=0.5)).eval()
    z = m._sample_noise(200, _gen())
    assert z.abs().max() <= 0.5 and z.std() > 0.2
    plain = GAN(POINTS, GANOptions()).eval()
    assert torch.equal(plain._sample_noise(7, _gen(1)), torch.randn(7, 64, generator=_gen(1)))


# ---------------------------------------------------------------------- conditional likelihoods
def test_conditional_pixelcnn_incremental_sampler_matches_the_network_with_labels():
    torch.manual_seed(0)
    m = Autoregressive(TINY, AutoregressiveOptions(channels=4, layers=2, conditional=True)).eval()
    _randomise(m)
    x = torch.randint(0, 256, (3, 1, 4, 4), generator=_gen())
    y = torch.tensor([0, 2, 1])
    _, logits = autoregress(m.net, (4, 4), 3, None, given=x, y=y)
    full = m.net(scale_in(x), y)
    assert torch.allclose(logits, full, atol=1e-5)
    assert not torch.allclose(full, m.net(scale_in(x), torch.tensor([1, 0, 2])), atol=1e-3)  # labels matter


def test_conditional_pixelcnn_marginal_is_the_log_sum_over_classes():
    m = Autoregressive(TINY, AutoregressiveOptions(channels=4, layers=1, conditional=True)).eval()
    _randomise(m)
    x = torch.randint(0, 256, (5, 1, 4, 4), generator=_gen()).to(torch.uint8)
    y = torch.tensor([0, 1, 2, 0, 1])
    given, marginal = m.log_likelihood(x, _gen(), y)
    assert (given.given, marginal.given, marginal.kind) == ("y", None, "exact")
    per_class = torch.stack([m.log_likelihood(x, _gen(), torch.full((5,), c))[0].log_prob for c in range(3)])
    log_py = torch.tensor(TINY.class_frequencies).log()[:, None]
    assert torch.allclose(marginal.log_prob, torch.logsumexp(log_py + per_class, 0))
    assert torch.allclose(given.log_prob, per_class.gather(0, y[None])[0])
    assert [lk.given for lk in m.log_likelihood(x, _gen())] == [None]  # without labels: log p(x) only


def test_cvae_likelihoods_are_labelled_and_the_marginal_bounds_each_class_term():
    m = VAE(POINTS, VAEOptions(conditional=True, iwae_k=4)).eval()
    x, y = _blobs(6, _gen())
    out = m.log_likelihood(x, _gen(), y)
    assert [(lk.estimator, lk.given) for lk in out] == [("elbo", "y"), ("iwae", "y"), ("elbo", None), ("iwae", None)]
    assert "marginal" in out[3].params and out[3].params["k"] == 4
    # log sum_y p(y) e^{B_y} >= log p(y') + B_y' for the test label's bound drawn the same way
    assert torch.all(out[3].log_prob >= out[1].log_prob + math.log(0.25) - 2.0)
    assert [lk.given for lk in m.log_likelihood(x, _gen())] == [None, None]


def test_conditional_diffusion_likelihood_is_given_y_and_null():
    m = Diffusion(POINTS, DiffusionOptions(conditional=True, timesteps=20, sample_steps=5, vlb_t_samples=4)).eval()
    x, y = _blobs(4, _gen())
    assert [lk.given for lk in m.log_likelihood(x, _gen(), y)] == ["y", "null"]
    assert m.log_likelihood(x, _gen()) == []  # no label, no log p(x): nothing that could pass for it


def test_conditional_flow_matching_likelihood_is_given_y_and_null():
    m = FlowMatching(POINTS, FlowMatchingOptions(conditional=True, likelihood_steps=4)).eval()
    _randomise(m)
    x, y = _blobs(4, _gen())
    given, null = m.log_likelihood(x, _gen(), y)
    assert (given.given, null.given, null.params["label"]) == ("y", "null", "null")
    assert not torch.allclose(given.log_prob, null.log_prob)  # the label changes the velocity field
    assert m.log_likelihood(x, _gen()) == []


def test_batched_cfg_matches_unbatched_on_the_real_sampler():
    o = FlowMatchingOptions(conditional=True, guidance=2.0, sample_steps=5)
    m = FlowMatching(POINTS, o).eval()
    _randomise(m, 2)
    batched = FlowMatching(POINTS, o.model_copy(update={"cfg_batched": True})).eval()
    batched.load_state_dict(m.state_dict())
    y = torch.arange(8) % K
    # the same arithmetic up to float rounding (random weights make a steep flow: compare relatively)
    assert torch.allclose(m.sample(8, _gen(3), y), batched.sample(8, _gen(3), y), rtol=1e-4, atol=1e-3)


# ---------------------------------------------------------------------- trained for a few seconds
def _controllability(model, n: int = 400) -> float:
    y = torch.arange(n) % K
    return (_nearest_class(model.sample(n, _gen(9), y)) == y).float().mean().item()


def test_conditional_flow_matching_draws_the_requested_class():
    m = _train(FlowMatching(POINTS, FlowMatchingOptions(conditional=True, hidden=64, sample_steps=10)), 300)
    assert _controllability(m) > 0.8  # chance is 1/4


def test_cvae_draws_the_requested_class():
    m = _train(VAE(POINTS, VAEOptions(conditional=True, hidden=64, latent_dim=2)), 300)
    assert _controllability(m) > 0.8


def test_conditional_diffusion_and_classifier_guidance_draw_the_requested_class():
    cond = _train(Diffusion(POINTS, DiffusionOptions(conditional=True, hidden=64, timesteps=100, sample_steps=20)),
                  600)
    assert _controllability(cond) > 0.8
    o = DiffusionOptions(classifier=True, hidden=64, timesteps=100, sample_steps=20)
    uncond = _train(Diffusion(POINTS, o), 600)
    base = _controllability(uncond)  # the labels only steer through the classifier: about chance
    guided = Diffusion(POINTS, o.model_copy(update={"classifier_guidance": 4.0})).eval()
    guided.load_state_dict(uncond.state_dict())
    assert base < 0.4 and _controllability(guided) > base + 0.3


def test_conditional_pixelcnn_draws_the_requested_class():
    """4x4 images whose class sets the grey level (0, 128, 255, plus noise): samples asked for class c
    have the mean grey level of class c, by the nearest-class-mean rule."""
    levels = torch.tensor([0.0, 128.0, 255.0])
    m = Autoregressive(TINY, AutoregressiveOptions(channels=8, layers=2, conditional=True))
    m.seed_training(0)
    engine, g = Engine(m), _gen(0)
    for _ in range(150):
        y = torch.randint(0, 3, (64,), generator=g)
        v = (levels[y].view(-1, 1, 1, 1) + 20 * torch.randn(64, 1, 4, 4, generator=g)).clamp(0, 255).round()
        engine.step(v / 255, y)
    m.eval()
    y = torch.arange(60) % 3
    grey = m.sample(60, _gen(1), y).mean((1, 2, 3)) * 255  # (60,)
    assert ((grey[:, None] - levels).abs().argmin(1) == y).float().mean() > 0.8  # chance is 1/3


def test_cvae_on_images_samples_and_bounds_given_labels():
    m = VAE(DIGITS, VAEOptions(conditional=True, width=8, iwae_k=2)).eval()
    y = torch.arange(5)
    assert m.sample(5, _gen(), y).shape == (5, 1, 8, 8)
    x = torch.randint(0, 256, (5, 1, 8, 8), generator=_gen()).to(torch.uint8)
    out = m.log_likelihood(x, _gen(), y)
    assert [lk.given for lk in out] == ["y", "y", None, None] and all(lk.log_prob.shape == (5,) for lk in out)


def test_likelihood_evaluator_names_what_a_likelihood_is_of():
    """Known answer: a stub whose log p(x | y) is -y nats and whose null-label model gives -1 nat; the
    evaluator passes the test labels to a conditional model only, and names each quantity apart."""
    from types import SimpleNamespace

    from bench.data import load_dataset
    from bench.families.base import Likelihood
    from bench.metrics.likelihood import evaluate_likelihood

    ds = load_dataset("digits")

    def cond_ll(x, g, y):
        return [Likelihood("exact", "exact", -y.double(), given="y"),
                Likelihood("exact", "exact", -torch.ones(len(x)), given="null")]

    cond = SimpleNamespace(family="stub", is_conditional=True, log_likelihood=cond_ll)
    got = {m.name: m.value for m in evaluate_likelihood(cond, ds, torch.device("cpu"), torch.Generator(), 100, 30)}
    assert set(got) == {"nll_nats_exact_given_y", "nll_bpd_exact_given_y", "nll_nats_exact_null_label",
                        "nll_bpd_exact_null_label"}
    assert got["nll_nats_exact_given_y"] == pytest.approx(ds.test_y[:100].double().mean().item())
    assert got["nll_nats_exact_null_label"] == pytest.approx(1.0)
    plain = SimpleNamespace(family="stub", is_conditional=False,
                            log_likelihood=lambda x, g: [Likelihood("exact", "exact", -2 * torch.ones(len(x)))])
    got = {m.name: m.value for m in evaluate_likelihood(plain, ds, torch.device("cpu"), torch.Generator(), 100, 30)}
    assert got["nll_nats_exact"] == pytest.approx(2.0) and "nll_nats_exact_given_y" not in got


@pytest.mark.parametrize("family, options, key", [("vae", {"conditional": True}, "conditional"),
                                                  ("diffusion", {"classifier": True}, "classifier")])
def test_unlabelled_data_refuses_models_that_need_labels(family, options, key):
    import dataclasses

    from bench.config import parse_suite
    from bench.data import load_dataset
    from bench.errors import BenchError
    from bench.runner import check_labels

    ds = load_dataset("digits")
    bare = dataclasses.replace(ds, num_classes=0, train_y=torch.zeros_like(ds.train_y), test_y=torch.zeros_like(ds.test_y))
    text = f"name: t\ndataset: digits\nbudget: {{steps: 1}}\nmodels: [{{name: m, family: {family}, options: {options}}}]\n"
    cfg = parse_suite(text, "t.yaml")
    check_labels(cfg, ds)  # labelled: fine
    with pytest.raises(BenchError, match=f"models\\[0\\].options.{key}: dataset digits has no labels"):
        check_labels(cfg, bare)
