"""Records -> pandas tables: the tidy long table (CSV) and per-model summaries."""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable

import pandas as pd

from bench.metrics import EVALUATORS  # noqa: F401  (registers the built-in evaluators: the tables read their metadata)
from bench.results import METRICS, CellRecord, point_label

TIDY_COLUMNS = ["suite", "run_id", "model", "sweep", "family", "seed", "status", "metric", "value", "unit", "kind",
                "higher_is_better", "group", "params", "note"]


def tidy(records: list[CellRecord]) -> pd.DataFrame:
    """One row per model x seed x metric (also spent budget, as metrics named ``spent_*``). ``model`` is the
    record's row: a sweep point is a model of its own (``diffusion[sample_steps=5]``), ``sweep`` its point."""
    rows = []
    for r in records:
        base = {"suite": r.suite, "run_id": r.run_id, "model": r.row, "sweep": point_label(r.sweep), "family": r.family, "seed": r.seed,
                "status": r.status}
        for m in r.metrics:
            group = METRICS.get(m.name).group if m.name in METRICS else ""
            rows.append({**base, "metric": m.name, "value": m.value, "unit": m.unit, "kind": m.kind,
                         "higher_is_better": m.higher_is_better, "group": group,
                         "params": _params(m.params), "note": m.note})
    return pd.DataFrame(rows, columns=TIDY_COLUMNS)


def _params(p: dict) -> str:
    return ";".join(f"{k}={v}" for k, v in sorted(p.items()))


def summary(records: list[CellRecord]) -> pd.DataFrame:
    """Per model x metric: mean, std and count over seeds that finished (status ok)."""
    df = tidy([r for r in records if r.status == "ok"])
    if df.empty:
        return pd.DataFrame(columns=["model", "family", "metric", "mean", "std", "n", "unit", "kind", "higher_is_better"])
    df = df.dropna(subset=["value"])
    g = df.groupby(["model", "family", "metric"], sort=False)
    out = g["value"].agg(["mean", "std", "count"]).reset_index().rename(columns={"count": "n"})
    meta = g[["unit", "kind", "higher_is_better", "group"]].first().reset_index()
    return out.merge(meta, on=["model", "family", "metric"])


def unavailable(records: list[CellRecord]) -> dict[tuple[str, str], str]:
    """(model, metric) -> why there is no value, for metrics no finished cell of the model has a value for
    (no labels, no logits, ...): the report shows them as ``n/a: <reason>``."""
    notes: dict[tuple[str, str], str] = {}
    valued: set[tuple[str, str]] = set()
    for r in records:
        if r.status != "ok":
            continue
        for m in r.metrics:
            if m.value is not None and math.isfinite(m.value):
                valued.add((r.row, m.name))
            elif m.note:
                notes.setdefault((r.row, m.name), m.note)
    return {k: v for k, v in notes.items() if k not in valued}


def status_table(records: list[CellRecord]) -> pd.DataFrame:
    """Per model: seeds run, finished, diverged, failed, and budget spent (mean over seeds)."""
    rows = []
    by: dict[str, list[CellRecord]] = {}
    for r in records:
        by.setdefault(r.row, []).append(r)
    for model, rs in by.items():
        spent = [r.spent for r in rs if r.spent]
        mean = lambda k: (sum(s.get(k, 0) or 0 for s in spent) / len(spent)) if spent else math.nan  # noqa: E731
        rows.append({
            "model": model, "family": rs[0].family, "seeds": len(rs),
            "ok": sum(r.status == "ok" for r in rs), "diverged": sum(r.status == "diverged" for r in rs),
            "failed": sum(r.status == "failed" for r in rs),
            "budget": ", ".join(f"{k}={v:g}" for k, v in rs[0].budget.items()),
            "precision": "/".join(sorted({r.train["precision"] for r in rs if r.train.get("precision")})),  # as ran
            "train_s": mean("seconds"), "steps": mean("steps"), "epochs": mean("epochs"),
            "params": mean("params"), "eval_s": mean("eval_seconds"),
        })
    return pd.DataFrame(rows)


def wide(records: list[CellRecord], metric_names: list[str]) -> pd.DataFrame:
    """Per model: 'mean ± std' strings for the given metrics (the report's main table), every value of a
    column in the column's one format (``column_format``); 'n/a: <reason>' for a metric the model has no
    value for, when its records say why."""
    s = summary(records)
    na = unavailable(records)
    formats = {name: column_format(s[s.metric == name]["mean"]) for name in metric_names}
    out = {}
    for (model, family), grp in s.groupby(["model", "family"], sort=False):
        row = {"family": family}
        for name in metric_names:
            hit = grp[grp.metric == name]
            if hit.empty:
                row[name] = f"n/a: {na[(model, name)]}" if (model, name) in na else ""
                continue
            mean, std, n = hit.iloc[0][["mean", "std", "n"]]
            row[name] = mean_pm_std(mean, std, n, formats[name])
        out[model] = row
    return pd.DataFrame.from_dict(out, orient="index")


def mean_pm_std(mean: float, std: float, n: int, f: Callable[[float], str]) -> str:
    """``0.877 ± 0.002`` with the column's format for both; the spread only where there are 2+ seeds."""
    return f(mean) + (f" ± {f(std)}" if n > 1 and not math.isnan(std) else "")


def column_format(values: Iterable[float]) -> Callable[[float], str]:
    """One number format for a whole column, so its values line up and compare at a glance.

    Integers stay integers (``1,500``). Otherwise fixed decimals that give the column's smallest
    magnitude 3 significant digits (``12.30``, ``145.20``, ``3.40``); where magnitudes span more
    than 10^4, or the smallest is below 10^-3, or the largest reaches 10^6, the whole column is in
    scientific notation with 3 significant digits (``8.77e-01``, ``6.67e-05``), never a mix.
    """
    finite = [float(v) for v in values if v is not None and isinstance(v, (int, float)) and math.isfinite(v)]
    mags = [abs(v) for v in finite if v != 0]
    if not mags:
        return fmt_fixed(0)
    if all(v == round(v) for v in finite) and max(mags) < 1e9:
        return fmt_fixed(0)
    small, big = min(mags), max(mags)
    if small < 1e-3 or big >= 1e6 or big / small > 1e4:
        return lambda v: "" if _blank(v) else f"{v:.2e}"
    return fmt_fixed(min(6, max(0, 2 - math.floor(math.log10(small)))))


def fmt_fixed(decimals: int) -> Callable[[float], str]:
    return lambda v: "" if _blank(v) else f"{v:,.{decimals}f}"


def _blank(v: float | None) -> bool:
    return v is None or (isinstance(v, float) and math.isnan(v))


def fmt(v: float) -> str:
    """A lone number (not part of a column): 3 significant digits, thousands separated."""
    return column_format([v])(v)


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point dominates, both coordinates to be minimised (cost, loss): a point is
    dominated when another is at least as good in both and better in one. Sorted by the first coordinate."""
    order = sorted(range(len(points)), key=lambda i: points[i])
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front
