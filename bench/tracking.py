"""Experiment tracking: every finished cell as one MLflow run (optional; ``bench run --track mlflow``).

The run directory stays the source of truth: a cell is logged after its record is written, from
that record, so MLflow holds a copy of what ``report`` and ``compare`` read (config, metrics,
artefacts) and never anything they do not. Tracking is never required to run: without MLflow
installed, asking for it says how to install it; a tracking server that fails mid-run costs one
warning, not the run.

Where: ``--tracking-uri``, else ``$MLFLOW_TRACKING_URI``, else a local store in ``./mlruns``
(``mlruns/mlflow.db``, artefacts in ``mlruns/artifacts``): a SQLite database, as MLflow recommends
since its plain-file store went into maintenance mode. ``mlflow ui --backend-store-uri
sqlite:///mlruns/mlflow.db`` browses it. The experiment is the suite's name; an MLflow run is named
after the cell (``vae__seed0``) and tagged with the bench run directory.
"""
from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from bench.errors import BenchError
from bench.results import CellRecord

MLFLOW_INSTALL = 'pip install -e ".[mlflow]"  (or: pip install "mlflow-skinny==3.17.2" sqlalchemy alembic)'


def default_uri(root: Path = Path("mlruns")) -> str:
    """A SQLite tracking store under ``root`` (created when first used)."""
    root.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{(root / 'mlflow.db').resolve()}"


def flatten(prefix: str, value: Any) -> dict[str, str]:
    """Nested options as MLflow params: ``{"options.width": "16", "options.mults": "[1, 2]"}``."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for k, v in value.items():
            out.update(flatten(f"{prefix}.{k}" if prefix else str(k), v))
        return out
    return {prefix: str(value)[:6000]}  # MLflow's limit on a param value


class MlflowTracker:
    """Logs cells of one suite to one MLflow experiment; ``log_cell`` is the runner's ``on_record``."""

    def __init__(self, experiment: str, uri: str | None = None):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise BenchError(f"--track mlflow needs MLflow, which is not installed; install it with {MLFLOW_INSTALL}") from None
        local = not (uri or os.environ.get("MLFLOW_TRACKING_URI"))
        self.uri = default_uri() if local else (uri or os.environ["MLFLOW_TRACKING_URI"])
        self.client = MlflowClient(tracking_uri=self.uri)
        try:
            exp = self.client.get_experiment_by_name(experiment)
            self.experiment_id = exp.experiment_id if exp else self.client.create_experiment(
                experiment, artifact_location=Path("mlruns/artifacts").resolve().as_uri() if local else None)
        except Exception as e:  # noqa: BLE001 - MLflow raises its own and its backends' errors
            raise BenchError(f"--tracking-uri {self.uri}: cannot open the MLflow experiment {experiment!r} "
                             f"({type(e).__name__}: {str(e).strip()[:200]})") from None
        self._warned = False

    def log_cell(self, run_dir: Path, rec: CellRecord) -> None:
        """One MLflow run for one cell record; a tracking failure is a warning, never the end of the run."""
        try:
            self._log(Path(run_dir), rec)
        except Exception as e:  # noqa: BLE001 - see the docstring
            if not self._warned:
                print(f"bench: warning: MLflow logging failed for {rec.cell_id} ({type(e).__name__}: {e}); "
                      f"the run goes on, its records are in {run_dir}", file=sys.stderr, flush=True)
                self._warned = True

    def _log(self, run_dir: Path, rec: CellRecord) -> None:
        from mlflow.entities import Metric, Param

        tags = {"bench.run_dir": str(run_dir.resolve()), "bench.run_id": rec.run_id, "bench.status": rec.status,
                "bench.error": rec.error[:5000], "bench.suite": rec.suite}
        run = self.client.create_run(self.experiment_id, run_name=rec.cell_id, tags=tags)
        params = {"model": str(rec.model), "family": rec.family, "seed": str(rec.seed),
                  **flatten("budget", rec.budget), **flatten("options", rec.options)}
        now = int(time.time() * 1000)
        values = {m.name: m.value for m in rec.metrics if m.value is not None}
        values |= {f"spent_{k}": v for k, v in rec.spent.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.client.log_batch(run.info.run_id, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()],
                              params=[Param(k, v) for k, v in params.items()], tags=[])
        for rel in ["suite.yaml", f"records/{rec.cell_id}.json", *rec.artifacts.values()]:
            path = run_dir / rel
            if path.is_file():
                folder = Path(rel).parent.as_posix()
                self.client.log_artifact(run.info.run_id, str(path), artifact_path=None if folder == "." else folder)
        self.client.set_terminated(run.info.run_id, status="FINISHED" if rec.status == "ok" else "FAILED")
