"""Tests of ``bench compare``: verdicts, the noise rule, bad input and the dashboard JSON shape.

Inputs are hand-made records (CellRecord/Metric) written to tmp_path, so every expected
verdict follows from numbers chosen here; each test fails if the rule it names breaks.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.compare import (
    BIGGER_FILE,
    SMALLER_FILE,
    CompareOptions,
    Tolerance,
    compare_runs,
    format_table,
    load_run,
    main,
    options_from_config,
    write_summary,
)
from bench.errors import BenchError
from bench.results import METRICS, CellRecord, Metric, register_metric

ROOT = Path(__file__).resolve().parents[1]

# Metric names used here are deliberately not registered, so direction comes from the records
# (except in the registry test, which registers its own unique name).
NLL = dict(unit="bits/dim", higher_is_better=False)  # lower is better
COV = dict(unit="", higher_is_better=True)  # higher is better
INFO = dict(unit="", higher_is_better=None)  # informational


def rec(model: str, seed: int, metrics: dict[str, tuple[float | None, dict]], status: str = "ok",
        run_id: str = "r") -> CellRecord:
    """A finished cell with the given {name: (value, metadata)} metrics."""
    ms = [Metric(name, v, meta["unit"], "value", meta["higher_is_better"]) for name, (v, meta) in metrics.items()]
    return CellRecord(suite="t", run_id=run_id, model=model, family="toy", seed=seed, status=status,  # type: ignore[arg-type]
                      budget={"steps": 10}, spent={}, metrics=ms)


def write_run(dir: Path, records: list[CellRecord], config: dict[str, Any] | None = None) -> Path:
    """A run directory with a results.json in the runner's format."""
    dir.mkdir(parents=True, exist_ok=True)
    data = {"suite": "t", "run_id": dir.name, "config": config or {}, "records": [r.to_dict() for r in records]}
    (dir / "results.json").write_text(json.dumps(data))
    return dir


def verdicts(result) -> dict[tuple[str, str], str]:
    return {(r.model, r.metric): r.verdict for r in result.rows}


# ----------------------------------------------------------------------------- the test


@pytest.fixture
def pair(tmp_path: Path) -> tuple[Path, Path]:
    """Baseline/current with one regression per direction, one change within tolerance, one missing model."""
    base = write_run(tmp_path / "base", [
        rec("vae", 0, {"nll_bpd": (1.00, NLL), "coverage": (0.90, COV), "fid_dom": (10.0, NLL)}),
        rec("nb", 0, {"nll_bpd": (2.00, NLL), "coverage": (0.50, COV)}),
        rec("gan", 0, {"coverage": (0.70, COV)}),
    ])
    cur = write_run(tmp_path / "cur", [
        rec("vae", 0, {"nll_bpd": (1.20, NLL),      # +20% on lower-is-better: regression
                       "coverage": (0.90, COV),
                       "fid_dom": (10.3, NLL)}),    # +3% < 5% default: unchanged
        rec("nb", 0, {"nll_bpd": (2.00, NLL),
                      "coverage": (0.40, COV)}),     # -20% on higher-is-better: regression
        # gan is missing
    ])
    return base, cur


def test_expected_verdicts_and_exit_status(pair, capsys):
    base, cur = pair
    result = compare_runs(base, cur)
    assert verdicts(result) == {
        ("vae", "nll_bpd"): "regression",
        ("vae", "coverage"): "unchanged",
        ("vae", "fid_dom"): "unchanged",
        ("nb", "nll_bpd"): "unchanged",
        ("nb", "coverage"): "regression",
        ("gan", "(model)"): "missing_model",
    }
    assert result.exit_code == 1
    assert main(str(base), str(cur)) == 1
    out = capsys.readouterr().out
    assert "REGRESSION" in out and "MISSING_MODEL" in out


def test_no_change_exits_zero(pair):
    base, _ = pair
    result = compare_runs(base, base)
    assert {r.verdict for r in result.rows} == {"unchanged"}
    assert result.exit_code == 0


