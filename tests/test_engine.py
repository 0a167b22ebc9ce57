"""The engine: the optimisation step reproduces a hand-written loop exactly, and each setting does what it says."""
from __future__ import annotations

import inspect
import math
import re

import pytest
import torch
import yaml

from bench.config import Budget, parse_suite
from bench.engine import Engine, TrainSettings, bf16_supported, lr_factor, resolve_settings
from bench.errors import BenchError
from bench.families import FAMILIES
from bench.families.base import DataSpec, GenerativeModel
from bench.families.diffusion import Diffusion, DiffusionOptions
from bench.families.vae import VAE, VAEOptions
from bench.train import TrainContext, _progress_bar, train

DIGITS = DataSpec("image", (1, 8, 8), 10, (0.1,) * 10)
POINTS = DataSpec("points", (2,), 8, (0.125,) * 8)
CPU_BF16 = bf16_supported(torch.device("cpu"))


def _batch(n: int = 16, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=g).float() / 255, torch.randint(0, 10, (n,), generator=g)


def _vae(seed: int = 0) -> VAE:
    torch.manual_seed(seed)
    m = VAE(DIGITS, VAEOptions(latent_dim=4, width=8))
    m.seed_training(0)
    return m


# ---------------------------------------------------------------------- the seam
def test_fp32_engine_is_bit_identical_to_a_hand_written_loop():
    a, b = _vae(), _vae()
    engine = Engine(a)
    opt = torch.optim.Adam(b.parameters(), lr=b.options.lr)
    for i in range(5):
        x, y = _batch(seed=i)
        la = engine.step(x, y)
        loss = b.loss(x, y)["neg_elbo"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        assert torch.equal(la["neg_elbo"], loss.detach())
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))


def test_no_non_adversarial_family_calls_backward_or_step():
    """The engine owns the update: only adversarial families override training_step, and none calls backward()."""
    for name in FAMILIES.names():
        cls = FAMILIES.get(name).cls
        src = inspect.getsource(inspect.getmodule(cls))
        assert not re.search(r"\.backward\(|\bopt\w*\.step\(|zero_grad\(", src), name
        if cls.training_step is not GenerativeModel.training_step and not cls.adversarial:
            assert name == "naive_bayes", f"{name} overrides training_step without being adversarial"


def test_watched_loss_is_declared_and_returned():
    x, y = _batch()
    for name in ("vae", "autoencoder", "flow", "autoregressive", "diffusion", "flow_matching", "gan"):
        cls = FAMILIES.get(name).cls
        torch.manual_seed(0)
        opts = {"width": 8} if name in ("vae", "autoencoder", "gan", "diffusion", "flow_matching") else {}
        m = cls(DIGITS, cls.Options(**opts))
        out = Engine(m).step(x, y)
        assert cls.watched_loss in out and all(not v.requires_grad for v in out.values()), name


def test_missing_watched_loss_is_a_clear_error():
    class Wrong(VAE):
        watched_loss = "nope"

    torch.manual_seed(0)
    m = Wrong(DIGITS, VAEOptions(latent_dim=4, width=8))
    with pytest.raises(KeyError, match="watched_loss 'nope'"):
        Engine(m).step(*_batch())


# ---------------------------------------------------------------------- settings
def test_settings_resolve_family_then_suite_then_model_and_null_counts_as_given():
    fam = TrainSettings(grad_clip=100.0, warmup_steps=10)
    s = resolve_settings(fam, TrainSettings(precision="bf16", grad_clip=None), TrainSettings(warmup_steps=3))
    assert (s.precision, s.grad_clip, s.warmup_steps, s.ema) == ("bf16", None, 3, None)
    assert resolve_settings(fam).model_dump() == {"precision": "fp32", "grad_clip": 100.0, "ema": None,
                                                  "warmup_steps": 10, "schedule": "constant", "compile": False}


def test_suite_train_section_is_validated_and_written_back_with_only_the_given_keys():
    text = """
name: t
dataset: digits
budget: {steps: 3}
train: {grad_clip: null}
models:
  - {name: f, family: flow, train: {warmup_steps: 3}}
  - {name: d, family: diffusion}
"""
    cfg = parse_suite(text)
    f, d = cfg.models
    assert cfg.train_for(f).model_dump() == {"precision": "fp32", "grad_clip": None, "ema": None,
                                             "warmup_steps": 3, "schedule": "constant", "compile": False}
    assert cfg.train_for(d).ema == 0.995 and cfg.train_for(d).grad_clip is None
    dumped = yaml.safe_load(yaml.safe_dump(__import__("json").loads(cfg.model_dump_json())))
    assert dumped["train"] == {"grad_clip": None} and dumped["models"][1]["train"] == {}
    again = parse_suite(yaml.safe_dump(dumped))
    assert again.train_for(f) == cfg.train_for(f)  # the run directory's suite.yaml reruns the same settings
    with pytest.raises(BenchError, match=r"s.yaml:5: train.precision: .*'fp32', 'bf16', 'fp16' or 'auto'"):
        parse_suite(text.replace("{grad_clip: null}", "{precision: fp8}"), "s.yaml")


