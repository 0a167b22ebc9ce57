"""The self-contained HTML report, derived from the records (never the other way round).

Everything is inlined (CSS, PNGs as data URIs), so ``index.html`` can be mailed or
attached to a CI run and still show every table and figure.
"""
from __future__ import annotations

import base64
import html
import math
from pathlib import Path
from collections.abc import Callable
from typing import Any

import jinja2
import numpy as np
import pandas as pd

from bench.analysis import report as analysis_report
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
            df[c] = df[c].map(tables.column_format(df[c]))
    df.columns = [f"{c}{_arrow(str(c))}" for c in df.columns]
    return df.to_html(index=index, escape=True, border=0, classes="t", na_rep="")


def _likelihood_table(summary: pd.DataFrame) -> pd.DataFrame:
    """One row per model and estimator (the likelihood headline metrics, in their declared order): NLL in nats
    and bits/dim, with its kind spelled out."""
    rows = []
    if summary.empty:
        return pd.DataFrame()
    rows_of = headline(("likelihood",), set(summary.metric))
    nats_fmt = tables.column_format(summary[summary.metric.isin(rows_of)]["mean"])
    bpd_fmt = tables.column_format(summary[summary.metric.isin([NLL_BPD + n.removeprefix(NLL_NATS) for n in rows_of])]["mean"])
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
                "NLL nats": f"{sign} {nats_fmt(nats.iloc[0]['mean'])}",
                "NLL bits/dim": f"{sign} {bpd_fmt(bpd.iloc[0]['mean'])}" if not bpd.empty else "",
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
    formats = {n: tables.column_format(spread[spread.metric == n]["mean"]) for n in names}
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
            h, f = hit.iloc[0], formats[name]
            txt = tables.mean_pm_std(h["mean"], h["std"], h["n"], f)
            if h["n"] > 1 and name == quality:
                txt += f" [{f(h['ci95_low'])}, {f(h['ci95_high'])}]"
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


def _sample_captions(summary: pd.DataFrame, names: list[str | None]) -> dict[str, str]:
    """row -> its headline numbers (the trilemma axes), for the label under its sample grid."""
    names = [n for n in names if n]
    formats = {n: tables.column_format(summary[summary.metric == n]["mean"]) for n in names} if not summary.empty else {}
    return {row: " · ".join(f"{n} {formats[n](m[n])}" for n in names if n in m) for row, m in _means(summary).items()}


def _sample_figures(run_dir: Path, records: list[CellRecord], real: np.ndarray | None,
                    captions: dict[str, str] | None = None,
                    density: Callable[[np.ndarray], np.ndarray] | None = None) -> list[dict[str, str]]:
    out, seen = [], set()
    for r in sorted(records, key=lambda r: (r.model, r.seed)):
        if r.row in seen or "samples" not in r.artifacts:
            continue
        p = run_dir / r.artifacts["samples"]
        if not p.is_file():
            continue
        fig = {"model": r.row, "family": r.family, "seed": str(r.seed), "uri": "", "error": "",
               "numbers": (captions or {}).get(r.row, "")}
        try:
            s = read_npz(p, "samples file")["samples"]
            fig["uri"] = _data_uri(plots.image_grid(s) if s.ndim == 4 else plots.points_scatter(s, real,
                                                                                                 log_density=density))
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


# ----------------------------------------------------------------------------- sampler sweeps (issue 13 part 5)
# Knobs that trade quality for diversity along a sweep: their paths are drawn in the precision-recall plane.
TRACE_KNOBS = ("guidance", "temperature", "truncation")


def _row_info(records: list[CellRecord]) -> dict[str, CellRecord]:
    """The first finished record of each row: its model, family and sweep point."""
    out: dict[str, CellRecord] = {}
    for r in records:
        if r.status == "ok":
            out.setdefault(r.row, r)
    return out


def _means(summary: pd.DataFrame) -> dict[str, dict[str, float]]:
    """row -> metric -> mean over seeds."""
    return {row: dict(zip(g.metric, g["mean"])) for row, g in summary.groupby("model", sort=False)}


def _cost(values: dict[str, float]) -> float | None:
    """A row's sampling cost in network evaluations per sample: counted where it was, else as declared."""
    v = values.get("nfe_measured", values.get("nfe_per_sample"))
    return None if v is None or not math.isfinite(v) or v <= 0 else float(v)


