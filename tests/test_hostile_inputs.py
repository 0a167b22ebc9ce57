"""Hostile and malformed input at the command line: every case ends in one line on stderr and a non-zero exit
status (2: a user error), or in a recorded, resumable state; never in a traceback, a hang, an exhausted machine
or a half-written result.

Each probe that once broke is a case here, with a comment saying what it did; the important probes that already
passed without a test of their own are here too, so that they keep passing. The suite-file fuzzing lives in
``test_reliability_config.py``, the corrupt-file tally in ``test_reliability_files.py``.
"""
from __future__ import annotations

import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bench.cli import main
from bench.config import MAX_NAME, load_suite, parse_suite
from bench.data import Dataset, check_dataset, load_dataset
from bench.errors import BenchError, Interrupted
from bench.evaluate import generate
from bench.executors import executing
from bench.families.naive_bayes import NaiveBayes
from bench.runner import run_suite
from bench.store import LOCK_NAME, RunStore
from bench.tune import TrialStore
from conftest import ROOT

TINY = """name: hostile
dataset: digits
seeds: [0]
budget: {steps: 3}
batch_size: 32
eval: {metrics: [likelihood], n_samples: 16, likelihood_examples: 16}
models:
  - {name: nb, family: naive_bayes}
"""
HEAD = "name: a\ndataset: digits\nbudget: {steps: 5}\n"
MODEL = "models:\n  - {name: m, family: vae}\n"


def cli(capsys, *argv) -> tuple[int, str]:
    """``bench ARGV`` in this process: (exit status, stderr). argparse's refusals exit through SystemExit."""
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as e:
        rc = e.code
    return rc, capsys.readouterr().err


def one_line(rc: int, err: str, *needles: str, status: int = 2) -> None:
    assert rc == status, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


@pytest.fixture
def suite(tmp_path) -> Path:
    p = tmp_path / "hostile.yaml"
    p.write_text(TINY)
    return p


@pytest.fixture(scope="module")
def finished(tmp_path_factory) -> tuple[Path, Path]:
    """A finished one-cell run: (its suite file, its run directory); tests work on copies of it."""
    d = tmp_path_factory.mktemp("finished")
    p = d / "hostile.yaml"
    p.write_text(TINY)
    return p, run_suite(load_suite(p), p, out=d / "run", quiet=True)


@pytest.fixture
def run_copy(finished, tmp_path) -> tuple[Path, Path]:
    suite, run = finished
    return suite, Path(shutil.copytree(run, tmp_path / "run"))


def snapshot(run: Path) -> dict[str, bytes]:
    return {str(p.relative_to(run)): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file() and p.name != LOCK_NAME}


# --- the suite file ------------------------------------------------------------------------------------------