@pytest.mark.parametrize("supported,want", [(True, "bf16"), (False, "fp32")])
def test_auto_precision_is_bf16_where_supported_and_records_what_ran(monkeypatch, supported, want):
    monkeypatch.setattr("bench.engine.bf16_supported", lambda device: supported)
    engine = Engine(_vae(), TrainSettings(precision="auto"))
    assert engine.settings.precision == want and engine.settings.model_dump()["precision"] == want
    assert (engine.autocast() is not None) and (engine._dtype is (torch.bfloat16 if supported else None))


def test_fp16_on_cpu_and_bf16_without_support_are_one_line_errors(monkeypatch):
    with pytest.raises(BenchError, match="train.precision: fp16 needs a CUDA device"):
        Engine(_vae(), TrainSettings(precision="fp16"))
    monkeypatch.setattr("bench.engine.bf16_supported", lambda device: False)
    with pytest.raises(BenchError, match="train.precision: bf16 is not supported") as e:
        Engine(_vae(), TrainSettings(precision="bf16"))
    assert "\n" not in str(e.value)


def test_warmup_and_cosine_schedule_by_hand():
    assert [lr_factor(i, 4, "constant", None) for i in range(6)] == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    # cosine over 10 updates after 2 of warm-up: the first update after warm-up at full rate, then half a cosine
    f = [lr_factor(i, 2, "cosine", 12) for i in range(12)]
    assert f[:3] == [0.5, 1.0, 1.0] and f[7] == pytest.approx(0.5 * (1 + math.cos(math.pi * 5 / 10)))
    m = _vae()
    engine = Engine(m, TrainSettings(warmup_steps=4))
    base = m.options.lr
    lrs = []
    for i in range(5):
        lrs.append(engine.optimizers["adam"].param_groups[0]["lr"])
        engine.step(*_batch(seed=i))
    assert lrs == [base * 0.25, base * 0.5, base * 0.75, base, base]
    with pytest.raises(BenchError, match="train.schedule: cosine needs a budget in steps"):
        Engine(_vae(), TrainSettings(schedule="cosine"))


def test_gradient_clipping_caps_the_global_norm():
    m = _vae()
    engine = Engine(m, TrainSettings(grad_clip=0.01))
    x, y = _batch()
    engine.minimise(m.loss(x, y)["neg_elbo"] * 1e3)  # a huge gradient
    norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in m.parameters() if p.grad is not None]))
    assert norm.item() == pytest.approx(0.01, rel=1e-4)


def test_ema_follows_its_formula_and_is_off_for_families_that_average_nothing():
    torch.manual_seed(0)
    m = Diffusion(DIGITS, DiffusionOptions(mults=[1, 2], width=8))
    engine = Engine(m, TrainSettings(ema=0.5))
    x, y = _batch()
    ema = [p.detach().clone() for p in m.net.parameters()]
    for n in range(1, 4):
        engine.step(x, y)
        d = min(0.5, (1 + n) / (10 + n))
        ema = [d * e + (1 - d) * p for e, p in zip(ema, m.net.parameters())]
    assert all(torch.allclose(e, a, atol=1e-6) for e, a in zip(ema, m.averaged("net").parameters()))
    assert m.num_parameters() == sum(p.numel() for p in m.net.parameters())  # the copy is not counted
    # ema off: the copy is the live network
    off = Engine(m, TrainSettings(ema=None))
    off.step(x, y)
    assert all(torch.equal(e, p) for e, p in zip(m.averaged("net").parameters(), m.net.parameters()))
    # a family that names no modules records no EMA
    assert Engine(_vae(), TrainSettings(ema=0.9)).settings.ema is None


def test_ema_copies_are_saved_and_loaded_with_the_model():
    torch.manual_seed(0)
    m = Diffusion(DIGITS, DiffusionOptions(mults=[1, 2], width=8))
    engine = Engine(m)
    for i in range(3):
        engine.step(*_batch(seed=i))
    torch.manual_seed(1)
    fresh = Diffusion(DIGITS, DiffusionOptions(mults=[1, 2], width=8))
    fresh.load_state_dict(m.state_dict())
    assert int(fresh.ema_steps) == 3
    assert all(torch.equal(a, b) for a, b in zip(fresh.averaged("net").parameters(), m.averaged("net").parameters()))


