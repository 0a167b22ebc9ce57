"""The self-contained HTML report, derived from the records (never the other way round).

Everything is inlined (CSS, PNGs as data URIs), so ``index.html`` can be mailed or
attached to a CI run and still show every table and figure.
"""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.io import read_npz
from bench.metrics.base import axis, headline
from bench.metrics.stability import across_seeds
from bench.report import plots, tables
from bench.results import METRICS, CellRecord

# Which metrics become columns and axes is the metric metadata's business (bench.metrics.base):
# the main table holds the headline metrics of these roles, the trilemma plots the axis of each corner.
MAIN_TABLE_ROLES = ("quality", "coverage", "speed", "cost")
NLL_NATS, NLL_BPD = "nll_nats_", "nll_bpd_"  # the likelihood evaluator's pair of names per estimator


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _arrow(name: str) -> str:
    if name not in METRICS:
        return ""
    hib = METRICS.get(name).higher_is_better
    return "" if hib is None else (" ↑" if hib else " ↓")


def _table_html(df: pd.DataFrame, index: bool = True) -> str:
    if df.empty:
        return "<p><em>nothing to show</em></p>"
    df = df.copy()
    for c in df.columns:
        if df[c].dtype.kind == "f":
            df[c] = df[c].map(tables.fmt)
    df.columns = [f"{c}{_arrow(str(c))}" for c in df.columns]
    return df.to_html(index=index, escape=True, border=0, classes="t", na_rep="")


def _likelihood_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per model and estimator (the likelihood headline metrics, in their declared order): NLL in nats
    and bits/dim, with its kind spelled out."""
    rows = []
    if summary.empty:
        return pd.DataFrame()
    rows_of = headline(("likelihood",), set(summary.metric))
    for (model, family), g in summary.groupby(["model", "family"], sort=False):
        for name in rows_of:
            nats = g[g.metric == name]
            if nats.empty:
                continue
            est = name.removeprefix(NLL_NATS)
            bpd = g[g.metric == NLL_BPD + est]
            kind = nats.iloc[0]["kind"]
            sign = "=" if kind == "exact" else ("≤" if kind == "lower_bound" else "≈")
            rows.append({
                "model": model, "family": family, "estimator": est,
                "kind": {"exact": "exact", "lower_bound": "bound (NLL ≤ shown)", "estimate": "estimate"}.get(kind, kind),
                "NLL nats": f"{sign} {tables.fmt(nats.iloc[0]['mean'])}",
                "NLL bits/dim": f"{sign} {tables.fmt(bpd.iloc[0]['mean'])}" if not bpd.empty else "",
                "seeds": int(nats.iloc[0]["n"]),
            })
    return pd.DataFrame(rows)


def _trilemma_points(summary: pd.DataFrame, q: str, c: str | None, s: str | None) -> list[dict[str, Any]]:
    pts = []
    for model, g in summary.groupby("model", sort=False):
        p: dict[str, Any] = {"model": model}
        for key, name in (("q", q), ("c", c), ("s", s)):
            hit = g[g.metric == name] if name else g.iloc[0:0]
            p[key] = None if hit.empty else float(hit.iloc[0]["mean"])
            p[key + "err"] = None if hit.empty or math.isnan(hit.iloc[0]["std"]) else float(hit.iloc[0]["std"])
        pts.append(p)
    return pts


def _stability_table(records: list[CellRecord], quality: str | None) -> pd.DataFrame:
    """The headline stability numbers per model: seeds diverged, spread of final quality, oscillation."""
    names = [n for n in (quality, *headline(("stability",))) if n]
    spread = across_seeds(records, names)
    rows = []
    for model, g in spread.groupby("model", sort=False):
        d = g[g.metric == "diverged"].iloc[0]
        row = {"model": model, "family": g.iloc[0]["family"],
               "diverged": f"{round(d['mean'] * d['n'])}/{d['n']}"}
        for name in names:
            hit = g[g.metric == name]
            if hit.empty or hit.iloc[0]["n"] == 0:
                row[name] = ""
                continue
            h = hit.iloc[0]
            txt = tables.fmt(h["mean"])
            if h["n"] > 1:
                txt += f" ± {tables.fmt(h['std'])}"
                if name == quality:
                    txt += f" [{tables.fmt(h['ci95_low'])}, {tables.fmt(h['ci95_high'])}]"
            row[name] = txt
        rows.append(row)
    df = pd.DataFrame(rows)
    return df.drop(columns=[c for c in df.columns if c not in ("model", "family", "diverged") and not df[c].astype(bool).any()])


def _loss_curves(records: list[CellRecord]) -> str | None:
    """Watched loss over training (first seed of each model)."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    for r in sorted(records, key=lambda r: (r.model, r.seed)):
        losses = r.curves.get("losses") or {}
        if r.model in series or "step" not in losses:
            continue
        key = next((k for k in losses if k not in ("step", "seconds")), None)
        if key:
            pts = [(s, v) for s, v in zip(losses["step"], losses[key]) if v is not None]
            series[f"{r.model} ({key})"] = ([p[0] for p in pts], [p[1] for p in pts])
    if not series:
        return None
    return _data_uri(plots.curves(series, "training step", "watched loss", symlog=True))


