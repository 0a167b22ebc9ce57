"""Figures for the report, as PNG bytes (matplotlib, Agg backend: no display needed)."""
from __future__ import annotations

import io
from collections.abc import Callable

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def image_grid(samples: np.ndarray, n: int = 64) -> bytes:
    """uint8 (N, C, H, W) -> a PNG grid of the first ``n`` samples (nearest-neighbour, no smoothing)."""
    x = samples[:n]
    k = int(np.ceil(np.sqrt(len(x))))
    c, h, w = x.shape[1:]
    grid = np.full((k * (h + 1) + 1, k * (w + 1) + 1, c), 255, dtype=np.uint8)
    for i, img in enumerate(x):
        r, q = divmod(i, k)
        grid[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + q * (w + 1): 1 + q * (w + 1) + w] = img.transpose(1, 2, 0)
    from PIL import Image

    im = Image.fromarray(grid[..., 0] if c == 1 else grid)
    scale = max(1, 224 // im.width)
    im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return buf.getvalue()


def points_scatter(samples: np.ndarray, real: np.ndarray | None = None, n: int = 2000,
                   log_density: Callable[[np.ndarray], np.ndarray] | None = None) -> bytes:
    """2-D samples (orange) over the true density (grey shading, ``log_density``: (M, 2) -> (M,) nats) where it is
    known, else over real data (grey points)."""
    fig, ax = plt.subplots(figsize=(3.4, 3.4))
    if log_density is not None and real is not None:
        lo, hi = real.min(axis=0), real.max(axis=0)
        pad = 0.15 * (hi - lo)
        gx, gy = np.meshgrid(np.linspace(lo[0] - pad[0], hi[0] + pad[0], 300),
                             np.linspace(lo[1] - pad[1], hi[1] + pad[1], 300))
        p = np.exp(log_density(np.stack([gx.ravel(), gy.ravel()], 1))).reshape(gx.shape)  # (300, 300)
        # square root: thin modes stay visible next to the empty space between them
        ax.imshow(np.sqrt(p), origin="lower", cmap="Greys", extent=(gx[0, 0], gx[0, -1], gy[0, 0], gy[-1, 0]),
                  aspect="auto", alpha=0.6)
        ax.scatter(samples[:n, 0], samples[:n, 1], s=2, c="tab:orange", alpha=0.5, label="samples")
        # drawn over the samples: where the true density is 1% of its peak (a Gaussian mode's 3-std ring)
        ax.contour(gx, gy, p, levels=[0.011 * p.max()], colors="k", linewidths=0.7)
    else:
        if real is not None:
            ax.scatter(real[:n, 0], real[:n, 1], s=2, c="0.7", label="data")
        ax.scatter(samples[:n, 0], samples[:n, 1], s=2, c="tab:orange", label="samples")
    ax.set_aspect("equal")
    ax.set_xticks([])
    ax.set_yticks([])
    return _png(fig)


def trilemma(points: list[dict], x: str, y: str, size: str | None, xlabel: str, ylabel: str,
             x_log: bool = False) -> bytes:
    """One marker per model: ``points`` = [{"model", x, y, size?, xerr?, yerr?}]."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for p in points:
        if p.get(x) is None or p.get(y) is None:
            continue
        s = 40.0
        if size and p.get(size) is not None:
            s = 20 + 200 * float(p[size])
        ax.errorbar(p[x], p[y], xerr=p.get("xerr"), yerr=p.get("yerr"), fmt="none", ecolor="0.6", lw=1)
        ax.scatter([p[x]], [p[y]], s=s, alpha=0.8)
        ax.annotate(p["model"], (p[x], p[y]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    if x_log:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    return _png(fig)


def curves(series: dict[str, tuple[list[float], list[float]]], xlabel: str, ylabel: str, symlog: bool = False,
           x_log: bool = False) -> bytes:
    """Line plot of several named (x, y) series, e.g. quality over training per model."""
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker=".", label=name)
    if symlog:  # losses of different families differ by orders of magnitude
        ax.set_yscale("symlog")
    if x_log:
        ax.set_xscale("log")
    return _labelled(fig, ax, xlabel, ylabel, legend=bool(series))


def _labelled(fig, ax, xlabel: str, ylabel: str, legend: bool) -> bytes:
    """Axis labels, a light grid and the legend (where there are named lines), then the PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="both")
    if legend:
        ax.legend(fontsize=7, loc="best")
    return _png(fig)


