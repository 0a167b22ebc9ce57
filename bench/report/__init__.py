"""Derived outputs of a run: results.json, results.csv (tidy) and index.html."""
from __future__ import annotations

from pathlib import Path

from bench.config import read_run_config
from bench.io import atomic_write_json, atomic_write_text
from bench.store import RunStore, read_environment


def suite_order(records: list, config: dict) -> list:
    """Records in the order the suite lists its models (and a sweep its budgets), then by seed.

    Reports read like the suite the user wrote; file-name order would put flow@135s before flow@15s.
    Models the config does not name (a hand-edited run) come last, by name.
    """
    from bench.config import Budget
    from bench.sweep import grid

    names = [m.get("name") for m in config.get("models") or [] if isinstance(m, dict)]
    sweeps = {m.get("name"): grid(m["sweep"]) for m in config.get("models") or [] if isinstance(m, dict)
              and isinstance(m.get("sweep"), dict) and m["sweep"]}
    try:
        labels = [Budget(**b).label for b in config.get("budgets") or []]
    except Exception:  # noqa: BLE001 - a config we cannot read only costs the ordering
        labels = []

    def key(r) -> tuple:
        base, _, label = r.model.partition("@")
        points = sweeps.get(base, [])
        return (names.index(base) if base in names else len(names), labels.index(label) if label in labels else -1,
                r.model, points.index(r.sweep) + 1 if r.sweep in points else 0, r.row, r.seed)

    return sorted(records, key=key)


def write_report(run_dir: Path) -> dict[str, Path]:
    """(Re)write results.json, results.csv and index.html from the run's records."""
    from bench.report import html, tables

    run_dir = Path(run_dir)
    store = RunStore(run_dir)
    records = store.records()
    config, env = read_run_config(run_dir), read_environment(run_dir)  # checked: a run directory may come from elsewhere
    records = suite_order(records, config)
    meta = {"suite": config.get("name") or (records[0].suite if records else ""), "run_id": run_dir.name,
            "config": config, "environment": env}
    out = {"json": run_dir / "results.json", "csv": run_dir / "results.csv", "html": run_dir / "index.html"}
    atomic_write_json(out["json"], {**meta, "records": [r.to_dict() for r in records]})
    atomic_write_text(out["csv"], tables.tidy(records).to_csv(index=False))
    real = log_density = None
    if (config.get("dataset") or {}).get("name") == "toy2d":
        import torch

        from bench.data import load_dataset

        ds_cfg = dict(config["dataset"])
        split = (config.get("eval") or {}).get("split") or "test"  # the points the run was scored against
        ds = load_dataset(ds_cfg.pop("name"), ds_cfg, split=split)
        real = ds.test_x.numpy()
        if ds.mixture is not None:
            mixture = ds.mixture
            log_density = lambda pts: mixture.log_prob(torch.from_numpy(pts).float()).numpy()  # noqa: E731
    atomic_write_text(out["html"], html.render(run_dir, meta, records, real, log_density))
    return out