BAD_SUITES = [
    # validated, then libgomp aborted the whole process (no Python error) when torch asked for the threads
    (HEAD + MODEL + "threads: 100000\n", "s.yaml:6: threads: Input should be less than or equal to 1024"),
    # validated, then generated samples for minutes and ran out of memory
    (HEAD + MODEL + "eval: {n_samples: 10000000000000}\n", "eval.n_samples: Input should be less than or equal to 1000000"),
    (HEAD + MODEL + "eval: {snapshot_samples: 10000000000000}\n", "eval.snapshot_samples: Input should be less than"),
    # ran the same cell twice, the second record overwriting the first
    (HEAD + MODEL + "seeds: [0, 0]\n", "s.yaml:6: seeds[1]: seed 0 appears twice"),
    (HEAD + "models:\n  - {name: m, family: vae, seeds: [3, 3]}\n", "models[0].seeds[1]: seed 3 appears twice"),
    # accepted, then every cell failed after training: the evaluators' seed offsets overflowed torch.manual_seed
    (HEAD + MODEL + "seeds: [18446744073709551615]\n", "seeds[0]: seed 18446744073709551615 is outside"),
    (HEAD + MODEL + "tuning: {seed: 18446744073709551615}\n", "tuning.seed: Input should be less than or equal to"),
    ("name: a\ndataset: {name: npz, path: x.npz, split_seed: 99999999999999999999}\nbudget: {steps: 5}\n" + MODEL,
     "s.yaml:2: dataset.split_seed: Input should be less than or equal to 9223372036854775807"),  # was a traceback
    # trained, then could not write the cell's files ("File name too long") and said to free disk space
    (HEAD + "models:\n  - {name: " + "a" * (MAX_NAME + 1) + ", family: vae}\n",
     f"models[0].name: String should have at most {MAX_NAME} characters"),
    (HEAD.replace("name: a", "name: " + "a" * (MAX_NAME + 1)) + MODEL, f"s.yaml:1: name: String should have at most"),
    # 'inf' as text passed pydantic's float; the run crashed writing the record (JSON has no inf) with a traceback
    (HEAD + "models:\n  - {name: m, family: vae, options: {lr: 'inf'}}\n",
     "s.yaml:5: models[0].options.lr: inf is not a finite number"),
    (HEAD + "train: {grad_clip: 'inf'}\n" + MODEL, "s.yaml:4: train.grad_clip: inf is not a finite number"),
    (HEAD + "models:\n  - {name: m, family: vae, train: {grad_clip: Infinity}}\n", "models[0].train.grad_clip: inf is"),
    ("name: a\ndataset: {name: toy2d, std: 'inf'}\nbudget: {steps: 5}\n" + MODEL, "dataset.std: inf is not a finite"),
    (HEAD + "compare: {default: {abs: 'inf'}}\n" + MODEL, "compare.default.abs: inf is not a finite number"),
    (HEAD + "models:\n  - {name: m, family: diffusion, options: {conditional: true}, sweep: {guidance: [0, 'inf']}}\n",
     "models[0].sweep.guidance[1]: 'inf' is not a finite number"),
    # a tuning run of 1e9 trials per model: validated, then never finished
    (HEAD + MODEL + "tuning: {trials: 1000000000}\n", "tuning.trials: Input should be less than or equal to 10000"),
    # keys that YAML reads as another type: the error was "[1]: Keys should be strings" on line 1
    (HEAD + MODEL + "true: 1\n", "s.yaml:6: not valid YAML: key 'true' is read as True, not as a name"),
    (HEAD + MODEL + "eval:\n  5: {}\n", "s.yaml:7: not valid YAML: key '5' is read as 5, not as a name"),
    (HEAD + MODEL + "eval:\n  ~: 1\n", "s.yaml:7: not valid YAML: key '~' is read as None"),
    # eval options that crashed the warm-up (numpy takes seeds 0..2**32-1) or never finished
    (HEAD + MODEL + "eval: {quality: {seed: -1}}\n", "eval.quality.seed: Input should be greater than or equal to 0"),
    (HEAD + MODEL + "eval: {quality: {kid_subsets: 100000000}}\n", "eval.quality.kid_subsets: Input should be less"),
    (HEAD + MODEL + "eval: {speed: {repeats: 100000000}}\n", "eval.speed.repeats: Input should be less"),
    # pydantic's lax mode guessed these (bench.schema): true trained with batches of one, '64' became 64, 1 or
    # 'yes' switched a layer on
    (HEAD + MODEL + "batch_size: true\n", "s.yaml:6: batch_size: expected a number, got the boolean true"),
    (HEAD + MODEL + "batch_size: '64'\n", "batch_size: expected a number, got the text '64' (write it without quotes)"),
    (HEAD + MODEL + "seeds: [0, true]\n", "seeds: item 1: expected a number, got the boolean true"),
    (HEAD + MODEL + "threads: false\n", "threads: expected a number, got the boolean false"),
    (HEAD + MODEL + "eval: {n_samples: true}\n", "eval.n_samples: expected a number, got the boolean true"),
    (HEAD + MODEL + "eval: {metrics: [quality], quality: {n_reference: '5'}}\n",
     "eval.quality.n_reference: expected a number, got the text '5'"),
    (HEAD + "models:\n  - {name: m, family: gan, options: {minibatch_std: 1}}\n",
     "models[0].options.minibatch_std: expected true or false, got the number 1"),
    (HEAD + "models:\n  - {name: m, family: gan, options: {minibatch_std: 'yes'}}\n",
     "models[0].options.minibatch_std: expected true or false, got the text 'yes'"),
    (HEAD + "models:\n  - {name: m, family: gan, options: {betas: [0.5, true]}}\n",
     "models[0].options.betas: item 1: expected a number, got the boolean true"),
    (HEAD + "models:\n  - {name: m, family: vae, options: {lr: '1e-3'}}\n",
     "models[0].options.lr: expected a number, got the text '1e-3' (write it without quotes)"),
    (HEAD + "models:\n  - {name: m, family: vae, train: {grad_clip: true}}\n",
     "models[0].train.grad_clip: expected a number, got the boolean true"),
    (HEAD + "models:\n  - {name: m, family: vae, tune: {space: {lr: {type: float, low: 1e-4, high: 1e-2, log: 1}}}}\n",
     "models[0].tune.space.lr.float.log: expected true or false, got the number 1"),
    (HEAD + "compare: {default: {abs: true}}\n" + MODEL, "compare.default.abs: expected a number, got the boolean true"),
    (HEAD + "models:\n  - {name: m, family: vae, options: {lr: many}}\n", "models[0].options.lr: Input should be a valid"),
    # passed already; kept so that they keep passing
    (HEAD + MODEL + "batch_size: 1e309\n", "s.yaml:6: not valid YAML: '1e309' is not a finite number"),
    (HEAD.replace("steps: 5", "seconds: 1e309") + MODEL, "s.yaml:3: not valid YAML: '1e309' is not a finite number"),
    (HEAD + MODEL + "eval: {n_samples: 0}\n", "eval.n_samples: Input should be greater than 0"),
    (HEAD + MODEL + "batch_size: 0\n", "batch_size: Input should be greater than 0"),
    (HEAD + MODEL + "seeds: []\n", "seeds: List should have at least 1 item"),
    (HEAD + MODEL + "batch_size: lots\n", "batch_size: Input should be a valid integer"),
    (HEAD + "models:\n  - {name: ../up, family: vae}\n", "models[0].name: String should match pattern"),
    (HEAD + "models:\n  - {name: a/b, family: vae}\n", "models[0].name: String should match pattern"),
    (HEAD + "models:\n  - {name: \"a\\0b\", family: vae}\n", "models[0].name: String should match pattern"),
    (HEAD + "models:\n  - {name: modèle, family: vae}\n", "models[0].name: String should match pattern"),
    (HEAD + "models:\n  - {name: m, family: vae, options: {bogus: 1}}\n", "models[0].options.bogus: unknown key"),
    (HEAD + "models:\n  - {name: m, family: 'os:system'}\n", "models[0].family: family 'os:system': is a builtin"),
    ("name: a\ndataset: {name: digits, extra: {deep: 1}}\nbudget: {steps: 5}\n" + MODEL, "dataset.extra: unknown key"),
    ("hello\n", "s.yaml:1: a suite is a YAML mapping"),
]


