"""The report's plots, as inline SVG: the reliability diagram, the per-class histogram,
ImageNet-C's heatmap and the effective-robustness plot (matplotlib, imported when drawn)."""

from __future__ import annotations

import io
from typing import Any

from pipeline.reports.stats import number as num


def svg(figure: Any) -> str:
    buf = io.StringIO()
    figure.savefig(buf, format="svg", bbox_inches="tight")
    text = buf.getvalue()
    return text[text.index("<svg") :]


def reliability(bins: list[dict[str, Any]], ece: float | None) -> str:
    """The reliability diagram: accuracy against mean confidence per bin, and the diagonal."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 4.0))
    ax = fig.subplots()
    centers = [(b["lower"] + b["upper"]) / 2 for b in bins]
    accs = [b["accuracy"] or 0 for b in bins]
    ax.bar(
        centers, accs, width=1 / len(bins), edgecolor="#2b5b84", color="#8fb8de", label="accuracy"
    )
    ax.plot([0, 1], [0, 1], "--", color="#a33", lw=1, label="perfectly calibrated")
    ax.set(
        xlim=(0, 1),
        ylim=(0, 1),
        xlabel="top-1 probability",
        ylabel="top-1 accuracy",
        title=f"Reliability (ECE {num(ece, 4)}, {len(bins)} bins)",
    )
    ax.legend(loc="upper left", fontsize=8)
    return svg(fig)


def histogram(classes: dict[str, Any]) -> str:
    """How many classes reach each band of top-1 accuracy."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.6, 4.0))
    ax = fig.subplots()
    edges, counts = classes["histogram"]["edges"], classes["histogram"]["counts"]
    ax.bar(edges[:-1], counts, width=10, align="edge", color="#9fc99a", edgecolor="#3f7a3a")
    ax.set(
        xlim=(0, 100),
        xlabel="per-class top-1 accuracy (%)",
        ylabel="classes",
        title=f"Per-class accuracy ({classes['n_classes']} classes)",
    )
    return svg(fig)


def heatmap(
    rows: list[str],
    values: list[list[float | None]],
    title: str,
    diverging: bool,
    beside: list[list[float | None]] | None = None,
) -> str:
    """Corruption x severity cells, coloured by value and written in each (n/a: none);
    `beside`: a second value written under each (the published error)."""
    import numpy as np
    from matplotlib.figure import Figure

    grid = np.array([[np.nan if v is None else 100 * v for v in row] for row in values])
    fig = Figure(figsize=(5.2, 0.32 * len(rows) + 1.2))
    ax = fig.subplots()
    limit = np.nanmax(np.abs(grid)) if diverging and np.isfinite(grid).any() else None
    image = ax.imshow(
        grid,
        cmap="RdBu_r" if diverging else "viridis_r",
        vmin=-limit if limit else (None if diverging else 0),
        vmax=limit if limit else (None if diverging else 100),
        aspect="auto",
    )
    for (i, j), v in np.ndenumerate(grid):
        text = "n/a" if np.isnan(v) else f"{v:+.1f}" if diverging else f"{v:.1f}"
        under = None if beside is None else beside[i][j]
        if under is not None:
            text += f"\n({100 * under:.1f})"
        ax.text(j, i, text, ha="center", va="center", fontsize=7 if beside is None else 6)
    ax.set(xticks=range(5), xticklabels=[f"severity {s}" for s in range(1, 6)], title=title)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    fig.colorbar(image, ax=ax, fraction=0.04)
    return svg(fig)


TICKS = (1, 2, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 98, 99)  # percent


def robustness_plot(entry: dict[str, Any], val: str, scale: str) -> str:
    """Shifted top-1 against val top-1 on scaled axes: the models (numbered as in the
    table), the line through them, and y = x (no drop under the shift)."""
    import numpy as np
    from matplotlib.figure import Figure

    from pipeline.reports.robustness import SCALES

    to_axis = SCALES[scale][0]
    rows = entry["models"]
    xs = [to_axis(r["val_top1"] / 100) for r in rows]
    ys = [to_axis(r["top1"] / 100) for r in rows]
    fig = Figure(figsize=(5.0, 4.4))
    ax = fig.subplots()
    low, high = min(xs + ys), max(xs + ys)
    ticks = [t for t in TICKS if low - 0.6 <= to_axis(t / 100) <= high + 0.6] or [1, 99]
    span = [to_axis(ticks[0] / 100), to_axis(ticks[-1] / 100)]
    ax.plot(span, span, ":", color="#777", lw=1, label="y = x (no shift)")
    if entry["fit"]:
        line = np.linspace(span[0], span[1], 50)
        fitted = entry["fit"]["slope"] * line + entry["fit"]["intercept"]
        ax.plot(line, fitted, "-", color="#a33", lw=1.2, label=f"{scale} fit")
    zero = [bool(r.get("zero_shot")) for r in rows]
    styles: dict[bool, dict[str, Any]] = {
        False: {"color": "#2b5b84", "marker": "o", "label": "trained on ImageNet"},
        True: {"color": "#d9822b", "marker": "*", "s": 90, "label": "zero-shot"},
    }
    for marked, style in styles.items():
        picked = [k for k, z in enumerate(zero) if z == marked]
        if picked:
            ax.scatter([xs[k] for k in picked], [ys[k] for k in picked], zorder=3, **style)
    for k, (x, y) in enumerate(zip(xs, ys, strict=True), 1):  # the table's #: names collide
        ax.annotate(str(k), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xticks([to_axis(t / 100) for t in ticks], [str(t) for t in ticks])
    ax.set_yticks([to_axis(t / 100) for t in ticks], [str(t) for t in ticks])
    ax.set(
        xlabel=f"{val} top-1 (%, {scale} scale)",
        ylabel=f"{entry['dataset']} top-1 (%, {scale} scale)",
        title=f"Effective robustness: {entry['dataset']}",
    )
    ax.legend(loc="upper left", fontsize=8)
    return svg(fig)
