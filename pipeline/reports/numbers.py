"""report.json's numbers for finished runs (pipeline/report.py is the command): how good
the model is, how sure that number is, where it fails, and whether run B really differs
from run A (paired.py), with the effective-robustness and ImageNet-C sections.

Written into the first RUN folder: report.html (one self-contained file, html.py) and
report.json (every number the page shows, under stable keys). Runs over the same rows as
the first get a paired comparison with it; runs over other data a side-by-side row.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UserError
from pipeline.reports import exports, html, mce, paired, robustness, stats, thumbnails
from pipeline.reports.finished import Run, load
from pipeline.runs import claims, metrics
from pipeline.runs.durable import durable_write, write_json

INTERVAL = "Wilson score interval, 95%"
DIFF_INTERVAL = "Newcombe's hybrid score interval for paired proportions (method 10), 95%"
TOP_CLASSES, TOP_PAIRS, MAX_ERRORS = 20, 20, 200
# the median images per class below which per-class accuracy cannot rank classes: with one
# image each, every class is 0 or 100% and the best and worst lists are ties in id order
MIN_PER_CLASS = 10


def single(run: Run) -> dict[str, Any]:
    """One run's numbers: metrics with intervals, calibration, classes, confusions, errors;
    None (null in report.json, n/a on the page) for what needs labels it does not have."""
    p, s, labeled = run.plan, run.scores, run.labeled
    n = int(labeled.sum())
    ece, bins = stats.calibration(run.confidence[labeled], run.top1[labeled])
    return {
        "dir": str(run.dir),
        "dataset": p.data.title,
        "split": p.data.split,
        "model": p.model.model,
        "weights": p.model.weights,
        "label_space": p.labels.label_space,
        "restricted": p.labels.restricted,
        **{k: getattr(s, k) for k in ("n_images", "n_scored", "n_errors", "n_labeled")},
        "top1": s.top1,
        "top1_ci95": stats.percent_interval(s.top1, n),
        "top5": s.top5,
        "top5_ci95": stats.percent_interval(s.top5, n),
        "ece": ece,
        "reliability": bins,
        "published": published(s, p.model.published_by),
        "classes": per_class(run),
        "confusions": confusions(run),
        "errors": [{"index": i, "id": name, "error": e} for i, name, e in run.errors[:MAX_ERRORS]],
    }


def published(s: metrics.Scores, by: str | None) -> dict[str, Any] | None:
    """The published numbers beside the run's, where they apply, and whose they are."""
    if s.published_top1 is None or s.top1 is None:
        return None
    d1 = s.top1 - s.published_top1
    d5 = None if s.published_top5 is None or s.top5 is None else s.top5 - s.published_top5
    return {
        "by": by,
        "top1": s.published_top1,
        "top5": s.published_top5,
        "top1_diff": d1,
        "top5_diff": d5,
        "tolerance": metrics.PUBLISHED_TOLERANCE,
        "off": metrics.off_published(d1, d5),
    }


def per_class(run: Run) -> dict[str, Any]:
    """Top-1 accuracy of every class with labeled images: its histogram, worst and best."""
    lab, names = run.labeled, run.names
    counts = np.bincount(run.label[lab], minlength=len(names))
    hits = np.bincount(run.label[lab], weights=run.top1[lab], minlength=len(names))
    present = np.flatnonzero(counts)
    acc = 100 * hits[present] / counts[present]
    order = np.lexsort((present, acc))  # by accuracy, then class id

    def entry(k: int) -> dict[str, Any]:
        c = int(present[k])
        return {"class": c, "name": names[c], "n": int(counts[c]), "top1": float(acc[k])}

    histogram, edges = np.histogram(acc, bins=10, range=(0, 100))
    median = float(np.median(counts[present])) if len(present) else 0.0
    few = median < MIN_PER_CLASS
    return {
        "n_classes": len(present),
        "median_images": median,
        "note": f"per-class top-1 rests on {median:g} image(s) per class (the median): too "
        f"few to rank classes (it takes {MIN_PER_CLASS}), so no best or worst classes are "
        f"listed"
        if few and len(present)
        else None,
        "histogram": {"edges": edges.tolist(), "counts": histogram.tolist()},
        "worst": [] if few else [entry(k) for k in order[:TOP_CLASSES]],
        "best": [] if few else [entry(k) for k in order[::-1][:TOP_CLASSES]],
    }