@pytest.mark.parametrize("text,expected", BAD_SUITES, ids=[e.split(": ", 1)[-1][:40] for _, e in BAD_SUITES])
def test_bad_suite_is_one_line_naming_file_line_and_field(text, expected):
    with pytest.raises(BenchError) as e:
        parse_suite(text, "s.yaml")
    assert expected in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_suite_path_that_is_a_directory_or_missing(tmp_path, capsys):
    one_line(*cli(capsys, "validate", tmp_path), "not a regular file")
    one_line(*cli(capsys, "run", tmp_path / "nope.yaml", "--dry-run"), "no such suite file")


# --- command-line arguments ----------------------------------------------------------------------------------


@pytest.mark.parametrize("seeds,expected", [
    ("", "give at least one seed"),  # ran zero cells and wrote an empty report, exit 0
    ("0 0", "seed 0 appears twice"),  # trained the same cell twice
    ("99999999999999999999", "is outside"),  # every cell failed after training (seed overflow)
    ("a", "--seeds takes integers"),  # passed already, but with argparse's usage over seven lines
])
def test_bad_seeds_argument(suite, capsys, seeds, expected):
    one_line(*cli(capsys, "run", suite, "--seeds", seeds, "--dry-run"), "argument --seeds", expected)


def test_unknown_flag_is_one_line(suite, capsys):
    one_line(*cli(capsys, "run", suite, "--bogus"), "unrecognized arguments: --bogus", "bench --help")
    one_line(*cli(capsys, "tune", suite, "--trials", "x"), "argument --trials: invalid int value")


