"""Executors (local | Ray) and MLflow tracking: same records either way, lost tasks recorded and resumed,
Ctrl-C leaves a resumable run, missing extras say how to install them, every cell reaches MLflow.

The Ray tests start one local Ray instance for the module (2 CPUs, no dashboard, a small object store)
and shut it down at the end; the CLI runs connect to it with --address, which also exercises that flag.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bench.config import ExecutorConfig, RayOptions, load_suite, parse_suite
from bench.errors import BenchError
from bench.executors import (LocalExecutor, Shared, TaskFailure, TaskTiming, make_executor, match_priority,
                             max_concurrent, note_executor)
from bench.io import sidecar
from conftest import ROOT, TINY, run_cli
from test_tune import TUNE_SUITE


def _comparable(rec: dict) -> dict:
    """A record without its wall-clock measurements (time units, rates), which differ between any two runs."""
    spent = {k: v for k, v in rec["spent"].items() if not k.endswith("seconds") and k != "peak_memory_mb"}
    metrics = {m["name"]: m["value"] for m in rec["metrics"] if m["unit"] != "s" and not m["unit"].endswith("/s")}
    return {"status": rec["status"], "spent": spent, "metrics": metrics, "options": rec["options"]}


def _records(run_dir: Path) -> dict[str, dict]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((run_dir / "records").glob("*.json"))}


# ------------------------------------------------------------------------------------------ no Ray needed


def test_max_concurrent_counts_overlaps():
    def t(a: float, b: float) -> TaskTiming:
        return TaskTiming("h", a, b)

    assert max_concurrent([]) == 0
    assert max_concurrent([t(0, 2), t(2, 4), t(4, 6)]) == 1  # back to back: an end sorts before a start
    assert max_concurrent([t(0, 3), t(1, 4), t(2, 5), t(4.5, 6)]) == 3


def _double(x: int, shared: int) -> int:
    if x == 3:
        raise ValueError("three is not allowed\nsecond line")
    if x == 99:
        raise BenchError("bad suite")
    return 2 * x + shared


def test_a_task_takes_the_drivers_priority_back_where_allowed(monkeypatch):
    """Ray starts workers at nice 15; a task lowers it to the driver's where the OS allows, and runs on where not."""
    state = {"nice": 15}
    monkeypatch.setattr(os, "getpriority", lambda which, who: state["nice"])

    def allowed(which, who, value):
        state["nice"] = value

    monkeypatch.setattr(os, "setpriority", allowed)
    assert match_priority(0) == 0
    state["nice"] = 15

    def refused(which, who, value):
        raise PermissionError("not permitted")

    monkeypatch.setattr(os, "setpriority", refused)
    assert match_priority(0) == 15  # unprivileged: the task runs as it is
    assert match_priority(19) == 15  # never raises its own nice value


def test_local_executor_records_a_raising_task_and_goes_on():
    got: dict[int, object] = {}
    ex = LocalExecutor(threads=1)
    ex.run_all(_double, [1, 3, 5], lambda s, r: got.__setitem__(s, r), Shared(objects=100))
    assert got[1] == 102 and got[5] == 110
    assert got[3] == TaskFailure("raised", "ValueError: three is not allowed")
    info = ex.describe()
    assert info["tasks"] == 3 and info["max_concurrent"] == 1 and "one cell at a time" in info["summary"]
    with pytest.raises(BenchError, match="bad suite"):  # the user's to fix: stops the run
        ex.run_all(_double, [99, 1], lambda s, r: None, Shared(objects=0))


def test_cache_files_travel_and_are_written_only_where_missing(tmp_path, monkeypatch):
    a, b = tmp_path / "a", tmp_path / "b"
    f = a / "features" / "domain-x.pt"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"weights")
    sidecar(f).write_text("0" * 64 + "  domain-x.pt\n")
    (tmp_path / "elsewhere.pt").write_bytes(b"not in the cache")
    monkeypatch.setenv("BENCH_CACHE", str(a))
    packed = Shared("objects", [f, tmp_path / "elsewhere.pt"]).pack()
    assert packed.objects == "objects"
    assert sorted(packed.files) == ["features/domain-x.pt", "features/domain-x.pt.sha256"]
    monkeypatch.setenv("BENCH_CACHE", str(b))  # another node: an empty cache
    assert packed.unpack() == 2
    assert (b / "features" / "domain-x.pt").read_bytes() == b"weights"
    assert sidecar(b / "features" / "domain-x.pt").is_file()
    assert packed.unpack() == 0  # a second task on that node finds them


