"""Runs under adverse conditions (issue 11 parts 4, 5, 6, 8): two processes and one run directory, untrusted
text in the report, cells that raise / run out of memory / run too long, a full disk, file modes."""
from __future__ import annotations

import errno
import html.parser
import json
import os
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from bench.cli import main
from bench.config import load_suite
from bench.errors import BenchError
from bench.families.naive_bayes import NaiveBayes
from bench.io import atomic_write_text, write_with_sidecar
from bench.report import write_report
from bench.results import CellRecord, Metric
from bench.runner import run_suite
from bench.store import LOCK_NAME, RunLock, RunStore, lock_holder
from conftest import ROOT, TINY

NB_ONLY = TINY.replace("seeds: [0, 1]", "seeds: [0]")


@pytest.fixture
def suite(tmp_path) -> Path:
    p = tmp_path / "tiny.yaml"
    p.write_text(NB_ONLY)
    return p


# --- part 4: two runs, one directory --------------------------------------------------------------

# another process that holds a run directory's lock the way RunLock does (flock + pid/host/argv), without
# paying for importing torch
HOLD = """
import fcntl, json, os, socket, sys, time
fd = os.open(os.path.join(sys.argv[1], ".bench.lock"), os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": "now",
                         "argv": ["bench", "run", "suite.yaml"]}).encode())
print("locked", flush=True)
time.sleep(120)
"""


def test_a_live_run_directory_is_refused_with_the_other_process_named(suite, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert lock_holder(out)["pid"] == holder.pid
        for resume in (False, True):
            with pytest.raises(BenchError) as e:
                run_suite(load_suite(suite), suite, out=out, resume=resume, quiet=True)
            msg = str(e.value)
            assert "being written by another bench process" in msg and f"pid {holder.pid} on host " \
                f"{socket.gethostname()}" in msg and "\n" not in msg, msg
        assert not (out / "suite.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder died without releasing anything: its lock is stale, and the next run takes it over
    assert lock_holder(out) is None and json.loads((out / LOCK_NAME).read_text())["pid"] == holder.pid
    run_dir = run_suite(load_suite(suite), suite, out=out, resume=True, quiet=True, only=["nb"])
    assert [r.cell_id for r in RunStore(run_dir).records()] == ["nb__seed0"]


def test_report_of_a_run_in_progress_says_so(suite, tmp_path, capsys):
    """``bench report`` takes no lock (records are whole files, so it shows the finished cells) and says that
    the run is still going; before, nothing told the reader that the report was partial."""
    out = run_suite(load_suite(suite), suite, out=tmp_path / "run", quiet=True, only=["nb"])
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        assert main(["report", str(out)]) == 0
        err = capsys.readouterr().err
        assert f"is still being written (pid {holder.pid} on host" in err and "cells finished so far" in err, err
    finally:
        holder.kill()
        holder.wait()
    assert main(["report", str(out)]) == 0 and "still being written" not in capsys.readouterr().err


def test_stale_lock_takeover_is_reported(suite, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(),
                                             "started": "earlier", "argv": ["bench", "run"]}))
    run_suite(load_suite(suite), suite, out=out, resume=True, only=["nb"])
    assert f"taking over the lock of a run that is no longer running (pid {int(dead.stdout)}" in capsys.readouterr().out


def test_the_lock_is_held_for_the_whole_run_and_released(suite, tmp_path, monkeypatch):
    import bench.runner

    seen = []
    real = bench.runner.run_cell

    def spy(cell, cfg, train_ds, ds, store, *a, **k):
        seen.append(lock_holder(store.dir))
        return real(cell, cfg, train_ds, ds, store, *a, **k)

    monkeypatch.setattr(bench.runner, "run_cell", spy)
    out = run_suite(load_suite(suite), suite, out=tmp_path / "run", quiet=True, only=["nb"])
    assert seen and seen[0]["pid"] == os.getpid()
    assert lock_holder(out) is None and (out / LOCK_NAME).read_text() == ""
    with RunLock(out) as lock:  # free again
        assert lock.took_over is None


# --- part 6: resource faults ----------------------------------------------------------------------


def test_a_cell_that_raises_is_recorded_and_the_suite_goes_on(suite, tmp_path, monkeypatch, capsys):
    def boom(self, *args, **kwargs):
        raise RuntimeError("boom <b>bold</b>")

    monkeypatch.setattr(NaiveBayes, "training_step", boom)
    out = tmp_path / "run"
    assert main(["run", str(suite), "--out", str(out), "--quiet"]) == 1  # some cells failed
    err = capsys.readouterr().err
    assert "bench: cell nb__seed0 failed: RuntimeError: boom <b>bold</b> (see logs/nb__seed0.err)" in err
    recs = {r.model: r for r in RunStore(out).records()}
    assert recs["nb"].status == "failed" and recs["vae"].status == "ok"
    assert "Traceback" in (out / "logs" / "nb__seed0.err").read_text()
    page = (out / "index.html").read_text()
    assert "Cells that did not finish" in page and "boom &lt;b&gt;bold&lt;/b&gt;" in page
    assert '<a href="logs/nb__seed0.err">traceback</a>' in page