def test_improvements_in_both_directions_pass(tmp_path):
    base = write_run(tmp_path / "b", [rec("m", 0, {"nll": (1.0, NLL), "cov": (0.5, COV)})])
    cur = write_run(tmp_path / "c", [rec("m", 0, {"nll": (0.8, NLL), "cov": (0.6, COV)})])
    result = compare_runs(base, cur)
    assert verdicts(result) == {("m", "nll"): "improvement", ("m", "cov"): "improvement"}
    assert result.exit_code == 0


def test_changed_configuration_is_noted_not_judged(tmp_path):
    """A model whose options or budget changed gets one (config) row naming the change; it never fails CI."""
    b = rec("m", 0, {"nll": (1.0, NLL)})
    c = rec("m", 0, {"nll": (1.0, NLL)})
    b.options, c.options = {"width": 16, "mults": [1, 2, 2]}, {"width": 16, "mults": [1, 2]}
    c.budget = {"steps": 20}
    result = compare_runs(write_run(tmp_path / "b", [b]), write_run(tmp_path / "c", [c]))
    rows = {r.metric: r for r in result.rows}
    assert rows["(config)"].verdict == "informational"
    assert rows["(config)"].rule == ("configuration differs: budget.steps: 10 -> 20; "
                                     "options.mults: [1, 2, 2] -> [1, 2]")
    assert rows["nll"].verdict == "unchanged" and result.exit_code == 0
    same = compare_runs(write_run(tmp_path / "b2", [b]), write_run(tmp_path / "b3", [b]))
    assert "(config)" not in {r.metric for r in same.rows}


def test_tolerance_boundary_and_overrides(tmp_path):
    """|delta| must exceed abs + rel*|baseline|; exact names beat patterns."""
    base = write_run(tmp_path / "b", [rec("m", 0, {"fid_a": (10.0, NLL), "fid_b": (10.0, NLL), "nll": (10.0, NLL)})])
    cur = write_run(tmp_path / "c", [rec("m", 0, {"fid_a": (10.5, NLL), "fid_b": (10.5, NLL), "nll": (10.5, NLL)})])
    opts = CompareOptions(default=Tolerance(rel=0.01),
                          metrics={"fid_*": Tolerance(abs=0.5), "fid_b": Tolerance(abs=0.49)})
    v = verdicts(compare_runs(base, cur, opts))
    assert v[("m", "fid_a")] == "unchanged"  # 0.5 is not > 0.5
    assert v[("m", "fid_b")] == "regression"  # exact override 0.49 wins over the pattern
    assert v[("m", "nll")] == "regression"  # default 1% of 10 = 0.1


# ----------------------------------------------------------------------------- noise rule


def seeds_run(dir: Path, values: list[float]) -> Path:
    return write_run(dir, [rec("m", s, {"nll": (v, NLL)}) for s, v in enumerate(values)])


def test_noise_rule_big_spread_is_unchanged(tmp_path):
    # delta = +3 on lower-is-better; SE = sqrt(4/3 + 4/3) = 1.633, 3 SE = 4.90 > 3.
    result = compare_runs(seeds_run(tmp_path / "b", [10, 12, 14]), seeds_run(tmp_path / "c", [13, 15, 17]))
    (row,) = result.rows
    assert row.verdict == "unchanged"
    assert row.std_baseline == pytest.approx(2.0) and row.n_baseline == 3
    assert "3*SE 4.899" in row.rule


def test_noise_rule_small_spread_is_regression(tmp_path):
    # Same delta (+3); SE = sqrt(0.01/3 * 2) = 0.0816, 3 SE = 0.245 < 3.
    result = compare_runs(seeds_run(tmp_path / "b", [11.9, 12, 12.1]), seeds_run(tmp_path / "c", [14.9, 15, 15.1]))
    (row,) = result.rows
    assert row.verdict == "regression"
    assert row.delta == pytest.approx(3.0)