def _sample_figures(run_dir: Path, records: list[CellRecord], real: np.ndarray | None) -> list[dict[str, str]]:
    out, seen = [], set()
    for r in sorted(records, key=lambda r: (r.model, r.seed)):
        if r.row in seen or "samples" not in r.artifacts:
            continue
        p = run_dir / r.artifacts["samples"]
        if not p.is_file():
            continue
        fig = {"model": r.row, "family": r.family, "seed": str(r.seed), "uri": "", "error": ""}
        try:
            s = read_npz(p, "samples file")["samples"]
            fig["uri"] = _data_uri(plots.image_grid(s) if s.ndim == 4 else plots.points_scatter(s, real))
        except (BenchError, KeyError) as e:  # a corrupted samples file is shown as such, never drawn
            fig["error"] = str(e) if isinstance(e, BenchError) else f"{p}: has no 'samples' array"
        out.append(fig)
        seen.add(r.row)
    return out


def _quality_curves(records: list[CellRecord]) -> str | None:
    """Quality over training (stability snapshots), first seed of each model."""
    series: dict[str, tuple[list[float], list[float]]] = {}
    key = None
    for r in records:
        snaps = r.curves.get("snapshots") or []
        if not snaps or r.model in series:
            continue
        # the probe's first value (quick_quality: the domain FID); step, seconds and cost_s are the trainer's
        key = key or next((k for k in snaps[0] if k not in ("step", "seconds", "cost_s")), None)
        if key and key in snaps[0]:
            series[r.model] = ([s["step"] for s in snaps], [s[key] for s in snaps])
    if not series or key is None:
        return None
    return _data_uri(plots.curves(series, "training step", key))


def _budget_curves(records: list[CellRecord], q: str) -> str | None:
    """Quality against training time spent, one line per model of a budget sweep (``<name>@<budget>``).

    x is the mean training seconds the cells spent, whatever the budget's unit, so a steps sweep and a
    seconds sweep read the same way; y is the mean of ``q`` over the seeds that finished.
    """
    points: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in records:
        if "@" not in r.model or r.status != "ok":
            continue
        v, secs = r.value(q), r.spent.get("seconds")
        if v is None or secs is None or not math.isfinite(v):
            continue
        base = r.model.rsplit("@", 1)[0]
        points.setdefault(base, {}).setdefault(r.model, []).append((float(secs), float(v)))
    series = {}
    for base, by_budget in points.items():
        xy = sorted((sum(s for s, _ in vs) / len(vs), sum(v for _, v in vs) / len(vs)) for vs in by_budget.values())
        series[base] = ([x for x, _ in xy], [y for _, y in xy])
    if not series:
        return None
    return _data_uri(plots.curves(series, "training seconds spent (mean over seeds)", q, x_log=True))


def render(run_dir: Path, meta: dict[str, Any], records: list[CellRecord], real_points: np.ndarray | None = None) -> str:
    summary = tables.summary(records)
    valued = set(summary.metric) if not summary.empty else set()
    reported = valued | {name for _, name in tables.unavailable(records)}  # with a value, or n/a and why
    main = tables.wide(records, headline(MAIN_TABLE_ROLES, reported))
    q, c, s = axis("quality", valued), axis("coverage", valued), axis("speed", valued)
    figs = []
    if q and s:
        pts = _trilemma_points(summary, q, c, s)
        for p in pts:
            p["xerr"], p["yerr"] = None, p["qerr"]
        figs.append({"title": f"Quality vs speed ({q}, lower is better, vs {s}; marker size: {c or 'n/a'})",
                     "uri": _data_uri(plots.trilemma(pts, "s", "q", "c" if c else None, s, q, x_log=True))})
    if q and c:
        pts = _trilemma_points(summary, q, c, s)
        for p in pts:
            p["xerr"], p["yerr"] = p["cerr"], p["qerr"]
        figs.append({"title": f"Quality vs coverage ({q} vs {c})",
                     "uri": _data_uri(plots.trilemma(pts, "c", "q", None, c, q))})
    sweep = _budget_curves(records, q) if q else None
    if sweep:
        figs.append({"title": f"Quality vs training budget ({q}; one line per model of the budget sweep)", "uri": sweep})
    stab_figs = []
    curve = _quality_curves(records)
    if curve:
        stab_figs.append({"title": "Quality over training (snapshots, first seed)", "uri": curve})
    lc = _loss_curves(records)
    if lc:
        stab_figs.append({"title": "Watched training loss (first seed)", "uri": lc})
    full = summary.copy()
    if not full.empty:
        full["mean ± std"] = [tables.fmt(m) + ("" if n < 2 or math.isnan(sd) else f" ± {tables.fmt(sd)}")
                              for m, sd, n in zip(full["mean"], full["std"], full["n"])]
        full["direction"] = full["higher_is_better"].map({True: "↑", False: "↓"}).fillna("")
        full = full[["model", "metric", "mean ± std", "n", "unit", "kind", "direction", "group"]]
    failures = [r for r in records if r.status != "ok"]
    env = meta.get("environment", {})
    template = jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).parent / "templates"), autoescape=True
    ).get_template("report.html.j2")
    return template.render(
        meta=meta, env=env, records=records, failures=failures,
        status=_table_html(tables.status_table(records), index=False),
        main=_table_html(main), likelihood=_table_html(_likelihood_table(summary), index=False),
        full=_table_html(full, index=False), figures=figs, stability_figures=stab_figs,
        stability=_table_html(_stability_table(records, q), index=False),
        stability_legend=[(n, METRICS.get(n).description) for n in headline(("stability",))],
        samples=_sample_figures(run_dir, records, real_points),
        trilemma_axes={"quality": q, "coverage": c, "speed": s}, escape=html.escape,
    )