@pytest.mark.parametrize("error", [MemoryError(), torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")])
def test_out_of_memory_is_a_failed_cell(suite, tmp_path, monkeypatch, error):
    def oom(self, *args, **kwargs):
        raise error

    monkeypatch.setattr(NaiveBayes, "training_step", oom)
    out = run_suite(load_suite(suite), suite, out=tmp_path / "run", quiet=True)
    recs = {r.model: r for r in RunStore(out).records()}
    assert recs["nb"].status == "failed" and "out of memory" in recs["nb"].error and recs["vae"].status == "ok"
    assert recs["nb"].error.endswith("(see logs/nb__seed0.err)")


def test_a_cell_past_its_time_limit_is_failed_and_the_suite_goes_on(suite, tmp_path, monkeypatch):
    real = NaiveBayes.training_step

    def slow(self, *args, **kwargs):
        time.sleep(0.5)  # 30 steps: 15 s
        return real(self, *args, **kwargs)

    monkeypatch.setattr(NaiveBayes, "training_step", slow)
    t0 = time.perf_counter()
    out = run_suite(load_suite(suite), suite, out=tmp_path / "run", quiet=True, cell_time_limit=6)
    recs = {r.model: r for r in RunStore(out).records()}
    assert recs["nb"].status == "failed" and "time limit of 6 s" in recs["nb"].error, recs["nb"].error
    assert "training_step" in (out / "logs" / "nb__seed0.err").read_text()  # the traceback says where it was
    assert recs["vae"].status == "ok" and time.perf_counter() - t0 < 120
    with pytest.raises(BenchError, match="--cell-time-limit must be a positive"):
        run_suite(load_suite(suite), suite, out=tmp_path / "r2", quiet=True, cell_time_limit=0)


def test_a_full_disk_leaves_earlier_records_intact(suite, tmp_path, monkeypatch):
    """ENOSPC while the second record is written (after its temp file was filled, before the rename):
    one line naming the file; the first record is intact and valid; no temp file is left behind."""
    import bench.io

    def full(name):
        if name == "write:records/vae__seed0.json":
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(bench.io, "fault_point", full)
    out = tmp_path / "run"
    with pytest.raises(BenchError) as e:
        run_suite(load_suite(suite), suite, out=out, quiet=True)
    assert str(e.value) == f"cannot write {out / 'records' / 'vae__seed0.json'}: No space left on device; files " \
        "written before it are intact (free space or fix permissions, then run the command again: with --resume, a " \
        "run or a tuning continues where it stopped)"
    assert [r.cell_id for r in RunStore(out).records()] == ["nb__seed0"]
    assert not list(out.rglob("*.tmp"))
    monkeypatch.undo()  # space freed: resume finishes the run
    run_suite(load_suite(suite), suite, out=out, resume=True, quiet=True)
    assert sorted(r.cell_id for r in RunStore(out).records()) == ["nb__seed0", "vae__seed0"]


# --- part 8: file modes ---------------------------------------------------------------------------


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_files_honour_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        write_with_sidecar(tmp_path / "b.bin", lambda f: f.write(b"x"))
        RunLock(tmp_path).acquire().release()
    finally:
        os.umask(old)
    for name in ("a.txt", "b.bin", "b.bin.sha256", LOCK_NAME):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == mode, name


# --- part 5: untrusted text in reports ------------------------------------------------------------

HOSTILE = '<script>alert(1)</script><img src=x onerror=alert(2)>"\'&'


class _Tags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, list[tuple[str, str | None]]]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, attrs))


def _hostile_run(tmp_path: Path) -> Path:
    """A run directory whose suite.yaml and records hold hostile text (as a hand-edited run or a
    foreign results file could): description, model and family names, options, errors, notes, links."""
    run = tmp_path / "run"
    (run / "records").mkdir(parents=True)
    names = ["m-ok", HOSTILE]
    (run / "suite.yaml").write_text(yaml.safe_dump({"name": HOSTILE, "description": HOSTILE,
                                                    "dataset": {"name": HOSTILE}, "models": [{"name": n} for n in names]}))
    (run / "environment.json").write_text(json.dumps({"device_name": HOSTILE, "torch": HOSTILE, "git_commit": HOSTILE}))
    for i, name in enumerate(names):
        rec = CellRecord(HOSTILE, HOSTILE, name, HOSTILE, i, "ok" if i == 0 else "failed", {"steps": 5},
                         {"seconds": 1.0, "steps": 5}, [Metric("fid_domain", 3.0 + i, note=HOSTILE, params={"k": HOSTILE})],
                         options={"x": HOSTILE}, error=HOSTILE,
                         artifacts={"traceback": "javascript:alert(3)", "samples": "../../../etc/passwd"})
        (run / "records" / f"r{i}.json").write_text(json.dumps(rec.to_dict()))  # a model name is no file name
    return run


def test_report_escapes_untrusted_text_and_requests_nothing(tmp_path, monkeypatch):
    run = _hostile_run(tmp_path)
    # read the records as they are (the store's file-name check would stop at the first; the report is under test)
    monkeypatch.setattr(RunStore, "records", lambda self: [CellRecord.from_dict(json.loads(p.read_text()))
                                                          for p in sorted(self.records_dir.glob("*.json"))])

    def no_network(*a, **k):
        raise AssertionError("the report tried to open a network connection")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    page = write_report(run)["html"].read_text()

    parser = _Tags()
    parser.feed(page)
    tags = {t for t, _ in parser.tags}
    assert not tags & {"script", "iframe", "object", "embed", "link", "base", "form", "style_src"}, tags
    for tag, attrs in parser.tags:
        for key, value in attrs:
            assert not key.startswith("on"), (tag, key)
            if key in ("src", "href", "action", "poster", "srcset"):
                assert value.startswith("data:image/png;base64,") or value in ("results.csv", "results.json"), (tag, value)
        if tag == "meta":
            assert dict(attrs).get("http-equiv") is None
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page and "<script>" not in page
    for needle in ("http://", "https://", "url(", "@import", "javascript:", 'src="//', "//cdn"):
        assert needle not in page, needle
