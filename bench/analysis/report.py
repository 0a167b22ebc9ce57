"""The report's sections for the issue-9 analyses, derived from the records alone.

``sections(records)`` returns what the HTML report shows under "What generative models are for":
tables as DataFrames and figures as PNG bytes; ``to_html(records)`` is that as one HTML fragment, the
report's hook (``bench/report/html.py`` inserts it; empty when no cell has an analysis metric).
"""
from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field

import pandas as pd

from bench.analysis.classify import crossing_point
from bench.analysis.plots import learning_curves
from bench.results import CellRecord


@dataclass
class Section:
    title: str
    intro: str
    tables: list[pd.DataFrame] = field(default_factory=list)
    figures: list[tuple[str, bytes]] = field(default_factory=list)  # (caption, PNG)


def _values(records: list[CellRecord], pattern: str) -> pd.DataFrame:
    """Finished cells' metrics whose name matches ``pattern``: model, seed, metric, value, stderr."""
    rx = re.compile(pattern)
    rows = [{"model": r.model, "seed": r.seed, "metric": m.name, "value": m.value, "stderr": m.params.get("stderr")}
            for r in records if r.status == "ok" for m in r.metrics if rx.fullmatch(m.name) and m.value is not None]
    return pd.DataFrame(rows, columns=["model", "seed", "metric", "value", "stderr"])


def _mean_std(df: pd.DataFrame) -> pd.DataFrame:
    """model x metric 'mean ± std over seeds' (one seed: '± its standard error' when it has one)."""
    def cell(g: pd.DataFrame) -> str:
        v = g["value"].astype(float)
        if len(v) > 1:
            return f"{v.mean():.3f} ± {v.std():.3f}"
        se = g["stderr"].iloc[0]
        return f"{v.iloc[0]:.3f}" + (f" ± {se:.3f} (se)" if se is not None and not math.isnan(se) else "")

    if df.empty:
        return pd.DataFrame()
    out = df.groupby(["model", "metric"], sort=False)[["value", "stderr"]].apply(cell).unstack("metric")
    return out[[c for c in dict.fromkeys(df.metric) if c in out.columns]].reset_index()


def _first_seed_curve(records: list[CellRecord], key: str) -> dict[str, object]:
    """The first finished seed's ``curves[key]`` per model (these curves do not depend on the cell's seed)."""
    out: dict[str, object] = {}
    for r in sorted(records, key=lambda r: r.seed):
        if r.status == "ok" and key in r.curves and r.model not in out:
            out[r.model] = r.curves[key]
    return out


def classifier_section(records: list[CellRecord]) -> Section | None:
    bayes, cross = _values(records, r"bayes_accuracy_.*"), _values(records, r"crossing_n_.*")
    curves = _first_seed_curve(records, "classifier_curve")
    if bayes.empty and not curves:
        return None
    s = Section("Generative vs discriminative classifiers",
                "Bayes-rule test accuracy, argmax_y log p(x|y) + log p(y), of the class-conditional models (for a "
                "bound it is the argmax of bounds); naive Bayes against logistic regression over training-set sizes "
                "(Ng & Jordan 2002) and where the discriminative curve overtakes for good (n = training examples).")
    s.tables += [t for t in (_mean_std(bayes), _mean_std(cross)) if not t.empty]
    drawn: dict[str, list[str]] = {}  # the curve is the dataset's: naive Bayes cells of one run share it
    for model, data in curves.items():
        drawn.setdefault(repr(data), []).append(model)
    for models in drawn.values():
        curve = pd.DataFrame(curves[models[0]])
        gens = [c for c in dict.fromkeys(curve.classifier) if c.startswith("nb_")]
        shown = {f"{g} -> {d}": crossing_point(curve, g, d) for g in gens for d in ("logistic",)
                 if d in set(curve.classifier)}
        title = ", ".join(models)
        s.figures.append((f"{title}: test accuracy over training-set size", learning_curves(curve, shown, title)))
    return s


def memorization_section(records: list[CellRecord]) -> Section | None:
    df = _values(records, r"(closer_share|data_copying_ct|near_copy_share)_.*|exact_copy_share|nll_gap_bpd")
    if df.empty:
        return None
    s = Section("Memorization and novelty",
                "Nearest-training-image distances of samples against those of test images. closer share: 0.5 = as "
                "novel as test data, 1 = copies; C_T (Meehan et al. 2020): < -3 flags copying, > 0 underfitting; "
                "near copies: about 0.01 for fresh data; NLL gap: test minus train bits/dim.", [_mean_std(df)])
    for model, pairs in _first_seed_curve(records, "closest_pairs").items():
        s.figures.append((f"{model}: samples nearest the training set (top) and their nearest training images",
                          base64.b64decode(pairs["png"])))  # type: ignore[index]
    return s


def ood_section(records: list[CellRecord]) -> Section | None:
    df = _values(records, r"ood_auroc_.*")
    if df.empty:
        return None
    parts = df.metric.str.removeprefix("ood_auroc_").str.rsplit("_", n=1)
    df = df.assign(model=df.model + " vs " + parts.str[0], metric=parts.str[1])
    return Section("Out-of-distribution detection",
                   "AUROC of telling the test split from another set (0.5 chance; below 0.5 the score ranks the "
                   "wrong way: the model gives the other set higher likelihood, Nalisnick et al. 2019). nll: raw; "
                   "typicality: |NLL - typical NLL|; ratio: against naive Bayes; complexity: NLL minus PNG length "
                   "(Serrà et al. 2020); reconstruction: models with an encoder.", [_mean_std(df)])


def sections(records: list[CellRecord]) -> list[Section]:
    """Every analysis section the records have data for, in a fixed order."""
    return [s for s in (classifier_section(records), memorization_section(records), ood_section(records)) if s]


def to_html(records: list[CellRecord]) -> str:
    """The sections as an HTML fragment in the report's classes (``t`` tables, ``grid`` of figures)."""
    parts = []
    for s in sections(records):
        parts.append(f'<h2>{html.escape(s.title)}</h2>\n<p class="note">{html.escape(s.intro)}</p>')
        parts += [f'<div class="scroll">{t.to_html(index=False, border=0, classes="t", na_rep="")}</div>'
                  for t in s.tables]
        figures = "".join(f'<figure><img src="data:image/png;base64,{base64.b64encode(png).decode()}" '
                          f'alt="{html.escape(caption)}"><figcaption>{html.escape(caption)}</figcaption></figure>'
                          for caption, png in s.figures)
        parts.append(f'<div class="grid">{figures}</div>' if figures else "")
    return "\n".join(p for p in parts if p)
