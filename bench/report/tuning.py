"""The tuning report: per model the distribution of the objective over its trials, what won, what mattered.

Lucic et al. (2018) report the distribution of FID over a search, not its best point alone: a family
whose best trial is good but whose median is poor is hard to tune. So per model: best, median,
quartiles and range over the trials that scored, how many diverged or failed, the trial of the
suite's own settings, the chosen settings, and the sensitivity of the objective to each searched
parameter: Optuna's fANOVA importance (Hutter et al. 2014; share of the objective's variance a
parameter explains, over the sampled trials) and, for numeric parameters, Spearman's rank correlation
with the objective (its sign says which way is better). Both are rough with a dozen trials; they are
reported with the trial count they came from.

Writes ``tuning.json`` (the summary), ``tuning.csv`` (one row per trial) and ``tuning.html`` (tables and
a box-and-strip plot), all derived from the trial files.
"""
from __future__ import annotations

import base64
import html
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd
from scipy.stats import spearmanr

from bench.errors import BenchError
from bench.io import atomic_write_json, atomic_write_text, read_json
from bench.report.plots import _png, plt
from bench.space import BATCH_SIZE, Categorical, space_from_json
from bench.tune import Trial, best_trial, chosen_settings


def sensitivity(trials: list[Trial], space_json: dict[str, Any], direction: str) -> dict[str, dict[str, Any]]:
    """fANOVA importance and Spearman's rho per parameter, over the sampled trials that scored."""
    space = space_from_json(space_json)
    done = [t for t in trials if t.source == "sampler" and t.state == "ok" and set(space) <= set(t.params)]
    out: dict[str, dict[str, Any]] = {k: {"importance": None, "spearman": None, "n": len(done)} for k in space}
    if len(done) < 3:
        return out
    y = np.array([t.value for t in done])
    for k, p in space.items():
        x = [t.params[k] for t in done]
        if not isinstance(p, Categorical) and len(set(x)) > 1 and len(set(y)) > 1:
            out[k]["spearman"] = float(spearmanr(x, y).statistic)
    study = optuna.create_study(direction=direction)
    for t in done:
        study.add_trial(optuna.trial.create_trial(
            params={k: t.params[k] for k in space}, distributions={k: p.distribution() for k, p in space.items()},
            value=t.value))
    try:
        imp = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError):  # e.g. every sampled value identical: nothing to apportion
        imp = {}
    for k, v in imp.items():
        out[k]["importance"] = float(v)
    return out


def summarize(model: str, trials: list[Trial], plan_model: dict[str, Any], direction: str) -> dict[str, Any]:
    """The distribution of the objective over one model's trials, and what won."""
    vals = sorted(t.value for t in trials if t.state == "ok" and t.value is not None)
    best = best_trial(trials, direction)
    defaults = next((t for t in trials if t.source == "defaults"), None)
    q = np.quantile(vals, [0.25, 0.75]).tolist() if vals else [None, None]
    return {
        "model": model, "family": plan_model["family"], "trials": len(trials), "scored": len(vals),
        "diverged": sum(t.state == "diverged" for t in trials), "failed": sum(t.state == "failed" for t in trials),
        "no_value": sum(t.state == "no_value" for t in trials),
        "best": best.value if best else None, "best_trial": best.number if best else None,
        "median": statistics.median(vals) if vals else None, "q25": q[0], "q75": q[1],
        "min": vals[0] if vals else None, "max": vals[-1] if vals else None,
        "defaults_value": defaults.value if defaults else None,
        "chosen": chosen_settings(best, plan_model) if best else {},
        "best_params": best.params if best else {},
        "space": plan_model["space"],
        "sensitivity": sensitivity(trials, plan_model["space"], direction),
    }


def trials_table(results: dict[str, list[Trial]]) -> pd.DataFrame:
    rows = []
    for model, trials in results.items():
        for t in trials:
            spent = (t.record or {}).get("spent", {})
            rows.append({"model": model, "family": t.family, "trial": t.number, "source": t.source, "state": t.state,
                         "objective": t.objective, "value": t.value, "batch_size": t.batch_size,
                         "train_seconds": spent.get("seconds"), "steps": spent.get("steps"), "note": t.note,
                         **{f"param.{k}": v for k, v in t.params.items()}})
    return pd.DataFrame(rows)


def strip_plot(results: dict[str, list[Trial]], summaries: list[dict[str, Any]], objective: str, arrow: str) -> bytes:
    """One row per model: a box over the scored trials, every trial a dot, the winner a star and the
    suite's own settings a diamond (Lucic et al. 2018, Fig. 4 style)."""
    names = [s["model"] for s in summaries]
    fig, ax = plt.subplots(figsize=(7, 0.55 * len(names) + 1.2))
    rng = np.random.default_rng(0)  # jitter only
    for i, name in enumerate(names):
        scored = [t for t in results[name] if t.value is not None]
        vals = [t.value for t in scored]
        if len(vals) >= 2:
            ax.boxplot([vals], positions=[i], orientation="horizontal", widths=0.5, showfliers=False,
                       medianprops={"color": "0.3"}, boxprops={"color": "0.6"}, whiskerprops={"color": "0.6"})
        ax.scatter(vals, i + rng.uniform(-0.15, 0.15, len(vals)), s=14, alpha=0.7, color="tab:blue", zorder=3)
        for t in scored:
            if t.source == "defaults":
                ax.scatter([t.value], [i], marker="D", s=50, facecolor="none", edgecolor="tab:red", zorder=4,
                           label="suite settings" if i == 0 else None)
        s = summaries[i]
        if s["best"] is not None:
            ax.scatter([s["best"]], [i], marker="*", s=140, color="tab:orange", zorder=5,
                       label="chosen" if i == 0 else None)
    all_vals = [t.value for ts in results.values() for t in ts if t.value is not None]
    if all_vals and min(all_vals) > 0 and max(all_vals) / min(all_vals) > 20:
        ax.set_xscale("log")
    ax.set_yticks(range(len(names)), names)
    ax.invert_yaxis()
    ax.set_xlabel(f"{objective} on the validation split ({arrow})")
    ax.grid(alpha=0.3, axis="x")
    if any(s["defaults_value"] is not None for s in summaries) or any(s["best"] is not None for s in summaries):
        ax.legend(fontsize=7, loc="best")
    return _png(fig)


