"""Run directories and the results store: atomic per-cell records, loading a run back.

A run directory tells its own story (STYLE.md #6)::

    reports/<suite>/<run-id>/
      suite.yaml          the resolved config          environment.json  versions, device, git commit
      records/<cell>.json one per finished cell         logs/<cell>.csv   losses per step
      samples/<cell>.npz  the evaluated samples (uint8) checkpoints/<cell>.pt
      results.json  results.csv  index.html            derived from records/, never the other way round

Every file is written to a temporary name and renamed, so a killed run leaves either
the old file or the new one, never half of one; an interrupted run loses at most the
cell in flight. A record has a sha256 sidecar and is schema-checked when read back, so
a truncated or edited record is reported, never read as valid. One process at a time
writes a run directory: ``RunLock`` refuses a second one and names the first.
"""
from __future__ import annotations

import errno
import fcntl
import json
import math
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from pydantic import TypeAdapter, ValidationError

from bench.errors import BenchError
from bench.io import make_dir, read_json, read_verified, sidecar, write_with_sidecar
from bench.results import CellRecord

LOCK_NAME = ".bench.lock"
_RECORD = TypeAdapter(CellRecord)  # the record schema is the dataclass itself: one definition, no copy


def new_run_dir(base: Path, suite: str) -> Path:
    """A fresh ``base/<suite>/<YYYYmmdd-HHMMSS>[-N]``; existing directories are never reused."""
    parent = make_dir(base / suite, "run directories go under")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for k in range(1000):
        d = parent / (stamp if k == 0 else f"{stamp}-{k}")
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
        except OSError as e:
            raise BenchError(f"cannot create a run directory under {parent} ({e.strerror or e})") from None
    raise BenchError(f"could not create a new run directory under {parent}")


def latest_run_dir(base: Path, suite: str) -> Path | None:
    parent = base / suite
    runs = sorted(p for p in parent.glob("*") if p.is_dir() and (p / "suite.yaml").is_file()) if parent.is_dir() else []
    return runs[-1] if runs else None


class RunStore:
    """Reads and writes one run directory."""

    def __init__(self, run_dir: Path):
        self.dir = Path(run_dir)

    @property
    def records_dir(self) -> Path:
        return self.dir / "records"

    def path(self, kind: str, cell: str, ext: str) -> Path:
        """``kind`` in {records, logs, samples, checkpoints}."""
        return self.dir / kind / f"{cell}.{ext}"

    def has_record(self, cell: str) -> bool:
        return self.path("records", cell, "json").is_file()

    def write_record(self, rec: CellRecord) -> None:
        """The record and its sha256 sidecar (sidecar first: a kill in between leaves no record, so the cell reruns)."""
        text = json.dumps(rec.to_dict(), indent=1, allow_nan=False) + "\n"
        write_with_sidecar(self.path("records", rec.cell_id, "json"), lambda f: f.write(text.encode()))

    def records(self) -> list[CellRecord]:
        """Every finished cell, each checked against its sidecar and the record schema."""
        out = []
        for p in sorted(self.records_dir.glob("*.json")):
            rec = read_record(p)
            if p.stem != rec.cell_id:
                raise BenchError(f"{p}: holds the record of {rec.cell_id}, not {p.stem}; {_RECORD_FIX}")
            out.append(rec)
        return out


_RECORD_FIX = "delete it (and its .sha256) and rerun with --resume to recompute that cell"


def read_record(path: Path) -> CellRecord:
    """One record file: sha256 against its sidecar (records from before sidecars: schema only), then the schema."""
    try:
        data, _ = read_verified(path, _RECORD_FIX) if sidecar(path).is_file() else (path.read_bytes(), "")
    except OSError as e:  # a folder or a dangling link named like a record
        raise BenchError(f"{path}: cannot read it as a cell record ({e.strerror or e}); remove it") from None
    return parse_record(data, str(path), f"; {_RECORD_FIX}")


def parse_record(data: bytes | str | dict, where: str, fix: str = "") -> CellRecord:
    """A cell record from JSON (text or already parsed), checked field by field against ``CellRecord``.

    A wrong type, a missing field, an unknown status or a non-finite metric value is a one-line BenchError.
    """
    try:
        text = data if isinstance(data, (bytes, str)) else json.dumps(data, allow_nan=True)
        rec = _RECORD.validate_json(text, strict=True)
    except ValidationError as e:
        err = e.errors()[0]
        loc = err["loc"]
        if len(loc) == 3 and loc[0] == "metrics" and loc[2] == "value" and isinstance(data, dict):
            name = data["metrics"][loc[1]].get("name")
            detail = f"metric {name!r}: value {err['input']!r} is not a number"
        else:
            detail = f"{'.'.join(str(x) for x in loc) or 'top level'}: {err['msg']}"
        raise BenchError(f"{where} is not a cell record ({detail}){fix}") from None
    except (TypeError, ValueError) as e:
        raise BenchError(f"{where} is not a cell record ({e}){fix}") from None
    for m in rec.metrics:
        if m.value is not None and not math.isfinite(m.value):
            raise BenchError(f"{where} is not a cell record (metric {m.name!r} is {m.value}; bench writes null "
                             f"for a non-finite value){fix}")
    return rec