def test_executor_config_short_form_and_errors(tmp_path):
    base = "name: s\ndataset: digits\nbudget: {steps: 5}\nmodels: [{name: nb, family: naive_bayes}]\n"
    assert parse_suite(base + "executor: ray\n").executor.name == "ray"
    cfg = parse_suite(base + "executor: {name: ray, ray: {num_cpus: 2, num_gpus: 0}}\n")
    assert cfg.executor.ray.num_cpus == 2 and cfg.executor.ray.num_gpus == 0
    with pytest.raises(BenchError, match=r"<suite>:5: executor.name: .*'local' or 'ray'.*dask"):
        parse_suite(base + "executor: dask\n")
    with pytest.raises(BenchError, match=r"<suite>:5: executor.ray.cpus: unknown key; accepted keys: num_cpus, num_gpus, address"):
        parse_suite(base + "executor: {name: ray, ray: {cpus: 2}}\n")
    # a Ray cell runs torch on num_cpus threads: a suite asking for other threads contradicts itself
    with pytest.raises(BenchError, match=r"num_cpus \(2\) differs from threads \(1\)"):
        make_executor(ExecutorConfig(name="ray", ray=RayOptions(num_cpus=2)), suite_threads=1, device="cpu",
                      resolved_device="cpu")


def test_note_executor_appends_one_entry_per_invocation(tmp_path):
    (tmp_path / "environment.json").write_text(json.dumps({"torch": "x"}))
    note_executor(tmp_path, {"name": "local", "summary": "first"})
    note_executor(tmp_path, {"name": "ray", "summary": "resumed"})
    env = json.loads((tmp_path / "environment.json").read_text())
    assert env["torch"] == "x" and [e["summary"] for e in env["executors"]] == ["first", "resumed"]


@pytest.fixture
def _restore_determinism():
    """execute_cell turns on torch's deterministic algorithms for the process, as a worker should; not for pytest's."""
    before = torch.are_deterministic_algorithms_enabled()
    yield
    torch.use_deterministic_algorithms(before)


def test_cell_on_a_node_without_the_run_directory_sends_its_artefacts_back(tmp_path, write_suite, _restore_determinism):
    from bench.data import load_dataset
    from bench.runner import CellOutcome, CellSpec, execute_cell, plan

    p = write_suite(TINY)
    cfg = load_suite(p)
    ds = load_dataset("digits")
    cell = plan(cfg, only=["nb"], seeds=[0])[0]
    spec = CellSpec(cfg, cell, (tmp_path / "elsewhere" / "run").resolve(), tmp_path, "cpu")
    out = execute_cell(spec, (ds, ds))
    assert isinstance(out, CellOutcome) and out.record.status == "ok"
    assert set(out.files) == set(out.record.artifacts.values()) == {"logs/nb__seed0.csv", "checkpoints/nb__seed0.pt",
                                                                      "samples/nb__seed0.npz"}
    assert not (tmp_path / "elsewhere").exists()  # nothing written where the driver's run directory would be
    assert out.record.environment["torch_threads"] == torch.get_num_threads()


def _hide(tmp_path: Path, module: str) -> dict[str, str]:
    """An environment in which ``import module`` fails as if the package were not installed."""
    fake = tmp_path / "hide" / module
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(f"raise ImportError(\"No module named '{module}'\")\n")
    return {"PYTHONPATH": f"{fake.parent}{os.pathsep}{ROOT}"}


def test_without_ray_the_install_command_is_shown_and_no_run_directory_is_made(tmp_path, write_suite):
    p = write_suite(TINY)
    r = run_cli("run", str(p), "--executor", "ray", "--out", str(tmp_path / "run"), "--quiet", env=_hide(tmp_path, "ray"))
    assert r.returncode == 2, r.stderr
    assert 'needs Ray, which is not installed; install it with pip install -e ".[ray]"' in r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "run").exists()


def test_without_mlflow_the_install_command_is_shown(tmp_path, write_suite):
    p = write_suite(TINY)
    r = run_cli("run", str(p), "--track", "mlflow", "--out", str(tmp_path / "run"), "--quiet",
                env=_hide(tmp_path, "mlflow"))
    assert r.returncode == 2 and 'pip install -e ".[mlflow]"' in r.stderr, r.stderr


def test_address_and_tracking_uri_need_their_options(tmp_path, write_suite):
    p = write_suite(TINY)
    r = run_cli("run", str(p), "--address", "auto", "--dry-run")
    assert r.returncode == 2 and "--address auto: is for the ray executor; add --executor ray" in r.stderr
    r = run_cli("run", str(p), "--tracking-uri", "sqlite:///x.db", "--dry-run")
    assert r.returncode == 2 and "--tracking-uri is for --track mlflow" in r.stderr