@pytest.mark.parametrize("limit", ["inf", "nan", "1e10", "-1", "0"])
def test_cell_time_limit_must_be_a_finite_positive_number(suite, tmp_path, capsys, limit):
    # inf and 1e10 were accepted, and every cell then failed with "OverflowError: timestamp out of range"
    one_line(*cli(capsys, "run", suite, "--cell-time-limit", limit, "--out", tmp_path / "run"), "--cell-time-limit")
    assert not (tmp_path / "run").exists()


def test_out_and_reports_root_that_cannot_be_created(suite, tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("x")
    one_line(*cli(capsys, "run", suite, "--out", afile), "exists and is not a directory")  # passed already
    # NotADirectoryError traceback from mkdir
    one_line(*cli(capsys, "run", suite, "--out", afile / "sub", "--quiet"), f"--out {afile / 'sub'}: cannot create")
    one_line(*cli(capsys, "run", suite, "--reports-root", afile, "--quiet"), "cannot create the folder")
    one_line(*cli(capsys, "tune", suite, "--out", afile / "sub", "--quiet", "--trials", "1"), "cannot create the folder")
    one_line(*cli(capsys, "tune", suite, "--out", afile, "--quiet", "--trials", "1"), "exists and is not a directory")
    # IsADirectoryError traceback from the lock
    locked = tmp_path / "locked"
    (locked / LOCK_NAME).mkdir(parents=True)
    one_line(*cli(capsys, "run", suite, "--resume", "--out", locked, "--quiet"), "cannot create the run directory's lock")


def test_tune_trials_out_of_range(suite, capsys):
    for n in ("0", "-1", "99999999999999999999"):  # a huge count was a pydantic traceback
        one_line(*cli(capsys, "tune", suite, "--trials", n, "--dry-run"), "--trials: give 1 to 10,000 trials")


def test_missing_baseline_is_refused_before_the_run(suite, tmp_path, capsys):
    # the run trained every cell, then failed on the baseline
    one_line(*cli(capsys, "run", suite, "--baseline", tmp_path / "nope", "--reports-root", tmp_path / "r"),
             "--baseline", "no such run directory")
    assert not (tmp_path / "r").exists()


# --- bench evaluate --------------------------------------------------------------------------------------------


def test_evaluate_bad_arguments_and_files(tmp_path, capsys):
    samples = tmp_path / "s.npy"
    np.save(samples, np.zeros((10, 1, 8, 8), np.uint8))
    # a pydantic ValidationError traceback
    one_line(*cli(capsys, "evaluate", samples, "--dataset", "digits", "--n-reference", "0"), "--n-reference 0")
    # numpy took random bytes for a pickle and suggested loading it with allow_pickle=True
    garbage = tmp_path / "g.npz"
    garbage.write_bytes(bytes(range(256)) * 4)
    rc, err = cli(capsys, "evaluate", garbage, "--dataset", "digits")
    one_line(rc, err, "not a .npy or .npz samples file")
    assert "pickle" not in err
    # the metrics were computed, then the JSON could not be written
    one_line(*cli(capsys, "evaluate", samples, "--dataset", "digits", "--json", tmp_path), "--json", "is a folder")


@pytest.mark.parametrize("bad", [np.nan, np.inf, 1e20])
def test_evaluate_points_that_no_metric_can_measure(tmp_path, capsys, bad):
    """inf and 1e20 hung for good in precision/recall's radius search; NaN gave a report of NaNs and zeros."""
    x = np.random.default_rng(0).normal(size=(300, 2)).astype(np.float32)
    x[3, 0] = bad
    np.save(tmp_path / "p.npy", x)
    t0 = time.perf_counter()
    one_line(*cli(capsys, "evaluate", tmp_path / "p.npy", "--dataset", "toy2d"), "1 of 300 points are NaN, infinite")
    assert time.perf_counter() - t0 < 30


def test_evaluate_zip_bomb_is_refused_before_it_unpacks(tmp_path, capsys, monkeypatch):
    """A few MB of zeros that unpack to more than the machine's memory were unpacked (and the OOM killer came)."""
    import bench.io

    monkeypatch.setattr(bench.io, "MAX_NPZ_MEMBER_BYTES", 2**20)  # the test's bomb is 4 MiB, not 4 GiB
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, samples=np.zeros((2**12, 1, 32, 32), np.uint8))
    assert path.stat().st_size < 2**16
    one_line(*cli(capsys, "evaluate", path, "--dataset", "digits"), "member samples.npy unpacks to 4,194,432 bytes",
             "more than bench reads (1,048,576)")


