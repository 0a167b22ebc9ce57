"""Run directories and the results store: atomic per-cell records, loading a run back.

A run directory tells its own story (STYLE.md #6)::

    reports/<suite>/<run-id>/
      suite.yaml          the resolved config          environment.json  versions, device, git commit
      records/<cell>.json one per finished cell         logs/<cell>.csv   losses per step
      samples/<cell>.npz  the evaluated samples (uint8) checkpoints/<cell>.pt
      results.json  results.csv  index.html            derived from records/, never the other way round

Every file is written to a temporary name and renamed, so a killed run leaves either
the old file or the new one, never half of one; an interrupted run loses at most the
cell in flight.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.io import atomic_write_json
from bench.results import CellRecord


def new_run_dir(base: Path, suite: str) -> Path:
    """A fresh ``base/<suite>/<YYYYmmdd-HHMMSS>[-N]``; existing directories are never reused."""
    parent = base / suite
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for k in range(1000):
        d = parent / (stamp if k == 0 else f"{stamp}-{k}")
        try:
            d.mkdir()
            return d
        except FileExistsError:
            continue
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
        atomic_write_json(self.path("records", rec.cell_id, "json"), rec.to_dict())

    def records(self) -> list[CellRecord]:
        out = []
        for p in sorted(self.records_dir.glob("*.json")):
            try:
                out.append(CellRecord.from_dict(json.loads(p.read_text())))
            except (json.JSONDecodeError, TypeError, KeyError) as e:
                raise BenchError(f"{p}: not a valid cell record ({e}); delete it and rerun with --resume") from None
        return out


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
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise BenchError(f"{file}: cannot read: {e}") from None
    except json.JSONDecodeError as e:
        raise BenchError(f"{file}: not valid JSON ({e.msg} at line {e.lineno}, column {e.colno})") from None
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise BenchError(f"{file}: expected a JSON object with a 'records' list (the results.json of a run)")
    records = [_record(file, i, r) for i, r in enumerate(data["records"])]
    return {k: v for k, v in data.items() if k != "records"}, records


def _record(file: Path, i: int, raw: Any) -> CellRecord:
    """One record, checked enough that code reading it cannot crash on it."""
    try:
        rec = CellRecord.from_dict(raw)
    except (TypeError, KeyError, AttributeError, ValueError) as e:
        raise BenchError(f"{file}: records[{i}] is not a cell record ({e})") from None
    for m in rec.metrics:
        if m.value is not None and (isinstance(m.value, bool) or not isinstance(m.value, (int, float))):
            raise BenchError(f"{file}: records[{i}] ({rec.model}) metric {m.name!r}: value {m.value!r} is not a number")
    return rec