def confusions(run: Run) -> list[dict[str, Any]]:
    """The most frequent (true -> predicted) top-1 mistakes."""
    miss, names = run.labeled & ~run.top1, run.names
    pairs, counts = np.unique(run.label[miss] * len(names) + run.pred[miss], return_counts=True)
    order = np.lexsort((pairs, -counts))[:TOP_PAIRS]
    return [
        {
            "true": int(pairs[k] // len(names)),
            "true_name": names[pairs[k] // len(names)],
            "pred": int(pairs[k] % len(names)),
            "pred_name": names[pairs[k] % len(names)],
            "count": int(counts[k]),
        }
        for k in order
    ]


def build(
    dirs: list[Path], n_thumbnails: int, val: str = robustness.VAL, scale: str = "logit"
) -> tuple[dict[str, Any], dict[str, list[dict[str, Any]]]]:
    """report.json's content, and the thumbnails (kept out of the JSON): the first run's
    mistakes, and each export's flipped images by its folder; `val` and `scale`: the
    effective-robustness plot's x axis and its scale."""
    runs = [load(d) for d in dirs]
    first = runs[0]
    pairs = [r for r in runs[1:] if paired.same_rows(first, r)]
    for other in pairs:
        paired.check_pairable(first, other)
    report = {
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "interval": INTERVAL,
        "difference_interval": DIFF_INTERVAL,
        "ece_bins": stats.ECE_BINS,
        "runs": [single(r) for r in runs],
        "imagenet_c": mce.summary(mce.gather((str(r.dir), r.plan, r.scores) for r in runs)),
        "effective_robustness": robustness.summary(
            ((str(r.dir), r.plan, r.scores) for r in runs), val, scale
        ),
        "paired": [paired.paired(first, r) for r in pairs],
    }
    compared: list[dict[str, Any]] = []
    flips: dict[str, list[dict[str, Any]]] = {}
    for source, export in _exports(runs):
        if not paired.same_rows(source, export):
            note = "an export of it, but over other rows: not paired"
            compared.append({"source": str(source.dir), "export": str(export.dir), "note": note})
            continue
        entry, flips[str(export.dir)] = exports.compare(source, export, n_thumbnails)
        compared.append(entry)
    report["exports"] = compared
    shown, note = thumbnails.most_confident_mistakes(first, n_thumbnails)
    report["thumbnails"] = {"shown": len(shown), "note": note}
    return report, {"mistakes": shown, **flips}


def _exports(runs: list[Run]) -> list[tuple[Run, Run]]:
    """(source, export) for each run that is an export of the first, or the first of it."""
    first = runs[0]
    found = []
    for other in runs[1:]:
        if exports.export_of(first, other):
            found.append((first, other))
        elif exports.export_of(other, first):
            found.append((other, first))
    return found


def write(
    dirs: list[Path],
    n_thumbnails: int,
    out: Path | None = None,
    val: str = robustness.VAL,
    scale: str = "logit",
) -> dict[str, Any]:
    """Write report.json and report.html into `out` (the first run's folder by default)."""
    out = out or dirs[0]
    claims.check_ours(out / "report.json", is_report_json)
    claims.check_ours(out / "report.html", is_report_page)
    report, pictures = build(dirs, n_thumbnails, val, scale)
    write_json(out / "report.json", report)
    page = html.render(report, pictures)
    durable_write(out / "report.html", lambda tmp: tmp.write_text(page))
    return report


def is_report_json(path: Path) -> bool:
    """Whether a report.json is this pipeline's: an object under report.json's own keys."""
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(content, dict) and content.keys() >= REPORT_KEYS


REPORT_KEYS = {"created", "interval", "difference_interval", "runs", "paired"}


def is_report_page(path: Path) -> bool:
    """Whether a report.html is this pipeline's: its head names it (html.TITLE)."""

    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return False
    return f"<title>{html.TITLE}</title>" in head


def targets(paths: list[Path]) -> tuple[list[Path], Path]:
    """The run folders to report on and where the report goes: the folders given, each
    sweep folder among them as its finished jobs in job order; the report goes into the
    first folder given (a sweep folder, or the first run)."""
    dirs: list[Path] = []
    for path in paths:
        if not (path / "multirun.yaml").exists():
            dirs.append(path)
            continue
        jobs = sorted(
            (d for d in path.iterdir() if d.name.isdigit() and (d / claims.METRICS).exists()),
            key=lambda d: int(d.name),
        )
        if not jobs:
            raise UserError(f"{path} holds no finished job to report on")
        dirs += jobs
    return dirs, paths[0]