def test_a_cluster_that_does_not_answer_is_one_line_and_leaves_no_directory(tmp_path, write_suite):
    pytest.importorskip("ray", reason='Ray is an optional extra: pip install -e ".[ray]"')
    p = write_suite(TINY)
    r = run_cli("run", str(p), "--executor", "ray", "--address", "127.0.0.1:1", "--out", str(tmp_path / "run"))
    assert r.returncode == 2, r.stderr
    assert "executor.ray.address '127.0.0.1:1': cannot connect to a Ray cluster (nothing answers" in r.stderr
    assert not (tmp_path / "run").exists()


def test_mlflow_holds_every_cell_with_its_metrics(tmp_path, write_suite):
    pytest.importorskip("mlflow", reason='MLflow is an optional extra: pip install -e ".[mlflow]"')
    from mlflow.tracking import MlflowClient

    p = write_suite(TINY)
    r = run_cli("run", str(p), "--only", "nb", "--track", "mlflow", "--out", str(tmp_path / "run"), "--quiet", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    db = tmp_path / "mlruns" / "mlflow.db"  # the default: a local store in ./mlruns
    assert db.is_file()
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    runs = client.search_runs([client.get_experiment_by_name("tiny").experiment_id])
    by_name = {run.info.run_name: run for run in runs}
    recs = _records(tmp_path / "run")
    assert set(by_name) == set(recs) == {"nb__seed0", "nb__seed1"}
    for cell, rec in recs.items():
        run = by_name[cell]
        assert run.info.status == "FINISHED" and run.data.params["family"] == rec["family"]
        for m in rec["metrics"]:
            if m["value"] is not None:
                assert run.data.metrics[m["name"]] == pytest.approx(m["value"]), (cell, m["name"])
        arts = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"suite.yaml", "records", "checkpoints", "samples", "logs"} <= arts


# ------------------------------------------------------------------------------------------- with Ray


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray instance for this module's tests; CLI runs join it with --address."""
    ray = pytest.importorskip("ray", reason='Ray is an optional extra: pip install -e ".[ray]"')
    # this module's own task functions must import in the workers: put tests/ on their path
    path = os.pathsep.join([str(ROOT), str(ROOT / "tests"), os.environ.get("PYTHONPATH", "")])
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=128 * 1024**2, log_to_driver=False,
             runtime_env={"env_vars": {"PYTHONPATH": path}})
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def _threads_and_shared(x: int, shared: dict) -> tuple[int, int, int]:
    if x < 0:
        raise ValueError("negative")
    return x, torch.get_num_threads(), shared["offset"]


def test_ray_executor_ships_shared_data_once_and_records_a_raising_task(ray_address):
    from bench.executors import RayExecutor

    ex = RayExecutor(num_cpus=1, device="cpu")
    got: dict[int, object] = {}
    ex.run_all(_threads_and_shared, [1, -1, 2, 3], lambda s, r: got.__setitem__(s, r), Shared({"offset": 7}))
    assert got[1] == (1, 1, 7) and got[3] == (3, 1, 7)  # each task runs torch on its num_cpus threads
    assert got[-1] == TaskFailure("raised", "ValueError: negative")
    info = ex.describe()
    assert info["slots"] == 2 and info["num_gpus"] == 0 and info["tasks"] == 3 and 1 <= info["max_concurrent"] <= 2
    ex.close()  # joined an instance it did not start: leaves it running
    import ray

    assert ray.is_initialized()


SMOKE_SUBSET = ["--only", "naive-bayes", "--only", "vae", "--seeds", "0"]