def _sweep_figures(records: list[CellRecord], summary: pd.DataFrame, q: str | None,
                   c: str | None) -> tuple[list[dict[str, str]], str]:
    """The sweep figures (quality vs NFE with the Pareto frontier; precision vs recall, quality and
    controllability along guidance/temperature/truncation) and the table of Pareto-optimal settings."""
    info, means = _row_info(records), _means(summary)
    swept = {r.model for r in info.values() if r.sweep}
    if not swept or q is None:
        return [], ""
    sign = -1.0 if METRICS.get(q).higher_is_better else 1.0  # the frontier minimises sign * q
    lines: dict[str, list[tuple[float, float]]] = {}
    markers: list[tuple[str, float, float]] = []
    pts: list[tuple[str, float, float]] = []
    for row, r in info.items():
        x, y = _cost(means.get(row, {})), means.get(row, {}).get(q)
        if x is None or y is None or (r.model in swept and not r.sweep):
            continue  # a swept model's own cell is one of its points, or next to them
        pts.append((row, x, y))
        if r.sweep:  # a line through the step counts of one sampler setting
            rest = ",".join(f"{k}={v}" for k, v in r.sweep.items() if k != "sample_steps")
            lines.setdefault(f"{r.model}{' ' + rest if rest else ''}", []).append((x, y, row))
        else:
            markers.append((row, x, y))
    markers += [(row, x, y) for v in lines.values() if len(v) == 1 for x, y, row in v]  # a line of one point
    figs, pareto = [], ""
    if pts:
        front = tables.pareto_front([(x, sign * y) for _, x, y in pts])
        frontier = [(pts[i][1], pts[i][2]) for i in front]
        series = {k: ([x for x, _, _ in sorted(v)], [y for _, y, _ in sorted(v)]) for k, v in lines.items() if len(v) > 1}
        figs.append({"title": f"Quality vs sampling cost ({q}{_arrow(q)} against network evaluations per sample, "
                              "log scale): a line per swept sampler, diamonds for the other models, dashed: the Pareto "
                              "frontier (no model is both cheaper and better)",
                     "uri": _data_uri(plots.cost_curves(series, markers, frontier, "NFE per sample (log)", q))})
        rows = []
        for i in front:
            row = pts[i][0]
            m = means.get(row, {})
            rows.append({"setting": row, "family": info[row].family, "NFE": pts[i][1], q: pts[i][2],
                         **({c: m.get(c, math.nan)} if c else {}), "samples/s": m.get("samples_per_s", math.nan)})
        pareto = _table_html(pd.DataFrame(rows), index=False)
    figs += _knob_figures(info, means, q, c)
    return figs, pareto


def _knob_figures(info: dict[str, CellRecord], means: dict[str, dict[str, float]], q: str,
                  c: str | None) -> list[dict[str, str]]:
    """Along each trace knob a model was swept over: precision vs recall, quality and controllability vs the knob."""
    present = {n for m in means.values() for n in m}
    space = q.rsplit("_", 1)[-1]
    prec, rec = f"precision_{space}", f"recall_{space}"
    figs = []
    for knob in TRACE_KNOBS:
        paths: dict[str, list[tuple[float, str]]] = {}
        for row, r in info.items():
            if knob in r.sweep:
                rest = ",".join(f"{k}={v}" for k, v in r.sweep.items() if k != knob)
                paths.setdefault(f"{r.model}{' ' + rest if rest else ''}", []).append((float(r.sweep[knob]), row))
        if not paths:
            continue
        paths = {k: sorted(v) for k, v in paths.items()}

        def along(name: str) -> dict[str, tuple[list[float], list[float]]]:
            """The models' paths along the knob, where ``name`` has values (an unconditional model has no
            controllability)."""
            out = {k: ([x for x, row in v if name in means.get(row, {})],
                       [means[row][name] for _, row in v if name in means.get(row, {})]) for k, v in paths.items()}
            return {k: xy for k, xy in out.items() if xy[0]}

        if prec in present and rec in present:
            pr = {k: ([means[row].get(rec, math.nan) for _, row in v], [means[row].get(prec, math.nan) for _, row in v],
                      [f"{x:g}" for x, _ in v]) for k, v in paths.items()}
            figs.append({"title": f"Precision vs recall traced by {knob} (points labelled with its value): up is "
                                  "fidelity, right is diversity",
                         "uri": _data_uri(plots.traces(pr, rec, prec))})
        if along(q):
            figs.append({"title": f"Quality ({q}{_arrow(q)}) vs {knob}",
                         "uri": _data_uri(plots.curves(along(q), knob, q))})
        if along("controllability"):
            figs.append({"title": f"Controllability vs {knob}: share of samples the domain classifier assigns to "
                                  "the requested class", "uri": _data_uri(plots.curves(along("controllability"), knob,
                                                                                      "controllability"))})
    return figs