def test_generated_points_that_no_metric_can_measure_fail_the_cell():
    """A sampler that returns inf used to hang the cell in its quality metrics; now the cell fails with the reason."""

    class Diverged:
        def eval(self):
            return self

        def sample(self, n, generator):
            return torch.full((n, 2), float("inf"))

    with pytest.raises(ValueError, match="generated 8 of 8 points that are NaN, infinite or beyond"):
        generate(Diverged(), 8, torch.device("cpu"), 0, batch_size=4, kind="points")  # type: ignore[arg-type]


# --- bench compare -----------------------------------------------------------------------------------------------


def test_compare_results_json_that_python_cannot_parse(tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)  # RecursionError traceback
    one_line(*cli(capsys, "compare", deep, deep), "deep.json: not JSON bench can read (nested past")
    big = tmp_path / "big.json"
    big.write_text('{"records": [], "x": ' + "9" * 5000 + "}")  # ValueError traceback (int digits limit)
    one_line(*cli(capsys, "compare", big, big), "big.json: not JSON bench can read (Exceeds the limit")
    for text, expected in (("{not json", "not valid JSON"), ("[1, 2]", "expected a JSON object with a 'records' list"),
                           ('{"records": [1]}', "records[0] is not a cell record")):  # passed already
        bad = tmp_path / "bad.json"
        bad.write_text(text)
        one_line(*cli(capsys, "compare", bad, bad), expected)


def test_compare_against_an_empty_baseline_is_an_error(finished, tmp_path, capsys):
    """A baseline without records passed any run ("nothing to compare: OK")."""
    (tmp_path / "empty" / "records").mkdir(parents=True)
    one_line(*cli(capsys, "compare", tmp_path / "empty", finished[1]), "the baseline holds no cell records")


def test_compare_runs_of_different_suites_says_so(finished, capsys):
    rc = main(["compare", str(ROOT / "reports" / "baselines" / "smoke"), str(finished[1]), "--quiet"])
    out = capsys.readouterr().out
    assert rc == 1 and out.splitlines()[0].startswith("informational: (run) (suite): baseline is a run of suite smoke, "
                                                      "current of suite hostile"), out


