"""Sampler sweeps without retraining (issue 13 part 4), the counted NFE and controllability (part 3)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from bench.compare import compare_runs
from bench.config import EvalConfig, load_suite, parse_suite
from bench.data import load_dataset
from bench.errors import BenchError
from bench.families.base import DataSpec, FamilyOptions, GenerativeModel, count_calls, measure_nfe
from bench.metrics.base import EvalContext
from bench.metrics.controllability import ControllabilityEvaluator, controllability, nearest_mode
from bench.runner import run_suite
from bench.store import RunStore
from bench.sweep import grid

SWEEP = """
name: sweep
dataset: digits
seeds: [0]
budget: {steps: 20}
batch_size: 64
eval: {metrics: [quality, speed], n_samples: 64, speed: {batch_size: 64, repeats: 1, warmup: 0},
       quality: {feature_spaces: [domain], n_reference: 64, kid_subset_size: 32}}
models:
  - {name: dm, family: diffusion, options: {mults: [1], width: 8, timesteps: 100},
     sweep: {sample_steps: [2, 4], sampler: [ddpm, ddim]}}
  - {name: gan, family: gan, options: {width: 8}, sweep: {truncation: [0.5, 1.0]}}
"""


def test_grid_is_the_product_in_the_suites_key_order():
    assert grid({"a": [1, 2], "b": ["x", "y"]}) == [{"a": 1, "b": "x"}, {"a": 1, "b": "y"}, {"a": 2, "b": "x"},
                                                    {"a": 2, "b": "y"}]


@pytest.mark.parametrize("sweep, line, match", [
    ("{sample_step: [5]}", 6, r"models\[0\]\.sweep\.sample_step: unknown option of family 'diffusion'; sweepable"),
    ("{sampler: [ddpm, euler]}", 6, r"sweep\.sampler\[1\]: 'euler': Input should be 'ddpm' or 'ddim'"),
    ("{sample_steps: [5, 5]}", 6, r"a value appears twice"),
    ("{width: [8, 16]}", 6, r"sweep\.width: family 'diffusion' does not list width among the options it reads only "
                            r"when sampling"),
    ("{sample_steps: []}", 6, r"non-empty list"),
    ("{sample_steps: [5, 200]}", 6, r"sample_steps\[1\]: 200: sample_steps=200 exceeds timesteps=100"),
])
def test_a_bad_sweep_is_a_one_line_error_with_the_files_line(sweep, line, match):
    text = ("name: s\ndataset: digits\nbudget: {steps: 1}\nmodels:\n  - name: dm\n    sweep: " + sweep
            + "\n    family: diffusion\n    options: {timesteps: 100}\n")
    with pytest.raises(BenchError, match=match) as e:
        parse_suite(text, "s.yaml")
    assert str(e.value).startswith(f"s.yaml:{line}: ") and "\n" not in str(e.value)


def test_every_point_is_a_record_and_a_row_and_the_model_trains_once(tmp_path, write_suite):
    p = write_suite(SWEEP)
    run_dir = run_suite(load_suite(p), p, out=tmp_path / "run", quiet=True)
    recs = {r.cell_id: r for r in RunStore(run_dir).records()}
    points = [f"dm__seed0__sample_steps={s},sampler={k}" for s in (2, 4) for k in ("ddpm", "ddim")]
    gan = ["gan__seed0", "gan__seed0__truncation=0.5", "gan__seed0__truncation=1"]
    assert sorted(recs) == sorted(["dm__seed0", *points, *gan])
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*.pt")) == ["dm__seed0.pt", "gan__seed0.pt"]  # once
    for cid in points:
        r = recs[cid]
        assert r.status == "ok" and r.options["sample_steps"] == r.sweep["sample_steps"]
        assert r.options["sampler"] == r.sweep["sampler"]
        # the counted NFE is the number of denoiser calls: one per step (known answer)
        assert r.value("nfe_measured") == r.sweep["sample_steps"]
        assert r.value("samples_per_s") > 0 and r.value("fid_domain") is not None
        assert r.spent["steps"] == recs["dm__seed0"].spent["steps"]  # the cell's training, not retrained
    # each point is its own row of compare (a run against itself: every row unchanged, none missing)
    result = compare_runs(run_dir, run_dir)
    rows = {r.model for r in result.rows}
    assert "dm[sample_steps=2,sampler=ddim]" in rows and "dm" in rows
    assert result.exit_code == 0
    html = (run_dir / "index.html").read_text()
    assert "dm[sample_steps=4,sampler=ddpm]" in html
    # the report's sweep section: quality vs NFE, the Pareto table, the truncation traces
    assert "Quality vs sampling cost" in html and "Pareto-optimal settings" in html
    assert "Precision vs recall traced by truncation" in html
    assert recs["gan__seed0__truncation=0.5"].options["truncation"] == 0.5


def test_a_killed_sweep_resumes_at_the_next_point(tmp_path, write_suite):
    p = write_suite(SWEEP)
    run_dir = run_suite(load_suite(p), p, out=tmp_path / "run", quiet=True)
    store = RunStore(run_dir)
    gone = store.path("records", "dm__seed0__sample_steps=4,sampler=ddim", "json")
    before = {r.cell_id: r.value("fid_domain") for r in store.records()}
    gone.unlink()
    gone.with_name(gone.name + ".sha256").unlink(missing_ok=True)
    ck = (run_dir / "checkpoints" / "dm__seed0.pt").stat().st_mtime_ns
    run_suite(load_suite(p), p, out=run_dir, resume=True, quiet=True)
    after = {r.cell_id: r.value("fid_domain") for r in store.records()}
    assert after == before  # the lost point is back, with the same number (same checkpoint, same generators)
    assert (run_dir / "checkpoints" / "dm__seed0.pt").stat().st_mtime_ns == ck  # the cell was not retrained


class _Counted(nn.Module):
    def __init__(self):
        super().__init__()
        self.inner = nn.Linear(2, 2)

    def forward(self, x):
        return self.inner(x)  # a counted module called inside a counted call is not counted twice


def test_count_calls_counts_outermost_calls_times_rows():
    net = _Counted()
    with count_calls(net, net.inner) as c:
        net(torch.zeros(5, 2))
        net(torch.zeros(3, 2))
    assert (c.calls, c.rows) == (2, 8) and c.per_sample(4) == 2.0


@pytest.mark.parametrize("solver, per_step", [("euler", 1), ("heun", 2)])
def test_measured_nfe_of_flow_matching_is_steps_times_evaluations_per_step(solver, per_step):
    from bench.families.flow_matching import FlowMatching, FlowMatchingOptions

    spec = DataSpec("points", (2,), 1, (1.0,))
    model = FlowMatching(spec, FlowMatchingOptions(solver=solver, sample_steps=7, hidden=8))
    assert measure_nfe(model, 4, torch.Generator().manual_seed(0)) == 7 * per_step == model.nfe_per_sample


def test_controllability_known_answers():
    requested = torch.arange(10).repeat(20)  # balanced: 20 of each of K = 10 classes
    perfect, per_class = controllability(requested.clone(), requested, 10)
    assert perfect == 1.0 and per_class == [1.0] * 10
    constant, per_class = controllability(torch.full_like(requested, 3), requested, 10)
    assert constant == pytest.approx(1 / 10) and per_class[3] == 1.0 and per_class[0] == 0.0
    share, per_class = controllability(torch.tensor([0, 0]), torch.tensor([0, 1]), 3)
    assert share == 0.5 and per_class == [1.0, 0.0, None]  # class 2 was never requested


def test_nearest_mode_is_the_mixtures_classifier():
    means = torch.tensor([[0.0, 0.0], [2.0, 0.0]])
    assert nearest_mode(torch.tensor([[0.1, 0.0], [1.9, 0.3], [0.9, 0.0]]), means).tolist() == [0, 1, 0]


class _ModeOracle(GenerativeModel):
    """A conditional 'model' of a 2-D mixture that puts sample i exactly on mode y[i] (or always on mode 0)."""

    family = "mode_oracle"
    conditional_capable = True

    class Options(FamilyOptions):
        conditional: bool = True
        constant: bool = False

    def __init__(self, spec, options, means):
        super().__init__(spec, options)
        self.means = means

    def sample(self, n, generator, y=None):
        y = self.sample_labels(n, generator) if y is None else y
        return self.means[torch.zeros_like(y) if self.options.constant else y]


@pytest.mark.parametrize("constant, expected, tol", [(False, 1.0, 0.0), (True, 1 / 8, 0.02)])
def test_controllability_of_an_oracle_and_of_a_constant_model(constant, expected, tol):
    ds = load_dataset("toy2d", {"pattern": "ring8", "n_train": 800, "n_test": 200})
    spec = DataSpec("points", (2,), 8, tuple(ds.class_frequencies().tolist()))
    model = _ModeOracle(spec, _ModeOracle.Options(constant=constant), ds.mixture.means)
    ctx = EvalContext(model, ds, EvalConfig(n_samples=4000), torch.device("cpu"), seed=0)
    (m,) = ControllabilityEvaluator().evaluate(ctx)
    assert m.value == pytest.approx(expected, abs=tol)
    assert len(m.params["per_class"]) == 8
    if constant:  # every sample lands on mode 0: right exactly when class 0 was asked for
        assert m.params["per_class"][0] == 1.0 and set(m.params["per_class"][1:]) == {0.0}


def test_controllability_of_an_unconditional_model_is_unavailable_with_the_reason():
    ds = load_dataset("toy2d", {"pattern": "ring8", "n_train": 800, "n_test": 200})
    spec = DataSpec("points", (2,), 8, tuple(ds.class_frequencies().tolist()))
    model = _ModeOracle(spec, _ModeOracle.Options(conditional=False), ds.mixture.means)
    (m,) = ControllabilityEvaluator().evaluate(EvalContext(model, ds, EvalConfig(n_samples=100), torch.device("cpu"), 0))
    assert m.value is None and "not conditional" in m.note


def test_a_checkpoint_loads_for_the_options_the_suite_gives(tmp_path):
    """A family may resolve an unset option when it builds (the GAN's width): the checkpoint then holds the
    resolved value, and the suite's own options, not the schema's defaults, are what must match."""
    from bench.config import ModelConfig
    from bench.data import load_dataset
    from bench.errors import BenchError
    from bench.runner import build_model, data_spec, load_checkpoint, save_checkpoint

    spec = data_spec(load_dataset("digits"))
    m = ModelConfig(name="gan", family="gan", options={"loss": "nonsaturating"})
    model = build_model(m, spec, 0, torch.device("cpu"))
    save_checkpoint(tmp_path / "g.pt", model, m, spec, {})
    loaded = load_checkpoint(tmp_path / "g.pt", m, spec, torch.device("cpu"))
    assert loaded.options.model_dump() == model.options.model_dump()
    other = ModelConfig(name="gan", family="gan", options={"loss": "hinge"})
    with pytest.raises(BenchError, match=r"differs in loss"):
        load_checkpoint(tmp_path / "g.pt", other, spec, torch.device("cpu"))