def cost_curves(lines: dict[str, tuple[list[float], list[float]]], markers: list[tuple[str, float, float]],
                front: list[tuple[float, float]], xlabel: str, ylabel: str) -> bytes:
    """Quality against sampling cost (log x): a line per swept sampler, a labelled marker per one-shot model, and
    the Pareto frontier of all of them as a dashed staircase."""
    fig, ax = plt.subplots(figsize=(7, 4.4))
    for name, (xs, ys) in lines.items():
        ax.plot(xs, ys, marker="o", ms=4, label=name)
    for name, x, y in markers:
        ax.scatter([x], [y], marker="D", s=36, zorder=3)
    if len(front) > 1:
        fx, fy = zip(*front)
        ax.step(fx, fy, where="post", ls="--", c="0.3", lw=1, label="Pareto frontier")
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(base=10, subs=(1.0, 2.0, 5.0)))  # 1 2 5 10 20 50
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))  # 5, not 5x10^0
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    _spread_labels(ax, markers)  # last: it converts to points with the axes as they will be drawn
    return _labelled(fig, ax, xlabel, ylabel, legend=bool(lines) or len(front) > 1)


def _spread_labels(ax, items: list[tuple[str, float, float]], gap_pt: float = 10.0, near_pt: float = 60.0) -> None:
    """Label markers so that labels do not overlap: markers within ``near_pt`` points of each other
    horizontally (every one-shot family sits at NFE 1; guided samplers at 2x their steps) form one
    column, whose labels start right of its rightmost marker and are stacked at least ``gap_pt`` points
    apart in the order of their markers' heights; a label moved off its marker gets a thin leader line."""
    if not items:
        return
    ax.figure.canvas.draw()  # fix the limits, so data-to-points conversions hold
    to_pt = 72.0 / ax.figure.dpi
    box = ax.get_window_extent()
    bottom, top = box.y0 * to_pt + 6, box.y1 * to_pt - 6
    pts = [(name, x, y, *(ax.transData.transform((x, y)) * to_pt)) for name, x, y in items]
    pts.sort(key=lambda t: t[3])
    columns: list[list[tuple]] = []
    for p in pts:
        if columns and p[3] - columns[-1][0][3] < near_pt:
            columns[-1].append(p)
        else:
            columns.append([p])
    for column in columns:
        column.sort(key=lambda t: t[4])
        right = max(p[3] for p in column)
        heights = [p[4] for p in column]
        placed: list[float] = []
        for h in heights:
            placed.append(h if not placed else max(h, placed[-1] + gap_pt))
        shift = (sum(heights) - sum(placed)) / len(placed)  # centre the stack on its markers
        shift = min(shift, top - placed[-1])  # ... but keep it inside the axes
        shift = max(shift, bottom - placed[0])
        for (name, x, y, px, py), q in zip(column, placed):
            dx, dy = right - px + 7, q + shift - py
            moved = abs(dy) > 2 or dx > 9
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(dx, dy - 3), fontsize=8,
                        arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6} if moved else None)


def traces(series: dict[str, tuple[list[float], list[float], list[str]]], xlabel: str, ylabel: str) -> bytes:
    """Paths traced by a knob (precision vs recall as guidance grows): a line per model, each point labelled with
    its knob value."""
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for name, (xs, ys, labels) in series.items():
        ax.plot(xs, ys, marker="o", ms=4, label=name)
        for x, y, text in zip(xs, ys, labels):
            ax.annotate(text, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=7)
    return _labelled(fig, ax, xlabel, ylabel, legend=bool(series))