def load_results(path: str | Path) -> tuple[dict[str, Any], list[CellRecord]]:
    """A run directory or a results.json -> (run metadata incl. ``config``, records).

    A run directory without results.json (a run killed before its report) is read from
    ``records/``. Every problem a user can cause is a one-line ``BenchError`` naming the path.
    """
    p = Path(path)
    if p.is_dir() and not (p / "results.json").is_file():
        if (p / "records").is_dir():
            recs = RunStore(p).records()
            return {"suite": recs[0].suite if recs else "", "run_id": p.name, "config": {}}, recs
        raise BenchError(f"{p}: no results.json in this directory; pass a run directory written by `bench run`")
    file = p / "results.json" if p.is_dir() else p
    if not file.is_file():
        raise BenchError(f"{p}: no such file or directory; pass a run directory or its results.json")
    data = read_json(file, "pass the results.json of a run, or its run directory (`bench report` rewrites it)")
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise BenchError(f"{file}: expected a JSON object with a 'records' list (the results.json of a run)")
    records = [parse_record(r, f"{file}: records[{i}]") for i, r in enumerate(data["records"])]
    return {k: v for k, v in data.items() if k != "records"}, records


def read_environment(run_dir: Path) -> dict[str, Any]:
    """A run's ``environment.json`` (versions, device, git commit, executors); ``{}`` when it has none.

    A damaged one is a one-line ``BenchError``, found before a resumed run trains anything."""
    path = Path(run_dir) / "environment.json"
    if not path.exists():
        return {}
    fix = "delete it and rerun with --resume, which writes it again"
    env = read_json(path, fix)
    if not isinstance(env, dict) or not isinstance(env.get("executors", []), list):
        raise BenchError(f"{path}: not the JSON object bench writes; {fix}")
    return env


# ----------------------------------------------------------------------------- one writer per run directory


class RunLock:
    """An exclusive lock on a run directory for as long as a run writes it.

    ``fcntl.flock`` on ``<run>/.bench.lock`` decides: the kernel drops the lock when its process dies,
    however it dies, so a lock left by a killed run is always free again ("stale") and taken over. The
    file holds the owner's pid, host, start time and command line, so a refusal names the live process.
    The file itself stays (emptied) when the run ends: unlinking a lock file races with a process
    that has just opened it.
    """

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None
        self.took_over: dict[str, Any] | None = None  # the previous owner when its lock was stale

    def acquire(self) -> RunLock:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as e:  # a read-only folder, or a folder named like the lock file
            raise BenchError(f"{self.path}: cannot create the run directory's lock file ({e.strerror or e}); "
                             "run in a folder you can write") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise BenchError(f"{self.path}: cannot lock the run directory ({e.strerror}); "
                                 "is it on a file system without locks?") from None
            raise BenchError(f"{self.path.parent} is being written by another bench process "
                             f"({describe_owner(_owner(self.path))}); wait for it to finish or stop it, "
                             "or use another --out") from None
        previous = _owner(self.path)
        if previous:
            self.took_over = previous
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
                "argv": sys.argv}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(run_dir: Path) -> dict[str, Any] | None:
    """The live process that holds ``run_dir``'s lock (pid, host, started, argv), or None; changes nothing."""
    path = Path(run_dir) / LOCK_NAME
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return _owner(path) or {}
    finally:
        os.close(fd)  # also drops the shared lock taken just to test
    return None


def _owner(path: Path) -> dict[str, Any]:
    try:
        info = json.loads(path.read_text() or "{}")
        return info if isinstance(info, dict) else {}
    except (OSError, ValueError, RecursionError):  # the lock's note is informative only: an unreadable one is no note
        return {}


def describe_owner(owner: dict[str, Any]) -> str:
    """``pid 123 on host h, started ...: argv`` for messages about a lock."""
    if not owner:
        return "pid unknown"
    cmd = " ".join(str(a) for a in owner.get("argv") or [])[:120]
    return f"pid {owner.get('pid')} on host {owner.get('host')}, started {owner.get('started')}: {cmd}"