def test_compare_summary_into_a_folder(finished, tmp_path, capsys):
    one_line(*cli(capsys, "compare", finished[1], finished[1], "--summary", tmp_path, "--quiet"), "is a folder")


# --- files of a run directory --------------------------------------------------------------------------------------

BAD_RUN_SUITE = [
    ("- 1\n- 2\n", "not a suite (a YAML mapping)"),  # AttributeError traceback in report and resume
    ("", "not a suite (a YAML mapping)"),
    ("name: hostile\nmodels: 5\n", "models: expected a list, got int"),  # TypeError traceback in the report
    ("name: !!python/object/apply:os.getcwd []\n", "is not allowed"),  # ConstructorError traceback
    ("a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, "
     "*b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c, *c, *c, *c, *c, *c, *c, *c, *c, *c, *c, *c, *c, *c, *c, *c, *c, *c, "
     "*c, *c, *c, *c]\n", "an alias bomb"),  # the report expanded it into results.json
    ("name: caf\xe9\n".encode("latin-1"), "not UTF-8 text"),  # UnicodeDecodeError traceback
]


@pytest.mark.parametrize("content,expected", BAD_RUN_SUITE, ids=[e for _, e in BAD_RUN_SUITE])
def test_damaged_suite_yaml_of_a_run(run_copy, capsys, content, expected):
    suite, run = run_copy
    (run / "suite.yaml").write_bytes(content if isinstance(content, bytes) else content.encode())
    before = snapshot(run)
    one_line(*cli(capsys, "report", run), f"{run / 'suite.yaml'}", expected)
    one_line(*cli(capsys, "run", suite, "--resume", "--out", run, "--quiet"), f"{run / 'suite.yaml'}", expected)
    assert snapshot(run) == before  # nothing written, nothing lost


@pytest.mark.parametrize("content,expected", [
    ("{garbage", "not valid JSON"), ("[1]", "not the JSON object bench writes"),
    ("[" * 50_000 + "]" * 50_000, "nested past Python's recursion limit"),
], ids=["garbage", "a list", "deep"])
def test_damaged_environment_json_of_a_run(run_copy, capsys, content, expected):
    """JSONDecodeError / AttributeError / RecursionError tracebacks; a resume found it only after the last cell."""
    suite, run = run_copy
    (run / "environment.json").write_text(content)
    (run / "records" / "nb__seed0.json").unlink()  # so that a resume has a cell to run
    one_line(*cli(capsys, "report", run), "environment.json", expected)
    one_line(*cli(capsys, "run", suite, "--resume", "--out", run, "--quiet"), "environment.json", expected)
    assert not (run / "records" / "nb__seed0.json").exists()  # refused before the cell trained


def test_things_in_records_that_are_not_records(run_copy, capsys):
    suite, run = run_copy
    (run / "records" / "x.json").mkdir()  # IsADirectoryError traceback
    one_line(*cli(capsys, "report", run), "x.json: cannot read it as a cell record (Is a directory)")
    (run / "records" / "x.json").rmdir()
    (run / "records" / "y.json").symlink_to(run / "nowhere")  # FileNotFoundError traceback
    one_line(*cli(capsys, "run", suite, "--resume", "--out", run, "--quiet"), "y.json: cannot read it as a cell record")


def test_truncated_record_stops_a_resume_before_anything_runs(run_copy, capsys):
    """Passed already through the store; here through the command line."""
    suite, run = run_copy
    record = run / "records" / "nb__seed0.json"
    record.write_bytes(record.read_bytes()[:50])
    before = snapshot(run)
    one_line(*cli(capsys, "run", suite, "--resume", "--out", run, "--quiet"), "nb__seed0.json: sha256 is",
             "rerun with --resume to recompute that cell")
    assert snapshot(run) == before


def test_an_unreadable_lock_note_does_not_stop_a_resume(run_copy, capsys):
    suite, run = run_copy
    (run / LOCK_NAME).write_text("[" * 50_000 + "]" * 50_000)  # RecursionError traceback
    assert main(["run", str(suite), "--resume", "--out", str(run), "--quiet"]) == 0, capsys.readouterr().err