def test_ray_gives_the_same_records_as_local(ray_address, tmp_path):
    smoke = str(ROOT / "suites" / "smoke.yaml")
    local = run_cli("run", smoke, *SMOKE_SUBSET, "--out", str(tmp_path / "local"), "--quiet")
    assert local.returncode == 0, local.stderr
    remote = run_cli("run", smoke, *SMOKE_SUBSET, "--executor", "ray", "--address", ray_address,
                     "--out", str(tmp_path / "ray"), "--quiet")
    assert remote.returncode == 0, remote.stderr
    a, b = _records(tmp_path / "local"), _records(tmp_path / "ray")
    assert set(a) == set(b) == {"naive-bayes__seed0", "vae__seed0"}
    for cell in a:
        ca, cb = _comparable(a[cell]), _comparable(b[cell])
        assert ca == cb, (cell, {k: (v, cb["metrics"].get(k)) for k, v in ca["metrics"].items() if cb["metrics"].get(k) != v})
    r = run_cli("compare", str(tmp_path / "local"), str(tmp_path / "ray"), "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    env = json.loads((tmp_path / "ray" / "environment.json").read_text())
    assert env["executors"][0]["name"] == "ray" and env["executors"][0]["tasks"] == 2
    assert "Executor: ray (cluster at" in (tmp_path / "ray" / "index.html").read_text()


KILLABLE = """
name: killable
dataset: digits
seeds: [0]
budget: {steps: 30}
batch_size: 64
threads: 1
eval: {metrics: [likelihood], n_samples: 64, likelihood_examples: 64, save_samples: false}
models:
  - {name: nb, family: naive_bayes}
  - {name: slow, family: naive_bayes, budget: {seconds: 4}}
"""


def _pid_titled(prefix: str, timeout: float = 180) -> int:
    """The process whose command line starts with ``prefix`` (Ray titles a busy worker ``ray::<task name>``)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if cmd.startswith(prefix):
                    return int(d)
        time.sleep(0.2)
    raise AssertionError(f"no process {prefix!r} within {timeout} s")


def _default_sigint() -> None:
    # A shell without job control starts background commands with SIGINT ignored, children inherit that, and
    # Python then never turns SIGINT into KeyboardInterrupt: under `.ci/run &` the Ctrl-C test's run ignored
    # its Ctrl-C and finished with 0. A terminal's foreground job has the default disposition: restore it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _bench(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "bench", *args], cwd=ROOT, env=env, text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, preexec_fn=_default_sigint)


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's worker processes through /proc")
def test_a_killed_task_is_recorded_and_resume_finishes_it(ray_address, tmp_path, write_suite):
    p, out = write_suite(KILLABLE), tmp_path / "run"
    proc = _bench("run", str(p), "--executor", "ray", "--address", ray_address, "--out", str(out), "--quiet")
    os.kill(_pid_titled("ray::cell slow__seed0"), signal.SIGKILL)  # what the OOM killer or a lost node does
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 1 and "1 cell(s) failed" in err, err  # exit 1: a cell failed (README, exit status)
    recs = _records(out)
    assert recs["nb__seed0"]["status"] == "ok"
    assert recs["slow__seed0"]["status"] == "failed" and recs["slow__seed0"]["error"].startswith("task worker died")
    # --resume reruns the lost cell only, here on the local executor: either one may write to the run
    r = run_cli("run", str(p), "--resume", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "resuming: 1 of 2 cells already finished" in r.stdout
    after = _records(out)
    assert after["slow__seed0"]["status"] == "ok" and after["nb__seed0"] == recs["nb__seed0"]
    env = json.loads((out / "environment.json").read_text())
    assert [e["name"] for e in env["executors"]] == ["ray", "local"]


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds Ray's worker processes through /proc")
def test_ctrl_c_cancels_running_tasks_and_leaves_a_resumable_run(ray_address, tmp_path, write_suite):
    # the slow cell is long here, so that however late its worker is found, Ctrl-C still lands while it runs
    p, out = write_suite(KILLABLE.replace("budget: {seconds: 4}", "budget: {seconds: 60}")), tmp_path / "run"
    proc = _bench("run", str(p), "--executor", "ray", "--address", ray_address, "--out", str(out), "--quiet")
    worker = _pid_titled("ray::cell slow__seed0")
    time.sleep(0.5)  # the driver is waiting on its tasks, not still submitting them
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and f"interrupted; finished cells are kept: rerun with --resume --out {out}" in err
    assert "slow__seed0" not in _records(out)  # the cancelled cell left no record: --resume runs it
    end = time.monotonic() + 30
    while Path(f"/proc/{worker}").exists() and time.monotonic() < end:  # cancelled with force: its worker ends
        time.sleep(0.2)
    assert not Path(f"/proc/{worker}").exists() or "cell slow" not in Path(f"/proc/{worker}/cmdline").read_text()
    r = run_cli("run", str(p), "--resume", "--executor", "ray", "--address", ray_address, "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    assert set(_records(out)) == {"nb__seed0", "slow__seed0"}


# the tuning test suite with three trials and a second model
TWO_MODEL_TUNE = TUNE_SUITE.replace("trials: 4", "trials: 3") + (
    "  - {name: nb2, family: naive_bayes, options: {pixel_model: categorical}, tune: {space: {min_std: null}}}\n")


def test_tuning_trials_on_ray_equal_local_ones(ray_address, tmp_path, write_suite):
    """A round of trials (trial k of every model) runs as Ray tasks at once; the proposals and scores are
    those of the local run, because a proposal reads only its own model's earlier trials."""
    suite = write_suite(TWO_MODEL_TUNE)
    trials = {}
    for name, extra in (("local", []), ("ray", ["--executor", "ray", "--address", ray_address])):
        out = tmp_path / name
        r = run_cli("tune", str(suite), "--out", str(out), "--quiet", *extra)
        assert r.returncode == 0, r.stderr
        trials[name] = {p.name: {k: v for k, v in json.loads(p.read_text()).items() if k in ("params", "state", "value")}
                        for p in sorted((out / "trials").glob("*.json"))}
        env = json.loads((out / "environment.json").read_text())
        assert [e["name"] for e in env["executors"]] == [name]
    assert len(trials["local"]) == 6 and trials["ray"] == trials["local"]