def render(run_dir: Path, meta: dict[str, Any], records: list[CellRecord], real_points: np.ndarray | None = None,
           log_density: Callable[[np.ndarray], np.ndarray] | None = None) -> str:
    """The report's HTML. ``real_points`` (toy2d: the test split) and ``log_density`` (its true log-density, (M, 2)
    -> (M,)) are what 2-D samples are drawn over."""
    summary = tables.summary(records)
    valued = set(summary.metric) if not summary.empty else set()
    reported = valued | {name for _, name in tables.unavailable(records)}  # with a value, or n/a and why
    main = tables.wide(records, headline(MAIN_TABLE_ROLES, reported))
    q, c, s = axis("quality", valued), axis("coverage", valued), axis("speed", valued)
    trained = [r for r in records if not r.sweep]  # the cells themselves; sweep points have their own section
    plain = summary[~summary.model.isin({r.row for r in records if r.sweep})] if not summary.empty else summary
    figs = []
    headline_fig = None
    if q and s:
        pts = _trilemma_points(plain, q, c, s)
        for p in pts:
            p["xerr"], p["yerr"] = None, p["qerr"]
        better = "lower" if not METRICS.get(q).higher_is_better else "higher"
        headline_fig = {
            "title": f"The trilemma: quality ({q}, {better} is better) against sampling speed ({s}, log scale), "
                     f"marker size: coverage ({c or 'not measured'})",
            "caption": f"Each marker is one model, mean over seeds (bars: ± std). Read it as: the best models sit "
                       f"{'low' if better == 'lower' else 'high'} and to the right (good samples, fast), with large "
                       "markers (covering the data). A model that another beats on both axes is dominated; the "
                       "trade-off between the rest is the trilemma.",
            "uri": _data_uri(plots.trilemma(pts, "s", "q", "c" if c else None, s, q, x_log=True))}
    if q and c:
        pts = _trilemma_points(plain, q, c, s)
        for p in pts:
            p["xerr"], p["yerr"] = p["cerr"], p["qerr"]
        figs.append({"title": f"Quality vs coverage ({q} vs {c})",
                     "uri": _data_uri(plots.trilemma(pts, "c", "q", None, c, q))})
    sweep = _budget_curves(records, q) if q else None
    if sweep:
        figs.append({"title": f"Quality vs training budget ({q}; one line per model of the budget sweep)", "uri": sweep})
    sweep_figs, pareto = _sweep_figures(records, summary, q, c)
    stab_figs = []
    curve = _quality_curves(trained)
    if curve:
        stab_figs.append({"title": "Quality over training (snapshots, first seed)", "uri": curve})
    lc = _loss_curves(trained)
    if lc:
        stab_figs.append({"title": "Watched training loss (first seed)", "uri": lc})
    full = summary.copy()
    if not full.empty:
        formats = {name: tables.column_format(g["mean"]) for name, g in full.groupby("metric")}  # one per metric
        full["mean ± std"] = [tables.mean_pm_std(m, sd, n, formats[name])
                              for name, m, sd, n in zip(full["metric"], full["mean"], full["std"], full["n"])]
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
        headline_figure=headline_fig, sweep_figures=sweep_figs, pareto=pareto,
        stability=_table_html(_stability_table(trained, q), index=False),
        stability_legend=[(n, METRICS.get(n).description) for n in headline(("stability",))],
        samples=_sample_figures(run_dir, records, real_points,
                                _sample_captions(summary, [q, c, "modes_covered", "controllability", s]), log_density),
        trilemma_axes={"quality": q, "coverage": c, "speed": s}, escape=html.escape,
        analysis=analysis_report.to_html(records),  # issue 9's sections (bench/analysis/report.py); "" without them
    )