def test_noise_rule_needs_two_seeds_in_both_runs(tmp_path):
    # Baseline has a big spread but current has one seed: only the tolerance applies.
    result = compare_runs(seeds_run(tmp_path / "b", [10, 12, 14]), seeds_run(tmp_path / "c", [15]))
    v = verdicts(result)
    assert v == {("m", "nll"): "regression", ("m", "(model)"): "informational"}  # 3 cells -> 1 is shown
    (row,) = [r for r in result.rows if r.metric == "nll"]
    assert "no noise rule" in row.rule


def test_noise_sigmas_comes_from_current_config(tmp_path):
    """With noise_sigmas=1 the big-spread case (delta 3 > 1.63) becomes a regression."""
    base = seeds_run(tmp_path / "b", [10, 12, 14])
    cur = write_run(tmp_path / "c", [rec("m", s, {"nll": (v, NLL)}) for s, v in enumerate([13, 15, 17])],
                    config={"compare": {"noise_sigmas": 1.0}})
    assert compare_runs(base, cur).rows[0].verdict == "regression"
    # Swapped, the run with noise_sigmas=1 is the baseline: its config is not used (default 3 SE).
    assert compare_runs(cur, base).rows[0].verdict == "unchanged"


# ----------------------------------------------------------------------------- informational / ignored


def test_informational_metrics_never_regress(tmp_path):
    """No direction, a timing (machine-dependent in its record or its registered metadata), or a name the
    suite's compare.ignore lists: shown, never a regression."""
    timing = Metric("sample_speed", 500.0, "samples/s", "value", True, machine_dependent=True)
    base = write_run(tmp_path / "b", [rec("m", 0, {"params_count": (100.0, INFO), "wall": (2.0, NLL)})])
    cur = write_run(tmp_path / "c", [rec("m", 0, {"params_count": (1e6, INFO), "wall": (200.0, NLL)})])
    for run, v in ((base, 500.0), (cur, 5.0)):
        data = json.loads((run / "results.json").read_text())
        data["records"][0]["metrics"].append({**timing.to_dict(), "value": v})
        (run / "results.json").write_text(json.dumps(data))
    result = compare_runs(base, cur, CompareOptions(ignore=["wall"]))
    assert verdicts(result) == {("m", "params_count"): "informational",
                                ("m", "sample_speed"): "informational",  # machine_dependent in its record
                                ("m", "wall"): "informational"}  # compare.ignore
    assert result.exit_code == 0
    assert "machine-dependent" in next(r.rule for r in result.rows if r.metric == "sample_speed")
    # without the ignore entry the 100x slower wall time counts; the timing never does
    plain = verdicts(compare_runs(base, cur, CompareOptions()))
    assert plain[("m", "wall")] == "regression" and plain[("m", "sample_speed")] == "informational"


def test_registered_timings_are_never_judged_even_if_the_record_says_otherwise(tmp_path):
    import bench.metrics  # noqa: F401  (samples_per_s is declared machine-dependent by the speed evaluator)

    base = write_run(tmp_path / "b", [rec("m", 0, {"samples_per_s": (500.0, COV)})])
    cur = write_run(tmp_path / "c", [rec("m", 0, {"samples_per_s": (5.0, COV)})])  # records lack the flag
    assert verdicts(compare_runs(base, cur)) == {("m", "samples_per_s"): "informational"}


def test_registry_direction_wins_over_record(tmp_path):
    name = "zz_test_compare_direction"
    if name not in METRICS:
        register_metric(name, unit="", higher_is_better=True)
    # The records (wrongly) say lower is better; the registry says higher is better.
    base = write_run(tmp_path / "b", [rec("m", 0, {name: (1.0, NLL)})])
    cur = write_run(tmp_path / "c", [rec("m", 0, {name: (0.5, NLL)})])
    assert compare_runs(base, cur).rows[0].verdict == "regression"


# ----------------------------------------------------------------------------- divergence, missing, new


def test_all_cells_diverged_in_current_is_regression(tmp_path):
    base = write_run(tmp_path / "b", [rec("m", s, {"nll": (1.0, NLL)}) for s in range(2)])
    cur = write_run(tmp_path / "c", [rec("m", s, {"nll": (None, NLL)}, status="diverged") for s in range(2)])
    result = compare_runs(base, cur)
    assert verdicts(result) == {("m", "(model)"): "regression"}
    assert "diverged" in result.rows[0].rule
    assert result.exit_code == 1