def test_a_run_without_suite_yaml_still_reports(run_copy, capsys):
    """Hand-made run directories (records only) render; passed already."""
    _, run = run_copy
    (run / "suite.yaml").unlink()
    assert main(["report", str(run)]) == 0, capsys.readouterr().err


def test_ctrl_c_during_a_cell_exits_130_and_resume_finishes(suite, tmp_path, capsys, monkeypatch):
    """Ctrl-C while a cell ran exited 2, the status of a user error, though the README and the CLI say 130."""
    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(NaiveBayes, "training_step", interrupted)
    out = tmp_path / "run"
    one_line(*cli(capsys, "run", suite, "--out", out, "--quiet"), f"interrupted; finished cells are kept: rerun with "
             f"--resume --out {out}", status=130)
    assert (out / LOCK_NAME).read_text() == "" and not list((out / "records").glob("*.json"))
    monkeypatch.undo()
    assert main(["run", str(suite), "--resume", "--out", str(out), "--quiet"]) == 0
    assert [r.cell_id for r in RunStore(out).records()] == ["nb__seed0"]


def test_interrupted_is_a_bench_error_with_status_130(tmp_path):
    class Pool:
        def describe(self):
            return {"setup": "stub"}

        def close(self):
            pass

    with pytest.raises(Interrupted) as e:
        with executing(Pool(), tmp_path, "trials", quiet=True):
            raise KeyboardInterrupt
    assert isinstance(e.value, BenchError) and e.value.exit_code == 130 and "finished trials are kept" in str(e.value)


# --- tuning files ---------------------------------------------------------------------------------------------


def test_damaged_tuning_files(suite, tmp_path, capsys):
    run = tmp_path / "tuning"
    run.mkdir()
    (run / "plan.json").write_text("{garbage")  # JSONDecodeError traceback on --resume
    one_line(*cli(capsys, "tune", suite, "--resume", "--out", run, "--quiet"), "plan.json: not valid JSON")
    trials = run / "trials"
    trials.mkdir()
    good = {"model": "nb", "family": "naive_bayes", "number": 0, "source": "defaults", "params": {}, "state": "ok",
            "objective": "fid_domain", "value": 1.5}
    (trials / "nb__t000.json").write_text(json.dumps(good))
    assert TrialStore(run).load("nb")[0].value == 1.5
    (trials / "nb__t000.json").write_text(json.dumps({**good, "params": 5, "value": "abc"}))  # AttributeError later
    with pytest.raises(BenchError, match=r"nb__t000.json: not a trial record \(params: Input should be an object\)"):
        TrialStore(run).load("nb")


# --- data ------------------------------------------------------------------------------------------------------


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache"


def _images(n: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (n, 8, 8), dtype=np.uint8)


@pytest.mark.parametrize("label,expected", [
    (10**9, "num_classes is 1000000001 for 40 examples"),  # allocated 8 GB per class table: out of memory
    (2**62, "num_classes is 4611686018427387905"),  # "Storage size calculation overflowed"
    (np.uint64(2**64 - 1), "y holds label 18446744073709551615"),  # wrapped to -1: "holds labels -1..-1"
])
def test_npz_labels_that_are_not_class_indices(tmp_path, cache, label, expected):
    y = np.zeros(40, np.asarray(label).dtype)
    y[-1] = label
    np.savez(tmp_path / "d.npz", x=_images(40), y=y)
    with pytest.raises(BenchError, match=expected) as e:
        load_dataset("npz", {"path": str(tmp_path / "d.npz")})
    assert "\n" not in str(e.value)