# ---------------------------------------------------------------------- mixed precision and compile
@pytest.mark.skipif(not CPU_BF16, reason="this CPU has no AMX / AVX512-BF16")
@pytest.mark.parametrize("name", ["vae", "autoencoder", "gan", "flow", "autoregressive", "diffusion", "flow_matching"])
def test_bf16_autocast_trains_every_family_and_evaluation_stays_fp32(name):
    cls = FAMILIES.get(name).cls
    opts = {"gan": {"width": 8, "loss": "wgan_gp"}, "flow": {"steps_per_level": 1, "hidden": 8},
            "autoregressive": {"channels": 8, "layers": 1}}.get(name, {"width": 8})
    if name in ("diffusion", "flow_matching"):
        opts["mults"] = [1, 2]
    torch.manual_seed(0)
    m = cls(DIGITS, cls.Options(**opts))
    m.seed_training(0)
    engine = Engine(m, TrainSettings(precision="bf16"))
    seen: list[torch.dtype] = []
    hook = lambda mod, inp, out: seen.append(out.dtype) if isinstance(out, torch.Tensor) else None  # noqa: E731
    handles = [mod.register_forward_hook(hook) for mod in m.modules() if isinstance(mod, (torch.nn.Conv2d,
                                                                                        torch.nn.Linear))]
    before = [p.detach().clone() for p in m.parameters()]
    out = engine.step(*_batch())
    assert torch.bfloat16 in seen and all(torch.isfinite(v) for v in out.values())
    assert all(p.dtype == torch.float32 for p in m.parameters())  # weights stay fp32
    assert any(not torch.equal(a, b) for a, b in zip(before, m.parameters()))
    seen.clear()
    m.eval()
    s = m.sample(2, torch.Generator().manual_seed(0))
    lk = m.log_likelihood((_batch(2)[0] * 255).round().to(torch.uint8), torch.Generator().manual_seed(0))
    for h in handles:
        h.remove()
    assert torch.bfloat16 not in seen and s.dtype == torch.float32
    assert all(x.log_prob.dtype in (torch.float32, torch.float64) for x in lk)


@pytest.mark.slow
def test_compile_runs_a_tiny_model_and_matches_eager():
    a, b = _vae(), _vae()
    ea, eb = Engine(a), Engine(b, TrainSettings(compile=True))
    for i in range(2):
        la, lb = ea.step(*_batch(seed=i)), eb.step(*_batch(seed=i))
        assert la["neg_elbo"].item() == pytest.approx(lb["neg_elbo"].item(), rel=1e-4)
    assert not any(k.startswith("_orig_mod") for k in b.state_dict())  # checkpoints keep their keys


# ---------------------------------------------------------------------- the loop around it
def test_train_records_the_resolved_settings_and_progress_reads_like_a_budget(capsys):
    from bench.data import load_dataset

    ds = load_dataset("digits")
    m = _vae()
    r = train(m, ds, TrainContext(Budget(steps=3), 32, settings=TrainSettings(grad_clip=5.0)))
    assert r.settings.grad_clip == 5.0 and r.settings.precision == "fp32" and r.watched == "neg_elbo"
    assert set(r.optimizers) == {"adam"} and r.spent.steps == 3
    capsys.readouterr()
    bar = _progress_bar(TrainContext(Budget(seconds=45), 32, label="vae__seed0"), None)
    bar.update(25.29637440499721)
    bar.set_postfix_str("step 611, neg_elbo 312.4, 20 s left")
    bar.refresh()
    bar.close()
    text = capsys.readouterr().err
    assert "vae__seed0 25.3/45 s" in text and "step 611" in text and "25.29" not in text


def test_a_newcomer_family_is_its_loss_and_sampler_only():
    """The README's 'add a family': options with lr, loss() and sample(); the engine and the loop do the rest."""
    from pydantic import Field

    from bench.data import load_dataset
    from bench.families.base import FamilyOptions
    from bench.families.nets import mlp

    class GaussOptions(FamilyOptions):
        lr: float = Field(0.05, gt=0)

    class Gauss(GenerativeModel):
        """A diagonal Gaussian fitted by maximum likelihood."""
        family, Options, likelihood_kind, watched_loss = "gauss", GaussOptions, "exact", "nll"

        def __init__(self, spec: DataSpec, options: GaussOptions):
            super().__init__(spec, options)
            self.mean = torch.nn.Parameter(torch.zeros(spec.dim))
            self.log_std = torch.nn.Parameter(torch.zeros(spec.dim))
            self.unused = mlp(1, 1)  # submodules need not take part

        def loss(self, x, y):
            z = (x - self.mean) * torch.exp(-self.log_std)
            return {"nll": (0.5 * z.square() + self.log_std + 0.5 * math.log(2 * math.pi)).sum(1).mean()}

    ds = load_dataset("toy2d", {"pattern": "ring8", "std": 0.1, "n_train": 4000, "n_test": 100})
    m = Gauss(DataSpec("points", (2,), 8, (0.125,) * 8), GaussOptions())
    r = train(m, ds, TrainContext(Budget(steps=300), 256))
    nll = r.log["nll"]
    # maximum likelihood: the sample mean and std of the ring (radius 2: std about 2 / sqrt(2) per axis), at which
    # the NLL is sum_d (1/2 + log std_d + log(2 pi) / 2)
    best = float((0.5 + ds.train_x.std(0).log() + 0.5 * math.log(2 * math.pi)).sum())
    assert r.status == "ok" and nll.iloc[-20:].mean() == pytest.approx(best, abs=0.03) and nll.iloc[0] > best + 0.2
    torch.testing.assert_close(m.mean.detach(), ds.train_x.mean(0), atol=0.05, rtol=0)
    torch.testing.assert_close(m.log_std.detach().exp(), ds.train_x.std(0), atol=0.05, rtol=0)