def test_diverged_cells_are_missing_values(tmp_path):
    """The mean is over finished cells only: a diverged seed's garbage value is not averaged in."""
    base = write_run(tmp_path / "b", [rec("m", s, {"nll": (1.0, NLL)}) for s in range(2)])
    cur = write_run(tmp_path / "c", [rec("m", 0, {"nll": (1.0, NLL)}),
                                     rec("m", 1, {"nll": (99.0, NLL)}, status="diverged")])
    result = compare_runs(base, cur)
    v = verdicts(result)
    assert v[("m", "nll")] == "unchanged"
    assert v[("m", "(model)")] == "informational"  # ok cells 2/2 -> 1/2 is shown
    assert result.exit_code == 0


def test_missing_metric_fails_new_ones_do_not(tmp_path):
    base = write_run(tmp_path / "b", [rec("m", 0, {"nll": (1.0, NLL), "cov": (0.5, COV)})])
    cur = write_run(tmp_path / "c", [rec("m", 0, {"nll": (1.0, NLL), "kid": (0.1, NLL)}),
                                     rec("extra", 0, {"nll": (1.0, NLL)})])
    result = compare_runs(base, cur)
    assert verdicts(result) == {("m", "nll"): "unchanged", ("m", "cov"): "missing_metric",
                                ("m", "kid"): "new", ("extra", "(model)"): "new"}
    assert result.exit_code == 1
    assert compare_runs(base, write_run(tmp_path / "c2", [rec("m", 0, {"nll": (1.0, NLL), "cov": (0.5, COV),
                                                                       "kid": (0.1, NLL)})])).exit_code == 0