def test_folder_with_a_dangling_link_or_a_decompression_bomb(tmp_path, cache, monkeypatch):
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(5):
        Image.fromarray(_images(1)[0]).save(root / f"{i}.png")
    (root / "9.png").symlink_to(tmp_path / "gone.png")  # FileNotFoundError traceback
    with pytest.raises(BenchError, match=r"9.png: cannot read it \(No such file or directory\)"):
        load_dataset("folder", {"root": str(root)})
    (root / "9.png").unlink()
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 16)  # 8x8 = 64 pixels: a "bomb" past twice the limit
    with pytest.raises(BenchError, match=r"0.png: Image size \(64 pixels\) exceeds limit"):  # was a traceback
        load_dataset("folder", {"root": str(root)})


def test_dataset_plugins_are_held_to_finite_points_and_a_class_count():
    good = load_dataset("toy2d")
    fields = {f: getattr(good, f) for f in ("name", "kind", "train_x", "train_y", "test_x", "test_y", "num_classes")}

    def bad(message: str, **change) -> None:
        with pytest.raises(BenchError, match=message):
            check_dataset(Dataset(**{**fields, **change}), "mine")

    for value in (float("nan"), float("inf"), 1e20):  # a hang in precision/recall, like samples
        x = good.train_x.clone()
        x[5, 1] = value
        bad(r"train_x: 1 points are NaN, infinite or beyond", train_x=x)
    bad("num_classes must be a count of classes", num_classes="8")
    bad("num_classes is 1000000 for", num_classes=10**6)


def test_an_infinite_radius_ends_the_exact_threshold_walk():
    """``fast._sq_threshold`` walked ``nextafter`` up from r * r forever when r was inf (nextafter(inf) == inf)."""
    from bench.metrics.fast import _sq_threshold

    r = torch.tensor([math.inf, 2.0, -1.0, math.nan], dtype=torch.float32)
    t = _sq_threshold(r)
    assert t[0] == math.inf and t[2] == -math.inf and t[3] == -math.inf
    assert t[1].sqrt() <= 2.0 < torch.nextafter(t[1], torch.tensor(math.inf)).sqrt()  # in float32, as the walk


@pytest.mark.parametrize("written,value", [("1e-3", 1e-3), ("1E5", 1e5), ("+2.5e-1", 0.25), ("1.e2", 100.0)])
def test_exponent_numbers_are_numbers(written, value):
    """YAML 1.1 (PyYAML) reads 1e-3 as text, which pydantic then turned into a number and now would refuse;
    a suite reads it as YAML 1.2 and every person does."""
    cfg = parse_suite(HEAD + f"models:\n  - {{name: m, family: vae, train: {{grad_clip: {written}}}}}\n", "s.yaml")
    got = cfg.models[0].train.grad_clip
    assert got == value and type(got) is type(value)


def test_whole_floats_still_count_for_integers():
    """Only guesses are refused: 10.0 steps is 10 steps (an existing suite may say so)."""
    assert parse_suite(HEAD.replace("steps: 5", "steps: 5.0") + MODEL, "s.yaml").budget.steps == 5


def test_type_problem_judges_only_guesses():
    """bench.schema.type_problem: the three guesses refused, everything pydantic words better passed on."""
    from typing import Annotated, Literal

    from bench.schema import type_problem

    assert type_problem(True, int) == "expected a number, got the boolean true"
    assert type_problem(True, Annotated[int, {"unhashable": []}]) == "expected a number, got the boolean true"
    assert type_problem("64", int | None).startswith("expected a number, got the text '64'")
    assert type_problem(1, bool) == "expected true or false, got the number 1"
    assert type_problem([0.5, False], tuple[float, float]) == "item 1: expected a number, got the boolean false"
    for value, annotation in [(True, bool), (1, int), (1, float), (10.0, int), ("many", int), ("inf", float),
                              ("auto", Literal["auto", "cpu"]), (True, int | bool), ("x", str | int), ({}, dict),
                              ([1, 2], tuple[int, int, int]), (None, int | None)]:
        assert type_problem(value, annotation) is None, (value, annotation)