def _fmt(v: Any) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return html.escape(str(v))


def render_html(meta: dict[str, Any], summaries: list[dict[str, Any]], png: bytes) -> str:
    arrow, sym = meta["arrow"], "↓" if meta["direction"] == "minimize" else "↑"
    head = ("<tr><th>model</th><th>family</th><th>trials (scored / diverged / failed / no value)</th>"
            f"<th>best {sym}</th><th>median</th><th>quartiles</th><th>range</th><th>suite settings</th>"
            "<th>chosen</th></tr>")
    rows = []
    for s in summaries:
        chosen = ", ".join(f"{k}={_fmt(v)}" for k, v in s["best_params"].items()) or "–"
        rows.append(f"<tr><td>{_fmt(s['model'])}</td><td>{_fmt(s['family'])}</td>"
                    f"<td>{s['trials']} ({s['scored']} / {s['diverged']} / {s['failed']} / {s['no_value']})</td>"
                    f"<td>{_fmt(s['best'])} (trial {_fmt(s['best_trial'])})</td><td>{_fmt(s['median'])}</td>"
                    f"<td>{_fmt(s['q25'])} – {_fmt(s['q75'])}</td><td>{_fmt(s['min'])} – {_fmt(s['max'])}</td>"
                    f"<td>{_fmt(s['defaults_value'])}</td><td>{chosen}</td></tr>")
    sens = []
    for s in summaries:
        for k, v in s["sensitivity"].items():
            p = s["space"][k]
            rng = "{" + ", ".join(map(str, p["choices"])) + "}" if p["type"] == "categorical" else f"{p['low']:g} – {p['high']:g}"
            sens.append(f"<tr><td>{_fmt(s['model'])}</td><td>{_fmt(k)}</td><td>{html.escape(rng)}</td>"
                        f"<td>{_fmt(v['importance'])}</td><td>{_fmt(v['spearman'])}</td><td>{v['n']}</td></tr>")
    img = base64.b64encode(png).decode()
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>tuning {html.escape(meta['suite'])}</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}td,th{{padding:2px 8px;border-bottom:1px solid #ddd;
text-align:left;font-size:13px}}table{{border-collapse:collapse}}</style></head><body>
<h1>Tuning: {html.escape(meta['suite'])} ({html.escape(meta['run_id'])})</h1>
<p>{meta['trials']} trials per model ({html.escape(meta['sampler'])}, seed {meta['seed']}), each a cell trained under
the suite's budget on the training split less a held-out {meta['fraction']:g} part ({meta['n_fit']} examples), and
scored on that part ({meta['n_validation']} examples) by <b>{html.escape(meta['objective'])}</b> ({arrow}). The test
split is not used. Trial 0 is the suite's own settings. The chosen settings are in
<code>tuned-suite.yaml</code>.</p>
<h2>The objective over the search</h2><img src="data:image/png;base64,{img}">
<table>{head}{''.join(rows)}</table>
<h2>Sensitivity</h2>
<p>fANOVA importance (Optuna; share of the objective's variance, sampled trials only) and Spearman's rank
correlation of numeric parameters with the objective ({arrow}); n = the sampled trials that scored.
With a dozen trials both are rough.</p>
<table><tr><th>model</th><th>parameter</th><th>range</th><th>importance</th><th>Spearman ρ</th><th>n</th></tr>
{''.join(sens)}</table></body></html>
"""


def write_tuning_report(run_dir: Path, plan: dict[str, Any], results: dict[str, list[Trial]],
                        n_trials: int) -> dict[str, Path]:
    """(Re)write tuning.json, tuning.csv and tuning.html from the trials."""
    run_dir = Path(run_dir)
    direction = plan["direction"]
    tuning = plan["tuning"]
    summaries = [summarize(m, results[m], plan["models"][m], direction) for m in plan["models"] if results.get(m)]
    validation = read_json(run_dir / "validation.json", "it records the tuning run's validation split: restore it, or "
                           "tune again in a new run")
    if not isinstance(validation, dict) or not {"n_validation", "n_fit_used"} <= set(validation):
        raise BenchError(f"{run_dir / 'validation.json'}: not the validation split bench writes; restore it, or tune "
                         "again in a new run")
    arrow = "lower is better" if direction == "minimize" else "higher is better"
    meta = {"suite": plan["suite"]["name"], "run_id": run_dir.name, "trials": n_trials, "sampler": tuning["sampler"],
            "seed": tuning["seed"], "objective": tuning["objective"], "direction": direction, "arrow": arrow,
            "fraction": tuning["validation"]["fraction"], "n_validation": validation["n_validation"],
            "n_fit": validation["n_fit_used"], "batch_size_key": BATCH_SIZE}
    out = {"json": run_dir / "tuning.json", "csv": run_dir / "tuning.csv", "html": run_dir / "tuning.html"}
    atomic_write_json(out["json"], {**meta, "models": summaries})
    atomic_write_text(out["csv"], trials_table(results).to_csv(index=False))
    png = strip_plot(results, summaries, tuning["objective"], arrow) if summaries else b""
    atomic_write_text(out["html"], render_html(meta, summaries, png))
    return out