def test_metric_with_no_value_in_current_is_missing(tmp_path):
    base = write_run(tmp_path / "b", [rec("m", 0, {"nll": (1.0, NLL)})])
    cur = write_run(tmp_path / "c", [CellRecord("t", "r", "m", "toy", 0, "ok", {}, {},
                                                [Metric("nll", None, "bits/dim", "value", False, note="not computed")])])
    (row,) = [r for r in compare_runs(base, cur).rows if r.metric == "nll"]
    assert row.verdict == "missing_metric" and "not computed" in row.rule


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("content, message", [
    ("{not json", "not valid JSON"),
    ('{"records": 3}', "'records' list"),
    ('[1, 2]', "'records' list"),
    ('{"records": [{"model": "m"}]}', "records[0] is not a cell record"),
])
def test_bad_json_exits_2_with_one_line(tmp_path, capsys, content, message):
    good = write_run(tmp_path / "good", [rec("m", 0, {"nll": (1.0, NLL)})])
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    from bench.cli import main as cli_main

    assert cli_main(["compare", str(good), str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("bench: error: ") and message in err and str(bad) in err


def test_missing_paths_are_bench_errors(tmp_path):
    with pytest.raises(BenchError, match="no such file or directory"):
        load_run(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BenchError, match="no results.json in this directory"):
        load_run(tmp_path / "empty")


def test_non_numeric_value_is_rejected(tmp_path):
    d = write_run(tmp_path / "b", [rec("m", 0, {"nll": (1.0, NLL)})])
    data = json.loads((d / "results.json").read_text())
    data["records"][0]["metrics"][0]["value"] = "1.0"
    (d / "results.json").write_text(json.dumps(data))
    with pytest.raises(BenchError, match=r"metric 'nll': value '1.0' is not a number"):
        load_run(d)


def test_bad_compare_section_names_the_field(tmp_path, capsys):
    good = write_run(tmp_path / "good", [rec("m", 0, {"nll": (1.0, NLL)})])
    cur = write_run(tmp_path / "cur", [rec("m", 0, {"nll": (1.0, NLL)})],
                    config={"compare": {"default": {"rel": -0.1}}})
    from bench.cli import main as cli_main

    assert cli_main(["compare", str(good), str(cur)]) == 2
    err = capsys.readouterr().err.strip()
    assert "compare.default.rel" in err and "-0.1" in err and "\n" not in err
    with pytest.raises(BenchError, match="compare.tolerances"):
        compare_runs(good, write_run(tmp_path / "c2", [], config={"compare": {"tolerances": {}}}))


def test_options_round_trip_through_resolved_config():
    """The runner writes the resolved ``compare:`` section into results.json; it must load back."""
    opts = CompareOptions(metrics={"fid_*": Tolerance(rel=0.1)}, noise_sigmas=2.0, baseline="reports/baselines/smoke")
    assert options_from_config({"compare": json.loads(json.dumps(opts.model_dump(mode="json")))}) == opts
    assert options_from_config({}) == CompareOptions()


# ----------------------------------------------------------------------------- outputs


def test_summary_has_github_action_benchmark_shape(pair, tmp_path):
    base, cur = pair
    result = compare_runs(base, cur)
    write_summary(result, tmp_path / "out" / "summary.json")
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert summary["exit_code"] == 1
    assert summary["counts"]["regression"] == 2 and summary["counts"]["missing_model"] == 1
    assert {(r["model"], r["metric"], r["verdict"]) for r in summary["rows"]} >= {("vae", "nll_bpd", "regression")}

    smaller = json.loads((tmp_path / "out" / SMALLER_FILE).read_text())
    bigger = json.loads((tmp_path / "out" / BIGGER_FILE).read_text())
    assert summary["benchmark"] == {"customSmallerIsBetter": smaller, "customBiggerIsBetter": bigger}
    # customSmallerIsBetter: a JSON array of {name: str, value: number, unit: str, range?: str, extra?: str}.
    for entries in (smaller, bigger):
        assert isinstance(entries, list) and entries
        for e in entries:
            assert {"name", "value", "unit"} <= set(e) <= {"name", "value", "unit", "range", "extra"}
            assert isinstance(e["name"], str) and isinstance(e["unit"], str)
            assert isinstance(e["value"], (int, float)) and not isinstance(e["value"], bool)
            assert all(isinstance(e[k], str) for k in ("range", "extra") if k in e)
    assert {e["name"]: e["value"] for e in smaller} == {"nb/nll_bpd": 2.0, "vae/fid_dom": 10.3, "vae/nll_bpd": 1.2}
    assert {e["name"]: e["value"] for e in bigger} == {"nb/coverage": 0.4, "vae/coverage": 0.9}


def test_benchmark_range_from_seed_spread(tmp_path):
    result = compare_runs(seeds_run(tmp_path / "b", [1, 2, 3]), seeds_run(tmp_path / "c", [2, 4, 6]))
    write_summary(result, tmp_path / "s.json")
    (e,) = json.loads((tmp_path / SMALLER_FILE).read_text())
    assert e["value"] == pytest.approx(4.0) and e["range"] == "± 2"


def test_table_is_aligned_with_regressions_first(pair):
    base, cur = pair
    lines = format_table(compare_runs(base, cur)).splitlines()
    body = lines[2:lines.index("")]
    assert [ln.split()[0] for ln in body][:3] == ["REGRESSION", "REGRESSION", "MISSING_MODEL"]
    col = lines[0].index("model")  # every row's model column starts where the header's does
    assert all(ln[col - 2:col] == "  " and ln[col] != " " for ln in body)
    assert "FAIL (exit 1)" in lines[-1]


def test_cli_subprocess(pair, tmp_path):
    base, cur = pair
    p = subprocess.run([sys.executable, "-m", "bench", "compare", str(base), str(cur), "--quiet",
                        "--summary", str(tmp_path / "s" / "summary.json")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 1, p.stderr
    assert p.stdout.count("regression:") == 2 and "missing_model: gan" in p.stdout
    assert (tmp_path / "s" / SMALLER_FILE).is_file()
    p = subprocess.run([sys.executable, "-m", "bench", "compare", str(base), str(tmp_path / "nope")],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "Traceback" not in p.stderr
